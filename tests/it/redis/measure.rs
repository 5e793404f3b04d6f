//! The measurement behind the numbers in the issue's report: publish throughput and
//! publish→deliver latency, memory vs Redis, with many subscribers per instance. Ignored
//! by default; see [`measure_fan_out_memory_vs_redis`].

use super::instance;
use super::server::RedisServer;
use crate::support::*;
use hyper::StatusCode;
use ssegate::config::Config;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One subscriber of the measurement, on a raw socket: it counts the events and records
/// each one's publish→deliver latency (the publisher writes its send time, in µs since
/// `base`, into the data: `L <µs>` during the load phase, `P <µs>` during the paced one).
async fn measuring_subscriber(
    proxy: std::net::SocketAddr,
    base: tokio::time::Instant,
    (load, paced): (usize, usize),
    load_done: tokio::sync::mpsc::UnboundedSender<Duration>,
) -> (Vec<u64>, Vec<u64>) {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        b"GET /events?topic=bench HTTP/1.1\r\nhost: m\r\naccept: text/event-stream\r\n\r\n",
    )
    .await
    .unwrap();
    let (mut load_lat, mut paced_lat) = (Vec::with_capacity(load), Vec::with_capacity(paced));
    let mut buf = vec![0u8; 64 * 1024];
    let mut partial = Vec::new();
    while load_lat.len() < load || paced_lat.len() < paced {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended during the measurement");
        partial.extend_from_slice(&buf[..n]);
        let now = base.elapsed().as_micros() as u64;
        let complete = partial
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        for line in partial[..complete].split(|b| *b == b'\n') {
            let Some(rest) = line.strip_prefix(b"data: ") else {
                continue;
            };
            let text = std::str::from_utf8(rest).unwrap();
            let (phase, sent) = text.split_once(' ').unwrap();
            let latency = now.saturating_sub(sent.parse::<u64>().unwrap());
            if phase == "L" {
                load_lat.push(latency);
                if load_lat.len() == load {
                    let _ = load_done.send(base.elapsed());
                }
            } else {
                paced_lat.push(latency);
            }
        }
        partial.drain(..complete);
    }
    (load_lat, paced_lat)
}

/// What one measurement found.
struct Measured {
    publish_per_s: f64,
    deliveries_per_s: f64,
    load_p50_p99_ms: (f64, f64),
    paced_p50_p99_ms: (f64, f64),
}

fn p50_p99(mut v: Vec<u64>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    (at(0.50), at(0.99))
}

/// Opens `subs` streams on each instance, then publishes `load` single-event requests from 4
/// keep-alive connections as fast as they are answered, then `paced` more at 100/s.
async fn measure(
    instances: &[(std::net::SocketAddr, std::net::SocketAddr)],
    publish_to: std::net::SocketAddr,
    subs: usize,
    load: usize,
    paced: usize,
) -> Measured {
    let base = tokio::time::Instant::now();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut readers = Vec::new();
    for (proxy, _) in instances {
        for _ in 0..subs {
            readers.push(tokio::spawn(measuring_subscriber(
                *proxy,
                base,
                (load, paced),
                done_tx.clone(),
            )));
        }
    }
    for (_, admin) in instances {
        eventually("every stream to open", || async {
            connections(*admin).await == subs as u64
        })
        .await;
    }
    let publisher = |count: usize, phase: &'static str, every: Option<Duration>| async move {
        let stream = tokio::net::TcpStream::connect(publish_to).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut tick = every.map(tokio::time::interval);
        for _ in 0..count {
            if let Some(t) = &mut tick {
                t.tick().await;
            }
            let sent = base.elapsed().as_micros();
            let body = format!(r#"{{"topic":"bench","data":"{phase} {sent}"}}"#);
            sender.ready().await.unwrap();
            let resp = sender
                .send_request(request(
                    "POST",
                    "/publish",
                    &[("content-type", "application/json")],
                    body,
                ))
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            body_bytes(resp).await;
        }
    };
    let started = base.elapsed();
    let publishers: Vec<_> = (0..4)
        .map(|i| tokio::spawn(publisher(load / 4 + usize::from(i < load % 4), "L", None)))
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let published = base.elapsed() - started;
    let mut delivered = started;
    for _ in 0..readers.len() {
        delivered = delivered.max(done_rx.recv().await.unwrap());
    }
    publisher(paced, "P", Some(Duration::from_millis(10))).await;
    let (mut load_lat, mut paced_lat) = (Vec::new(), Vec::new());
    for r in readers {
        let (l, p) = r.await.unwrap();
        load_lat.extend(l);
        paced_lat.extend(p);
    }
    Measured {
        publish_per_s: load as f64 / published.as_secs_f64(),
        deliveries_per_s: (load * instances.len() * subs) as f64
            / (delivered - started).as_secs_f64(),
        load_p50_p99_ms: p50_p99(load_lat),
        paced_p50_p99_ms: p50_p99(paced_lat),
    }
}

/// Publish throughput and publish→deliver latency, memory vs Redis, for 1,000 subscribers
/// on each instance (everything on this machine: clients, instances, Redis). Run with
/// `cargo test --release --test it redis::measure -- --ignored --nocapture`;
/// `SSEGATE_MEASURE_SUBSCRIBERS` and `SSEGATE_MEASURE_EVENTS` change the sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run it with --ignored --nocapture"]
async fn measure_fan_out_memory_vs_redis() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let subs = env("SSEGATE_MEASURE_SUBSCRIBERS", 1000);
    let load = env("SSEGATE_MEASURE_EVENTS", 2000);
    let paced = 200;
    let tune = |c: &mut Config| {
        c.events.subscriber_buffer = 1_000_000;
        c.limits.max_connections = 100_000;
    };
    let mut rows = Vec::new();
    // The publish path alone (no subscriber), the pipeline's own latency (one subscriber),
    // then `subs` streams on each instance.
    for n in [0, 1, subs] {
        let (m, _u) = sidecar_with(tune).await;
        let m = measure(&[(m.proxy, m.admin)], m.admin, n, load, paced).await;
        rows.push(("memory", 1, n, m));
    }
    let redis = RedisServer::start().await;
    for n in [0, 1, subs] {
        let (a, _ua) = instance(&redis, tune).await;
        let m = measure(&[(a.proxy, a.admin)], a.admin, n, load, paced).await;
        rows.push(("redis", 1, n, m));
    }
    for n in [1, subs] {
        let (a, _ua) = instance(&redis, tune).await;
        let (b, _ub) = instance(&redis, tune).await;
        let both = [(a.proxy, a.admin), (b.proxy, b.admin)];
        rows.push(("redis", 2, n, measure(&both, a.admin, n, load, paced).await));
    }
    println!(
        "\n{load} single-event publishes from 4 connections, then {paced} at 100/s; \
         latency from the publisher's send to each subscriber's read\n\
         {:<8} {:>9} {:>14} {:>10} {:>13} {:>18} {:>18}",
        "broker",
        "instances",
        "subs/instance",
        "publish/s",
        "deliveries/s",
        "load p50/p99 ms",
        "paced p50/p99 ms"
    );
    for (broker, instances, n, m) in rows {
        println!(
            "{broker:<8} {instances:>9} {n:>14} {:>10.0} {:>13.0} {:>18} {:>18}",
            m.publish_per_s,
            m.deliveries_per_s,
            format!("{:.2} / {:.2}", m.load_p50_p99_ms.0, m.load_p50_p99_ms.1),
            format!("{:.2} / {:.2}", m.paced_p50_p99_ms.0, m.paced_p50_p99_ms.1),
        );
    }
}

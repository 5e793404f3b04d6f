//! Hostile clients on the public listener (issue 9): slowloris in its variants, oversized
//! heads, request-smuggling probes, a flood of streams from one address, a client that never
//! reads, malformed topics, and attempts to reach the internal listener through the public
//! one. Raw TCP wherever a well-behaved HTTP client could not send the bytes.

use crate::support::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::StatusCode;
use ssegate::server::Options;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Connection time limits short enough to watch them act.
const SHORT: Options = Options {
    header_read_timeout: Duration::from_secs(2),
    send_timeout: Duration::from_secs(2),
};

/// What the test app saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_length: Option<String>,
    body: Bytes,
}

/// An app that answers 200 "app" and records every request it receives, body included.
async fn recording_upstream() -> (Upstream, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let up = upstream(move |req| {
        let log = Arc::clone(&log);
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_else(|_| Bytes::from_static(b"<broken body>"));
            log.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                path: parts.uri.to_string(),
                content_length: parts
                    .headers
                    .get("content-length")
                    .map(|v| v.to_str().unwrap().to_owned()),
                body,
            });
            hyper::Response::new(full("app"))
        }
    })
    .await;
    (up, seen)
}

/// What a raw exchange produced: the bytes the server sent, and whether it closed the
/// connection (rather than going quiet with it still open).
struct Raw {
    bytes: Vec<u8>,
    closed: bool,
}

impl Raw {
    /// The status of every response in the bytes, in order.
    fn statuses(&self) -> Vec<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        text.match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Sends `bytes` on a fresh connection and reads until the server closes it, or until it
/// has said something and then stayed quiet for a second.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Raw {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything (431): ignore write errors.
    let _ = s.write_all(bytes).await;
    read_raw(&mut s).await
}

async fn read_raw(s: &mut TcpStream) -> Raw {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let wait = if out.is_empty() {
            DEADLINE.saturating_sub(start.elapsed())
        } else {
            Duration::from_secs(1)
        };
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                return Raw {
                    bytes: out,
                    closed: true,
                };
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) if out.is_empty() => panic!("no answer within {DEADLINE:?}"),
            Err(_) => {
                return Raw {
                    bytes: out,
                    closed: false,
                };
            }
        }
    }
}

/// Sends `bytes` one at a time, one every `every`, then waits; returns when the server
/// closes the connection: how long that took, how many bytes were sent, what it said.
async fn trickle(addr: SocketAddr, bytes: Vec<u8>, every: Duration) -> (Duration, usize, Vec<u8>) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        assert!(
            start.elapsed() < DEADLINE * 2,
            "the server never closed a connection that sent {sent} of {} bytes",
            bytes.len()
        );
        // The read's timeout paces the trickle; a read of 0 or an error is the close.
        match tokio::time::timeout(every, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (start.elapsed(), sent, got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) if sent < bytes.len() => {
                if s.write_all(&bytes[sent..=sent]).await.is_err() {
                    return (start.elapsed(), sent, got);
                }
                sent += 1;
            }
            Err(_) => {}
        }
    }
}

/// A sidecar with the short connection limits in front of the "app" upstream.
async fn gateway(tune: impl FnOnce(&mut ssegate::config::Config)) -> (Sidecar, Upstream) {
    let up = upstream(|_req| async { hyper::Response::new(full("app")) }).await;
    let mut config = test_config(&up.uri);
    tune(&mut config);
    (sidecar_opts(config, SHORT).await, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_at_the_header_timeout_and_hold_no_stream() {
    let (gw, _up) = gateway(|_| {}).await;
    let timeout = SHORT.header_read_timeout;
    let mut head = b"GET /events?topic=t HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 1000));
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let mut h2_idle = preface.clone();
    h2_idle.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // an empty SETTINGS frame
    let every = Duration::from_millis(100);
    let attacks = [
        // HTTP/1.1 headers trickled byte by byte.
        ("h1 trickle", tokio::spawn(trickle(gw.proxy, head, every))),
        // Connected, and nothing sent at all.
        ("silent", tokio::spawn(trickle(gw.proxy, Vec::new(), every))),
        // The HTTP/2 preface, trickled and never finished.
        (
            "h2 preface trickle",
            tokio::spawn(trickle(gw.proxy, preface[..20].to_vec(), every)),
        ),
        // A complete HTTP/2 handshake, then never a request.
        (
            "h2 no request",
            tokio::spawn(trickle(gw.proxy, h2_idle, Duration::from_millis(1))),
        ),
    ];

    // Meanwhile the server serves everyone else, and the attackers hold no stream slot.
    let mut legit = SseClient::open(gw.proxy, "/events?topic=t").await;
    let ids = publish_ok(gw.admin, r#"{"topic":"t","data":"still served"}"#).await;
    assert_eq!(legit.event().await.id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(connections(gw.admin).await, 1, "only the legitimate stream");

    for (name, attack) in attacks {
        let (took, sent, said) = attack.await.unwrap();
        assert!(
            took >= timeout.mul_f32(0.9) && took < timeout + Duration::from_secs(5),
            "{name}: closed after {took:?}, the header timeout is {timeout:?}"
        );
        let said = String::from_utf8_lossy(&said);
        assert!(!said.contains("HTTP/1.1 200"), "{name}: was served: {said}");
        if name == "h1 trickle" {
            assert!(sent >= 10, "{name}: only {sent} bytes trickled");
        }
    }
    assert_eq!(connections(gw.admin).await, 1);
    // Closed on the server's side too: only the legitimate stream's socket is left.
    eventually("the attackers' sockets closed by the server", || async {
        server_connections(gw.proxy) == 1
    })
    .await;
    let ids = publish_ok(gw.admin, r#"{"topic":"t","data":"after"}"#).await;
    assert_eq!(legit.event().await.id.as_deref(), Some(ids[0].as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_and_oversized_uris_414_without_reaching_the_app() {
    let (up, seen) = recording_upstream().await;
    let gw = sidecar_opts(test_config(&up.uri), SHORT).await;

    // More header fields than the parser takes (100).
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..150 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let raw = exchange(gw.proxy, &many).await;
    assert_eq!(raw.statuses(), [431], "{}", raw.text());

    // A head larger than hyper's buffer (~400 KiB), in one header field.
    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 512 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let raw = exchange(gw.proxy, &big).await;
    assert_eq!(raw.statuses(), [431], "{}", raw.text());

    // URIs over 64 KiB, for the app and on the events path.
    for prefix in ["/", "/events?topic=t&pad="] {
        let uri = format!("{prefix}{}", "a".repeat(100 * 1024));
        let raw = exchange(
            gw.proxy,
            format!("GET {uri} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(raw.statuses(), [414], "{prefix}: {}", raw.text());
        assert!(
            raw.closed,
            "{prefix}: the connection stays open after a 414"
        );
    }

    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    assert_eq!(connections(gw.admin).await, 0);
    // An ordinary request still goes through.
    let raw = exchange(gw.proxy, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(raw.statuses(), [200], "{}", raw.text());
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_probes_are_refused_or_reach_the_app_as_one_request() {
    let (up, seen) = recording_upstream().await;
    let gw = sidecar_opts(test_config(&up.uri), SHORT).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // The body as a Content-Length reader would see it: a chunked terminator, then a
    // complete second request.
    let tail = format!("0\r\n\r\n{smuggled}");
    let n = tail.len();
    let probes: Vec<(&str, String, Vec<u16>)> = vec![
        // Transfer-Encoding wins over Content-Length; the connection is closed after the
        // answer, so the bytes after the chunked body are never read as a request.
        (
            "CL then TE",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\nTransfer-Encoding: chunked\r\n\r\n{tail}"
            ),
            vec![200],
        ),
        (
            "TE then CL",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: {n}\r\n\r\n{tail}"
            ),
            vec![200],
        ),
        (
            "two differing Content-Length",
            format!(
                "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: {n}\r\n\r\n{tail}"
            ),
            vec![400],
        ),
        (
            "a Content-Length list with differing values",
            format!("POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5, {n}\r\n\r\n{tail}"),
            vec![400],
        ),
        (
            "obs-fold in an ordinary header",
            "GET /b HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n".to_owned(),
            vec![400],
        ),
        (
            "obs-fold hiding Transfer-Encoding",
            format!(
                "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\nTransfer-Encoding:\r\n chunked\r\n\r\n{tail}"
            ),
            vec![400],
        ),
        (
            "chunked, identity",
            format!(
                "POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: {n}\r\n\r\n{tail}"
            ),
            vec![400],
        ),
        (
            "chunked then identity on two lines",
            format!(
                "POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n{tail}"
            ),
            vec![400],
        ),
        (
            "space before the colon",
            format!(
                "POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: {n}\r\n\r\n{tail}"
            ),
            vec![400],
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!("POST /b HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{tail}"),
            vec![400],
        ),
        (
            "a signed Content-Length",
            format!("POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: +{n}\r\n\r\n{tail}"),
            vec![400],
        ),
    ];
    for (name, bytes, expected) in &probes {
        let before = seen.lock().unwrap().len();
        let raw = exchange(gw.proxy, bytes.as_bytes()).await;
        assert_eq!(&raw.statuses(), expected, "{name}: {}", raw.text());
        assert!(raw.closed, "{name}: the connection was left open");
        let seen = seen.lock().unwrap();
        let new = &seen[before..];
        if expected == &[200] {
            assert_eq!(new.len(), 1, "{name}: {new:?}");
            assert_eq!(
                (new[0].method.as_str(), new[0].path.as_str()),
                ("POST", "/a")
            );
            assert!(new[0].body.is_empty(), "{name}: {:?}", new[0].body);
            assert!(
                new[0].content_length.as_deref().is_none_or(|v| v == "0"),
                "{name}: the stale Content-Length was forwarded: {:?}",
                new[0].content_length
            );
        } else {
            assert!(new.is_empty(), "{name}: forwarded {new:?}");
        }
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|s| !s.path.contains("smuggled")),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 2);
}

/// Opens a stream from `ip`: the response if accepted, else the status and error code.
async fn open_from(
    ip: &'static str,
    proxy: SocketAddr,
) -> Result<hyper::Response<hyper::body::Incoming>, (StatusCode, String)> {
    let resp = send_on(
        connect_from(ip, proxy).await,
        request("GET", "/events?topic=flood", &[], Bytes::new()),
    )
    .await;
    if resp.status() == StatusCode::OK {
        return Ok(resp);
    }
    let status = resp.status();
    assert!(resp.headers().contains_key("retry-after"), "{status}");
    let json: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).unwrap();
    Err((status, json["error"].as_str().unwrap().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_streams_from_one_address_hits_its_caps_and_spares_the_others() {
    let (gw, _up) = gateway(|c| {
        c.limits.max_connections_per_ip = 5;
        c.limits.connect_rate_per_ip = ssegate::config::Rate {
            count: std::num::NonZeroU32::new(8).unwrap(),
            per: Duration::from_secs(60),
        };
    })
    .await;
    // 40 concurrent opens from 127.0.0.2, and 4 from 127.0.0.3 in the middle of them.
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..40 {
        flood.spawn(open_from("127.0.0.2", gw.proxy));
    }
    let mut others = Vec::new();
    for _ in 0..4 {
        let stream = connect_from("127.0.0.3", gw.proxy).await;
        others.push(SseClient::connect_on(stream, "/events?topic=flood", &[]).await);
    }
    let mut flooder = Vec::new();
    let mut refusals = Vec::new();
    while let Some(r) = flood.join_next().await {
        match r.unwrap() {
            Ok(resp) => flooder.push(resp),
            Err(refusal) => refusals.push(refusal),
        }
    }
    assert_eq!(flooder.len(), 5, "the per-IP cap: {refusals:?}");
    assert_eq!(refusals.len(), 35);
    assert!(
        refusals.iter().all(|(s, e)| *s == StatusCode::TOO_MANY_REQUESTS
            && e == "too_many_connections_per_ip"),
        "{refusals:?}"
    );
    assert!(others.iter().all(|c| c.status == StatusCode::OK));
    let ids = publish_ok(gw.admin, r#"{"topic":"flood","data":"x"}"#).await;
    for c in &mut others {
        assert_eq!(c.event().await.id.as_deref(), Some(ids[0].as_str()));
    }

    // Refusals by the cap are not charged to the connect rate: once the 5 streams are
    // closed, 3 more are accepted (8 in the minute), then the rate refuses.
    drop(flooder);
    eventually("the flooder's streams closed", || async {
        connections(gw.admin).await == 4
    })
    .await;
    let mut again = Vec::new();
    let refused = loop {
        match open_from("127.0.0.2", gw.proxy).await {
            Ok(resp) => again.push(resp),
            Err(refusal) => break refusal,
        }
        assert!(again.len() <= 3, "the connect rate never refused");
    };
    assert_eq!(again.len(), 3);
    assert_eq!(
        refused,
        (
            StatusCode::TOO_MANY_REQUESTS,
            "connect_rate_limited".to_owned()
        )
    );
    // The other address still has its own allowance.
    let stream = connect_from("127.0.0.3", gw.proxy).await;
    let more = SseClient::connect_on(stream, "/events?topic=flood", &[]).await;
    assert_eq!(more.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_and_memory_stays_bounded() {
    const EVENTS: usize = 6000;
    const BATCH: usize = 20;
    let (gw, _up) = gateway(|c| {
        c.events.subscriber_buffer = 50;
        c.events.history.max_events = 100;
    })
    .await;
    // Read with a bare parser: SseClient keeps every byte it receives.
    let fast = send(
        gw.proxy,
        request("GET", "/events?topic=firehose", &[], Bytes::new()),
    )
    .await;
    assert_eq!(fast.status(), StatusCode::OK);
    // The stalled client: a small receive buffer, one request, then never a read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(gw.proxy).await.unwrap();
    stalled
        .write_all(b"GET /events?topic=firehose HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually("both streams open", || async {
        connections(gw.admin).await == 2
    })
    .await;

    // The fast reader reports how many events it has; the publisher stays at most one
    // batch ahead of it, so only the stalled client falls behind.
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut body = fast.into_body();
        let mut parser = ssegate::sse::Parser::default();
        let mut ids = Vec::with_capacity(EVENTS);
        while ids.len() < EVENTS {
            let frame = tokio::time::timeout(DEADLINE, body.frame())
                .await
                .expect("the fast subscriber received nothing")
                .expect("the fast subscriber's stream ended")
                .unwrap();
            let Ok(data) = frame.into_data() else {
                continue;
            };
            // Events only: an id-only block (the stream's starting point) is not one.
            ids.extend(
                parser
                    .feed(&data)
                    .into_iter()
                    .filter(|e| !e.data.is_empty())
                    .filter_map(|e| e.id),
            );
            let _ = count_tx.send(ids.len());
        }
        (ids, body)
    });
    let payload = "x".repeat(16 * 1024);
    let mut published = Vec::with_capacity(EVENTS);
    let mut rss_after_warmup = 0;
    for batch in 0..EVENTS / BATCH {
        if batch == 10 {
            // The history is full and the allocator warm: measure from here.
            rss_after_warmup = proc_status_kb("self", "VmRSS");
        }
        let items: Vec<String> = (0..BATCH)
            .map(|_| format!(r#"{{"topic":"firehose","data":"{payload}"}}"#))
            .collect();
        published.extend(publish_ok(gw.admin, &format!("[{}]", items.join(","))).await);
        let want = published.len() - BATCH;
        tokio::time::timeout(DEADLINE, count_rx.wait_for(|&n| n >= want))
            .await
            .expect("the fast reader fell behind")
            .unwrap();
    }
    let (received, _fast) = reader.await.unwrap();
    let rss_end = proc_status_kb("self", "VmRSS");
    assert_eq!(
        received, published,
        "the fast subscriber lost or reordered events"
    );

    // About 94 MiB were published; the stalled client holds at most its queue (50 events),
    // the history 100 more, and the socket buffers. A generous bound, as the test binary's
    // other tests share this process.
    let grown_mib = rss_end.saturating_sub(rss_after_warmup) / 1024;
    assert!(
        grown_mib < 48,
        "RSS grew by {grown_mib} MiB while {} MiB were published",
        EVENTS * 16 / 1024
    );
    // The slow-consumer policy ended its stream; with its socket full, the ended stream is
    // released (its slot freed, its socket closed) when the send timeout closes the
    // connection, though the client never read a byte.
    eventually("the stalled stream ended", || async {
        connections(gw.admin).await == 1
    })
    .await;
    let metrics =
        body_bytes(send(gw.admin, request("GET", "/metrics", &[], Bytes::new())).await).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("ssegate_slow_consumer_disconnects_total 1"),
        "{metrics}"
    );
    eventually(
        "the stalled client's socket closed by the server",
        || async { server_connections(gw.proxy) == 1 },
    )
    .await;
    // The client sees it too: what was in flight, then the end.
    let mut buf = vec![0u8; 1 << 20];
    let mut drained = 0;
    loop {
        match tokio::time::timeout(DEADLINE, stalled.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => drained += n,
            Err(_) => panic!("the stalled connection is still open after {drained} bytes"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_topics_are_400_invalid_topic() {
    let (gw, _up) = gateway(|_| {}).await;
    for path in [
        "/events/%ff",
        "/events/%c0%af",    // an overlong '/'
        "/events/%ed%a0%80", // a UTF-16 surrogate
        "/events/a%e2%82",   // truncated sequence
        "/events/%zz",
        "/events/%",
        "/events/a%2",
        "/events/a%00b",
        "/events/a%0d%0aid:%201-1",
        "/events?topic=%ff",
        "/events?topic=%e2%82",
        "/events?topic=%zz",
        "/events?topic=%",
        "/events?topic=a%20b",
        "/events?topic=a%0Ab",
        "/events?topic=",
        "/events?topic=a&topic=%ff",
        "/events?topic=a//*/*",
    ] {
        let (status, json) = call_json(gw.proxy, request("GET", path, &[], Bytes::new())).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_topic")),
            "{path}: {json}"
        );
    }
    // Bytes that are not even allowed in a request target are refused by the parser.
    for target in [&b"/events/\xff\xfe"[..], b"/events?topic=caf\xc3\xa9"] {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        let raw = exchange(gw.proxy, &req).await;
        assert_eq!(raw.statuses(), [400], "{}", raw.text());
    }
    // A Last-Event-ID that is not UTF-8.
    let raw = exchange(
        gw.proxy,
        b"GET /events?topic=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xff\xfe\r\n\r\n",
    )
    .await;
    assert_eq!(raw.statuses(), [400], "{}", raw.text());
    assert!(
        raw.text().contains("invalid_last_event_id"),
        "{}",
        raw.text()
    );

    assert_eq!(
        connections(gw.admin).await,
        0,
        "a malformed request opened a stream"
    );
    // Percent-encoding itself is fine.
    let mut ok = SseClient::open(gw.proxy, "/events/job%2F1").await;
    let ids = publish_ok(gw.admin, r#"{"topic":"job/1","data":"x"}"#).await;
    assert_eq!(ok.event().await.id.as_deref(), Some(ids[0].as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_on_the_public_listener_reaches_the_internal_one() {
    let (up, seen) = recording_upstream().await;
    let gw = sidecar_opts(test_config(&up.uri), SHORT).await;
    let mut watcher = SseClient::open(gw.proxy, "/events?topic=t").await;
    let body = r#"{"topic":"t","data":"smuggled in"}"#;
    let admin = gw.admin;
    let paths = [
        "/publish",
        "/publish/",
        "/publish?x=1",
        "/PUBLISH",
        "/%70ublish",
        "/%2Fpublish",
        "//publish",
        "/./publish",
        "/events/../publish",
        "/events/%2e%2e/publish",
        "/events/..%2Fpublish",
        "/_ssegate/../publish",
        "/_ssegate/publish",
        "/_ssegate/%2e%2e/publish",
        "/topics/t",
    ];
    for path in paths {
        for method in ["POST", "DELETE"] {
            let resp = send(
                gw.proxy,
                request(
                    method,
                    path,
                    &[
                        ("content-type", "application/json"),
                        ("x-original-uri", "/publish"),
                        ("x-forwarded-host", &admin.to_string()),
                    ],
                    body.to_owned(),
                ),
            )
            .await;
            let status = resp.status();
            let text = String::from_utf8_lossy(&body_bytes(resp).await).into_owned();
            assert!(
                text == "app" || status.is_client_error(),
                "{method} {path}: {status} {text}"
            );
            assert!(!text.contains("ids"), "{method} {path}: published: {text}");
        }
    }
    // Absolute-form and CONNECT, which only a raw client sends.
    let json_head = format!(
        "Host: {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    for head in [
        format!("POST http://{admin}/publish HTTP/1.1\r\n{json_head}"),
        format!("POST http://{admin}/%70ublish HTTP/1.1\r\n{json_head}"),
        format!(
            "CONNECT {admin} HTTP/1.1\r\nHost: {admin}\r\n\r\nPOST /publish HTTP/1.1\r\n{json_head}"
        ),
    ] {
        let raw = exchange(gw.proxy, head.as_bytes()).await;
        assert!(!raw.text().contains("\"ids\""), "{head}: {}", raw.text());
    }

    // Nothing was published or deleted: the history is empty, and the first event the
    // watcher sees is the one published on the internal listener now.
    let (_, stats) = call_json(gw.admin, request("GET", "/stats", &[], Bytes::new())).await;
    assert_eq!(stats["history"]["events"], 0, "{stats}");
    let ids = publish_ok(gw.admin, r#"{"topic":"t","data":"real"}"#).await;
    let ev = watcher.event().await;
    assert_eq!(
        (ev.id.as_deref(), ev.data.as_str()),
        (Some(ids[0].as_str()), "real")
    );
    // The ones that were not ssegate's own went to the app, as any other path.
    let seen = seen.lock().unwrap();
    assert!(seen.iter().any(|s| s.path == "/publish"), "{seen:?}");
    assert!(
        seen.iter().all(|s| !s.path.starts_with("/_ssegate")),
        "{seen:?}"
    );
}

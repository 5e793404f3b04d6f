//! Dispatch does not depend on retention: publishes that trim the whole history cut no
//! stream, what waits for dispatch is bounded (the webhook answers 429 past it), and the
//! history is bounded by bytes.

use crate::support::*;
use bytes::Bytes;
use hyper::StatusCode;
use std::net::SocketAddr;

/// An event id as `(ms, seq)`, for ordering.
fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// `n` events on `topic`, as a publish body.
fn batch(topic: &str, n: usize, data: &str) -> String {
    let item = format!(r#"{{"topic":"{topic}","data":"{data}"}}"#);
    format!("[{}]", vec![item; n].join(","))
}

/// How a publish was answered, with the refusal's details checked.
enum Published {
    Ids(Vec<String>),
    Overloaded,
}

/// One publish: its ids, or `Overloaded` after checking the refusal is a well-formed 429.
async fn try_publish(admin: SocketAddr, body: String) -> Published {
    let resp = send(
        admin,
        request(
            "POST",
            "/publish",
            &[("content-type", "application/json")],
            body,
        ),
    )
    .await;
    let status = resp.status();
    let retry_after = header(resp.headers(), "retry-after").map(str::to_owned);
    let json: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).unwrap();
    match status {
        StatusCode::OK => Published::Ids(
            json["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect(),
        ),
        StatusCode::TOO_MANY_REQUESTS => {
            assert_eq!(json["error"], "overloaded", "{json}");
            assert_eq!(retry_after.as_deref(), Some("1"));
            Published::Overloaded
        }
        other => panic!("publish answered {other}: {json}"),
    }
}

/// Publishes until accepted, as a publisher honouring the pushback would; returns the ids
/// and how many times it was refused.
async fn publish_retrying(admin: SocketAddr, body: &str) -> (Vec<String>, u64) {
    let mut refused = 0;
    loop {
        match try_publish(admin, body.to_owned()).await {
            Published::Ids(ids) => return (ids, refused),
            Published::Overloaded => {
                refused += 1;
                // A publisher's backoff (shorter than Retry-After, to keep the test quick),
                // not synchronisation: correctness never depends on its length.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
}

/// Reads `c` up to the event whose data is `sentinel`; returns `(id, data)` of every
/// event before it, failing on a `ssegate.*` control event or the end of the stream.
async fn read_until(c: &mut SseClient, sentinel: &str) -> Vec<(String, String)> {
    let mut got = Vec::new();
    loop {
        let ev = c.event().await;
        if let Some(kind) = ev.event.as_deref() {
            panic!("unexpected {kind} event: {}", ev.data);
        }
        if ev.data == sentinel {
            return got;
        }
        got.push((ev.id.unwrap(), ev.data));
    }
}

/// The value of a counter in `/metrics`, by its exact series name and labels.
async fn metric(admin: SocketAddr, series: &str) -> u64 {
    let resp = send(admin, request("GET", "/metrics", &[], Bytes::new())).await;
    let text = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
        .parse()
        .unwrap()
}

async fn stats(admin: SocketAddr) -> serde_json::Value {
    call_json(admin, request("GET", "/stats", &[], Bytes::new()))
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_history_is_delivered_in_full_and_cuts_no_other_stream() {
    const HISTORY: usize = 1000;
    let (gw, _up) = sidecar_with(|c| {
        c.events.history.max_events = HISTORY;
        c.events.subscriber_buffer = 2 * HISTORY;
    })
    .await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(SseClient::open(gw.proxy, "/events?topic=b").await);
    }
    let mut follower = SseClient::open(gw.proxy, "/events?topic=a").await;

    let before = publish_ok(gw.admin, &batch("b", 1, "before")).await;
    let big = publish_ok(gw.admin, &batch("a", HISTORY + 1, "x")).await;
    assert_eq!(big.len(), HISTORY + 1);
    let after = publish_ok(gw.admin, &batch("b", 1, "after")).await;
    publish_ok(gw.admin, &batch("b", 1, "end")).await;

    for c in &mut others {
        let got = read_until(c, "end").await;
        assert_eq!(
            got,
            [
                (before[0].clone(), "before".to_owned()),
                (after[0].clone(), "after".to_owned())
            ]
        );
    }
    // Delivered in full to its own topic's stream, though only its newest events fit in
    // the history.
    let mut ids = Vec::new();
    for _ in 0..big.len() {
        ids.push(follower.event().await.id.unwrap());
    }
    assert_eq!(ids, big);
    let s = stats(gw.admin).await;
    assert_eq!(s["history"]["events"], HISTORY);
    assert_eq!(s["connections"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_full_history_batches_leaves_other_topics_streams_whole() {
    const HISTORY: usize = 500;
    const PUBLISHERS: usize = 4;
    const BATCHES: usize = 60;
    let (gw, _up) = sidecar_with(|c| c.events.history.max_events = HISTORY).await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(SseClient::open(gw.proxy, "/events?topic=b").await);
    }
    let flood = batch("a", HISTORY, "flood");
    // Warm up (allocator, connections) before the first measurement.
    publish_retrying(gw.admin, &flood).await;
    publish_ok(gw.admin, &batch("b", 1, "warm")).await;
    let rss_before = proc_status_kb("self", "VmRSS");

    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let (admin, flood) = (gw.admin, flood.clone());
        // Each publisher alternates a full-history batch on `a` with one event on `b`, so
        // the events of `b` are published in the middle of the flood.
        tasks.push(tokio::spawn(async move {
            let (mut refused, mut mine) = (0, Vec::new());
            for i in 0..BATCHES {
                refused += publish_retrying(admin, &flood).await.1;
                let data = format!("p{p}-{i}");
                let (ids, r) = publish_retrying(admin, &batch("b", 1, &data)).await;
                refused += r;
                mine.push((ids[0].clone(), data));
            }
            (mine, refused)
        }));
    }
    let mut published = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (mine, r) = t.await.unwrap();
        published.extend(mine);
        refused += r;
    }
    let elapsed = started.elapsed();
    publish_ok(gw.admin, &batch("b", 1, "end")).await;
    let rss_after = proc_status_kb("self", "VmRSS");
    published.sort_by_key(|(id, _)| id_key(id));

    for c in &mut streams {
        assert_eq!(read_until(c, "warm").await, []);
        let got = read_until(c, "end").await;
        assert_eq!(got, published, "each event of b exactly once, in id order");
    }
    assert_eq!(
        metric(
            gw.admin,
            r#"ssegate_publish_rejected_total{reason="overloaded"}"#
        )
        .await,
        refused,
        "every 429 is counted"
    );
    assert_eq!(stats(gw.admin).await["connections"], 4);
    let grown_mib = rss_after.saturating_sub(rss_before) / 1024;
    eprintln!(
        "flood: {} events on a in {elapsed:?}, {refused} publishes refused (429), \
         VmRSS {rss_before} kB -> {rss_after} kB",
        PUBLISHERS * BATCHES * HISTORY
    );
    // The history and the dispatch backlog hold at most two histories of small events; a
    // generous bound, as the test binary's other tests share this process.
    assert!(grown_mib < 64, "RSS grew by {grown_mib} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_bytes_keeps_the_newest_events_and_an_older_resume_gets_a_gap() {
    let data = "z".repeat(1000);
    // Each event is about 1,030 bytes encoded: two fit, three do not.
    let (gw, _up) = sidecar_with(|c| c.events.history.max_bytes = 2600).await;
    let ids = publish_ok(gw.admin, &batch("m", 5, &data)).await;
    let s = stats(gw.admin).await;
    assert_eq!(s["history"]["events"], 2);
    assert_eq!(s["history"]["oldest_id"], ids[3].as_str());
    let bytes = s["history"]["bytes"].as_u64().unwrap();
    assert!((2000..=2600).contains(&bytes), "{bytes}");

    let mut c =
        SseClient::connect(gw.proxy, "/events?topic=m", &[("last-event-id", &ids[1])]).await;
    let gap = c.event().await;
    assert_eq!(gap.event.as_deref(), Some("ssegate.gap"));
    let info: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(info["last_event_id"], ids[1].as_str());
    assert_eq!(info["oldest_available"], ids[3].as_str());
    assert_eq!(c.event().await.id.as_deref(), Some(ids[3].as_str()));
    assert_eq!(c.event().await.id.as_deref(), Some(ids[4].as_str()));

    // The evicted event just before the oldest kept one: nothing after it was lost.
    let mut c =
        SseClient::connect(gw.proxy, "/events?topic=m", &[("last-event-id", &ids[2])]).await;
    let first = c.event().await;
    assert_eq!((first.event, first.id), (None, Some(ids[3].clone())));
}

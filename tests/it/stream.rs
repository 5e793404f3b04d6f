//! Streams on the public listener: delivery, isolation, framing, resumption, the seam,
//! gaps, slow consumers, heartbeats, close and DELETE.

use crate::support::*;
use bytes::Bytes;
use hyper::StatusCode;
use ssegate::config::SlowConsumer;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_event_reaches_every_subscriber_with_headers_and_retry_first() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(SseClient::open(gw.proxy, "/events?topic=tenant/acme/questions").await);
    }
    let c = &clients[0];
    assert_eq!(c.headers["content-type"], "text/event-stream");
    assert_eq!(c.headers["cache-control"], "no-cache");
    assert_eq!(c.headers["x-accel-buffering"], "no");
    let ids = publish_ok(
        gw.admin,
        r#"{"topic":"tenant/acme/questions","event":"question:created","data":{"id":"q1"}}"#,
    )
    .await;
    for c in &mut clients {
        let ev = c.event().await;
        assert_eq!(ev.id.as_deref(), Some(ids[0].as_str()));
        assert_eq!(ev.event.as_deref(), Some("question:created"));
        assert_eq!(ev.data, r#"{"id":"q1"}"#);
        assert!(c.raw.starts_with(b"retry: 2000\n"), "retry must come first");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_form_patterns_and_one_delivery_for_several_topics() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    let mut by_path = SseClient::open(gw.proxy, "/events/job/abc123").await;
    let mut pattern = SseClient::open(gw.proxy, "/events?topic=job/*").await;
    let mut both = SseClient::open(
        gw.proxy,
        "/events?topic=job/abc123&topic=job/other&topic=job/*",
    )
    .await;
    let ids = publish_ok(
        gw.admin,
        r#"{"topics":["job/abc123","job/other"],"data":"x"}"#,
    )
    .await;
    publish_ok(gw.admin, r#"{"topic":"job/last","data":"y"}"#).await;
    assert_eq!(by_path.event().await.id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(pattern.data(2).await, ["x", "y"]);
    // One event with one id, delivered once even though three selectors cover it.
    assert_eq!(both.data(2).await, ["x", "y"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_a_never_sees_job_b_under_concurrent_publishers() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    let mut a = SseClient::open(gw.proxy, "/events?topic=job/a").await;
    let mut b = SseClient::open(gw.proxy, "/events?topic=job/b").await;
    let admin = gw.admin;
    let pubs: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|job| {
            tokio::spawn(async move {
                for i in 0..100 {
                    let body = format!(r#"[{{"topic":"job/{job}","data":"{job}{i}"}},{{"topic":"job/{job}x","data":"no"}}]"#);
                    publish_ok(admin, &body).await;
                }
            })
        })
        .collect();
    for p in pubs {
        p.await.unwrap();
    }
    let got_a = a.data(100).await;
    let got_b = b.data(100).await;
    assert_eq!(got_a, (0..100).map(|i| format!("a{i}")).collect::<Vec<_>>());
    assert_eq!(got_b, (0..100).map(|i| format!("b{i}")).collect::<Vec<_>>());
    a.assert_no_event_within(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_increase_strictly_across_topics() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    let mut c = SseClient::open(gw.proxy, "/events?topic=*").await;
    let mut batch = Vec::new();
    for i in 0..300 {
        batch.push(format!(r#"{{"topic":"t/{}","data":"{i}"}}"#, i % 7));
    }
    publish_ok(gw.admin, &format!("[{}]", batch.join(","))).await;
    let mut last: Option<ssegate::sse::EventId> = None;
    for i in 0..300 {
        let ev = c.event().await;
        assert_eq!(ev.data, i.to_string());
        let id: ssegate::sse::EventId = ev.id.unwrap().parse().unwrap();
        assert!(last.is_none_or(|l| l < id), "{last:?} !< {id}");
        last = Some(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_cannot_break_the_framing() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    let mut c = SseClient::open(gw.proxy, "/events?topic=t").await;
    let evil = "line1\n\nid: 1-1\nevent: ssegate.shutdown\r\nretry: 1\rdata: x\r\n";
    let body = serde_json::json!({ "topic": "t", "data": evil }).to_string();
    let ids = publish_ok(gw.admin, &body).await;
    let ev = c.event().await;
    assert_eq!(ev.id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(ev.event, None);
    assert_eq!(
        ev.data,
        "line1\n\nid: 1-1\nevent: ssegate.shutdown\nretry: 1\ndata: x\n"
    );
    assert_eq!(c.retries, [2000], "no retry: may be injected");
    // A type with a newline or space is refused outright.
    for ty in ["a\nb", "a b", "a\rid: 5"] {
        let body = serde_json::json!({ "topic": "t", "event": ty, "data": "x" }).to_string();
        let (status, json) = publish(gw.admin, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["error"], "invalid_event");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_filter_passes_only_the_named_types() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    let mut c = SseClient::open(gw.proxy, "/events?topic=t&type=question:created,message").await;
    publish_ok(
        gw.admin,
        r#"[{"topic":"t","event":"question:upvoted","data":"1"},{"topic":"t","event":"question:created","data":"2"},{"topic":"t","data":"3"}]"#,
    )
    .await;
    assert_eq!(c.data(2).await, ["2", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_each_of_the_three_parameters() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    let ids = publish_ok(
        gw.admin,
        r#"[{"topic":"r","data":"0"},{"topic":"other","data":"x"},{"topic":"r","data":"1"},{"topic":"r","data":"2"}]"#,
    )
    .await;
    // Last-Event-ID header.
    let mut c =
        SseClient::connect(gw.proxy, "/events?topic=r", &[("last-event-id", &ids[0])]).await;
    assert_eq!(c.data(2).await, ["1", "2"]);
    // last_event_id= parameter.
    let mut c = SseClient::open(
        gw.proxy,
        &format!("/events?topic=r&last_event_id={}", ids[2]),
    )
    .await;
    assert_eq!(c.data(1).await, ["2"]);
    // since= in Unix ms: includes events at or after the instant.
    let ms = ids[0].split('-').next().unwrap();
    let mut c = SseClient::open(gw.proxy, &format!("/events?topic=r&since={ms}")).await;
    assert_eq!(c.data(3).await, ["0", "1", "2"]);
    // After the replay, live events follow.
    publish_ok(gw.admin, r#"{"topic":"r","data":"3"}"#).await;
    assert_eq!(c.data(1).await, ["3"]);
    // A malformed id is refused.
    let c = SseClient::connect(gw.proxy, "/events?topic=r", &[("last-event-id", "garbage")]).await;
    assert_eq!(c.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seam_between_replay_and_live_delivers_exactly_once() {
    let (gw, _up) = sidecar_with(|c| c.events.history.max_events = 100_000).await;
    let first = publish_ok(gw.admin, r#"{"topic":"s","data":"0"}"#).await;
    let admin = gw.admin;
    let publisher = tokio::spawn(async move {
        for chunk in 0..20 {
            let batch: Vec<_> = (0..100)
                .map(|i| format!(r#"{{"topic":"s","data":"{}"}}"#, 1 + chunk * 100 + i))
                .collect();
            publish_ok(admin, &format!("[{}]", batch.join(","))).await;
        }
    });
    // Resume repeatedly while the publisher runs: each stream must see 1..=2000 in order.
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(
            SseClient::connect(gw.proxy, "/events?topic=s", &[("last-event-id", &first[0])]).await,
        );
        tokio::task::yield_now().await;
    }
    publisher.await.unwrap();
    for mut c in streams {
        let got = c.data(2000).await;
        let want: Vec<_> = (1..=2000).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
        c.assert_no_event_within(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_announced_when_history_no_longer_reaches_back() {
    let (gw, _up) = sidecar_with(|c| c.events.history.max_events = 3).await;
    let ids = publish_ok(
        gw.admin,
        r#"[{"topic":"g","data":"0"},{"topic":"g","data":"1"},{"topic":"g","data":"2"},{"topic":"g","data":"3"},{"topic":"g","data":"4"}]"#,
    )
    .await;
    let mut c =
        SseClient::connect(gw.proxy, "/events?topic=g", &[("last-event-id", &ids[0])]).await;
    let gap = c.event().await;
    assert_eq!(gap.event.as_deref(), Some("ssegate.gap"));
    let data: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(data["last_event_id"], ids[0].as_str());
    assert_eq!(data["oldest_available"], ids[2].as_str());
    let first = c.event().await;
    assert_eq!(
        first.id.as_deref(),
        Some(ids[2].as_str()),
        "oldest_available is the first replayed event"
    );
    assert_eq!(c.data(2).await, ["3", "4"]);
    // Still within the history: no gap.
    let mut c =
        SseClient::connect(gw.proxy, "/events?topic=g", &[("last-event-id", &ids[2])]).await;
    assert_eq!(c.event().await.data, "3");
    // An id from before this process started (e.g. before a restart) is a gap too.
    let mut c =
        SseClient::connect(gw.proxy, "/events?topic=g", &[("last-event-id", "1000-0")]).await;
    assert_eq!(c.event().await.event.as_deref(), Some("ssegate.gap"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_honours_max_age() {
    let (gw, _up) = sidecar_with(|c| c.events.history.max_age = Duration::from_millis(200)).await;
    let ids = publish_ok(
        gw.admin,
        r#"[{"topic":"old","data":"0"},{"topic":"old","data":"1"}]"#,
    )
    .await;
    // Wait until the events are older than max_age by the wall clock the ids carry.
    let ms: u64 = ids[1].split('-').next().unwrap().parse().unwrap();
    eventually("the events to age out", || async move {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        now > ms + 250
    })
    .await;
    let mut c =
        SseClient::connect(gw.proxy, "/events?topic=old", &[("last-event-id", &ids[0])]).await;
    assert_eq!(c.event().await.event.as_deref(), Some("ssegate.gap"));
}

/// Published in the slow-consumer tests: enough bytes to fill every buffer between
/// ssegate and a client that does not read.
const SLOW_TOTAL: usize = 3000;

/// A fast subscriber (checked while publishing) and a stalled one on the same topic;
/// returns the stalled client (not yet read) and the last published id.
async fn slow_consumer(policy: SlowConsumer) -> (Sidecar, Upstream, SseClient, String) {
    let (gw, up) = sidecar_with(|c| {
        c.events.subscriber_buffer = 100;
        c.events.slow_consumer = policy;
        c.events.history.max_events = 100_000;
    })
    .await;
    let mut fast = SseClient::open(gw.proxy, "/events?topic=slow").await;
    // The slow one has a small receive buffer and is not read until the end.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gw.proxy).await.unwrap();
    let slow = SseClient::connect_on(stream, "/events?topic=slow", &[]).await;
    assert_eq!(slow.status, StatusCode::OK);
    let payload = "x".repeat(4000);
    let mut last = String::new();
    for chunk in 0..SLOW_TOTAL / 20 {
        let batch: Vec<_> = (0..20)
            .map(|i| {
                format!(
                    r#"{{"topic":"slow","data":"{}-{payload}"}}"#,
                    chunk * 20 + i
                )
            })
            .collect();
        last = publish_ok(gw.admin, &format!("[{}]", batch.join(",")))
            .await
            .pop()
            .unwrap();
        // The fast subscriber keeps reading while events arrive.
        let got = fast.data(20).await;
        assert!(got[0].starts_with(&format!("{}-", chunk * 20)));
    }
    (gw, up, slow, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_disconnect_ends_only_the_slow_stream_and_loses_nothing() {
    let (gw, _up, mut slow, last) = slow_consumer(SlowConsumer::Disconnect).await;
    // Cut by the policy, the stalled stream frees its slot at once, before its client reads
    // anything (not after the 60 s send timeout). The fast subscriber is gone by now.
    eventually("the stalled stream's slot freed", || async {
        connections(gw.admin).await == 0
    })
    .await;
    // The stalled stream was ended by the server; it got a prefix of the events.
    let mut received = Vec::new();
    while let Some(ev) = slow.next().await {
        received.push(ev);
    }
    assert!(
        received.len() < SLOW_TOTAL,
        "the slow stream should have been cut"
    );
    for (i, ev) in received.iter().enumerate() {
        assert!(ev.data.starts_with(&format!("{i}-")));
    }
    // Resuming from its last id delivers exactly the rest.
    let last_seen = received
        .last()
        .and_then(|e| e.id.clone())
        .unwrap_or_default();
    let mut resumed = SseClient::connect(
        gw.proxy,
        "/events?topic=slow",
        &[("last-event-id", &last_seen)],
    )
    .await;
    let rest = resumed.data(SLOW_TOTAL - received.len()).await;
    assert!(rest[0].starts_with(&format!("{}-", received.len())));
    assert!(
        rest.last()
            .unwrap()
            .starts_with(&format!("{}-", SLOW_TOTAL - 1))
    );
    assert!(!last.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_drop_oldest_reports_what_it_dropped() {
    let (_gw, _up, mut slow, last) = slow_consumer(SlowConsumer::DropOldest).await;
    let mut received = 0u64;
    let mut dropped = 0u64;
    loop {
        let ev = slow.event().await;
        if ev.event.as_deref() == Some("ssegate.overflow") {
            let d: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
            dropped += d["dropped"].as_u64().unwrap();
            continue;
        }
        received += 1;
        if ev.id.as_deref() == Some(last.as_str()) {
            break;
        }
    }
    assert!(
        dropped > 0,
        "the stalled subscriber should have had events dropped"
    );
    assert_eq!(received + dropped, SLOW_TOTAL as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_after_silence() {
    let (gw, _up) = sidecar_with(|c| c.events.heartbeat = Duration::from_millis(100)).await;
    let mut c = SseClient::open(gw.proxy, "/events?topic=hb").await;
    c.wait_heartbeat().await;
    assert!(c.raw.windows(5).any(|w| w == b": hb\n"));
}

/// An HTTP/2 stream is written by hyper, not parked: the shard's heartbeat has its task
/// write the comment (there is no timer per stream), and an event still follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_after_silence_over_http2() {
    let (gw, _up) = sidecar_with(|c| c.events.heartbeat = Duration::from_millis(100)).await;
    let tcp = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get("http://test.local/events?topic=hb2")
        .body(())
        .unwrap();
    let (resp, _) = client
        .ready()
        .await
        .unwrap()
        .send_request(req, true)
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut raw = Vec::new();
    let mut read_until = async |needle: &[u8]| {
        while !raw.windows(needle.len()).any(|w| w == needle) {
            let chunk = tokio::time::timeout(DEADLINE, body.data())
                .await
                .expect("data within the deadline")
                .expect("the stream stays open")
                .unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            raw.extend_from_slice(&chunk);
        }
    };
    read_until(b": hb\n").await;
    publish_ok(gw.admin, r#"{"topic":"hb2","data":"after"}"#).await;
    read_until(b"data: after\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_exact_streams_after_the_event_and_pattern_streams_stay() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    let mut job = SseClient::open(gw.proxy, "/events?topic=job/1").await;
    let mut dash = SseClient::open(gw.proxy, "/events?topic=job/*").await;
    publish_ok(
        gw.admin,
        r#"{"topic":"job/1","event":"done","data":"bye","close":true}"#,
    )
    .await;
    let ev = job.event().await;
    assert_eq!(
        (ev.event.as_deref(), ev.data.as_str()),
        (Some("done"), "bye")
    );
    job.assert_ended().await;
    assert_eq!(dash.event().await.data, "bye");
    publish_ok(gw.admin, r#"{"topic":"job/2","data":"still here"}"#).await;
    assert_eq!(dash.event().await.data, "still here");
    eventually("closed stream released", || async {
        connections(gw.admin).await == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_topic_ends_streams_and_drops_history() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    let ids = publish_ok(
        gw.admin,
        r#"[{"topic":"del","data":"0"},{"topic":"del","data":"1"},{"topic":"keep","data":"k"}]"#,
    )
    .await;
    let mut c = SseClient::open(gw.proxy, "/events?topic=del").await;
    let (status, _) = call_json(
        gw.admin,
        request("DELETE", "/topics/del", &[], Bytes::new()),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let ev = c.event().await;
    assert_eq!(ev.event.as_deref(), Some("ssegate.closed"));
    c.assert_ended().await;
    // Its history is gone; other topics keep theirs.
    let mut c = SseClient::connect(
        gw.proxy,
        "/events?topic=del&topic=keep",
        &[("last-event-id", &ids[0])],
    )
    .await;
    assert_eq!(c.event().await.data, "k");
    let (status, json) = call_json(
        gw.admin,
        request("DELETE", "/topics/a%20b", &[], Bytes::new()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"], "invalid_topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stream_requests_are_refused_with_json() {
    let (gw, _up) = sidecar_with(|c| c.events.max_topics_per_subscription = 2).await;
    for (path, code) in [
        ("/events", "invalid_topic"),
        ("/events?topic=a%20b", "invalid_topic"),
        ("/events?topic=a&topic=b&topic=c", "invalid_topic"),
        ("/events/%C3%28", "invalid_topic"),
        ("/events?topic=a&type=bad%20type", "invalid_type"),
    ] {
        let (status, json) = call_json(gw.proxy, request("GET", path, &[], Bytes::new())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(json["error"], code, "{path}");
        assert!(json["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_client_frees_its_slot() {
    let (gw, _up) = sidecar_with(|c| c.events.heartbeat = Duration::from_millis(50)).await;
    let c = SseClient::open(gw.proxy, "/events?topic=gone").await;
    eventually("stream counted", || async {
        connections(gw.admin).await == 1
    })
    .await;
    drop(c);
    eventually("slot freed after the client vanished", || async {
        connections(gw.admin).await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_job_topics_created_and_closed_leave_no_topics_behind() {
    let (gw, _up) = sidecar_with(|c| c.events.history.max_events = 10).await;
    for i in 0..200 {
        let mut c = SseClient::open(gw.proxy, &format!("/events?topic=job/{i}")).await;
        publish_ok(
            gw.admin,
            &format!(r#"{{"topic":"job/{i}","data":"done","close":true}}"#),
        )
        .await;
        assert_eq!(c.event().await.data, "done");
        c.assert_ended().await;
    }
    eventually("every topic forgotten", || async {
        let (_, json) = call_json(gw.admin, request("GET", "/stats", &[], Bytes::new())).await;
        json["topics"] == 0 && json["connections"] == 0 && json["history"]["events"] == 10
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_served_off_hyper_and_through_it_alike() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    // A plain first request: taken off hyper (which closes the connection after it), and
    // chunked like every HTTP/1.1 stream.
    let mut raw = SseClient::open(gw.proxy, "/events?topic=paths").await;
    assert_eq!(raw.headers["connection"], "close");
    assert_eq!(raw.headers["transfer-encoding"], "chunked");
    // A head too large for the lean path (a big cookie) stays on hyper: chunked.
    let cookie = format!("session={}", "c".repeat(20_000));
    let mut big = SseClient::connect(gw.proxy, "/events?topic=paths", &[("cookie", &cookie)]).await;
    assert_eq!(big.status, StatusCode::OK);
    assert_eq!(big.headers["transfer-encoding"], "chunked");
    // A stream request after a forwarded request on a keep-alive connection: the lean
    // path too, chunked.
    let stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let page = sender
        .send_request(request("GET", "/page", &[], Bytes::new()))
        .await
        .unwrap();
    assert_eq!(body_bytes(page).await, "app");
    sender.ready().await.unwrap();
    let resp = sender
        .send_request(request("GET", "/events?topic=paths", &[], Bytes::new()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["connection"], "close");
    let mut reused = resp.into_body();
    let ids = publish_ok(gw.admin, r#"{"topic":"paths","data":"both"}"#).await;
    assert_eq!(raw.event().await.id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(big.event().await.data, "both");
    let mut parser = ssegate::sse::Parser::default();
    let mut got = Vec::new();
    while got
        .iter()
        .all(|e: &ssegate::sse::ParsedEvent| e.data != "both")
    {
        use http_body_util::BodyExt;
        let frame = tokio::time::timeout(DEADLINE, reused.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.extend(parser.feed(&frame.into_data().unwrap()));
    }
    // The lean path frees its slot when the client goes away, like hyper's.
    drop((raw, big, reused, sender));
    eventually("all three streams released", || async {
        connections(gw.admin).await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_before_its_first_event_resumes_without_loss() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    // Nothing published yet: the stream still tells the client where it starts.
    let mut first = SseClient::open(gw.proxy, "/events?topic=fresh").await;
    first.wait_last_id().await;
    let start = first.last_id.clone().unwrap();
    drop(first);
    let ids = publish_ok(
        gw.admin,
        r#"[{"topic":"fresh","data":"1"},{"topic":"fresh","data":"2"}]"#,
    )
    .await;
    // Resuming from that id: exactly what was published meanwhile, no gap.
    let mut again = SseClient::connect(
        gw.proxy,
        "/events?topic=fresh",
        &[("last-event-id", &start)],
    )
    .await;
    assert_eq!(again.data(2).await, ["1", "2"]);
    assert_eq!(again.last_id.as_deref(), Some(ids[1].as_str()));
    // A stream resumed from a newer id than it would announce is never moved back.
    let mut ahead = SseClient::connect(
        gw.proxy,
        "/events?topic=fresh",
        &[("last-event-id", &ids[1])],
    )
    .await;
    publish_ok(gw.admin, r#"{"topic":"fresh","data":"3"}"#).await;
    assert_eq!(ahead.event().await.data, "3");
    assert!(!String::from_utf8_lossy(&ahead.raw).contains(&format!("id: {start}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_token_guards_every_mutating_endpoint() {
    let (gw, _up) = sidecar_with(|c| c.publish.token = Some("s3cret".to_owned())).await;
    let mut c = SseClient::open(gw.proxy, "/events?topic=guarded").await;
    for (path, bearer) in [
        ("/topics/guarded", None),
        ("/subscribers/alice", None),
        ("/topics/guarded", Some("Bearer wrong")),
    ] {
        let headers: Vec<(&str, &str)> = bearer.map(|b| ("authorization", b)).into_iter().collect();
        let (status, json) =
            call_json(gw.admin, request("DELETE", path, &headers, Bytes::new())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "DELETE {path}");
        assert_eq!(json["error"], "unauthorized");
    }
    // Read-only endpoints stay open, as a Prometheus scrape expects.
    let (status, _) = call_json(gw.admin, request("GET", "/stats", &[], Bytes::new())).await;
    assert_eq!(status, StatusCode::OK);
    // The stream survived the refused deletions: a sentinel still arrives on it...
    let auth = [
        ("authorization", "Bearer s3cret"),
        ("content-type", "application/json"),
    ];
    let (status, _) = call_json(
        gw.admin,
        request(
            "POST",
            "/publish",
            &auth,
            Bytes::from_static(br#"{"topic":"guarded","data":"still here"}"#),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(c.event().await.data, "still here");
    // ...and the token does what the refusals did not.
    let (status, _) = call_json(
        gw.admin,
        request("DELETE", "/topics/guarded", &auth[..1], Bytes::new()),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(c.event().await.event.as_deref(), Some("ssegate.closed"));
}

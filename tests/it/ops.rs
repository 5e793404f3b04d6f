//! Operations (docs/operations.md, and reload): metrics and stats after a known sequence, graceful
//! shutdown with open streams and an in-flight request, and reload of limits with streams
//! open. The signal-driven versions run the real binary in `cli`.

use crate::support::*;
use bytes::Bytes;
use hyper::{Response, StatusCode};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_stats_follow_a_known_sequence() {
    let (gw, _up) = sidecar_with(|c| c.events.max_topics_per_subscription = 1).await;
    let mut a = SseClient::open(gw.proxy, "/events?topic=m/1").await;
    let mut b = SseClient::open(gw.proxy, "/events?topic=m/1").await;
    let _c = SseClient::open(gw.proxy, "/events?topic=m/2").await;
    publish_ok(
        gw.admin,
        r#"[{"topic":"m/1","data":"1"},{"topic":"m/1","data":"2"},{"topic":"m/3","data":"3"}]"#,
    )
    .await;
    a.data(2).await;
    b.data(2).await;
    let resp = send(gw.proxy, request("GET", "/page", &[], Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, _) = call_json(
        gw.proxy,
        request("GET", "/events?topic=x&topic=y", &[], Bytes::new()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let m = metrics(gw.admin).await;
    assert_eq!(m["ssegate_connections"], 3.0);
    assert_eq!(m["ssegate_events_published_total"], 3.0);
    assert_eq!(m["ssegate_events_delivered_total"], 4.0);
    assert_eq!(m["ssegate_proxy_requests_total{status_class=\"2xx\"}"], 1.0);
    assert_eq!(
        m["ssegate_connections_rejected_total{reason=\"bad_request\"}"],
        1.0
    );
    assert_eq!(m["ssegate_publish_duration_seconds_count"], 1.0);
    assert_eq!(m["ssegate_upstream_duration_seconds_count"], 1.0);
    assert_eq!(m["ssegate_broker_up"], 1.0);
    for name in [
        "ssegate_events_dropped_total{reason=\"overflow\"}",
        "ssegate_slow_consumer_disconnects_total",
        "ssegate_rate_limited_total{kind=\"requests\"}",
    ] {
        assert_eq!(m[name], 0.0, "{name}");
    }

    let (_, stats) = call_json(gw.admin, request("GET", "/stats", &[], Bytes::new())).await;
    assert_eq!(stats["connections"], 3);
    assert_eq!(stats["topics"], 2);
    assert_eq!(stats["top_topics"][0]["topic"], "m/1");
    assert_eq!(stats["top_topics"][0]["subscribers"], 2);
    assert_eq!(stats["history"]["events"], 3);
    assert!(stats["history"]["oldest_id"].is_string());
    assert_eq!(stats["broker"]["kind"], "memory");
    assert!(stats["uptime_seconds"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_every_stream_and_lets_inflight_requests_finish() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::channel::<()>(1);
    let up = upstream(move |_req| {
        let mut release = release_rx.clone();
        let arrived = arrived_tx.clone();
        async move {
            let _ = arrived.send(()).await;
            let _ = release.wait_for(|r| *r).await;
            Response::new(full("finished"))
        }
    })
    .await;
    let mut config = test_config(&up.uri);
    config.shutdown.grace = Duration::from_secs(5);
    let mut gw = sidecar(config).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(SseClient::open(gw.proxy, "/events?topic=s").await);
    }
    let proxy = gw.proxy;
    let inflight =
        tokio::spawn(async move { send(proxy, request("GET", "/slow", &[], Bytes::new())).await });
    arrived_rx.recv().await.unwrap();

    // The probes on the public listener (for a kubelet that cannot reach loopback) answer
    // as the internal ones do, from ssegate itself.
    for (path, want) in [("/_ssegate/healthz", "ok"), ("/_ssegate/readyz", "ready")] {
        let (status, json) = call_json(gw.proxy, request("GET", path, &[], Bytes::new())).await;
        assert_eq!(
            (status, json["status"].as_str()),
            (StatusCode::OK, Some(want))
        );
    }

    let running = gw.running.take().unwrap();
    running.shutdown();
    for c in &mut streams {
        let ev = c.event().await;
        assert_eq!(ev.event.as_deref(), Some("ssegate.shutdown"));
        let retry = *c.retries.last().unwrap();
        assert!(
            (2000..=4000).contains(&retry),
            "retry hint {retry} spread over [retry, 2×retry]"
        );
        c.assert_ended().await;
    }
    // While draining: not ready, and new streams are refused with Retry-After.
    let (status, _) = call_json(gw.admin, request("GET", "/readyz", &[], Bytes::new())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, json) = call_json(
        gw.proxy,
        request("GET", "/_ssegate/readyz", &[], Bytes::new()),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert_eq!(json["error"], "shutting_down");
    let (status, _) = call_json(
        gw.proxy,
        request("GET", "/_ssegate/healthz", &[], Bytes::new()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let refused = SseClient::connect(gw.proxy, "/events?topic=s", &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers.contains_key("retry-after"));

    release_tx.send(true).unwrap();
    let resp = inflight.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_bytes(resp).await, "finished");
    tokio::time::timeout(Duration::from_secs(5), running.wait())
        .await
        .expect("drained within grace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_lowers_and_raises_a_limit_without_dropping_streams() {
    let up = upstream(|_req| async { Response::new(full("app")) }).await;
    let mut config = test_config(&up.uri);
    config.events.heartbeat = Duration::from_secs(4);
    let gw = sidecar(config.clone()).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(SseClient::open(gw.proxy, "/events?topic=r").await);
    }
    let running = gw.running.as_ref().unwrap();

    let mut lower = config.clone();
    lower.limits.max_connections = 2;
    assert_eq!(running.reload(lower).unwrap(), Vec::<&str>::new());
    let refused = SseClient::connect(gw.proxy, "/events?topic=r", &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);

    let mut raise = config.clone();
    raise.limits.max_connections = 10;
    raise.listen = "127.0.0.1:1".parse().unwrap();
    raise.events.heartbeat = Duration::from_millis(200);
    let restart = running.reload(raise).unwrap();
    assert!(restart.contains(&"listen"), "{restart:?}");
    open.push(SseClient::open(gw.proxy, "/events?topic=r").await);

    // None of the open streams was dropped.
    publish_ok(gw.admin, r#"{"topic":"r","data":"still here"}"#).await;
    for c in &mut open {
        assert_eq!(c.event().await.data, "still here");
    }
    // Open streams take the new heartbeat from their next beat: at the old 4 s, three
    // beats take 12 s, over the 10 s each read may wait; at the reloaded 0.2 s, about 4.4 s.
    let started = tokio::time::Instant::now();
    open[0].wait_heartbeats(3).await;
    assert!(
        started.elapsed() < DEADLINE,
        "the reloaded heartbeat applies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_an_unreadable_key_keeps_the_old_config() {
    let up = upstream(|_req| async { Response::new(full("app")) }).await;
    let config = test_config(&up.uri);
    let gw = sidecar(config.clone()).await;
    let running = gw.running.as_ref().unwrap();
    let mut bad = config.clone();
    bad.auth.mode = ssegate::config::AuthMode::Jwt;
    bad.auth.jwt.algorithms = vec![ssegate::config::JwtAlgorithm::RS256];
    bad.auth.jwt.public_key_file = Some("/nonexistent/key.pem".into());
    let err = running.reload(bad).unwrap_err();
    assert!(
        matches!(err, ssegate::auth::KeyError::Unreadable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("public_key_file"), "{err}");
    // Still in `none` mode.
    assert_eq!(
        SseClient::connect(gw.proxy, "/events?topic=r", &[])
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_history_leaves_an_idle_server() {
    let (gw, _up) = sidecar_with(|c| c.events.history.max_age = Duration::from_millis(300)).await;
    publish_ok(
        gw.admin,
        r#"[{"topic":"idle","data":"0"},{"topic":"idle","data":"1"}]"#,
    )
    .await;
    // No publish or subscribe follows; /stats must still never show events past max_age
    // (the periodic trim frees them, and /stats trims before counting).
    eventually("expired events trimmed on an idle server", || async {
        let (_, stats) = call_json(gw.admin, request("GET", "/stats", &[], Bytes::new())).await;
        stats["history"]["events"] == 0
    })
    .await;
}

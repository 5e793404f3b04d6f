//! Scale-out on Redis: several instances on one real redis-server.
//!
//! Each test starts its own `redis-server` child ([`server`]) on a free port, kills it with
//! SIGKILL where the test needs Redis to die, and kills it on drop.

mod measure;
pub(crate) mod server;

use crate::support::*;
use bytes::Bytes;
use hyper::StatusCode;
use server::{RedisServer, free_port, make_test_certs, redis_cmd, redis_cmds};
use ssegate::config::{BrokerKind, Config};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn on_redis(c: &mut Config, url: String) {
    c.broker.kind = BrokerKind::Redis;
    c.broker.redis.url = url;
}

/// `/readyz` is 200.
async fn ready(admin: std::net::SocketAddr) -> bool {
    let (status, _) = call_json(admin, request("GET", "/readyz", &[], Bytes::new())).await;
    status == StatusCode::OK
}

/// An instance on `redis`, once it is connected (history loaded, publisher answering).
pub async fn instance(redis: &RedisServer, tune: impl FnOnce(&mut Config)) -> (Sidecar, Upstream) {
    let (gw, up) = sidecar_with(|c| {
        on_redis(c, redis.url());
        tune(c);
    })
    .await;
    eventually("the instance to connect to redis", || ready(gw.admin)).await;
    (gw, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_on_one_instance_reaches_subscribers_on_every_instance() {
    let redis = RedisServer::start().await;
    let (a, _ua) = instance(&redis, |_| {}).await;
    let (b, _ub) = instance(&redis, |_| {}).await;
    let mut on_a = SseClient::open(a.proxy, "/events?topic=room/1").await;
    let mut on_b = SseClient::open(b.proxy, "/events?topic=room/1").await;
    let mut typed_b = SseClient::open(b.proxy, "/events?topic=room/*&type=said").await;
    let ids = publish_ok(
        a.admin,
        r#"[{"topic":"room/1","event":"said","data":{"m":"hi"}},{"topics":["room/1","room/2"],"data":"both"}]"#,
    )
    .await;
    assert_eq!(
        redis_cmd(redis.port, &["XLEN", "ssegate:events"])
            .await
            .as_deref(),
        Some(":2")
    );
    for c in [&mut on_a, &mut on_b] {
        let ev = c.event().await;
        assert_eq!(ev.id.as_deref(), Some(ids[0].as_str()));
        assert_eq!(ev.event.as_deref(), Some("said"));
        assert_eq!(ev.data, r#"{"m":"hi"}"#);
        let ev = c.event().await;
        assert_eq!(
            (ev.id.as_deref(), ev.data.as_str()),
            (Some(ids[1].as_str()), "both")
        );
    }
    assert_eq!(typed_b.event().await.id.as_deref(), Some(ids[0].as_str()));
    typed_b
        .assert_no_event_within(Duration::from_millis(100))
        .await;
    let (_, stats) = call_json(b.admin, request("GET", "/stats", &[], Bytes::new())).await;
    assert_eq!(stats["broker"]["kind"], "redis");
    assert_eq!(stats["broker"]["up"], true);
    assert_eq!(stats["history"]["events"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_moves_to_another_instance_resumes_with_exactly_what_it_missed() {
    let redis = RedisServer::start().await;
    let (a, _ua) = instance(&redis, |_| {}).await;
    let (b, _ub) = instance(&redis, |_| {}).await;
    let mut c = SseClient::open(a.proxy, "/events?topic=r").await;
    publish_ok(
        a.admin,
        r#"[{"topic":"r","data":"0"},{"topic":"r","data":"1"}]"#,
    )
    .await;
    // The client goes away having handled "0" only.
    let seen = c.event().await.id.unwrap();
    drop(c);
    let ids = publish_ok(
        b.admin,
        r#"[{"topic":"r","data":"2"},{"topic":"other","data":"x"},{"topic":"r","data":"3"}]"#,
    )
    .await;
    publish_ok(a.admin, r#"{"topic":"r","data":"4"}"#).await;
    // Resuming after "0" on B: exactly 1..4 of topic r, then live events.
    let mut resumed =
        SseClient::connect(b.proxy, "/events?topic=r", &[("last-event-id", &seen)]).await;
    assert_eq!(resumed.data(4).await, ["1", "2", "3", "4"]);
    resumed
        .assert_no_event_within(Duration::from_millis(100))
        .await;
    publish_ok(a.admin, r#"{"topic":"r","data":"5"}"#).await;
    assert_eq!(resumed.data(1).await, ["5"]);
    // An instance started after all this loads the history from the stream.
    let (c3, _uc) = instance(&redis, |_| {}).await;
    let mut late =
        SseClient::connect(c3.proxy, "/events?topic=r", &[("last-event-id", &ids[0])]).await;
    assert_eq!(late.data(3).await, ["3", "4", "5"]);
    late.assert_no_event_within(Duration::from_millis(100))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_from_two_instances_are_atomic_and_never_interleave() {
    let redis = RedisServer::start().await;
    let (a, _ua) = instance(&redis, |_| {}).await;
    let (b, _ub) = instance(&redis, |_| {}).await;
    let mut watcher = SseClient::open(b.proxy, "/events?topic=*").await;
    const BATCHES: usize = 10;
    const SIZE: usize = 25;
    let publishers: Vec<_> = [("a", a.admin), ("b", b.admin)]
        .into_iter()
        .map(|(name, admin)| {
            tokio::spawn(async move {
                for batch in 0..BATCHES {
                    let items: Vec<_> = (0..SIZE)
                        .map(|i| format!(r#"{{"topic":"t/{name}","data":"{name}{batch}-{i}"}}"#))
                        .collect();
                    publish_ok(admin, &format!("[{}]", items.join(","))).await;
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let got = watcher.data(2 * BATCHES * SIZE).await;
    // Every batch arrives whole and in order, with nothing of the other instance inside.
    for chunk in got.chunks(SIZE) {
        let (batch, _) = chunk[0].split_once('-').unwrap();
        let want: Vec<_> = (0..SIZE).map(|i| format!("{batch}-{i}")).collect();
        assert_eq!(chunk, want.as_slice());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_dies_publish_fails_fast_streams_stay_open_and_nothing_is_skipped_after() {
    let mut redis = RedisServer::start_durable().await;
    let tune = |c: &mut Config| c.events.heartbeat = Duration::from_millis(200);
    let (a, _ua) = instance(&redis, tune).await;
    let (b, _ub) = instance(&redis, tune).await;
    let mut on_a = SseClient::open(a.proxy, "/events?topic=k").await;
    let mut on_b = SseClient::open(b.proxy, "/events?topic=k").await;
    publish_ok(a.admin, r#"{"topic":"k","data":"0"}"#).await;
    assert_eq!(on_a.data(1).await, ["0"]);
    assert_eq!(on_b.data(1).await, ["0"]);

    redis.kill();
    let started = tokio::time::Instant::now();
    let (status, json) = publish(a.admin, r#"{"topic":"k","data":"lost"}"#).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert_eq!(json["error"], "broker_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a publish with redis down took {:?}",
        started.elapsed()
    );
    for gw in [&a, &b] {
        eventually("/readyz to turn 503", || async { !ready(gw.admin).await }).await;
    }
    let metrics =
        body_bytes(send(a.admin, request("GET", "/metrics", &[], Bytes::new())).await).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.lines().any(|l| l == "ssegate_broker_up 0"),
        "ssegate_broker_up should be 0:\n{metrics}"
    );
    // The streams stay open: heartbeats keep flowing.
    on_a.comments.clear();
    on_a.wait_heartbeat().await;

    redis.restart().await;
    eventually("B to reconnect", || ready(b.admin)).await;
    // B publishes at once, possibly before A has reconnected: A must read it afterwards.
    let ids = publish_ok(
        b.admin,
        r#"[{"topic":"k","data":"1"},{"topic":"k","data":"2"},{"topic":"k","data":"3"}]"#,
    )
    .await;
    assert_eq!(on_a.data(3).await, ["1", "2", "3"]);
    assert_eq!(on_b.data(3).await, ["1", "2", "3"]);
    eventually("A to reconnect", || ready(a.admin)).await;
    // Nothing of the refused publish was stored; the ids continue after the restart.
    assert_eq!(
        redis_cmd(redis.port, &["XLEN", "ssegate:events"])
            .await
            .as_deref(),
        Some(":4")
    );
    let mut resumed = SseClient::connect(
        a.proxy,
        "/events?topic=k",
        &[("last-event-id", ids[0].as_str())],
    )
    .await;
    assert_eq!(resumed.data(2).await, ["2", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_announces_a_gap_to_resuming_clients() {
    let mut redis = RedisServer::start().await;
    let (a, _ua) = instance(&redis, |_| {}).await;
    let mut c = SseClient::open(a.proxy, "/events?topic=g").await;
    let ids = publish_ok(
        a.admin,
        r#"[{"topic":"g","data":"0"},{"topic":"g","data":"1"}]"#,
    )
    .await;
    assert_eq!(c.data(2).await, ["0", "1"]);

    redis.restart().await;
    // A cannot know whether it missed entries that died with Redis: it ends its streams so
    // they resume, and the resume announces the gap.
    c.assert_ended().await;
    eventually("A to reconnect", || ready(a.admin)).await;
    let mut r = SseClient::connect(a.proxy, "/events?topic=g", &[("last-event-id", &ids[1])]).await;
    let gap = r.event().await;
    assert_eq!(gap.event.as_deref(), Some("ssegate.gap"));
    let data: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(data["last_event_id"], ids[1].as_str());
    let new = publish_ok(a.admin, r#"{"topic":"g","data":"2"}"#).await;
    let ev = r.event().await;
    assert_eq!(
        (ev.id.as_deref(), ev.data.as_str()),
        (Some(new[0].as_str()), "2")
    );
    // An instance started after the restart has none of the old history: a gap too.
    let (b, _ub) = instance(&redis, |_| {}).await;
    let mut r = SseClient::connect(b.proxy, "/events?topic=g", &[("last-event-id", &ids[0])]).await;
    assert_eq!(r.event().await.event.as_deref(), Some("ssegate.gap"));
    assert_eq!(r.event().await.data, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_on_one_instance_ends_its_streams_and_history_everywhere() {
    let redis = RedisServer::start().await;
    let (a, _ua) = instance(&redis, |_| {}).await;
    let (b, _ub) = instance(&redis, |_| {}).await;
    let ids = publish_ok(
        a.admin,
        r#"[{"topic":"del","data":"0"},{"topic":"del","data":"1"},{"topic":"keep","data":"k"}]"#,
    )
    .await;
    let mut on_b = SseClient::open(b.proxy, "/events?topic=del").await;
    let mut keep_b = SseClient::open(b.proxy, "/events?topic=keep").await;
    let (status, _) = call_json(a.admin, request("DELETE", "/topics/del", &[], Bytes::new())).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(on_b.event().await.event.as_deref(), Some("ssegate.closed"));
    on_b.assert_ended().await;
    // B dropped the topic's history where the control entry stands in the stream; so does
    // an instance that loads the stream later. Replays never show control entries.
    let (c, _uc) = instance(&redis, |_| {}).await;
    for gw in [&b, &c] {
        let mut r = SseClient::connect(
            gw.proxy,
            "/events?topic=del&topic=keep",
            &[("last-event-id", &ids[0])],
        )
        .await;
        assert_eq!(r.event().await.data, "k");
        r.assert_no_event_within(Duration::from_millis(100)).await;
    }
    keep_b
        .assert_no_event_within(Duration::from_millis(50))
        .await;
    // close: true on A ends B's stream after the event.
    let mut job = SseClient::open(b.proxy, "/events?topic=job/1").await;
    publish_ok(a.admin, r#"{"topic":"job/1","data":"done","close":true}"#).await;
    assert_eq!(job.event().await.data, "done");
    job.assert_ended().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_subject_on_one_instance_ends_its_streams_on_every_instance() {
    use ssegate::hub::{BrokerSettings, Filter, Hub, HubSettings, Selector, SubscribeRequest};
    use std::future::poll_fn;
    let redis = RedisServer::start().await;
    let settings = HubSettings {
        broker: BrokerSettings::Redis {
            url: redis.url(),
            stream: "revocations".to_owned(),
        },
        ..HubSettings::default()
    };
    let metrics = || std::sync::Arc::new(ssegate::metrics::Metrics::default());
    let hub_a = Hub::start(settings.clone(), metrics());
    let hub_b = Hub::start(settings, metrics());
    eventually("both hubs to connect", || async {
        hub_a.broker_up() && hub_b.broker_up()
    })
    .await;
    let request = |subject: &str| {
        let mut r = SubscribeRequest::new(Filter {
            selectors: vec![Selector::parse("t").unwrap()].into(),
            types: None,
        });
        r.subject = Some(subject.into());
        r
    };
    let mut u1 = hub_b.subscribe(request("u1"));
    let mut u2 = hub_b.subscribe(request("u2"));
    let next = async |s: &mut ssegate::hub::Subscription| {
        tokio::time::timeout(DEADLINE, poll_fn(|cx| s.poll_chunk(cx)))
            .await
            .expect("nothing within the deadline")
    };
    assert!(next(&mut u1).await.unwrap().starts_with(b"retry:"));
    assert!(next(&mut u2).await.unwrap().starts_with(b"retry:"));
    assert_eq!(hub_a.revoke("u1"), 0, "no stream of u1 on A itself");
    let end = next(&mut u1).await.unwrap();
    assert!(end.starts_with(b"event: ssegate.revoked\n"), "{end:?}");
    assert_eq!(next(&mut u1).await, None);
    // u2 is untouched.
    let ids = hub_a
        .publish(vec![ssegate::hub::NewEvent::new("t", "still here")])
        .await
        .unwrap();
    let ev = next(&mut u2).await.unwrap();
    assert_eq!(
        &ev[..],
        format!("id: {}\ndata: still here\n\n", ids[0]).as_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_before_redis_refuses_publishes_then_catches_up() {
    let port = free_port();
    let (a, _ua) = sidecar_with(|c| on_redis(c, format!("redis://127.0.0.1:{port}/0"))).await;
    let (status, json) = publish(a.admin, r#"{"topic":"t","data":"x"}"#).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json["error"], "broker_unavailable");
    assert!(!ready(a.admin).await);
    // A stream opened meanwhile gets the events published once Redis is there.
    let mut early = SseClient::open(a.proxy, "/events?topic=t").await;
    let _redis = RedisServer::start_on(port).await;
    eventually("the instance to connect", || ready(a.admin)).await;
    publish_ok(a.admin, r#"{"topic":"t","data":"first"}"#).await;
    assert_eq!(early.data(1).await, ["first"]);
}

/// `/readyz` is 200 on a server that may not be listening yet.
async fn ready_if_listening(admin: std::net::SocketAddr) -> bool {
    tokio::net::TcpStream::connect(admin).await.is_ok() && ready(admin).await
}

/// `rediss://` with a password and a database index in the URL. Runs the real binary, so
/// that the test CA can be trusted through `SSL_CERT_FILE` (read by rustls-native-certs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rediss_url_with_password_and_database_connects_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    make_test_certs(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let tls_port = free_port();
    let redis = RedisServer::launch(
        free_port(),
        [
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "s3cret",
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            "no",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
        None,
    )
    .await;
    let (proxy, admin) = (free_port(), free_port());
    let config = dir.path().join("ssegate.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{proxy}\nadmin_listen: 127.0.0.1:{admin}\n\
             upstream: http://127.0.0.1:9\nlog: {{ level: warn }}\n\
             broker: {{ kind: redis, redis: {{ url: \"rediss://:s3cret@127.0.0.1:{tls_port}/2\", stream: tls }} }}\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ssegate"))
        .arg("--config")
        .arg(&config)
        .env("SSL_CERT_FILE", file("ca.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct KillOnDrop<'a>(&'a mut Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = KillOnDrop(&mut child);
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], admin).into();
    eventually("ssegate to connect to redis over TLS", || {
        ready_if_listening(admin)
    })
    .await;
    publish_ok(admin, r#"{"topic":"t","data":"over tls"}"#).await;
    let replies = redis_cmds(
        redis.port,
        &[&["AUTH", "s3cret"], &["SELECT", "2"], &["XLEN", "tls"]],
    )
    .await;
    assert_eq!(replies, ["+OK", "+OK", ":1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_while_redis_is_down_is_deleted_everywhere_once_it_is_back() {
    let mut redis = RedisServer::start_durable().await;
    let (a, _ua) = instance(&redis, |_| {}).await;
    let (b, _ub) = instance(&redis, |_| {}).await;
    let mut on_a = SseClient::open(a.proxy, "/events?topic=x").await;
    let mut on_b = SseClient::open(b.proxy, "/events?topic=x").await;
    redis.kill();
    let (status, _) = call_json(a.admin, request("DELETE", "/topics/x", &[], Bytes::new())).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // At once on A; on B once A could write the control entry and B could read it.
    assert_eq!(on_a.event().await.event.as_deref(), Some("ssegate.closed"));
    redis.restart().await;
    assert_eq!(on_b.event().await.event.as_deref(), Some("ssegate.closed"));
    on_b.assert_ended().await;
}

//! The disk broker with the real executable: nothing acknowledged is lost to `kill -9`,
//! and a disk that refuses writes is a 503 until it takes them again.

use crate::support::*;
use bytes::Bytes;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;

fn config(dir: &Path) -> String {
    config_syncing(dir, "always")
}

/// The same with `sync: {sync}`.
fn config_syncing(dir: &Path, sync: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: http://127.0.0.1:9\n\
         events: {{ history: {{ max_events: 100000 }} }}\n\
         broker: {{ kind: disk, disk: {{ dir: \"{}\", sync: {sync} }} }}\n",
        dir.display()
    )
}

/// Publishes on one keep-alive connection until the server goes away; returns the ids
/// answered 200, in order.
async fn publish_until_gone(
    admin: SocketAddr,
    who: usize,
    acked: Arc<Mutex<usize>>,
) -> Vec<String> {
    let mut ids = Vec::new();
    let Ok(stream) = TcpStream::connect(admin).await else {
        return ids;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return ids;
    };
    tokio::spawn(conn);
    for n in 0.. {
        let body = format!(r#"{{"topic":"flood","data":"{who}-{n}"}}"#);
        let req = request(
            "POST",
            "/publish",
            &[("content-type", "application/json")],
            body,
        );
        let Ok(resp) = sender.send_request(req).await else {
            return ids;
        };
        if resp.status() != StatusCode::OK {
            return ids;
        }
        let Ok(body) = http_body_util::BodyExt::collect(resp.into_body()).await else {
            return ids;
        };
        let json: serde_json::Value = serde_json::from_slice(&body.to_bytes()).unwrap();
        ids.push(json["ids"][0].as_str().unwrap().to_owned());
        *acked.lock().unwrap() += 1;
    }
    ids
}

#[tokio::test]
async fn kill_9_during_a_publish_flood_loses_nothing_that_was_acknowledged() {
    kill_9_during_a_publish_flood("always").await;
}

/// With `sync: <duration>` too: a publish is answered once written (by the leader of its
/// group), and a process crash loses no write.
#[tokio::test]
async fn with_a_sync_interval_kill_9_during_a_publish_flood_loses_nothing_acknowledged() {
    kill_9_during_a_publish_flood("100ms").await;
}

/// 32 publishers flood the server until it is killed; after a restart, every id answered
/// 200 is served once, in order, with no gap.
async fn kill_9_during_a_publish_flood(sync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_syncing(dir.path(), sync);
    let bin = Binary::start(&config, "").await;
    let acked = Arc::new(Mutex::new(0));
    let publishers: Vec<_> = (0..32)
        .map(|who| tokio::spawn(publish_until_gone(bin.admin, who, Arc::clone(&acked))))
        .collect();
    eventually("1000 publishes acknowledged", || {
        let n = *acked.lock().unwrap();
        async move { n >= 1000 }
    })
    .await;
    drop(bin); // SIGKILL, with publishes in flight
    let mut all = Vec::new();
    for p in publishers {
        let ids = p.await.unwrap();
        // Each publisher saw its own ids increase.
        let parsed: Vec<ssegate::sse::EventId> = ids.iter().map(|i| i.parse().unwrap()).collect();
        assert!(parsed.windows(2).all(|w| w[0] < w[1]));
        all.extend(parsed);
    }
    all.sort();
    let first = all[0].to_string();

    let bin = Binary::start(&config, "").await;
    assert!(
        bin.log()
            .iter()
            .any(|l| l.contains("history loaded from disk"))
    );
    let mut c = SseClient::connect(
        bin.proxy,
        "/events?topic=flood",
        &[("last-event-id", &first)],
    )
    .await;
    assert_eq!(c.status, StatusCode::OK);
    let sentinel = publish_ok(bin.admin, r#"{"topic":"flood","data":"sentinel"}"#).await;
    let mut seen = Vec::new();
    loop {
        let ev = c.event().await;
        assert_ne!(
            ev.event.as_deref(),
            Some("ssegate.gap"),
            "a gap after a restart"
        );
        let id: ssegate::sse::EventId = ev.id.as_deref().unwrap().parse().unwrap();
        if ev.data == "sentinel" {
            assert_eq!(id.to_string(), sentinel[0]);
            break;
        }
        seen.push(id);
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, each once");
    let seen: HashSet<_> = seen.into_iter().collect();
    let missing: Vec<_> = all[1..].iter().filter(|id| !seen.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged ids lost: {missing:?}",
        missing.len(),
        all.len()
    );
    assert!(sentinel[0].parse::<ssegate::sse::EventId>().unwrap() > all[all.len() - 1]);
}

async fn status(admin: SocketAddr, path: &str) -> StatusCode {
    call_json(admin, request("GET", path, &[], Bytes::new()))
        .await
        .0
}

#[tokio::test]
async fn a_disk_that_refuses_writes_is_a_503_until_it_takes_them_again() {
    use rlimit::{Resource, prlimit};
    let dir = tempfile::tempdir().unwrap();
    let mut bin = Binary::start(&config(dir.path()), "").await;
    let before = publish_ok(bin.admin, r#"{"topic":"t","data":"before"}"#).await;
    assert_eq!(status(bin.admin, "/readyz").await, StatusCode::OK);

    // A file-size limit of one byte on the running process: every write to its segment
    // files fails (EFBIG), as on a full disk, whoever runs the test (root too).
    let pid = i32::try_from(bin.pid).unwrap();
    let (mut soft, mut hard) = (0, 0);
    prlimit(pid, Resource::FSIZE, None, Some((&mut soft, &mut hard))).unwrap();
    prlimit(pid, Resource::FSIZE, Some((1, hard)), None).unwrap();
    let (code, json) = publish(bin.admin, r#"{"topic":"t","data":"refused"}"#).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert_eq!(json["error"], "broker_unavailable", "{json}");
    assert_eq!(
        status(bin.admin, "/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(bin.running());

    prlimit(pid, Resource::FSIZE, Some((soft, hard)), None).unwrap();
    let admin = bin.admin;
    eventually("/readyz is 200 again", || async move {
        status(admin, "/readyz").await == StatusCode::OK
    })
    .await;
    let after = publish_ok(bin.admin, r#"{"topic":"t","data":"after"}"#).await;
    drop(bin);

    let bin = Binary::start(&config(dir.path()), "").await;
    let mut c = SseClient::connect(bin.proxy, "/events?topic=t", &[("last-event-id", "0-0")]).await;
    let first = c.event().await;
    assert_eq!(first.event.as_deref(), Some("ssegate.gap")); // 0-0 is older than the history
    let got: Vec<_> = [c.event().await, c.event().await]
        .into_iter()
        .map(|e| (e.id.unwrap(), e.data))
        .collect();
    assert_eq!(
        got,
        [
            (before[0].clone(), "before".to_owned()),
            (after[0].clone(), "after".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_torn_last_record_is_dropped_with_a_warning_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(&config(dir.path()), "").await;
    let mut ids = Vec::new();
    for data in ["one", "two", "three"] {
        ids.extend(publish_ok(bin.admin, &format!(r#"{{"topic":"t","data":"{data}"}}"#)).await);
    }
    drop(bin);
    // The newest segment holding events: the last one may be the empty one opened ahead.
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 8)
        .collect();
    files.sort();
    let last = files.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let bin = Binary::start(&config(dir.path()), "").await;
    assert!(
        bin.log()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("cut short")),
        "{:?}",
        bin.log()
    );
    let mut c =
        SseClient::connect(bin.proxy, "/events?topic=t", &[("last-event-id", &ids[0])]).await;
    publish_ok(bin.admin, r#"{"topic":"t","data":"sentinel"}"#).await;
    assert_eq!(c.data(2).await, ["two", "sentinel"]);
}

/// Sockets held open across the restart, as systemd's `.socket` unit holds them.
fn handed_over(
    proxy: &std::net::TcpListener,
    admin: &std::net::TcpListener,
) -> ssegate::activation::Inherited {
    ssegate::activation::Inherited {
        proxy: Some(proxy.try_clone().unwrap()),
        admin: Some(admin.try_clone().unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_sockets_from_the_service_manager_loses_no_connection_and_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&"http://127.0.0.1:9".parse().unwrap());
    config.broker.kind = ssegate::config::BrokerKind::Disk;
    config.broker.disk.dir = dir.path().to_owned();
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (proxy_addr, admin_addr) = (proxy.local_addr().unwrap(), admin.local_addr().unwrap());
    let start =
        |config| ssegate::app::start_on(config, Default::default(), handed_over(&proxy, &admin));

    let running = start(config.clone()).await.unwrap();
    assert_eq!(
        (running.proxy_addr, running.admin_addr),
        (proxy_addr, admin_addr)
    );
    let first = publish_ok(admin_addr, r#"{"topic":"t","data":"before"}"#).await;
    running.shutdown();
    running.wait().await;

    // Nobody serves now; a publisher connects and sends its request anyway: the kernel
    // queues the connection on the socket the next process receives.
    let waiting = tokio::spawn(publish(admin_addr, r#"{"topic":"t","data":"during"}"#));
    let running = start(config).await.unwrap();
    let (status, json) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{json}");
    let mut c = SseClient::connect(
        proxy_addr,
        "/events?topic=t",
        &[("last-event-id", &first[0])],
    )
    .await;
    assert_eq!(c.data(1).await, ["during"]);
    running.shutdown();
}

//! Overload and abuse (issue 19): HTTP/2 streams whose window stays closed are reset by the
//! send timeout, the app is shielded by the upstream connection cap, one address by its
//! in-flight cap, and refusals cannot flood the log.

use crate::support::*;
use bytes::Bytes;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ssegate::server::Options;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// A send timeout short enough to watch it act.
const SHORT: Options = Options {
    header_read_timeout: Duration::from_secs(10),
    send_timeout: Duration::from_secs(2),
};

/// The connections an app has open now (its connection tasks), and the most that were
/// established at once when it accepted one.
#[derive(Default)]
struct Open {
    now: AtomicUsize,
    max: AtomicUsize,
}

/// Held by a test app's connection task: counts it open while it lives.
struct Counted(Arc<Open>);

impl Counted {
    /// Counts a connection just accepted on `addr`. The most at once is read from the
    /// kernel: a connection ssegate has closed is no longer established on the app's side
    /// even if the app's task has not yet seen the end of it.
    fn new(open: &Arc<Open>, addr: SocketAddr) -> Self {
        open.now.fetch_add(1, Ordering::SeqCst);
        open.max.fetch_max(established(addr), Ordering::SeqCst);
        Self(Arc::clone(open))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The established TCP connections whose local end is `addr`, from /proc/net/tcp (read
/// while it changes, a line can appear twice: counted once).
fn established(addr: SocketAddr) -> usize {
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        panic!("IPv4 only");
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(ip.octets()),
        addr.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let peers: std::collections::HashSet<&str> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 3 && f[1] == local && f[3] == "01")
        .map(|f| f[2])
        .collect();
    peers.len()
}

/// An app that answers `/big` with 4 MiB and anything else with "app" (after `hold`
/// resolves, for `/hold`), counting its open connections.
async fn app(hold: Option<Arc<tokio::sync::Semaphore>>) -> (Upstream, Arc<Open>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(Open::default());
    let counts = Arc::clone(&open);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counted = Counted::new(&counts, addr);
            let hold = hold.clone();
            tokio::spawn(async move {
                let _counted = counted;
                let svc = hyper::service::service_fn(move |req| {
                    let hold = hold.clone();
                    async move {
                        let body = match req.uri().path() {
                            "/big" => Bytes::from(vec![b'x'; 4 << 20]),
                            "/hold" => {
                                if let Some(h) = hold {
                                    let _ = h.acquire().await;
                                }
                                Bytes::from_static(b"held")
                            }
                            _ => Bytes::from_static(b"app"),
                        };
                        Ok::<_, Infallible>(Response::new(full(body)))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (Upstream::from_parts(addr, task), open)
}

/// An HTTP/2 (prior knowledge) client that grants every stream a zero window: it reads
/// response heads, never a byte of a body.
async fn zero_window_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client.ready().await.unwrap()
}

/// Opens `GET path` on `client`; the response to come.
async fn open_stream(
    client: &mut h2::client::SendRequest<Bytes>,
    path: &str,
) -> h2::client::ResponseFuture {
    let req = hyper::Request::get(format!("http://test.local{path}"))
        .body(())
        .unwrap();
    let mut ready = client.clone().ready().await.unwrap();
    let (resp, _) = ready.send_request(req, true).unwrap();
    *client = ready;
    resp
}

/// Waits until the stream behind `resp` is reset by the server (its body cannot be sent to
/// a zero window, whatever it is); its status is returned.
async fn reset_after_head(resp: h2::client::ResponseFuture) -> StatusCode {
    let resp = tokio::time::timeout(DEADLINE, resp)
        .await
        .expect("no response head within the deadline")
        .unwrap();
    let status = resp.status();
    let mut body = resp.into_body();
    let end = tokio::time::timeout(DEADLINE, body.data())
        .await
        .expect("the stream was not reset within the deadline");
    match end {
        Some(Err(e)) => assert!(e.is_reset(), "expected a reset, got {e}"),
        other => panic!("expected a reset, got {other:?}"),
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_whose_window_stays_closed_are_reset_by_the_send_timeout() {
    let (up, open) = app(None).await;
    let mut config = test_config(&up.uri);
    config.limits.concurrent_requests_per_ip = 20;
    config.limits.max_upstream_connections = 25;
    let gw = sidecar_opts(config, SHORT).await;

    let mut client = zero_window_client(gw.proxy).await;
    let mut streams = Vec::new();
    for i in 0..60 {
        let path = if i % 2 == 0 {
            "/big"
        } else {
            "/events?topic=t"
        };
        streams.push((path, open_stream(&mut client, path).await));
    }
    // Every stream is open and stalled: the events' first frame, the app's body, stuck.
    eventually("the event streams are open", || async {
        connections(gw.admin).await == 30
    })
    .await;
    assert_eq!(
        client.current_max_send_streams(),
        ssegate::server::MAX_CONCURRENT_STREAMS as usize,
        "the server's stream cap, advertised"
    );

    // Another client is served meanwhile, whole.
    let resp = send_on(
        connect_from("127.0.0.2", gw.proxy).await,
        request("GET", "/big", &[], Bytes::new()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_bytes(resp).await.len(), 4 << 20);

    let (mut proxied, mut refused) = (0, 0);
    for (path, s) in streams {
        match (path, reset_after_head(s).await) {
            ("/big", StatusCode::OK) => proxied += 1,
            ("/big", StatusCode::TOO_MANY_REQUESTS) => refused += 1,
            (_, status) => assert_eq!(status, StatusCode::OK, "{path}"),
        }
    }
    assert_eq!(
        (proxied, refused),
        (20, 10),
        "20 requests in flight per address"
    );
    assert!(
        open.max.load(Ordering::SeqCst) <= 21,
        "the app saw at most the stalled client's 20 connections and the other's one, not {}",
        open.max.load(Ordering::SeqCst)
    );
    // Reset streams hold nothing: no stream slot, no connection to the app.
    eventually("the event streams are closed", || async {
        connections(gw.admin).await == 0
    })
    .await;
    // (Counted by the kernel: the test app's own tasks may notice the resets later.)
    eventually("the app's connections are closed", || async {
        established(up.addr) <= 1
    })
    .await;
}

/// A JSON body from an HTTP/2 response.
async fn h2_json(resp: h2::client::ResponseFuture) -> (StatusCode, serde_json::Value) {
    let resp = tokio::time::timeout(DEADLINE, resp).await.unwrap().unwrap();
    let status = resp.status();
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = tokio::time::timeout(DEADLINE, body.data()).await.unwrap() {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_upstream_connections_a_request_waits_then_gets_503_upstream_busy_on_either_path()
 {
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let (up, open) = app(Some(Arc::clone(&hold))).await;
    let mut config = test_config(&up.uri);
    config.limits.max_upstream_connections = 2;
    config.upstream_timeouts.connect = Duration::from_millis(300);
    let gw = sidecar(config).await;

    // Two requests the app holds: both connections the cap allows are in use.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let proxy = gw.proxy;
            tokio::spawn(async move {
                let resp = send_held(proxy, request("GET", "/hold", &[], Bytes::new())).await;
                (resp.status(), body_bytes(resp).await)
            })
        })
        .collect();
    eventually("the app holds two requests", || async {
        open.now.load(Ordering::SeqCst) == 2
    })
    .await;

    // The plain HTTP/1.1 path waits the connect timeout, then 503.
    let started = tokio::time::Instant::now();
    let resp = send(gw.proxy, request("GET", "/", &[], Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(resp.headers(), "retry-after"), Some("1"));
    let json: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).unwrap();
    assert_eq!(json["error"], "upstream_busy", "{json}");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // hyper's path (HTTP/2 here) is held to the same cap.
    let tcp = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client;
    let (status, json) = h2_json(open_stream(&mut client, "/").await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json["error"], "upstream_busy", "{json}");

    let (_, metrics) = {
        let resp = send(gw.admin, request("GET", "/metrics", &[], Bytes::new())).await;
        (
            resp.status(),
            String::from_utf8(body_bytes(resp).await.to_vec()).unwrap(),
        )
    };
    assert!(
        metrics.contains("ssegate_requests_rejected_total{reason=\"upstream_busy\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ssegate_upstream_connections 2"),
        "{metrics}"
    );

    // Once the app answers, the held requests complete and the places are free again.
    hold.add_permits(1000);
    for h in held {
        let (status, body) = h.await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"held"[..]));
    }
    let (status, json) = h2_json(open_stream(&mut client, "/").await).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(
        open.max.load(Ordering::SeqCst),
        2,
        "the app never saw more than the cap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_concurrent_requests_per_ip_a_request_gets_429_and_other_addresses_are_served() {
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let (up, open) = app(Some(Arc::clone(&hold))).await;
    let mut config = test_config(&up.uri);
    config.limits.concurrent_requests_per_ip = 2;
    let gw = sidecar(config.clone()).await;

    let held: Vec<_> = (0..2)
        .map(|_| {
            let proxy = gw.proxy;
            tokio::spawn(async move {
                send_held(proxy, request("GET", "/hold", &[], Bytes::new()))
                    .await
                    .status()
            })
        })
        .collect();
    // Waited for at the app, not by probing through ssegate: a probe admitted before both
    // held requests would take one of their two places.
    eventually("the app holds two requests", || async {
        open.now.load(Ordering::SeqCst) == 2
    })
    .await;
    // The third from the same address is refused at once, on the plain path and hyper's
    // (a chunked body goes to hyper).
    let resp = send(gw.proxy, request("GET", "/", &[], Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(resp.headers(), "retry-after"), Some("1"));
    let json: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).unwrap();
    assert_eq!(json["error"], "too_many_requests", "{json}");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    drop(tx);
    let chunked = hyper::Request::post("/")
        .header("host", "test.local")
        .body(http_body_util::BodyExt::boxed(
            http_body_util::BodyExt::map_err(ChannelBody(rx), |e| e),
        ))
        .unwrap();
    assert_eq!(
        send(gw.proxy, chunked).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Another address is not affected.
    let resp = send_on(
        connect_from("127.0.0.2", gw.proxy).await,
        request("GET", "/", &[], Bytes::new()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);

    let metrics = metrics_text(gw.admin).await;
    let refused = "ssegate_requests_rejected_total{reason=\"concurrent_requests_per_ip\"}";
    // Exactly the two refused above: each refusal counted once.
    assert_eq!(counter(&metrics, refused), 2, "{metrics}");

    // A reload raises the cap at once.
    config.limits.concurrent_requests_per_ip = 3;
    gw.running.as_ref().unwrap().reload(config).unwrap();
    let resp = send(gw.proxy, request("GET", "/", &[], Bytes::new())).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "a third place after the reload"
    );

    hold.add_permits(1000);
    for h in held {
        assert_eq!(h.await.unwrap(), StatusCode::OK);
    }
}

/// The `/metrics` text.
async fn metrics_text(admin: SocketAddr) -> String {
    let resp = send(admin, request("GET", "/metrics", &[], Bytes::new())).await;
    String::from_utf8(body_bytes(resp).await.to_vec()).unwrap()
}

/// The value of the series `name` (with its labels) in a `/metrics` text; 0 if absent.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Log output captured from the thread the test runs on.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_with(&self, what: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(what))
            .map(str::to_owned)
            .collect()
    }
}

/// Captures the log of the current thread while the guard lives.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    (log, tracing::subscriber::set_default(subscriber))
}

// One thread: the sidecar's tasks run where the captured log is the default.
#[tokio::test(flavor = "current_thread")]
async fn ten_thousand_refused_streams_from_one_address_log_a_handful_of_lines() {
    let (log, _default) = capture();

    let (gw, _up) = sidecar_with(|c| c.limits.max_connections_per_ip = 1).await;
    // An address no other test uses: the bound is the process's.
    let from = "127.0.0.9";
    let _held =
        SseClient::connect_on(connect_from(from, gw.proxy).await, "/events?topic=t", &[]).await;

    // One HTTP/2 connection retrying a refused stream, 100 at a time.
    let (client, conn) = h2::client::handshake(connect_from(from, gw.proxy).await)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client;
    let mut refused = 0;
    for _ in 0..100 {
        let mut batch = Vec::new();
        for _ in 0..100 {
            batch.push(open_stream(&mut client, "/events?topic=t").await);
        }
        for resp in batch {
            let (status, _) = h2_json(resp).await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            refused += 1;
        }
    }
    assert_eq!(refused, 10_000);

    // Every refusal is counted, a handful logged.
    let metrics = metrics_text(gw.admin).await;
    assert!(
        counter(
            &metrics,
            "ssegate_connections_rejected_total{reason=\"max_connections_per_ip\"}"
        ) >= 10_000,
        "{metrics}"
    );
    let lines = log.lines_with(&format!("ip={from}"));
    assert!(
        (1..=3).contains(&lines.len()),
        "one line per 10 s, not one per refusal: {} lines, e.g. {:?}",
        lines.len(),
        lines.first()
    );
    assert!(lines[0].contains("stream refused"), "{lines:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_502_is_logged_once_per_address_and_window() {
    let (log, _default) = capture();
    let (gw, up) = sidecar_with(|_| {}).await;
    up.stop();
    let from = "127.0.0.10";
    for _ in 0..50 {
        let resp = send_on(
            connect_from(from, gw.proxy).await,
            request("GET", "/", &[], Bytes::new()),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    }
    let lines = log.lines_with(&format!("ip={from}"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("request not forwarded") && lines[0].contains("status=502"));
}

/// Measures the zero-window scenario against the real executable (or the one in
/// `SSEGATE_BIN`, e.g. an older build): 10 HTTP/2 connections from one address, 100
/// streams each on a 4 MiB proxied response, none read. Prints the app's connections held,
/// ssegate's RSS and descriptors once every stream has its response head, and a probe's
/// latency from another address. Run with
/// `cargo test --test it overload::measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_zero_window_flood() {
    let exe =
        std::env::var("SSEGATE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ssegate").to_owned());
    let (up, _open) = app(None).await;
    let config = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: {}\n",
        up.uri
    );
    let bin = Binary::start_exe(&exe, &config, "ulimit -n 65536 2>/dev/null").await;
    let rss_before = proc_status_kb(&bin.pid.to_string(), "VmRSS");
    let started = tokio::time::Instant::now();
    let mut heads = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut client = zero_window_client(bin.proxy).await;
        for _ in 0..100 {
            heads.push(open_stream(&mut client, "/big").await);
        }
        clients.push(client);
    }
    let (mut ok, mut refused, mut other) = (0, 0, 0);
    let mut bodies = Vec::new();
    for h in heads {
        match tokio::time::timeout(DEADLINE, h).await {
            Ok(Ok(resp)) => {
                match resp.status() {
                    StatusCode::OK => ok += 1,
                    StatusCode::TOO_MANY_REQUESTS => refused += 1,
                    _ => other += 1,
                }
                bodies.push(resp.into_body());
            }
            _ => other += 1,
        }
    }
    let heads_in = started.elapsed();
    let probe = tokio::time::Instant::now();
    let resp = send_on(
        connect_from("127.0.0.2", bin.proxy).await,
        request("GET", "/", &[], Bytes::new()),
    )
    .await;
    let probe_status = resp.status();
    let _ = body_bytes(resp).await;
    println!(
        "exe={exe}\nstreams: {ok} x 200, {refused} x 429, {other} other, heads in {heads_in:?}\n\
         app connections held: {}\nssegate RSS: {} kB (idle {rss_before} kB), fds: {}\n\
         probe from another address: {probe_status} in {:?}",
        established(up.addr),
        proc_status_kb(&bin.pid.to_string(), "VmRSS"),
        bin.open_fds(),
        probe.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_listeners_have_a_backlog_of_4096_or_the_kernels_cap() {
    let (gw, _up) = sidecar_with(|_| {}).await;
    let somaxconn: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for addr in [gw.proxy, gw.admin] {
        // `ss` shows a listening socket's backlog as its Send-Q.
        // Missing is a failure, never a skip: a green run must mean the backlog was checked.
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{}", addr.port())])
            .output()
            .expect("`ss` not found: this test needs Debian's iproute2 (.ci/run installs it)");
        assert!(out.status.success(), "ss failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let backlog: u64 = text
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no backlog in {text:?}"));
        assert_eq!(backlog, somaxconn.min(4096), "{addr}: {text}");
    }
}

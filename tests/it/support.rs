//! Test helpers: an in-process upstream app, an in-process sidecar on port 0, an HTTP
//! client over a real socket, an SSE client that parses frames, and a poll-with-deadline.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ssegate::app::Running;
use ssegate::config::Config;
use ssegate::sse::{ParsedEvent, Parser};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The body type the test upstream answers with.
pub type UBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A complete upstream body.
pub fn full(b: impl Into<Bytes>) -> UBody {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// An app built in the test, serving on 127.0.0.1:0.
pub struct Upstream {
    pub addr: SocketAddr,
    pub uri: hyper::Uri,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// An app served by `task` on `addr` (a test's own accept loop).
    pub fn from_parts(addr: SocketAddr, task: tokio::task::JoinHandle<()>) -> Self {
        Self {
            addr,
            uri: format!("http://{addr}").parse().unwrap(),
            task,
        }
    }

    /// Stops accepting and drops the listener (later connects are refused).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an upstream whose every request is answered by `handler`.
pub async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<UBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        uri: format!("http://{addr}").parse().unwrap(),
        task,
    }
}

/// Defaults, both listeners on 127.0.0.1:0, pointing at `upstream`.
pub fn test_config(upstream: &hyper::Uri) -> Config {
    let mut c = Config::with_upstream(upstream.clone());
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.admin_listen = "127.0.0.1:0".parse().unwrap();
    // Every test connects from 127.0.0.1: the per-IP defaults (20 streams, 60/min) would
    // refuse the busier tests. The limit tests set their own.
    c.limits.max_connections_per_ip = 100_000;
    c.limits.connect_rate_per_ip = ssegate::config::Rate {
        count: std::num::NonZeroU32::new(100_000).unwrap(),
        per: Duration::from_secs(1),
    };
    c
}

/// A sidecar started in-process.
pub struct Sidecar {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub running: Option<Running>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.shutdown();
        }
    }
}

/// Starts ssegate with `config`.
pub async fn sidecar(config: Config) -> Sidecar {
    let running = ssegate::app::start(config).await.unwrap();
    Sidecar {
        proxy: running.proxy_addr,
        admin: running.admin_addr,
        running: Some(running),
    }
}

/// An upstream that answers 200 "app" to everything, and a sidecar in front of it.
pub async fn sidecar_with(tune: impl FnOnce(&mut Config)) -> (Sidecar, Upstream) {
    let up = upstream(|_req| async { Response::new(full("app")) }).await;
    let mut config = test_config(&up.uri);
    tune(&mut config);
    (sidecar(config).await, up)
}

/// Sends one request on a fresh HTTP/1.1 connection and returns the response head and
/// the connection's body.
pub async fn send(addr: SocketAddr, req: Request<UBody>) -> Response<Incoming> {
    send_on(TcpStream::connect(addr).await.unwrap(), req).await
}

/// Sends one request that is meant to wait (an app holding it until the test lets go):
/// no deadline of its own, the test's end bounds it.
pub async fn send_held(addr: SocketAddr, req: Request<UBody>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender.send_request(req).await.unwrap()
}

/// Sends one request on an already connected stream.
pub async fn send_on(stream: TcpStream, req: Request<UBody>) -> Response<Incoming> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .expect("no response within the deadline")
        .unwrap()
}

/// A request with headers and a body.
pub fn request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<UBody> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "test.local");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(full(body)).unwrap()
}

/// Reads a whole body.
pub async fn body_bytes(resp: Response<Incoming>) -> Bytes {
    tokio::time::timeout(DEADLINE, resp.into_body().collect())
        .await
        .expect("body not complete within the deadline")
        .unwrap()
        .to_bytes()
}

/// Status and body (as JSON) of a request.
pub async fn call_json(addr: SocketAddr, req: Request<UBody>) -> (StatusCode, serde_json::Value) {
    let resp = send(addr, req).await;
    let status = resp.status();
    let body = body_bytes(resp).await;
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// Publishes `body` (JSON text) on the internal listener; returns the status and JSON.
pub async fn publish(admin: SocketAddr, body: &str) -> (StatusCode, serde_json::Value) {
    call_json(
        admin,
        request(
            "POST",
            "/publish",
            &[("content-type", "application/json")],
            body.to_owned(),
        ),
    )
    .await
}

/// Publishes and returns the ids, asserting success.
pub async fn publish_ok(admin: SocketAddr, body: &str) -> Vec<String> {
    let (status, json) = publish(admin, body).await;
    assert_eq!(status, StatusCode::OK, "publish failed: {json}");
    json["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// A client reading an SSE stream over a real socket with a spec-following parser.
pub struct SseClient {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    body: Incoming,
    parser: Parser,
    queue: VecDeque<ParsedEvent>,
    /// Comment lines seen so far (heartbeats are `" hb"`).
    pub comments: Vec<String>,
    /// Retry values seen so far.
    pub retries: Vec<u64>,
    /// The raw bytes received so far.
    pub raw: Vec<u8>,
    /// The last event id the stream set (by an event or an id-only block), as a browser
    /// would send it in `Last-Event-ID`.
    pub last_id: Option<String>,
    /// The server ended the stream without the last chunk (cut, not closed).
    pub cut: bool,
}

impl SseClient {
    /// Opens `GET path_and_query` with extra headers.
    pub async fn connect(addr: SocketAddr, path_and_query: &str, headers: &[(&str, &str)]) -> Self {
        Self::connect_on(
            TcpStream::connect(addr).await.unwrap(),
            path_and_query,
            headers,
        )
        .await
    }

    /// Opens `GET path_and_query` on an already connected stream.
    pub async fn connect_on(
        stream: TcpStream,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Self {
        let mut h = vec![("accept", "text/event-stream")];
        h.extend_from_slice(headers);
        Self::from_response(send_on(stream, request("GET", path_and_query, &h, Bytes::new())).await)
    }

    /// Reads the stream of a response already received (e.g. over HTTP/2).
    pub fn from_response(resp: hyper::Response<Incoming>) -> Self {
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        Self {
            status,
            headers: parts.headers,
            body,
            parser: Parser::default(),
            queue: VecDeque::new(),
            comments: Vec::new(),
            retries: Vec::new(),
            raw: Vec::new(),
            last_id: None,
            cut: false,
        }
    }

    /// Opens a stream and asserts it was accepted.
    pub async fn open(addr: SocketAddr, path_and_query: &str) -> Self {
        let c = Self::connect(addr, path_and_query, &[]).await;
        assert_eq!(c.status, StatusCode::OK, "stream {path_and_query} refused");
        c
    }

    /// Reads one more chunk; false at the end of the stream.
    async fn read_chunk(&mut self, deadline: Duration) -> bool {
        let frame = tokio::time::timeout(deadline, self.body.frame())
            .await
            .expect("nothing received within the deadline");
        match frame {
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    self.raw.extend_from_slice(&data);
                    for ev in self.parser.feed(&data) {
                        self.comments.extend(ev.comments.iter().cloned());
                        if ev.id.is_some() {
                            self.last_id.clone_from(&ev.id);
                        }
                        if let Some(r) = ev.retry {
                            self.retries.push(r);
                        }
                        if ev.event.is_some() || !ev.data.is_empty() {
                            self.queue.push_back(ev);
                        }
                    }
                    self.comments.extend(self.parser.take_comments());
                }
                true
            }
            // A chunked stream cut short (a slow consumer cut while its write was blocked):
            // the end of the stream, as a browser's EventSource sees it.
            // Whatever else went wrong shows as events missing from what a test expects.
            Some(Err(_)) => {
                self.cut = true;
                false
            }
            None => false,
        }
    }

    /// The next event (blocks of only `retry:` or comments are skipped); `None` when the
    /// server ended the stream.
    pub async fn next(&mut self) -> Option<ParsedEvent> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Some(ev);
            }
            if !self.read_chunk(DEADLINE).await {
                return None;
            }
        }
    }

    /// The next event, which must exist.
    pub async fn event(&mut self) -> ParsedEvent {
        self.next()
            .await
            .expect("the stream ended instead of sending an event")
    }

    /// The next `n` events' data.
    pub async fn data(&mut self, n: usize) -> Vec<String> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.event().await.data);
        }
        v
    }

    /// Asserts the server ends the stream with no further event.
    pub async fn assert_ended(&mut self) {
        if let Some(ev) = self.next().await {
            panic!("expected the end of the stream, got {ev:?}");
        }
    }

    /// Waits until the stream has set a last event id (an event or an id-only block).
    pub async fn wait_last_id(&mut self) {
        while self.last_id.is_none() {
            assert!(
                self.read_chunk(DEADLINE).await,
                "stream ended before setting an id"
            );
        }
    }

    /// Waits until a heartbeat comment arrives.
    pub async fn wait_heartbeat(&mut self) {
        self.wait_heartbeats(1).await;
    }

    /// Waits until `n` heartbeats have arrived in all (each read within [`DEADLINE`]).
    pub async fn wait_heartbeats(&mut self, n: usize) {
        while self.comments.iter().filter(|c| *c == " hb").count() < n {
            assert!(
                self.read_chunk(DEADLINE).await,
                "stream ended before a heartbeat"
            );
        }
    }

    /// Asserts nothing arrives within `quiet` (for isolation checks).
    pub async fn assert_no_event_within(&mut self, quiet: Duration) {
        if let Some(ev) = self.queue.pop_front() {
            panic!("unexpected event {ev:?}");
        }
        if let Ok(Some(Ok(f))) = tokio::time::timeout(quiet, self.body.frame()).await
            && let Ok(data) = f.into_data()
        {
            let evs: Vec<_> = self
                .parser
                .feed(&data)
                .into_iter()
                .filter(|e| !e.data.is_empty() || e.event.is_some())
                .collect();
            assert!(evs.is_empty(), "unexpected events {evs:?}");
        }
    }
}

/// Polls `check` until it returns true, failing after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a test app reports it saw: the next report, failing after [`DEADLINE`].
pub async fn next_seen<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("the app saw no request within the deadline")
        .expect("the app is gone")
}

/// The value of header `name`, as text.
pub fn header<'h>(headers: &'h hyper::HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

/// The number of open streams, from `/stats`.
pub async fn connections(admin: SocketAddr) -> u64 {
    let (_, json) = call_json(admin, request("GET", "/stats", &[], Bytes::new())).await;
    json["connections"].as_u64().unwrap()
}

/// Like [`upstream`], also counting the TCP connections the upstream accepts (to see
/// whether ssegate reuses its connections to the app).
pub async fn counting_upstream<F, Fut>(
    handler: F,
) -> (Upstream, Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<UBody>> + Send + 'static,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let up = Upstream {
        addr,
        uri: format!("http://{addr}").parse().unwrap(),
        task,
    };
    (up, accepted)
}

// ---- Hardening helpers (hostile clients, faults): appended for tests/it/{hostile,faults}.rs.

/// Starts ssegate with `config` and the connection time limits of `options`.
pub async fn sidecar_opts(config: Config, options: ssegate::server::Options) -> Sidecar {
    let running = ssegate::app::start_with(config, options).await.unwrap();
    Sidecar {
        proxy: running.proxy_addr,
        admin: running.admin_addr,
        running: Some(running),
    }
}

/// A TCP connection to `to` from the loopback address `ip` (127.0.0.2, 127.0.0.3, …), so
/// per-IP limits see distinct clients.
pub async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// The connections the server listening on `addr` still holds open (its accepted sockets
/// that a process still owns), from /proc/net/tcp: what the server side really keeps,
/// whatever the client believes.
pub fn server_connections(addr: SocketAddr) -> usize {
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        panic!("server_connections reads IPv4 sockets only");
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(ip.octets()),
        addr.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        // local address, state (0A: listening), inode (0: no longer owned by a process)
        .filter(|f| f.len() > 9 && f[1] == local && f[3] != "0A" && f[9] != "0")
        .count()
}

/// A field of /proc/PID/status in kB (`VmRSS`, `VmHWM`).
pub fn proc_status_kb(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The real `ssegate` executable, run with a configuration text through `sh -c` (so a
/// `ulimit` can come first); its stderr is collected line by line. Killed when dropped.
pub struct Binary {
    child: std::process::Child,
    pub pid: u32,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    log: Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Binary {
    /// Runs `ssegate --config FILE` after the shell commands `before` (may be empty) and
    /// waits for its `listening` line.
    pub async fn start(config: &str, before: &str) -> Binary {
        Self::start_exe(env!("CARGO_BIN_EXE_ssegate"), config, before).await
    }

    /// [`Binary::start`] with another build of ssegate (`exe`), e.g. to measure before and
    /// after a change.
    pub async fn start_exe(exe: &str, config: &str, before: &str) -> Binary {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssegate.yaml");
        std::fs::write(&path, config).unwrap();
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{before}\nexec \"$0\" --config \"$1\""))
            .arg(exe)
            .arg(&path)
            .env_remove("SSEGATE_CONFIG")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let pipe = child.stderr.take().unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push(line);
            }
        });
        let mut bin = Binary {
            child,
            pid,
            proxy: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            log,
            _dir: dir,
        };
        let find = |log: &[String], name: &str| {
            let line = log.iter().find(|l| l.contains("listening"))?;
            let prefix = format!("{name}=");
            line.split_whitespace()
                .find_map(|t| t.strip_prefix(prefix.as_str()))
                .and_then(|v| v.parse::<SocketAddr>().ok())
        };
        let started = tokio::time::Instant::now();
        loop {
            let log = bin.log();
            if let (Some(proxy), Some(admin)) = (find(&log, "proxy"), find(&log, "admin")) {
                bin.proxy = proxy;
                bin.admin = admin;
                return bin;
            }
            assert!(
                bin.child.try_wait().unwrap().is_none(),
                "ssegate exited before listening: {log:?}"
            );
            assert!(
                started.elapsed() < DEADLINE,
                "ssegate did not log `listening`: {log:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its stderr lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// How many file descriptors it has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .count()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request body fed by the test chunk by chunk through a channel: chunked, with no
/// Content-Length.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// `/metrics` of the internal listener at `admin`, parsed into `series → value`.
pub async fn metrics(admin: SocketAddr) -> std::collections::HashMap<String, f64> {
    let body = body_bytes(send(admin, request("GET", "/metrics", &[], Bytes::new())).await).await;
    String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

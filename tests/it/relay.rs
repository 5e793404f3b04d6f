//! The wire behaviour of forwarding on a kept-alive HTTP/1.1 client connection,
//! pinned for any implementation of the relay: sequential and pipelined requests, every way
//! a response body can be delimited (length, chunked, close, none), interim responses,
//! connection closing, idle timeout, rate limiting, metrics, and ssegate's own paths served
//! between proxied requests. Also what the relay does with a misbehaving app: stale pooled
//! connections, ambiguous framing.
//!
//! The client is a raw socket with a small strict HTTP/1.1 response reader ([`Wire`]), so a
//! framing error (a stray byte, a body that runs short or long) fails the test instead of
//! being smoothed over by a lenient client; misbehaving apps are raw listeners
//! ([`raw_upstream`]).

use crate::support::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, StatusCode};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

// ---- A strict HTTP/1.1 client on a raw socket.

/// How a response body is delimited (RFC 9112 §6.3), and while reading it, what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body: a response to HEAD, 1xx, 204, 304 (or a body fully read).
    Empty,
    /// `Content-Length`: this many bytes (left).
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body runs until the server closes the connection.
    Close,
}

/// A response head as received.
#[derive(Debug)]
struct Head {
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    status: u16,
    /// Names lower-cased, in the order received.
    headers: Vec<(String, String)>,
    framing: Framing,
    /// The head as text, for failure messages.
    raw: String,
}

impl Head {
    /// Every value of `name`, one per field line.
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of `name`, which may appear at most once.
    fn get(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} sent {} times: {}",
            all.len(),
            self.raw
        );
        all.first().copied()
    }
}

/// A complete response.
#[derive(Debug)]
struct Resp {
    head: Head,
    body: Vec<u8>,
}

impl Resp {
    fn status(&self) -> u16 {
        self.head.status
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.get(name)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", self.head.raw, self.text()))
    }
}

/// The largest response head the reader accepts.
const MAX_HEAD: usize = 64 * 1024;

/// One client connection, written and read byte by byte.
struct Wire {
    stream: TcpStream,
    /// Received and not yet consumed.
    buf: Vec<u8>,
    /// The server closed (or reset) the connection.
    eof: bool,
}

impl Wire {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        Wire {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
            eof: false,
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.unwrap();
    }

    /// Sends `GET target` and reads the answer.
    async fn get(&mut self, target: &str) -> Resp {
        self.send(get(target)).await;
        self.response("GET").await
    }

    /// Reads more bytes; false once the server has closed the connection.
    async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "the server sent nothing for {DEADLINE:?}; unread: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Ok(Ok(0)) => {
                self.eof = true;
                false
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                self.eof = true;
                false
            }
            Ok(Err(e)) => panic!("read failed: {e}"),
        }
    }

    /// The next response head, or `None` if the connection was closed before one began.
    async fn try_head(&mut self, method: &str) -> Option<Head> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.buf.len() <= MAX_HEAD,
                "a response head over {MAX_HEAD} bytes"
            );
            if !self.fill().await {
                assert!(
                    self.buf.is_empty(),
                    "closed in the middle of a response head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        };
        let raw_bytes: Vec<u8> = self.buf.drain(..end).collect();
        let raw = String::from_utf8_lossy(&raw_bytes).into_owned();
        for (i, &b) in raw_bytes.iter().enumerate() {
            assert!(
                b != b'\n' || (i > 0 && raw_bytes[i - 1] == b'\r'),
                "a bare LF in the head: {raw:?}"
            );
        }
        assert!(raw.starts_with("HTTP/1."), "not a status line: {raw:?}");
        let mut fields = [httparse::EMPTY_HEADER; 100];
        let mut parsed = httparse::Response::new(&mut fields);
        match parsed.parse(&raw_bytes) {
            Ok(httparse::Status::Complete(n)) => assert_eq!(n, end, "{raw:?}"),
            other => panic!("a malformed response head ({other:?}): {raw:?}"),
        }
        let version = parsed.version.unwrap();
        let status = parsed.code.unwrap();
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                let value = std::str::from_utf8(h.value)
                    .unwrap_or_else(|_| panic!("a header value that is not text: {raw:?}"));
                (h.name.to_ascii_lowercase(), value.to_owned())
            })
            .collect();
        let mut head = Head {
            version,
            status,
            headers,
            framing: Framing::Empty,
            raw,
        };
        head.framing = framing(&head, method);
        Some(head)
    }

    /// Reads up to CRLF; returns the line without it.
    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).take(i).collect();
                assert!(!line.contains(&b'\n'), "a bare LF: {line:?}");
                return String::from_utf8(line).expect("a line that is not text");
            }
            assert!(
                self.fill().await,
                "closed in the middle of a line: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Exactly `n` bytes.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "closed with {} of {n} body bytes missing",
                n - self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    /// The next piece of a body being read with `left`; `None` at its end.
    async fn piece(&mut self, left: &mut Framing) -> Option<Vec<u8>> {
        match *left {
            Framing::Empty => None,
            Framing::Length(0) => {
                *left = Framing::Empty;
                None
            }
            Framing::Length(n) => {
                if self.buf.is_empty() {
                    assert!(self.fill().await, "closed with {n} body bytes missing");
                }
                let k = n.min(self.buf.len());
                *left = Framing::Length(n - k);
                Some(self.buf.drain(..k).collect())
            }
            Framing::Chunked => {
                let size_line = self.line().await;
                let size = size_line.split(';').next().unwrap();
                assert!(
                    !size.is_empty() && size.bytes().all(|b| b.is_ascii_hexdigit()),
                    "a malformed chunk size line: {size_line:?}"
                );
                let size = usize::from_str_radix(size, 16).unwrap();
                if size == 0 {
                    // Trailer fields, then the empty line.
                    while !self.line().await.is_empty() {}
                    *left = Framing::Empty;
                    return None;
                }
                let data = self.take(size).await;
                let end = self.line().await;
                assert!(end.is_empty(), "chunk data longer than its size: {end:?}");
                Some(data)
            }
            Framing::Close => {
                if self.buf.is_empty() && !self.fill().await {
                    *left = Framing::Empty;
                    return None;
                }
                Some(std::mem::take(&mut self.buf))
            }
        }
    }

    /// The whole body of `head`.
    async fn body(&mut self, head: &Head) -> Vec<u8> {
        let mut left = head.framing;
        let mut body = Vec::new();
        while let Some(piece) = self.piece(&mut left).await {
            body.extend_from_slice(&piece);
        }
        body
    }

    /// The next response (an interim one included), or `None` if the connection was closed
    /// before one began.
    async fn try_response(&mut self, method: &str) -> Option<Resp> {
        let head = self.try_head(method).await?;
        let body = self.body(&head).await;
        Some(Resp { head, body })
    }

    /// The next response, which must come.
    async fn response(&mut self, method: &str) -> Resp {
        self.try_response(method)
            .await
            .expect("the connection was closed instead of answering")
    }

    /// The final response, and the heads of the interim (1xx) responses before it.
    async fn final_response(&mut self, method: &str) -> (Vec<Head>, Resp) {
        let mut interim = Vec::new();
        loop {
            let r = self.response(method).await;
            if (100..200).contains(&r.status()) && r.status() != 101 {
                interim.push(r.head);
            } else {
                return (interim, r);
            }
        }
    }

    /// Asserts the server closes the connection, sending nothing more, within the deadline.
    async fn assert_closed(&mut self) {
        while self.fill().await {}
        assert!(
            self.buf.is_empty(),
            "bytes after the last response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

/// How the body after `head` (the answer to `method`) is delimited; asserts the head does
/// not contradict itself (RFC 9112 §6.1-6.3, RFC 9110 §8.6).
fn framing(head: &Head, method: &str) -> Framing {
    let te = head.all("transfer-encoding");
    let cl = head.all("content-length");
    let raw = &head.raw;
    if (100..200).contains(&head.status) || head.status == 204 {
        assert!(
            te.is_empty() && cl.is_empty(),
            "a {} with a body length: {raw}",
            head.status
        );
    }
    if !te.is_empty() {
        assert!(
            cl.is_empty(),
            "both Transfer-Encoding and Content-Length: {raw}"
        );
        assert_eq!(head.version, 1, "Transfer-Encoding in HTTP/1.0: {raw}");
    }
    if method == "HEAD" || (100..200).contains(&head.status) || [204, 304].contains(&head.status) {
        return Framing::Empty;
    }
    if !te.is_empty() {
        assert!(
            te.len() == 1 && te[0].eq_ignore_ascii_case("chunked"),
            "a transfer coding other than chunked: {raw}"
        );
        return Framing::Chunked;
    }
    match cl.as_slice() {
        [] => Framing::Close,
        [v] => {
            assert!(
                !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()),
                "a malformed Content-Length: {raw}"
            );
            Framing::Length(v.parse().unwrap())
        }
        _ => panic!("several Content-Length fields: {raw}"),
    }
}

/// A plain GET request.
fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: test.local\r\n\r\n")
}

// ---- Apps.

/// What the app saw of one request.
#[derive(Debug)]
struct Seen {
    method: String,
    target: String,
    headers: HeaderMap,
    body: Bytes,
}

/// What the echo app answers to `method target` with a body of `len` bytes.
fn echo(method: &str, target: &str, len: usize) -> String {
    format!("{method} {target} {len}")
}

/// An app that reports every request it receives (body included) and answers 200 with
/// [`echo`]; `/204` and `/304` get those statuses.
async fn echo_upstream() -> (Upstream, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let up = upstream(move |req: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let target = parts.uri.to_string();
            let answer = echo(parts.method.as_str(), &target, body.len());
            let _ = tx.send(Seen {
                method: parts.method.to_string(),
                target: target.clone(),
                headers: parts.headers,
                body,
            });
            let status = match target.as_str() {
                "/204" => StatusCode::NO_CONTENT,
                "/304" => StatusCode::NOT_MODIFIED,
                _ => StatusCode::OK,
            };
            let mut resp = Response::builder().status(status).header("etag", "\"v1\"");
            if status != StatusCode::OK {
                return resp.body(full("")).unwrap();
            }
            resp = resp.header("content-type", "text/plain");
            resp.body(full(answer)).unwrap()
        }
    })
    .await;
    (up, rx)
}

/// Asserts the app saw no further request.
fn assert_no_more_seen(rx: &mut mpsc::UnboundedReceiver<Seen>) {
    if let Ok(s) = rx.try_recv() {
        panic!("the app saw an unexpected request: {s:?}");
    }
}

/// An app written byte by byte, for answers an HTTP library would not send.
struct RawUpstream {
    uri: hyper::Uri,
    /// How many connections it has accepted.
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a raw app: `serve` gets each accepted connection with its number (0, 1, …).
async fn raw_upstream<F, Fut>(serve: F) -> RawUpstream
where
    F: Fn(usize, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(n, stream));
        }
    });
    RawUpstream {
        uri: format!("http://{addr}").parse().unwrap(),
        accepted,
        task,
    }
}

/// For a raw app: reads the next request (head, and a Content-Length body if any) and
/// returns its target; `None` when the proxy closed the connection.
async fn next_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 8192];
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut fields);
        if let httparse::Status::Complete(len) = req.parse(buf).expect("a malformed request") {
            let target = req.path.unwrap().to_owned();
            let mut body = 0;
            for h in req.headers.iter() {
                assert!(
                    !h.name.eq_ignore_ascii_case("transfer-encoding"),
                    "a chunked request body"
                );
                if h.name.eq_ignore_ascii_case("content-length") {
                    body = std::str::from_utf8(h.value).unwrap().parse().unwrap();
                }
            }
            while buf.len() < len + body {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..len + body);
            return Some(target);
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A complete `200 OK` with a Content-Length body.
fn ok_response(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// `len` pseudo-random bytes (xorshift64) from `seed`.
fn generated(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A request body or response body text of `len` printable bytes.
fn text_of(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + u8::try_from(i % 26).unwrap()))
        .collect()
}

// ---- Tests.

/// Guards keep-alive: sequential requests on one connection each reach the app exactly once,
/// with their own path and query, and come back in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sequential_requests_on_one_connection_each_reach_the_app_once() {
    let (up, mut seen) = echo_upstream().await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;
    for i in 0..20 {
        let target = match i % 4 {
            0 => format!("/items/{i}"),
            1 => format!("/search?q={i}&page=2"),
            2 => format!("/a/b/c/{i}?x=%20y&empty="),
            _ => format!("/{i}.json"),
        };
        let r = c.get(&target).await;
        assert_eq!(r.status(), 200, "{target}: {}", r.head.raw);
        assert_ne!(r.head.framing, Framing::Close, "{target}: {}", r.head.raw);
        assert_eq!(r.text(), echo("GET", &target, 0), "{target}");
        let s = next_seen(&mut seen).await;
        assert_eq!(
            (s.method.as_str(), s.target.as_str()),
            ("GET", target.as_str())
        );
    }
    assert_no_more_seen(&mut seen);
}

/// Guards pipelining: three requests in one write (a POST with a body in the middle) get
/// three answers in order, and the POST body reaches the app intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (up, mut seen) = echo_upstream().await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;
    c.send(
        "GET /one?a=1 HTTP/1.1\r\nHost: test.local\r\n\r\n\
         POST /two HTTP/1.1\r\nHost: test.local\r\nContent-Type: text/plain\r\n\
         Content-Length: 11\r\n\r\nhello world\
         GET /three HTTP/1.1\r\nHost: test.local\r\n\r\n",
    )
    .await;
    for (method, target, len) in [
        ("GET", "/one?a=1", 0),
        ("POST", "/two", 11),
        ("GET", "/three", 0),
    ] {
        let r = c.response(method).await;
        assert_eq!(r.status(), 200, "{target}: {}", r.head.raw);
        assert_eq!(r.text(), echo(method, target, len));
    }
    // The app may see them in any order; each once.
    let mut by_target = HashMap::new();
    for _ in 0..3 {
        let s = next_seen(&mut seen).await;
        by_target.insert(s.target.clone(), s);
    }
    assert_no_more_seen(&mut seen);
    assert_eq!(by_target.len(), 3, "{by_target:?}");
    assert_eq!(by_target["/one?a=1"].method, "GET");
    assert_eq!(by_target["/two"].method, "POST");
    assert_eq!(by_target["/two"].body, "hello world");
    assert_eq!(by_target["/three"].method, "GET");
}

/// Guards chunked relaying: each chunk the app streams reaches the client before the next
/// one is produced, the framing is chunked, and the connection serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_chunked_response_is_relayed_chunk_by_chunk_then_the_connection_is_reused() {
    let (chunks_tx, chunks_rx) = mpsc::channel::<Bytes>(4);
    let chunks_rx = Arc::new(Mutex::new(Some(chunks_rx)));
    let up = upstream(move |req: Request<Incoming>| {
        let stream = (req.uri().path() == "/stream")
            .then(|| chunks_rx.lock().unwrap().take().expect("one stream only"));
        async move {
            match stream {
                Some(rx) => Response::builder()
                    .header("content-type", "text/plain")
                    .body(ChannelBody(rx).boxed())
                    .unwrap(),
                None => Response::new(full("after")),
            }
        }
    })
    .await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;
    c.send(get("/stream")).await;

    let parts = [
        Bytes::from("first chunk\n"),
        Bytes::from(text_of(100_000)),
        Bytes::from("\r\n0\r\n\r\nnot a terminator\r\n"),
        Bytes::from("last"),
    ];
    chunks_tx.send(parts[0].clone()).await.unwrap();
    let head = c
        .try_head("GET")
        .await
        .expect("closed instead of answering");
    assert_eq!(head.status, 200, "{}", head.raw);
    assert_eq!(head.framing, Framing::Chunked, "{}", head.raw);
    assert_eq!(head.get("content-type"), Some("text/plain"));
    let mut left = head.framing;
    let mut received = Vec::new();
    let mut expected = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            chunks_tx.send(part.clone()).await.unwrap();
        }
        expected.extend_from_slice(part);
        // The part must arrive while the app holds back the next one.
        while received.len() < expected.len() {
            let piece = c
                .piece(&mut left)
                .await
                .unwrap_or_else(|| panic!("the body ended before part {i}"));
            received.extend_from_slice(&piece);
        }
        assert_eq!(received, expected, "after part {i}");
    }
    drop(chunks_tx);
    assert_eq!(
        c.piece(&mut left).await,
        None,
        "the body did not end with the app's"
    );

    let r = c.get("/after").await;
    assert_eq!((r.status(), r.text().as_str()), (200, "after"));
}

/// Guards HEAD: the answer carries the GET's Content-Length and no body, and the relay does
/// not wait for one before serving the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_the_length_without_a_body_and_the_connection_goes_on() {
    const BODY: &str = "0123456789abcdef";
    let up = upstream(|req: Request<Incoming>| async move {
        if req.method() == hyper::Method::HEAD {
            Response::builder()
                .header("content-length", BODY.len())
                .body(full(""))
                .unwrap()
        } else {
            Response::new(full(BODY))
        }
    })
    .await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;

    let r = c.get("/doc").await;
    assert_eq!((r.status(), r.text().as_str()), (200, BODY));
    let length = r.header("content-length").map(str::to_owned);
    assert_eq!(length.as_deref(), Some("16"), "{}", r.head.raw);

    c.send("HEAD /doc HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .await;
    let r = c.response("HEAD").await;
    assert_eq!(r.status(), 200, "{}", r.head.raw);
    assert_eq!(
        r.header("content-length"),
        length.as_deref(),
        "{}",
        r.head.raw
    );
    assert!(r.body.is_empty());

    // A body after the HEAD answer would be read here as the next response's head.
    let r = c.get("/doc").await;
    assert_eq!((r.status(), r.text().as_str()), (200, BODY));
}

/// Guards bodiless statuses: 204 and 304 are relayed with no body and no length, and the
/// next request on the connection is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_and_not_modified_have_no_body_and_the_connection_goes_on() {
    let (up, mut seen) = echo_upstream().await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;

    let r = c.get("/204").await;
    assert_eq!(r.status(), 204, "{}", r.head.raw);
    assert!(r.header("transfer-encoding").is_none(), "{}", r.head.raw);
    c.send("GET /304 HTTP/1.1\r\nHost: test.local\r\nIf-None-Match: \"v1\"\r\n\r\n")
        .await;
    let r = c.response("GET").await;
    assert_eq!(r.status(), 304, "{}", r.head.raw);
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert!(r.header("transfer-encoding").is_none(), "{}", r.head.raw);

    let r = c.get("/after").await;
    assert_eq!((r.status(), r.text()), (200, echo("GET", "/after", 0)));
    for target in ["/204", "/304", "/after"] {
        assert_eq!(next_seen(&mut seen).await.target, target);
    }
    assert_no_more_seen(&mut seen);
}

/// Guards close-delimited app responses: the client gets the whole body, and if it is
/// relayed close-delimited too, the connection is then closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_app_response_reaches_the_client_whole() {
    let body = text_of(40_000);
    let answer = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n{body}");
    let up = raw_upstream(move |_, mut s| {
        let answer = answer.clone();
        async move {
            let mut buf = Vec::new();
            if next_request(&mut s, &mut buf).await.is_some() {
                s.write_all(answer.as_bytes()).await.unwrap();
            }
            // Dropped: the close ends the body.
        }
    })
    .await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;
    for round in 0..2 {
        let r = c.get(&format!("/close-delimited/{round}")).await;
        assert_eq!(r.status(), 200, "{}", r.head.raw);
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert!(
            r.text() == body,
            "round {round}: {} of {} bytes",
            r.body.len(),
            body.len()
        );
        if r.head.framing == Framing::Close {
            c.assert_closed().await;
            return;
        }
        // Delimited for the client: the connection goes on.
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

/// Guards stale pooled connections: when the app closes a kept-alive connection after
/// answering, the next request is sent on a fresh one and succeeds (no 502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_app_closed_after_answering_is_not_reused() {
    const ROUNDS: usize = 5;
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let up = raw_upstream(move |n, mut s| {
        let closed_tx = closed_tx.clone();
        async move {
            let mut buf = Vec::new();
            if let Some(target) = next_request(&mut s, &mut buf).await {
                // Keep-alive framing, then the app closes (its idle timeout, a restart…).
                let answer = ok_response(&format!("conn {n} {target}"));
                s.write_all(answer.as_bytes()).await.unwrap();
            }
            drop(s);
            let _ = closed_tx.send(n);
        }
    })
    .await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;
    for round in 0..ROUNDS {
        let target = format!("/round/{round}");
        let r = c.get(&target).await;
        assert_eq!(
            (r.status(), r.text()),
            (200, format!("conn {round} {target}")),
            "round {round}: {}",
            r.head.raw
        );
        let n = tokio::time::timeout(DEADLINE, closed.recv())
            .await
            .expect("the app did not close")
            .unwrap();
        assert_eq!(n, round);
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), ROUNDS);
}

/// Guards request bodies on keep-alive: a 200 KiB body reaches the app byte for byte and
/// the next request on the connection is read from the right place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_body_on_a_kept_alive_connection_arrives_exactly() {
    const LEN: usize = 200 * 1024;
    let (up, mut seen) = echo_upstream().await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;
    let body = generated(42, LEN);
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: test.local\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {LEN}\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&body);
    c.send(&req).await;
    let r = c.response("POST").await;
    assert_eq!((r.status(), r.text()), (200, echo("POST", "/upload", LEN)));
    let s = next_seen(&mut seen).await;
    assert_eq!(s.body.len(), LEN);
    assert!(s.body == body, "the body was altered");

    let r = c.get("/after").await;
    assert_eq!((r.status(), r.text()), (200, echo("GET", "/after", 0)));
    assert_eq!(next_seen(&mut seen).await.target, "/after");
    assert_no_more_seen(&mut seen);
}

/// Guards `Connection: close` from the client: answered, then the server closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_close_is_answered_then_closed() {
    let (up, _seen) = echo_upstream().await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;
    let r = c.get("/first").await;
    assert_eq!((r.status(), r.text()), (200, echo("GET", "/first", 0)));
    c.send("GET /bye HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
        .await;
    let r = c.response("GET").await;
    assert_eq!((r.status(), r.text()), (200, echo("GET", "/bye", 0)));
    c.assert_closed().await;
}

/// Guards HTTP/1.0 without keep-alive: answered (not chunked), then closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_request_is_answered_then_closed() {
    let (up, mut seen) = echo_upstream().await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;
    c.send("GET /old?v=1.0 HTTP/1.0\r\nHost: test.local\r\n\r\n")
        .await;
    let r = c.response("GET").await;
    assert_eq!(r.status(), 200, "{}", r.head.raw);
    assert_ne!(
        r.head.framing,
        Framing::Chunked,
        "chunked to an HTTP/1.0 client"
    );
    assert_eq!(r.text(), echo("GET", "/old?v=1.0", 0));
    c.assert_closed().await;
    assert_eq!(next_seen(&mut seen).await.target, "/old?v=1.0");
}

/// Guards `requests_per_ip` on a kept-alive connection: the refused request is a JSON 429
/// and never reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_rate_limit_applies_per_request_on_a_kept_alive_connection() {
    let (up, mut seen) = echo_upstream().await;
    let mut config = test_config(&up.uri);
    config.limits.requests_per_ip = Some(ssegate::config::Rate {
        count: std::num::NonZeroU32::new(3).unwrap(),
        per: Duration::from_secs(60),
    });
    let gate = sidecar(config).await;
    let mut c = Wire::connect(gate.proxy).await;
    let mut served = 0;
    let refused = loop {
        let r = c.get(&format!("/n/{served}")).await;
        if r.status() != 200 {
            break r;
        }
        served += 1;
        assert!(served <= 5, "never refused");
    };
    assert!(served >= 1, "the first request was refused");
    assert_eq!(refused.status(), 429, "{}", refused.head.raw);
    assert!(
        refused.header("retry-after").is_some(),
        "{}",
        refused.head.raw
    );
    assert_eq!(
        refused.json()["error"],
        "rate_limited",
        "{}",
        refused.text()
    );
    for i in 0..served {
        assert_eq!(next_seen(&mut seen).await.target, format!("/n/{i}"));
    }
    assert_no_more_seen(&mut seen);

    // The refusal was framed right: the connection is either closed or still in step.
    c.send(get("/again")).await;
    if let Some(r) = c.try_response("GET").await {
        assert_eq!(r.status(), 429, "{}", r.head.raw);
    }
    assert_no_more_seen(&mut seen);
}

/// Guards the events path after a proxied request on the same connection: it becomes an
/// event stream that delivers a published event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_opened_after_a_proxied_request_on_the_same_connection_delivers() {
    let (up, _seen) = echo_upstream().await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;
    let r = c.get("/page").await;
    assert_eq!((r.status(), r.text()), (200, echo("GET", "/page", 0)));

    c.send(
        "GET /events?topic=relay HTTP/1.1\r\nHost: test.local\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await;
    let head = c
        .try_head("GET")
        .await
        .expect("closed instead of answering");
    assert_eq!(head.status, 200, "{}", head.raw);
    assert_eq!(head.get("content-type"), Some("text/event-stream"));
    let ids = publish_ok(gate.admin, r#"{"topic":"relay","data":"over keep-alive"}"#).await;
    let mut parser = ssegate::sse::Parser::default();
    let mut left = head.framing;
    let event = 'found: loop {
        let piece = c
            .piece(&mut left)
            .await
            .expect("the stream ended before the event");
        for ev in parser.feed(&piece) {
            if !ev.data.is_empty() {
                break 'found ev;
            }
        }
    };
    assert_eq!(event.id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(event.data, "over keep-alive");
}

/// Guards ssegate's own files after a proxied request on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_client_is_served_after_a_proxied_request_on_the_same_connection() {
    let (up, mut seen) = echo_upstream().await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;
    let r = c.get("/page").await;
    assert_eq!((r.status(), r.text()), (200, echo("GET", "/page", 0)));
    let r = c.get("/_ssegate/client.js").await;
    assert_eq!(r.status(), 200, "{}", r.head.raw);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/javascript")),
        "{}",
        r.head.raw
    );
    assert!(r.text().contains("SsegateSource"), "{}", r.text());
    let r = c.get("/page2").await;
    assert_eq!((r.status(), r.text()), (200, echo("GET", "/page2", 0)));
    assert_eq!(next_seen(&mut seen).await.target, "/page");
    assert_eq!(next_seen(&mut seen).await.target, "/page2");
    assert_no_more_seen(&mut seen);
}

/// Guards interim responses from the app: a 103 before the 200 leaves the final response
/// intact (a relayed 103 is well formed and bodiless) and the connection in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_hints_before_the_final_response_keep_it_and_the_connection_intact() {
    let up = raw_upstream(|_, mut s| async move {
        let mut buf = Vec::new();
        while let Some(target) = next_request(&mut s, &mut buf).await {
            let hints = "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n";
            if s.write_all(hints.as_bytes()).await.is_err() {
                return;
            }
            let answer = ok_response(&format!("final {target}"));
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;
    for target in ["/hinted", "/next"] {
        c.send(get(target)).await;
        let (interim, r) = c.final_response("GET").await;
        for h in &interim {
            assert_eq!(h.status, 103, "{}", h.raw);
        }
        assert_eq!(r.status(), 200, "{}", r.head.raw);
        assert_eq!(r.text(), format!("final {target}"));
    }
}

/// A raw app that answers `/both?cl=N` with a chunked "hello world" that also claims
/// `content-length: N`, and anything else with a plain 200 "ok".
async fn chunked_and_length_upstream() -> RawUpstream {
    raw_upstream(|_, mut s| async move {
        let mut buf = Vec::new();
        while let Some(target) = next_request(&mut s, &mut buf).await {
            let answer = match target.strip_prefix("/both?cl=") {
                Some(cl) => format!(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: {cl}\r\n\r\n\
                     5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                ),
                None => ok_response("ok"),
            };
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// Asks for the ambiguous answer with `content-length: cl`: it must be relayed as chunked
/// (the decoded body, no Content-Length with it) or refused with a JSON 502, and the
/// connection must then be in step or closed.
async fn chunked_and_length(cl: usize) {
    let up = chunked_and_length_upstream().await;
    let gate = sidecar(test_config(&up.uri)).await;
    // A plain HTTP/1.1 GET (ssegate's own relay), then an HTTP/1.0 one (which hyper
    // forwards): both paths must get it right.
    let http10 = format!("GET /both?cl={cl} HTTP/1.0\r\nhost: test.local\r\n\r\n");
    for (request, method) in [(get(&format!("/both?cl={cl}")), "GET"), (http10, "GET")] {
        let mut c = Wire::connect(gate.proxy).await;
        c.send(&request).await;
        let r = c.response(method).await;
        match r.status() {
            200 => assert_eq!(r.text(), "hello world", "{method}: {}", r.head.raw),
            502 => assert_eq!(r.json()["error"], "bad_gateway"),
            other => panic!("{method}: {other}: {}", r.head.raw),
        }
        c.send(get("/ok")).await;
        if let Some(r) = c.try_response("GET").await {
            assert_eq!((r.status(), r.text().as_str()), (200, "ok"));
        }
    }
}

/// Guards ambiguous app framing (Transfer-Encoding and a Content-Length larger than the
/// body): chunked wins or a 502, never a length the body does not fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_with_a_larger_content_length_from_the_app_is_relayed_as_chunked_or_refused() {
    chunked_and_length(100).await;
}

/// Guards ambiguous app framing (Transfer-Encoding and a Content-Length smaller than the
/// body): chunked wins or a 502, never a body silently cut to the length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_with_a_smaller_content_length_from_the_app_is_relayed_as_chunked_or_refused() {
    chunked_and_length(3).await;
}

/// Guards conflicting Content-Length values from the app: a JSON 502 or a closed
/// connection, never a body cut to one of the lengths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_response_with_two_different_lengths_is_a_502() {
    let up = raw_upstream(|_, mut s| async move {
        let mut buf = Vec::new();
        while let Some(target) = next_request(&mut s, &mut buf).await {
            if target == "/two-lengths" {
                let answer = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 11\r\n\r\n\
                              hello world";
                let _ = s.write_all(answer.as_bytes()).await;
                return;
            }
            if s.write_all(ok_response("ok").as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;
    let r = c.get("/first").await;
    assert_eq!((r.status(), r.text().as_str()), (200, "ok"));
    c.send(get("/two-lengths")).await;
    let Some(r) = c.try_response("GET").await else {
        return; // closed without an answer: acceptable
    };
    assert_eq!(r.status(), 502, "{}{}", r.head.raw, r.text());
    assert_eq!(r.json()["error"], "bad_gateway");
    c.send(get("/ok")).await;
    if let Some(r) = c.try_response("GET").await {
        assert_eq!((r.status(), r.text().as_str()), (200, "ok"));
    }
}

/// The `ssegate_proxy_requests_total` counts by status class, 1xx to 5xx.
async fn proxy_counts(admin: std::net::SocketAddr) -> Vec<u64> {
    let resp = send(admin, request("GET", "/metrics", &[], Bytes::new())).await;
    let text = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    ["1xx", "2xx", "3xx", "4xx", "5xx"]
        .iter()
        .map(|class| {
            let series = format!("ssegate_proxy_requests_total{{status_class=\"{class}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .unwrap_or_else(|| panic!("no {series}in {text}"))
                .trim()
                .parse()
                .unwrap()
        })
        .collect()
}

/// Guards the proxy metric: every request on a kept-alive connection is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_a_kept_alive_connection_is_counted_once() {
    const N: u64 = 7;
    let (up, _seen) = echo_upstream().await;
    let gate = sidecar(test_config(&up.uri)).await;
    let before = proxy_counts(gate.admin).await;
    let mut c = Wire::connect(gate.proxy).await;
    for i in 0..N {
        let r = c.get(&format!("/m/{i}")).await;
        assert_eq!(r.status(), 200);
    }
    let after = proxy_counts(gate.admin).await;
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, [0, N, 0, 0, 0], "by status class 1xx..5xx");
}

/// Guards the idle keep-alive limit: a connection that sends no next request is closed at
/// the header read timeout, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_at_the_header_timeout() {
    let timeout = Duration::from_secs(1);
    let (up, _seen) = echo_upstream().await;
    let options = ssegate::server::Options {
        header_read_timeout: timeout,
        ..Default::default()
    };
    let gate = sidecar_opts(test_config(&up.uri), options).await;
    let mut c = Wire::connect(gate.proxy).await;
    let r = c.get("/once").await;
    assert_eq!((r.status(), r.text()), (200, echo("GET", "/once", 0)));
    let idle_since = Instant::now();
    c.assert_closed().await;
    let idle = idle_since.elapsed();
    assert!(
        idle >= timeout.mul_f32(0.9),
        "closed after {idle:?} idle, the timeout is {timeout:?}"
    );
    assert!(
        idle < timeout + Duration::from_secs(5),
        "closed after {idle:?}"
    );
}

/// Guards a request body that stops arriving: a 408 with a JSON body at the header read
/// timeout, the connection closed after it, and nothing sent to the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_408_and_never_reaches_the_app() {
    let timeout = Duration::from_secs(1);
    let (up, mut seen) = echo_upstream().await;
    let options = ssegate::server::Options {
        header_read_timeout: timeout,
        ..Default::default()
    };
    let gate = sidecar_opts(test_config(&up.uri), options).await;
    let mut c = Wire::connect(gate.proxy).await;
    c.send("POST /slow HTTP/1.1\r\nhost: test.local\r\ncontent-length: 10\r\n\r\nabc")
        .await;
    let r = c.response("POST").await;
    assert_eq!(r.status(), 408, "{}", r.head.raw);
    assert_eq!(r.json()["error"], "request_timeout");
    c.assert_closed().await;
    assert_no_more_seen(&mut seen);
}

/// Guards forwarding headers on a later request of a connection: computed afresh (nothing
/// carried over from the first request), client hop-by-hop headers stripped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_on_a_second_request_are_its_own() {
    let (up, mut seen) = echo_upstream().await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;
    c.send(
        "GET /first HTTP/1.1\r\nHost: first.example\r\nX-Forwarded-For: 10.9.8.7\r\n\
         Forwarded: for=10.9.8.7\r\nX-First-Only: 1\r\n\r\n",
    )
    .await;
    assert_eq!(c.response("GET").await.status(), 200);
    let s = next_seen(&mut seen).await;
    assert_eq!(
        header(&s.headers, "x-forwarded-for"),
        Some("10.9.8.7, 127.0.0.1")
    );

    c.send(
        "GET /page HTTP/1.1\r\nHost: test.local\r\nConnection: keep-alive, x-custom-hop\r\n\
         X-Custom-Hop: secret\r\nKeep-Alive: timeout=5\r\nX-Normal: kept\r\n\r\n",
    )
    .await;
    let r = c.response("GET").await;
    assert_eq!((r.status(), r.text()), (200, echo("GET", "/page", 0)));
    let s = next_seen(&mut seen).await;
    assert_eq!(s.target, "/page");
    let h = &s.headers;
    assert_eq!(header(h, "host"), Some("test.local"));
    assert_eq!(header(h, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(h, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(h, "x-forwarded-host"), Some("test.local"));
    assert_eq!(
        header(h, "forwarded"),
        Some("for=127.0.0.1;proto=http;host=\"test.local\"")
    );
    for name in ["x-custom-hop", "keep-alive", "x-first-only"] {
        assert_eq!(header(h, name), None, "{name} reached the app");
    }
    if let Some(v) = header(h, "connection") {
        assert!(!v.contains("x-custom-hop"), "connection: {v}");
    }
    assert_eq!(header(h, "x-normal"), Some("kept"));
}

/// Guards hop-by-hop response headers on a kept-alive client connection: the app's
/// `Connection`-named and `Keep-Alive` headers never reach the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_hop_by_hop_response_headers_do_not_reach_a_kept_alive_client() {
    let up = upstream(|_req| async {
        Response::builder()
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("x-normal", "kept")
            .body(full("app"))
            .unwrap()
    })
    .await;
    let gate = sidecar(test_config(&up.uri)).await;
    let mut c = Wire::connect(gate.proxy).await;
    for target in ["/one", "/two"] {
        let r = c.get(target).await;
        assert_eq!((r.status(), r.text().as_str()), (200, "app"));
        assert_eq!(r.header("x-secret"), None, "{}", r.head.raw);
        assert_eq!(r.header("keep-alive"), None, "{}", r.head.raw);
        for v in r.head.all("connection") {
            assert!(
                !v.to_ascii_lowercase().contains("x-secret"),
                "{}",
                r.head.raw
            );
        }
        assert_eq!(r.header("x-normal"), Some("kept"));
    }
}

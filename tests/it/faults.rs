//! Fault injection (issue 9): the app dying in the middle of a request or hanging, and the
//! process running out of file descriptors. Streams must not notice any of it.

use crate::support::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// An app that dies in a way chosen by the request path:
/// `/die-before-response` reads the request head and closes;
/// `/die-mid-request` reads the head and a little of a large body, then closes;
/// `/die-mid-response` sends `Content-Length: 100000` and 1000 bytes, then closes;
/// `/die-mid-chunks` sends a chunked head and one chunk, then closes;
/// anything else gets a complete `200 ok`.
async fn dying_upstream() -> (hyper::Uri, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                match path.as_str() {
                    "/die-before-response" => {}
                    "/die-mid-request" => {
                        let _ = s.read(&mut buf).await;
                    }
                    "/die-mid-response" => {
                        let mut resp =
                            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
                        resp.extend_from_slice(&[b'x'; 1000]);
                        let _ = s.write_all(&resp).await;
                    }
                    "/die-mid-chunks" => {
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                            )
                            .await;
                    }
                    _ => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                    }
                }
                // Dropping the socket is the app dying: the kernel closes it.
            });
        }
    });
    (uri, task)
}

/// GETs `path` on a fresh connection: `None` if the connection closed before a response
/// head, else the status, the body bytes received, and whether the body ended in an error.
async fn try_get(proxy: SocketAddr, path: &str) -> Option<(StatusCode, Vec<u8>, bool)> {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tokio::time::timeout(
        DEADLINE,
        sender.send_request(request("GET", path, &[], Bytes::new())),
    )
    .await
    .expect("neither a response nor a close within the deadline")
    .ok()?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, body.frame()).await {
            Err(_) => panic!("the body neither ended nor failed within {DEADLINE:?}"),
            Ok(None) => return Some((status, got, false)),
            Ok(Some(Err(_))) => return Some((status, got, true)),
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    got.extend_from_slice(&d);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_dying_mid_request_is_a_fast_502_and_streams_keep_flowing() {
    let (uri, _app) = dying_upstream().await;
    let mut config = test_config(&uri);
    // A hang would take this long: "fast" is well under it.
    config.upstream_timeouts.response = Duration::from_secs(30);
    let gw = sidecar(config).await;
    let fast = Duration::from_secs(3);
    let mut stream = SseClient::open(gw.proxy, "/events?topic=t").await;

    // Before any response: 502 with the JSON body.
    let started = Instant::now();
    let (status, json) = call_json(
        gw.proxy,
        request("GET", "/die-before-response", &[], Bytes::new()),
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("bad_gateway")),
        "{json}"
    );
    assert!(started.elapsed() < fast, "took {:?}", started.elapsed());

    // In the middle of the request body: the client is still sending (it sends one chunk,
    // then waits) when the 502 comes.
    let started = Instant::now();
    let (body_tx, body) = tokio::sync::mpsc::channel(1);
    let req = hyper::Request::post("/die-mid-request")
        .header("host", "test.local")
        .body(ChannelBody(body).boxed())
        .unwrap();
    let pending = tokio::spawn(send(gw.proxy, req));
    body_tx
        .send(Bytes::from(vec![b'b'; 8 * 1024]))
        .await
        .unwrap();
    let resp = pending.await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let json: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).unwrap();
    assert_eq!(json["error"], "bad_gateway", "{json}");
    assert!(started.elapsed() < fast, "took {:?}", started.elapsed());
    drop(body_tx);

    // After the response has started, the status cannot change any more: ssegate closes
    // the client's connection, which sees an incomplete response, never a complete-looking
    // one: the body ends early (short of its Content-Length, or without the last chunk),
    // or, if the head had not left yet, the connection closes with no response at all.
    let started = Instant::now();
    for (path, sent) in [("/die-mid-response", 1000), ("/die-mid-chunks", 5)] {
        match try_get(gw.proxy, path).await {
            None => {}
            Some((status, got, failed)) => {
                assert_eq!(status, StatusCode::OK, "{path}");
                assert!(failed, "{path}: the cut-short body looked complete");
                assert!(got.len() <= sent, "{path}: {} bytes", got.len());
            }
        }
    }
    assert!(started.elapsed() < fast, "took {:?}", started.elapsed());

    // The app is reachable again, and the stream never noticed.
    let resp = send(gw.proxy, request("GET", "/ok", &[], Bytes::new())).await;
    assert_eq!(body_bytes(resp).await, "ok");
    let ids = publish_ok(gw.admin, r#"{"topic":"t","data":"unaffected"}"#).await;
    let ev = stream.event().await;
    assert_eq!(
        (ev.id.as_deref(), ev.data.as_str()),
        (Some(ids[0].as_str()), "unaffected")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_app_is_504_at_the_response_timeout() {
    let up = upstream(|_req| async {
        std::future::pending::<()>().await;
        unreachable!()
    })
    .await;
    let timeout = Duration::from_millis(800);
    let mut config = test_config(&up.uri);
    config.upstream_timeouts.response = timeout;
    let gw = sidecar(config).await;
    let mut stream = SseClient::open(gw.proxy, "/events?topic=t").await;

    // Several at once: each times out on its own clock, none waits for another.
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..5 {
        let proxy = gw.proxy;
        calls.spawn(async move {
            let r = call_json(
                proxy,
                request("GET", &format!("/slow/{i}"), &[], Bytes::new()),
            )
            .await;
            (r, started.elapsed())
        });
    }
    while let Some(r) = calls.join_next().await {
        let ((status, json), took) = r.unwrap();
        assert_eq!(
            (status, json["error"].as_str()),
            (StatusCode::GATEWAY_TIMEOUT, Some("gateway_timeout")),
            "{json}"
        );
        assert!(
            took >= timeout && took < timeout + Duration::from_secs(2),
            "answered after {took:?}; the timeout is {timeout:?}"
        );
    }
    let ids = publish_ok(gw.admin, r#"{"topic":"t","data":"unaffected"}"#).await;
    assert_eq!(stream.event().await.id.as_deref(), Some(ids[0].as_str()));
}

/// A stream opened with raw bytes, read raw (the test holds dozens at once).
struct RawStream {
    socket: TcpStream,
    seen: Vec<u8>,
}

impl RawStream {
    /// Reads until `needle` has arrived.
    async fn until(&mut self, needle: &str) {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&self.seen).contains(needle) {
            let n = tokio::time::timeout(DEADLINE, self.socket.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{needle:?} not received"))
                .unwrap();
            assert!(n > 0, "the stream ended before {needle:?}");
            self.seen.extend_from_slice(&buf[..n]);
        }
    }
}

/// How a new connection fared.
enum Opened {
    Stream(RawStream),
    /// Answered 503 or closed without an answer: a clean refusal.
    Refused(String),
}

/// Opens a stream on a fresh connection. Panics if the server neither answers nor closes
/// the connection within a few seconds (a client left hanging).
async fn open_raw(proxy: SocketAddr) -> Opened {
    let mut socket = TcpStream::connect(proxy).await.unwrap();
    let _ = socket
        .write_all(b"GET /events?topic=fd HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await {
            Err(_) => panic!("a new connection was left hanging (neither served nor refused)"),
            Ok(Ok(0) | Err(_)) => {
                return Opened::Refused(String::from_utf8_lossy(&seen).into_owned());
            }
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&seen).into_owned();
    if head.starts_with("HTTP/1.1 200") {
        Opened::Stream(RawStream { socket, seen })
    } else {
        Opened::Refused(head)
    }
}

/// A kept-alive connection to the internal listener, opened before the descriptors run out
/// (as an app keeps its pooled connections).
struct AdminConn(hyper::client::conn::http1::SendRequest<UBody>);

impl AdminConn {
    async fn open(admin: SocketAddr) -> Self {
        let stream = TcpStream::connect(admin).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self(sender)
    }

    async fn call(&mut self, req: hyper::Request<UBody>) -> (StatusCode, serde_json::Value) {
        self.0.ready().await.unwrap();
        let resp = tokio::time::timeout(DEADLINE, self.0.send_request(req))
            .await
            .unwrap()
            .unwrap();
        let status = resp.status();
        (
            status,
            serde_json::from_slice(&body_bytes(resp).await).unwrap(),
        )
    }

    async fn publish(&mut self, data: &str) {
        let body = format!(r#"{{"topic":"fd","data":"{data}"}}"#);
        let (status, json) = self
            .call(request(
                "POST",
                "/publish",
                &[("content-type", "application/json")],
                body,
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{json}");
    }

    async fn connections(&mut self) -> u64 {
        let (_, json) = self.call(request("GET", "/stats", &[], Bytes::new())).await;
        json["connections"].as_u64().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_new_connections_are_refused_cleanly_and_it_recovers() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = closed.local_addr().unwrap();
    drop(closed);
    let config = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: http://{upstream}\n\
         limits: {{ max_connections_per_ip: 1000, connect_rate_per_ip: 1000/s }}\n"
    );
    let mut bin = Binary::start(&config, "ulimit -n 64").await;
    let mut admin = AdminConn::open(bin.admin).await;
    let baseline = bin.open_fds();
    assert!(baseline < 30, "{baseline} descriptors open at start");

    // Open streams until the process runs out of descriptors.
    let mut streams = Vec::new();
    let refusal = loop {
        match open_raw(bin.proxy).await {
            Opened::Stream(s) => streams.push(s),
            Opened::Refused(answer) => break answer,
        }
        assert!(streams.len() < 64, "never ran out of descriptors");
    };
    let open = streams.len();
    assert!(
        open >= 64 - baseline - 5,
        "refused after only {open} streams: {refusal:?}"
    );
    assert!(
        refusal.is_empty() || refusal.starts_with("HTTP/1.1 503"),
        "{refusal:?}"
    );
    // Every further attempt is refused just as promptly.
    for _ in 0..5 {
        assert!(matches!(open_raw(bin.proxy).await, Opened::Refused(_)));
    }
    assert_eq!(admin.connections().await, open as u64);

    // The streams already open keep working.
    admin.publish("while-exhausted").await;
    for s in &mut streams {
        s.until("data: while-exhausted").await;
    }

    // Closing some frees their descriptors (noticed at the next write) and new
    // connections are served again.
    streams.truncate(open - 10);
    let mut nudges = 0;
    while admin.connections().await > (open - 10) as u64 {
        nudges += 1;
        assert!(nudges < 200, "the closed streams were never noticed");
        admin.publish("nudge").await;
    }
    for _ in 0..5 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match open_raw(bin.proxy).await {
                Opened::Stream(s) => {
                    streams.push(s);
                    break;
                }
                Opened::Refused(_) => assert!(Instant::now() < deadline, "no recovery"),
            }
        }
    }
    admin.publish("recovered").await;
    for s in &mut streams {
        s.until("data: recovered").await;
    }
    assert!(bin.running(), "ssegate exited: {:?}", bin.log());

    // One warning for the whole episode (not one per attempt), and one line when it ends.
    let log = bin.log();
    let failed = log.iter().filter(|l| l.contains("accept failed")).count();
    assert!(
        (1..=2).contains(&failed),
        "{failed} accept warnings: {log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("accepting connections again")),
        "{log:?}"
    );
}

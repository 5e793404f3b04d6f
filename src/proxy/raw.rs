//! Event streams served off hyper: a connection whose first request is a plain HTTP/1.1
//! `GET` of the events path is answered here and then held by a lean loop that only writes
//! frames and watches for the client going away.
//!
//! hyper keeps a full connection machine per connection (read and write buffers of several
//! KiB, the auto-builder's preface buffer) for as long as a response body is open; an SSE
//! stream needs none of it once its head is written. Everything else (other paths, HTTP/2,
//! a request with a body, pipelined bytes, a head that did not arrive in one read) goes to
//! hyper untouched: the head is only `peek`ed until this module takes the connection.
//! The decisions (parsing, limits, auth, subscription) are the same code as for hyper's
//! requests: [`Public::stream_parts`].

use super::Public;
use crate::response::{Body, EventBody};
use http_body_util::{BodyExt, Limited};
use hyper::header::{CONNECTION, CONTENT_LENGTH};
use hyper::{Method, Request, Response, Version};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest request head taken on this path; a larger one (big cookies) goes to hyper,
/// which serves the same stream with more memory per connection.
const MAX_HEAD: usize = 4 * 1024;

/// The most of an app's refusal body (`auth.mode: upstream`) passed on here.
const MAX_REFUSAL_BODY: usize = 256 * 1024;

/// Headers that mean the request is not a plain body-less GET.
const NOT_PLAIN: [&str; 4] = ["content-length", "transfer-encoding", "upgrade", "expect"];

impl Public {
    /// Serves `stream` here if it starts with a stream request; otherwise hands it back,
    /// unread, for hyper. `wait` bounds the wait for the first bytes; a client that accepts
    /// no bytes for `send_timeout` while a write is pending is dropped.
    pub async fn serve_raw(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        wait: Duration,
        send_timeout: Duration,
    ) -> Option<TcpStream> {
        let (parts, head_len) = {
            let mut buf = vec![0u8; MAX_HEAD];
            let n = match tokio::time::timeout(wait, stream.peek(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                // Closed, broken, or silent for the whole header timeout: nothing to serve.
                Ok(_) | Err(_) => return None,
            };
            match self.plain_stream_request(&buf[..n]) {
                Some(p) => p,
                None => return Some(stream),
            }
        };
        let mut stream = stream;
        let mut consumed = vec![0u8; head_len];
        if stream.read_exact(&mut consumed).await.is_err() {
            return None;
        }
        drop(consumed);
        let resp = self.stream_parts(parts, peer).await;
        write_response(stream, resp, send_timeout).await;
        None
    }

    /// The request, if `head` is exactly one complete, body-less HTTP/1.1 `GET` of the
    /// events path, with its length.
    fn plain_stream_request(&self, head: &[u8]) -> Option<(hyper::http::request::Parts, usize)> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(head) {
            Ok(httparse::Status::Complete(len)) if len == head.len() => len,
            _ => return None,
        };
        if req.method != Some("GET") || req.version != Some(1) {
            return None;
        }
        let path = req.path?;
        self.events_rest(path.split('?').next().unwrap_or(path))?;
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(path)
            .version(Version::HTTP_11);
        for h in req.headers.iter() {
            if NOT_PLAIN.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
                return None;
            }
            builder = builder.header(h.name, h.value);
        }
        let (parts, ()) = builder.body(()).ok()?.into_parts();
        Some((parts, len))
    }
}

/// Writes `resp` on a connection that is closed after it: an event stream is sent
/// close-delimited (no chunk framing) and driven until either side ends it.
async fn write_response(mut stream: TcpStream, resp: Response<Body>, send_timeout: Duration) {
    let (parts, body) = resp.into_parts();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == CONNECTION || name == CONTENT_LENGTH {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n");
    let bytes = match body {
        Body::Stream(events) => {
            head.extend_from_slice(b"\r\n");
            if stream.write_all(&head).await.is_ok() {
                drop(head);
                drive(stream, events, send_timeout).await;
            }
            return;
        }
        Body::Empty => bytes::Bytes::new(),
        Body::Full(b) => b.unwrap_or_default(),
        Body::Incoming(b) => match Limited::new(b, MAX_REFUSAL_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => bytes::Bytes::new(),
        },
    };
    head.extend_from_slice(format!("content-length: {}\r\n\r\n", bytes.len()).as_bytes());
    head.extend_from_slice(&bytes);
    let _ = tokio::time::timeout(send_timeout, async {
        let _ = stream.write_all(&head).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Writes each chunk of the stream as it comes; ends when the stream ends, a write fails or
/// stalls for `send_timeout`, the slow-consumer policy cuts it, or the client closes its
/// side. Holds nothing but the socket and the subscription.
async fn drive(mut stream: TcpStream, mut events: Box<EventBody>, send_timeout: Duration) {
    let (mut rd, mut wr) = stream.split();
    loop {
        let mut probe = [0u8; 16];
        tokio::select! {
            chunk = std::future::poll_fn(|cx| events.subscription.poll_chunk(cx)) => match chunk {
                Some(bytes) => {
                    let write = tokio::time::timeout(send_timeout, wr.write_all(&bytes));
                    tokio::select! {
                        written = write => match written {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) | Err(_) => return,
                        },
                        // Cut by the slow-consumer policy while this write waits on a client
                        // that does not read: free the slot now. The client drops the frame
                        // cut short and resumes from its last complete event.
                        () = std::future::poll_fn(|cx| events.subscription.poll_cut(cx)) => return,
                    }
                }
                None => break,
            },
            read = rd.read(&mut probe) => match read {
                // A client sends nothing after its request; EOF or an error means it left.
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
    let _ = wr.shutdown().await;
}

//! HTTP/2 event streams (`run --h2`): N streams multiplexed over M prior-knowledge h2c
//! connections, as an h2 ingress (Envoy, HAProxy `proto h2`) puts them in front of
//! ssegate. hyper's client does the framing and flow control; each stream's body frames go
//! through the same strict SSE reader as an HTTP/1.1 body.

use crate::http;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io;
use std::net::{IpAddr, SocketAddr};

/// One h2c connection's request handle (cheap to clone: streams share the connection).
pub type Sender = SendRequest<Empty<Bytes>>;

/// Opens a prior-knowledge h2c connection to `dst` from `src`; its driver runs as a task
/// and ends when every [`Sender`] of it is dropped or the server closes it.
pub async fn connect(dst: SocketAddr, src: Option<IpAddr>) -> io::Result<Sender> {
    let tcp = http::connect(dst, src).await?;
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        // The connection's end shows in its streams: each one's body fails or ends.
        let _ = conn.await;
    });
    Ok(sender)
}

/// Opens a stream: `GET path` on `sender`'s connection; checks that the answer is an event
/// stream and returns its body.
pub async fn open(
    sender: &Sender,
    authority: &str,
    path: &str,
    last_event_id: Option<&[u8]>,
) -> io::Result<Incoming> {
    let mut sender = sender.clone();
    let mut req = hyper::Request::get(format!("http://{authority}{path}"))
        .header("accept", "text/event-stream")
        .header("cache-control", "no-cache");
    if let Some(id) = last_event_id.filter(|id| !id.is_empty()) {
        req = req.header("last-event-id", id);
    }
    let req = req.body(Empty::new()).map_err(io::Error::other)?;
    sender.ready().await.map_err(io::Error::other)?;
    let resp = sender.send_request(req).await.map_err(io::Error::other)?;
    let content_type = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if resp.status() != 200 || !content_type.starts_with("text/event-stream") {
        return Err(io::Error::other(format!(
            "GET {path} (h2): status {} content-type {content_type:?}",
            resp.status()
        )));
    }
    Ok(resp.into_body())
}

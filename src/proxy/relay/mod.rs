//! The app's side of a plain HTTP/1.1 forward served without hyper ([`super::http1`]):
//! kept-alive connections to the app, one exchange on one of them, and the response body
//! relayed to the client by its framing (`Content-Length`, chunked, or until close).
//!
//! The response head is rewritten (hop-by-hop headers removed); the body's bytes are
//! passed on as they arrive, chunk framing included, while a small scanner finds where the
//! message ends, so that a connection is only reused at a message boundary. An app
//! connection is put back in the pool as soon as its response has been read whole, before
//! the last bytes reach the client.

mod chunks;
mod head;
mod pool;

pub(crate) use chunks::*;
pub(crate) use head::*;
pub(crate) use pool::*;

use crate::response::Tap;
use crate::server::SendTimeout;
use bytes::BytesMut;
use std::io::{self, IoSlice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a relayed body ended.
pub(crate) enum Relayed {
    /// Whole; the app's connection was put back in the pool if it could be reused.
    Done,
    /// The app's side failed or broke the framing mid-body, or the client went away: the
    /// client's connection must be closed (a truncated body is all it can be told).
    Broken,
}

/// Writes `head` and then the response body to the client as it arrives from `conn`;
/// `buf` holds the bytes read after the response head. Puts `conn` back in `pool` when
/// the body was read whole and the connection may be reused.
pub(crate) async fn relay_body(
    client: &mut SendTimeout,
    conn: AppConn,
    response: &ResponseHead,
    head: &[u8],
    buf: &mut BytesMut,
    pool: &Upstreams,
    mut tap: Option<&mut dyn Tap>,
) -> Relayed {
    let (reusable, framing) = (response.reusable, response.framing);
    if framing == Framing::Chunked
        && let Some(tap) = tap.as_mut()
    {
        tap.chunked();
    }
    let mut body = BodyEnd::new(framing);
    let mut conn = Some(conn);
    let mut head = Some(head);
    loop {
        let Ok((take, done)) = body.scan(buf) else {
            tracing::debug!("the app broke the framing of a response body; closing");
            return Relayed::Broken;
        };
        if done
            && let Some(c) = conn.take()
            && reusable
            && take == buf.len()
        {
            // Read whole, and nothing after it: ready for the next request before the
            // client has the last bytes.
            pool.put_idle(c);
        }
        let chunk = &buf[..take];
        if let Some(tap) = tap.as_mut() {
            tap.data(chunk);
        }
        let written = match head.take() {
            Some(h) => write_two(client, h, chunk).await,
            None => client.write_all(chunk).await,
        };
        buf.clear();
        if written.is_err() {
            return Relayed::Broken;
        }
        if done {
            return Relayed::Done;
        }
        let Some(c) = conn.as_mut() else {
            return Relayed::Broken;
        };
        buf.reserve(READ_SIZE);
        match c.io.read_buf(buf).await {
            Ok(0) if framing == Framing::Close => body.finish(),
            Ok(0) | Err(_) => return Relayed::Broken,
            Ok(_) => {}
        }
    }
}

/// Writes `a` then `b`, in one vectored write where the socket takes it all.
pub(crate) async fn write_two(io: &mut SendTimeout, a: &[u8], b: &[u8]) -> io::Result<()> {
    let (mut in_a, mut in_b) = (0, 0);
    while in_a < a.len() {
        let slices = [IoSlice::new(&a[in_a..]), IoSlice::new(&b[in_b..])];
        let n = io.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len() - in_a);
        in_a += from_a;
        in_b += n - from_a;
    }
    io.write_all(&b[in_b..]).await
}

#[cfg(test)]
mod tests;

//! Event streams served off hyper: a plain HTTP/1.1 `GET` of the events path read by
//! [`super::http1`] is answered here, and the connection is then held by a lean loop that
//! only writes frames and watches for the client going away.
//!
//! hyper keeps a full connection machine per connection (read and write buffers of several
//! KiB, the auto-builder's preface buffer) for as long as a response body is open; an SSE
//! stream needs none of it once its head is written. A stream request with a body, with
//! pipelined bytes after it, or over HTTP/2 goes to hyper. The decisions (parsing, limits,
//! auth, subscription) are the same code as for hyper's requests:
//! [`Public::stream_parts`].
//!
//! Once its head is written, a stream moves to a task of its own ([`Stream`]): the task
//! that accepted the connection is sized for parsing, authorising (perhaps asking the app)
//! and subscribing, a few KiB that an idle stream should not carry for hours. What a stream
//! holds is the socket, its subscription and the bytes of one unfinished write.

use crate::chunked;
use crate::hub::{DirectWrite, Frame, Written};
use crate::response::{Body, EventBody};
use crate::server::{Drain, Held, Socket, Stall};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::header::{CONNECTION, CONTENT_LENGTH, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Uri, Version};
use std::future::Future;
use std::io;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The most of an app's refusal body (`auth.mode: upstream`) passed on here.
const MAX_REFUSAL_BODY: usize = 256 * 1024;

/// Headers that mean the request is not a plain body-less GET.
const NOT_PLAIN: [&str; 4] = ["content-length", "transfer-encoding", "upgrade", "expect"];

/// The stream request `req` (a GET of the events path, parsed from a head of `head_len`
/// bytes, with `read` bytes read), if it is plain: nothing read after its head, and no
/// header that means a body, an upgrade or an expectation. Otherwise hyper serves it.
pub(super) fn stream_request(
    req: &httparse::Request<'_, '_>,
    head_len: usize,
    read: usize,
) -> Option<hyper::http::request::Parts> {
    if req.method != Some("GET") || req.version != Some(1) || head_len != read {
        return None;
    }
    // Filled in place: `Request::builder()` moves the whole request through every call
    // (16 copies of it per stream request under callgrind), for the same checks.
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = Method::GET;
    parts.uri = Uri::try_from(req.path?).ok()?;
    parts.version = Version::HTTP_11;
    parts.headers.reserve(req.headers.len());
    for h in req.headers.iter() {
        if NOT_PLAIN.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
            return None;
        }
        parts.headers.append(
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(h.value).ok()?,
        );
    }
    Some(parts)
}

/// Writes `resp` on a connection that is closed after it. An event stream is sent chunked
/// (an intermediary that buffers close-delimited bodies still passes each chunk on), its
/// first frames in the same write as the head, and then driven by a task of its own until
/// either side ends it.
pub(super) async fn respond(
    mut stream: TcpStream,
    resp: Response<Body>,
    send_timeout: Duration,
    held: Held,
) {
    let (parts, body) = resp.into_parts();
    let mut head = Vec::with_capacity(256);
    encode_head(&parts, &mut head);
    head.extend_from_slice(b"connection: close\r\n");
    drop(parts);
    let bytes = match body {
        Body::Stream(mut events) => {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            let (io, drain) = match held.adopt(stream) {
                Ok(adopted) => adopted,
                Err(e) => {
                    tracing::debug!(error = %e, "event stream closed: its socket could not be watched");
                    return;
                }
            };
            events
                .subscription
                .write_directly(Arc::clone(&io) as Arc<dyn DirectWrite>);
            // The first frames (`retry:`, a gap notice, the replay) go out with the head.
            // Polled with a waker that does nothing: the stream's task polls again first
            // thing, which takes whatever arrives meanwhile and leaves its own waker.
            // Room for the head, the size line, `retry:`, an id announcement and the chunk's
            // end without growing (a replay may need more).
            let mut pending = Vec::with_capacity(8);
            pending.extend([Frame::Own(head.into()), Frame::Own(Bytes::new())]);
            let mut cx = Context::from_waker(Waker::noop());
            let ended = matches!(
                events
                    .subscription
                    .poll_frames(&mut cx, &mut pending, MAX_FRAMES - 1),
                Poll::Ready(None)
            );
            frame_chunk(&mut pending, 1, ended);
            let mut conn = Box::new(StreamState {
                io,
                stall: Stall::new(send_timeout),
                events: *events,
                pending,
                ended,
                _drain: drain,
            });
            // Most heads go out in one write here; the rest is the new task's first job.
            if matches!(conn.poll_write_pending(&mut cx), Poll::Ready(Err(_))) {
                return;
            }
            tokio::spawn(Stream(conn));
            return;
        }
        // Only proxied responses are guarded or tapped, and only the internal listener's
        // dashboard streams `Frames`: never a stream request's refusal.
        Body::Empty | Body::Guarded(_) | Body::Tapped(..) | Body::Frames(_) => Bytes::new(),
        Body::Full(b) => b.unwrap_or_default(),
        Body::Incoming(b) => match Limited::new(b, MAX_REFUSAL_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
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

/// Appends the status line and the header lines of `parts` to `out`, leaving out
/// `Connection` and `Content-Length` (the caller frames the body).
pub(super) fn encode_head(parts: &hyper::http::response::Parts, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == CONNECTION || name == CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The most slices written in one vectored write (Linux takes up to 1,024).
const MAX_IOV: usize = 256;

/// Up to this many frames are written from a small slice array.
const FEW_IOV: usize = 8;

/// The most event frames taken at once: one chunk, with its size line and its CRLF, is
/// then one vectored write.
const MAX_FRAMES: usize = MAX_IOV - 2;

/// Frames the event frames after `pending[at]` as one HTTP/1.1 chunk: `pending[at]` (an
/// empty slot the caller left for it) becomes the size line, a CRLF follows the frames, and
/// the last chunk follows if the stream `ends`. No frames: the slot is removed (an empty
/// chunk would end the body). The frames themselves stay the shared `Bytes` of every other
/// subscriber; a size line under 4 KiB is a static one, so the common write allocates
/// nothing for its framing.
fn frame_chunk(pending: &mut Vec<Frame>, at: usize, ends: bool) {
    let len: usize = pending[at + 1..].iter().map(|f| f.len()).sum();
    if len > 0 {
        pending[at] = Frame::Own(chunked::size_line(len));
        pending.push(Frame::Own(Bytes::from_static(chunked::CRLF)));
    } else {
        pending.remove(at);
    }
    if ends {
        pending.push(Frame::Own(Bytes::from_static(chunked::LAST)));
    }
}

/// A dispatcher's write to a parked stream ([`crate::hub::Subscription::park`]): the
/// event's chunk, one shared buffer, in one `send()`. A write cut short leaves the rest
/// as a view of the same buffer.
///
/// The socket is written directly, without a readiness check (two reads of the socket's
/// cold readiness state were ~4.5% of a fan-out's CPU under `perf`). A full socket leaves
/// its readiness set: the stream's task, which then writes, finds it stale on its first
/// attempt and clears it (no wake-up can be missed).
impl DirectWrite for Socket {
    fn try_write(&self, chunk: &Bytes) -> Written {
        match self.send_now(chunk) {
            n if n == chunk.len() => Written::All,
            0 => Written::Nothing,
            n => Written::Part(chunk.slice(n..)),
        }
    }
}

/// An event stream after its response head: writes the subscription's frames as they
/// come, everything ready at once in one vectored write, and ends when the subscription
/// ends, a write fails or makes no progress for the send timeout, the slow-consumer policy
/// cuts the stream, or the client closes its side.
///
/// With nothing to write it parks its subscription: the dispatchers then write live
/// events to the socket themselves while it takes them, and the task is woken only for a
/// heartbeat, a full socket, or the end.
///
/// A hand-written future rather than an `async` block so that an idle stream's task holds
/// exactly these fields and nothing sized for the states it never returns to; boxed, so
/// that the task itself is tokio's smallest (128 bytes).
struct Stream(Box<StreamState>);

/// What a [`Stream`] holds.
struct StreamState {
    /// The socket, shared with the dispatchers (which write only while the stream is
    /// parked).
    io: Arc<Socket>,
    /// A write that makes no progress for the send timeout fails.
    stall: Stall,
    events: EventBody,
    /// The frames of the write in progress (shared with every other subscriber); no buffer
    /// while parked.
    pending: Vec<Frame>,
    /// The subscription is over: write what is pending, then close.
    ended: bool,
    _drain: Drain,
}

impl StreamState {
    /// Writes `pending` out. Pending while the client does not take it, and an error once
    /// it has taken nothing for the send timeout ([`Stall`]).
    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut written = 0;
        let outcome = loop {
            let rest = &self.pending[written..];
            if rest.is_empty() {
                break Poll::Ready(Ok(()));
            }
            let poll = if rest.len() <= FEW_IOV {
                write_frames::<FEW_IOV>(&self.io, cx, rest)
            } else {
                write_frames::<MAX_IOV>(&self.io, cx, rest)
            };
            match self.stall.watch(cx, poll) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(mut n)) => {
                    while n > 0 {
                        let frame = &mut self.pending[written];
                        if n < frame.len() {
                            frame.advance(n);
                            break;
                        }
                        n -= frame.len();
                        written += 1;
                    }
                }
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        // A write cut short keeps the rest, in order, for the next poll (rare: a full
        // socket); the stream's state keeps no cursor.
        if written == self.pending.len() {
            self.pending.clear();
        } else {
            self.pending.drain(..written);
        }
        outcome
    }
}

/// Writes the first `N` (at most) of `frames` in one vectored write. `N` sizes the slice
/// array on the stack, which is filled whole: a handful of frames (the usual case) should
/// not pay for initializing [`MAX_IOV`] slices.
fn write_frames<const N: usize>(
    io: &Socket,
    cx: &mut Context<'_>,
    frames: &[Frame],
) -> Poll<io::Result<usize>> {
    let mut slices = [IoSlice::new(&[]); N];
    let n = frames.len().min(N);
    for (slice, frame) in slices.iter_mut().zip(frames) {
        *slice = IoSlice::new(&frame[..]);
    }
    io.poll_send_vectored(cx, &slices[..n])
}

impl Future for Stream {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self.0;
        if this.io.poll_gone(cx).is_ready() {
            return Poll::Ready(());
        }
        // The socket is the dispatchers' while parked: take it back before writing, and
        // finish first what a dispatcher's write left half done.
        let rest = this.events.subscription.unpark();
        if !rest.is_empty() {
            this.pending.insert(0, Frame::Own(rest));
        }
        loop {
            match this.poll_write_pending(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                // Cut by the slow-consumer policy while this write waits on a client that
                // does not read: free the slot now. The client drops the frame cut short
                // and resumes from its last complete event.
                Poll::Pending => {
                    return match this.events.subscription.poll_cut(cx) {
                        Poll::Ready(()) => Poll::Ready(()),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
            if this.ended {
                // Dropping the socket closes it (FIN) after the last chunk.
                return Poll::Ready(());
            }
            // Slot 0 waits for the chunk's size line: set once the frames are known, with
            // nothing to shift.
            this.pending.push(Frame::Own(Bytes::new()));
            match this
                .events
                .subscription
                .poll_frames(cx, &mut this.pending, MAX_FRAMES)
            {
                Poll::Ready(Some(())) => frame_chunk(&mut this.pending, 0, false),
                Poll::Ready(None) => {
                    this.ended = true;
                    frame_chunk(&mut this.pending, 0, true);
                }
                Poll::Pending => {
                    // Everything is written: an idle stream keeps no buffer.
                    this.pending = Vec::new();
                    this.events.subscription.park();
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `stream_request` of `head` read whole.
    fn parsed(head: &[u8]) -> Option<hyper::http::request::Parts> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(len) = req.parse(head).unwrap() else {
            panic!("a whole head");
        };
        stream_request(&req, len, head.len())
    }

    #[test]
    fn a_plain_stream_request_keeps_its_target_and_every_field_in_order() {
        let parts = parsed(
            b"GET /events/a?topic=b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nLast-Event-ID: 7-0\r\nx-a: 2\r\n\r\n",
        )
        .unwrap();
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.uri.path(), "/events/a");
        assert_eq!(parts.uri.query(), Some("topic=b"));
        assert_eq!(parts.headers["host"], "x");
        assert_eq!(parts.headers["last-event-id"], "7-0");
        let a: Vec<_> = parts.headers.get_all("x-a").iter().collect();
        assert_eq!(
            a,
            ["1", "2"],
            "a repeated field keeps both values, in order"
        );
    }

    #[test]
    fn a_stream_request_with_a_body_or_more_bytes_is_left_to_hyper() {
        assert!(parsed(b"GET /events HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").is_none());
        assert!(parsed(b"POST /events HTTP/1.1\r\nHost: x\r\n\r\n").is_none());
        assert!(parsed(b"GET /events HTTP/1.0\r\nHost: x\r\n\r\n").is_none());
        let head = b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(head).unwrap();
        assert!(
            stream_request(&req, head.len(), head.len() + 1).is_none(),
            "pipelined bytes after the head"
        );
    }

    #[test]
    fn frames_become_one_chunk_and_an_end_adds_the_last_chunk() {
        let own = |b: &'static [u8]| Frame::Own(Bytes::from_static(b));
        let mut pending = vec![own(b"HEAD"), own(b""), own(b"ab"), own(b"cde")];
        frame_chunk(&mut pending, 1, true);
        let wire: Vec<u8> = pending.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(wire, b"HEAD5\r\nabcde\r\n0\r\n\r\n");
        let mut empty = vec![Frame::Own(Bytes::new())];
        frame_chunk(&mut empty, 0, false);
        assert!(
            empty.is_empty(),
            "no frames, no empty chunk (it would end the body)"
        );
    }
}

//! The send timeout for HTTP/2 streams: a stream whose response body has a chunk ready that
//! it cannot send (the client keeps the stream's flow-control window closed) for the send
//! timeout is dropped, which resets the stream (`RST_STREAM`) and releases what it held: the
//! connection to the app of a proxied response, the slot and subscription of an event stream.
//!
//! On HTTP/1.1 a client that stops reading blocks the socket, which [`super::SendTimeout`]
//! times. On HTTP/2 the socket keeps flowing for the connection's other streams while one
//! stream's window stays shut, so the socket never blocks: each stream is timed on its own.
//!
//! hyper runs each HTTP/2 stream as a task it hands to the connection's executor;
//! [`StreamExecutor`] spawns it inside [`Watched`], which can drop it. Whether the stream
//! is stalled is told by its body ([`WatchedBody`]): hyper polls a body for its next chunk
//! only once the previous one could be sent, so a body that gave a chunk and has not been
//! polled since is waiting on the client. A body that is waiting for data of its own (an idle
//! event stream, a slow app) is not stalled. hyper polls the body only from within the
//! stream's task, so the body reports to the watcher through a thread-local set for the
//! length of each poll of that task: nothing is allocated or shared for it, and an
//! HTTP/1.1 response (polled by no watcher) reports nothing.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

thread_local! {
    /// What the body of the HTTP/2 stream whose task this thread is polling has reported
    /// during that poll; `None` outside such a poll.
    static STREAM: Cell<Option<Report>> = const { Cell::new(None) };
}

#[cfg(test)]
thread_local! {
    /// The size of the last stream future this thread's executor was handed.
    static SPAWNED_BYTES: Cell<usize> = const { Cell::new(0) };
}

/// What a stream's body reports to its task's watcher during one poll of the task.
#[derive(Debug, Clone, Copy, Default)]
struct Report {
    /// The body was polled (or made): `owed` says how it was left.
    polled: bool,
    /// It handed over a chunk and has not been polled since: it waits on the client.
    owed: bool,
    /// A chunk was handed over: that restarts the timeout.
    progressed: bool,
}

/// Applies `f` to the report of the stream task being polled, if any.
fn report(f: impl FnOnce(&mut Report)) {
    STREAM.with(|cell| {
        if let Some(mut r) = cell.get() {
            f(&mut r);
            cell.set(Some(r));
        }
    });
}

/// Collects the reports of one poll of a stream's task; puts back what was there before,
/// even if the poll panics.
struct Collecting(Option<Report>);

impl Collecting {
    fn start() -> Self {
        Self(STREAM.replace(Some(Report::default())))
    }

    fn finish(self) -> Report {
        STREAM.replace(self.0).unwrap_or_default()
    }
}

impl Drop for Collecting {
    fn drop(&mut self) {
        // After `finish` this puts back what `finish` put back already.
        STREAM.set(self.0);
    }
}

/// Spawns hyper's HTTP/2 stream tasks, each watched for the send timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamExecutor {
    // In milliseconds: hyper keeps a copy in every HTTP/2 stream's future, where 4 bytes
    // share a word with its own flag.
    send_timeout_ms: u32,
}

impl StreamExecutor {
    pub(crate) fn new(send_timeout: Duration) -> Self {
        Self {
            send_timeout_ms: millis(send_timeout),
        }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        #[cfg(test)]
        SPAWNED_BYTES.set(std::mem::size_of::<F>());
        tokio::spawn(Watched {
            task: Box::pin(fut),
            owed: false,
            progressed: false,
            send_timeout_ms: self.send_timeout_ms,
            timer: None,
        });
    }
}

/// A stream's task, ended when its body stays stalled for the send timeout. It lives as
/// long as the stream, so it is kept small: hyper's stream future is boxed on its own
/// (216 bytes with an event stream's body, jemalloc's 224-byte class) and the watch's
/// fields (16 bytes) stay in tokio's task, which is 128 bytes with a future of up to ~32
/// (`benches/README.md`, session 10).
struct Watched<F> {
    task: Pin<Box<F>>,
    /// The body handed over a chunk and has not been polled since: it waits on the client.
    owed: bool,
    /// A chunk was handed over since the timer was (re)started.
    progressed: bool,
    /// In milliseconds, so that the watch's fields fit in 16 bytes.
    send_timeout_ms: u32,
    /// Running while the body is stalled.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Unpin: the stream's future is pinned in its own box.
        let this = self.get_mut();
        let collecting = Collecting::start();
        let done = this.task.as_mut().poll(cx).is_ready();
        let report = collecting.finish();
        if done {
            return Poll::Ready(());
        }
        if report.polled {
            this.owed = report.owed;
        }
        this.progressed |= report.progressed;
        if !this.owed {
            this.timer = None;
            return Poll::Pending;
        }
        let send_timeout = Duration::from_millis(u64::from(this.send_timeout_ms));
        let deadline = Instant::now() + send_timeout;
        match &mut this.timer {
            Some(_) if !this.progressed => {}
            Some(timer) => timer.as_mut().reset(deadline),
            None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        this.progressed = false;
        let Some(timer) = this.timer.as_mut() else {
            return Poll::Pending;
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                // Returning drops the task: hyper's send stream goes with it, and h2 resets
                // the stream.
                tracing::debug!(
                    send_timeout_ms = this.send_timeout_ms,
                    "HTTP/2 stream sent nothing for the send timeout (its window stayed closed); resetting it"
                );
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `d` in whole milliseconds, at most `u32::MAX` (49 days).
fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// A response body that tells its HTTP/2 stream's watcher whether it is stalled; on
/// HTTP/1.1 it only passes the body through (polled by no watcher, it finds no report to
/// write to). It adds nothing to the body's size: hyper keeps it in every HTTP/2 stream's
/// future.
pub(crate) struct WatchedBody<B> {
    body: B,
}

impl<B: hyper::body::Body> WatchedBody<B> {
    /// Wraps `body`; called from within the stream's task (the service's future).
    pub(crate) fn new(body: B) -> Self {
        let owed = !body.is_end_stream();
        report(|r| {
            if owed {
                // Owed until hyper first polls it: a stream that cannot even start is
                // stalled.
                *r = Report {
                    polled: true,
                    owed: true,
                    progressed: true,
                };
            }
        });
        Self { body }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for WatchedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.body).poll_frame(cx);
        let owed = matches!(poll, Poll::Ready(Some(Ok(_))));
        report(|r| {
            *r = Report {
                polled: true,
                owed,
                progressed: r.progressed || owed,
            }
        });
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use bytes::Bytes;
    use hyper::body::{Body, Frame};
    use hyper::rt::Executor;
    use tokio::sync::oneshot;

    /// A body that hands over one chunk (an event stream with a frame ready) or none (an
    /// idle one).
    struct OneChunk(Option<Bytes>);

    impl Body for OneChunk {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.0.take() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Poll::Pending,
            }
        }
    }

    /// What hyper does with a stream whose flow-control window never opens: makes the
    /// body within the stream's task, polls it until it hands over a chunk, then never
    /// again. Dropping it (the watch ended the task) says so on `_ended`.
    struct ClosedWindow {
        chunk: Option<Bytes>,
        body: Option<WatchedBody<OneChunk>>,
        sent: bool,
        _ended: oneshot::Sender<()>,
    }

    impl Future for ClosedWindow {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let this = &mut *self;
            let chunk = this.chunk.take();
            let body = this
                .body
                .get_or_insert_with(|| WatchedBody::new(OneChunk(chunk)));
            if !this.sent {
                this.sent = Pin::new(body).poll_frame(cx).is_ready();
            }
            Poll::Pending
        }
    }

    fn spawn(send_timeout: Duration, chunk: Option<&'static [u8]>) -> oneshot::Receiver<()> {
        let (ended, when_ended) = oneshot::channel();
        StreamExecutor::new(send_timeout).execute(ClosedWindow {
            chunk: chunk.map(Bytes::from_static),
            body: None,
            sent: false,
            _ended: ended,
        });
        when_ended
    }

    #[tokio::test]
    async fn a_stream_whose_chunk_stays_unsent_is_ended_and_an_idle_one_is_not() {
        // The idle stream, with the shorter timeout, would have ended first if it were
        // taken for stalled: the stalled stream's end is the sentinel.
        let mut idle = spawn(Duration::from_millis(20), None);
        let stalled = spawn(Duration::from_millis(200), Some(b"data: x\n\n"));
        tokio::time::timeout(Duration::from_secs(10), stalled)
            .await
            .expect("the stalled stream ends at its send timeout")
            .unwrap_err();
        assert_eq!(
            idle.try_recv(),
            Err(oneshot::error::TryRecvError::Empty),
            "an idle stream is not stalled"
        );
    }

    /// Answers every request `200` with no body.
    struct Ok200;

    impl crate::server::Handler for Ok200 {
        fn handle(
            self: std::sync::Arc<Self>,
            _req: hyper::Request<hyper::body::Incoming>,
            _peer: std::net::SocketAddr,
        ) -> impl Future<Output = hyper::Response<crate::response::Body>> + Send {
            std::future::ready(crate::response::empty(hyper::StatusCode::OK))
        }
    }

    #[tokio::test]
    async fn an_http2_streams_future_fits_in_jemallocs_224_byte_class() {
        // What every open HTTP/2 stream holds besides tokio's task is hyper's stream future,
        // boxed on its own; its type, and so its size, is the same whatever body the handler
        // answers with (an event stream's is kept in it unboxed).
        let listener = crate::server::bind("test", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = crate::shutdown::Shutdown::new();
        tokio::spawn(crate::server::serve(
            listener,
            std::sync::Arc::new(Ok200),
            shutdown.clone(),
            Duration::from_secs(1),
            false,
        ));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(format!("http://{addr}/"))
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        assert_eq!(resp.await.unwrap().status(), 200);
        // The server runs on this thread (a current-thread runtime): its executor recorded
        // the stream's future here.
        let size = SPAWNED_BYTES.get();
        assert!(
            size > 128,
            "hyper's stream future was spawned ({size} bytes)"
        );
        assert!(size <= 224, "hyper's stream future is {size} bytes");
        shutdown.trigger();
    }

    #[test]
    fn a_body_made_outside_a_stream_task_reports_nothing() {
        let mut body = WatchedBody::new(OneChunk(Some(Bytes::from_static(b"x"))));
        assert!(STREAM.get().is_none(), "no report was begun by making it");
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_ready());
        assert!(
            STREAM.get().is_none(),
            "nothing collected, nothing left behind"
        );
    }
}

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
//! event stream, a slow app) is not stalled. The two meet through a task-local set while the
//! stream's task is polled, so nothing is allocated for HTTP/1.1 responses.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

tokio::task_local! {
    /// The progress of the HTTP/2 stream whose task is being polled.
    static STREAM: Arc<Progress>;
}

/// What a stream's body tells its task's watcher.
#[derive(Default)]
struct Progress {
    /// The body handed over a chunk and has not been polled since: it waits on the client.
    owed: AtomicBool,
    /// Chunks handed over so far: a change restarts the timeout.
    chunks: AtomicU64,
}

/// Spawns hyper's HTTP/2 stream tasks, each watched for the send timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamExecutor {
    send_timeout: Duration,
}

impl StreamExecutor {
    pub(crate) fn new(send_timeout: Duration) -> Self {
        Self { send_timeout }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Watched(Box::pin(Watch {
            task: fut,
            progress: Arc::default(),
            send_timeout: self.send_timeout,
            seen: 0,
            timer: None,
        })));
    }
}

/// A stream's task, ended when its body stays stalled for the send timeout. Boxed, so that
/// the task itself is tokio's smallest (128 bytes): it lives as long as the stream.
struct Watched<F>(Pin<Box<Watch<F>>>);

pin_project_lite::pin_project! {
    /// What a [`Watched`] task holds: hyper's stream future and its watch, in one
    /// allocation.
    struct Watch<F> {
        #[pin]
        task: F,
        progress: Arc<Progress>,
        send_timeout: Duration,
        // `progress.chunks` when the timer was (re)started.
        seen: u64,
        // Running while the body is stalled.
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut().0.as_mut().project();
        let progress = Arc::clone(this.progress);
        let task = this.task;
        if STREAM.sync_scope(progress, || task.poll(cx)).is_ready() {
            return Poll::Ready(());
        }
        if !this.progress.owed.load(Ordering::Acquire) {
            *this.timer = None;
            return Poll::Pending;
        }
        let chunks = this.progress.chunks.load(Ordering::Acquire);
        let deadline = Instant::now() + *this.send_timeout;
        match this.timer {
            Some(_) if chunks == *this.seen => {}
            Some(timer) => timer.as_mut().reset(deadline),
            None => *this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        *this.seen = chunks;
        let Some(timer) = this.timer.as_mut() else {
            return Poll::Pending;
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                // Returning drops the task: hyper's send stream goes with it, and h2 resets
                // the stream.
                tracing::debug!(
                    send_timeout = ?this.send_timeout,
                    "HTTP/2 stream sent nothing for the send timeout (its window stayed closed); resetting it"
                );
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A response body that tells its HTTP/2 stream's watcher whether it is stalled; on
/// HTTP/1.1 it only passes the body through.
pub(crate) struct WatchedBody<B> {
    body: B,
    progress: Option<Arc<Progress>>,
}

impl<B: hyper::body::Body> WatchedBody<B> {
    /// Wraps `body`; called from within the stream's task (the service's future).
    pub(crate) fn new(body: B) -> Self {
        let progress = STREAM.try_with(Arc::clone).ok();
        if let Some(p) = &progress
            && !body.is_end_stream()
        {
            // Owed until hyper first polls it: a stream that cannot even start is stalled.
            p.chunks.fetch_add(1, Ordering::AcqRel);
            p.owed.store(true, Ordering::Release);
        }
        Self { body, progress }
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
        if let Some(p) = &this.progress {
            let owed = matches!(poll, Poll::Ready(Some(Ok(_))));
            if owed {
                p.chunks.fetch_add(1, Ordering::AcqRel);
            }
            p.owed.store(owed, Ordering::Release);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

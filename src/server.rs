//! Accepting connections and serving them with hyper (HTTP/1.1, and HTTP/2 with prior
//! knowledge), with a graceful drain on shutdown. Both listeners use this.
//!
//! Hostile clients are bounded at the connection level ([`Options`]): a connection that sends
//! no complete request head within the header timeout is closed (whether it trickles bytes,
//! sends nothing at all, or stalls in the HTTP/2 preface), and one whose peer accepts no bytes
//! for the send timeout while a write is pending is closed too, so a client that stops
//! reading cannot hold a socket and its buffers forever. When the process runs out of file
//! descriptors, waiting connections are answered 503 and closed instead of hanging in the
//! accept backlog, and serving resumes as soon as descriptors are free.

mod accept;
mod poller;
mod sockets;
mod stalled;

use accept::Acceptor;
pub(crate) use poller::Socket;
use sockets::Rewind;
pub(crate) use sockets::{SendTimeout, Stall};

use crate::response::{Body, Sending};
use crate::shutdown::Shutdown;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Something that answers requests on a listener.
pub trait Handler: Send + Sync + 'static {
    /// Whether hyper reads heads of up to twice [`crate::head::MAX_FIELDS`] fields, so that
    /// the handler refuses one over the limit itself, with the JSON body of every refusal,
    /// as the hand-written path does (the public listener: the same answer on every path).
    /// Otherwise hyper refuses it with a bare 431: past hyper's default of 100 fields, its
    /// parser takes two heap buffers of ~6 KiB per request, which cost a one-event
    /// publish 8% of its throughput (`benches/README.md`).
    const OWN_FIELD_REFUSALS: bool = false;

    /// Answers one request from `peer`.
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send;

    /// Serves a new connection without hyper if the handler wants to (the public listener's
    /// event streams and plain forwards); otherwise returns it, with the bytes already read
    /// from it, for hyper to serve from there. `None`: it was dealt with. Whatever serves the
    /// connection keeps `held` until the connection is closed.
    fn take_over(
        self: Arc<Self>,
        stream: TcpStream,
        _peer: SocketAddr,
        options: Options,
        _held: Held,
    ) -> impl Future<Output = Option<Unserved>> + Send {
        std::future::ready(Some(Unserved {
            stream,
            read: Bytes::new(),
            head_deadline: tokio::time::Instant::now() + options.header_read_timeout,
        }))
    }
}

/// How much a client still sending is read and thrown away after a refusal, and for how
/// long, before the connection closes: the client then reads the answer instead of a
/// connection reset (nginx's lingering close, bounded).
pub const LINGER_MAX: usize = 1024 * 1024;
/// See [`LINGER_MAX`].
pub const LINGER_TIME: Duration = Duration::from_secs(1);

/// A connection that [`Handler::take_over`] leaves to hyper.
pub struct Unserved {
    /// The socket.
    pub stream: TcpStream,
    /// What was already read from it: hyper reads these bytes first.
    pub read: Bytes,
    /// By when hyper must have a whole request head, or the connection is closed (the
    /// header timeout, counted from when the wait for this request began).
    pub head_deadline: tokio::time::Instant,
}

/// Held by a connection served outside hyper for as long as it is open: the drain on
/// shutdown waits until every one has been dropped. It also carries the listener's
/// poller, to which an event stream's socket moves (`Held::adopt`).
pub struct Held {
    drain: Drain,
    poller: Option<poller::Poller>,
}

/// The part of [`Held`] an event stream keeps once its socket is adopted.
pub(crate) struct Drain(#[allow(dead_code)] tokio::sync::mpsc::Sender<()>);

impl Held {
    /// Moves an event stream's socket from tokio's reactor to the listener's own epoll set,
    /// which keeps a few bytes per socket where tokio keeps a few hundred. The stream
    /// holds the returned [`Drain`] until it ends.
    pub(crate) fn adopt(self, stream: TcpStream) -> std::io::Result<(Arc<Socket>, Drain)> {
        match &self.poller {
            Some(poller) => Ok((poller.adopt(stream)?, self.drain)),
            None => Err(std::io::Error::other(
                "the stream socket poller did not start",
            )),
        }
    }
}

/// The most concurrent HTTP/2 streams a client may open on one connection. ssegate speaks
/// HTTP/2 in clear text only, which browsers do not: its HTTP/2 clients are ingresses
/// (Envoy, HAProxy `proto h2`) carrying many users' streams. Each connection costs ~36 KB
/// of h2 state (write and read buffers, frame slabs) however few streams it carries, so a
/// larger cap than a browser-facing server's (nginx 128, h2o 100) spreads that over more
/// streams: 100 per connection made it ~0.4 KB per idle stream (`benches/README.md`).
/// What a client may hold of the instance is bounded by the per-IP stream caps, not this.
pub const MAX_CONCURRENT_STREAMS: u32 = 1000;

/// The listen backlog: room for a connect burst (the kernel caps it at `somaxconn`).
const BACKLOG: u32 = 4096;

fn builder(options: Options, own_field_refusals: bool) -> auto::Builder<stalled::StreamExecutor> {
    let mut builder = auto::Builder::new(stalled::StreamExecutor::new(options.send_timeout));
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(crate::head::H1_READ_BUFFER);
    if own_field_refusals {
        builder.http1().max_headers(crate::head::H1_MAX_FIELDS);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(crate::head::H2_HEADER_LIST_LIMIT)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    builder
}

/// Connection-level time limits. Not configuration keys: they only bound hostile or dead
/// clients, and the defaults suit every deployment; tests shorten them
/// ([`crate::app::start_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// A connection that sends no complete request head in this long is closed: the first
    /// request's (HTTP/1.1 or HTTP/2), and each later one's on an HTTP/1.1 keep-alive
    /// connection. Default 10 s.
    pub header_read_timeout: Duration,
    /// A connection whose peer accepts no bytes for this long while ssegate has bytes to
    /// write is closed (nginx's `send_timeout`); on HTTP/2, a stream whose flow-control
    /// window stays closed that long is reset. Default 60 s.
    pub send_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
        }
    }
}

/// A listener that could not be opened: `listen 0.0.0.0:8080: address already in use`.
#[derive(Debug, thiserror::Error)]
#[error("{what} {addr}: {}", reason(.source))]
pub struct BindError {
    /// Which listener (`listen`, `admin_listen`).
    pub what: String,
    /// Its address.
    pub addr: SocketAddr,
    /// The system's error.
    #[source]
    pub source: std::io::Error,
}

/// The words an operator knows for the common failures.
fn reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "address already in use".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        std::io::ErrorKind::AddrNotAvailable => "address not available".to_owned(),
        _ => e.to_string(),
    }
}

/// Binds `addr` with a listen backlog of 4096, naming it as `what` in the error.
pub async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std's `TcpListener::bind` does: a restart can bind while old connections linger.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    listen().map_err(|source| BindError {
        what: what.to_owned(),
        addr,
        source,
    })
}

/// Serves `listener` with `handler` until `shutdown`, then drains: connections already
/// open get up to `grace` to finish (hyper closes idle keep-alive ones), while the
/// listener keeps answering new connections with one request each, so a client that
/// arrives during the drain gets a clear answer (a 503 for a new stream, `/readyz` 503)
/// instead of a refused connection. With `linger`, the listener keeps answering until
/// [`Shutdown::finish`] too (the internal listener waits for the public one to drain).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: Shutdown,
    grace: Duration,
    linger: bool,
) {
    serve_with(
        listener,
        handler,
        shutdown,
        grace,
        linger,
        Options::default(),
    )
    .await;
}

/// [`serve`] with the connection time limits of `options`.
pub async fn serve_with<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: Shutdown,
    grace: Duration,
    linger: bool,
    options: Options,
) {
    let main_builder = Arc::new(builder(options, H::OWN_FIELD_REFUSALS));
    let graceful = GracefulShutdown::new();
    // Connections served outside hyper each hold a sender; the drain waits for all of them.
    let (taken_over, mut taken_over_done) = tokio::sync::mpsc::channel::<()>(1);
    let mut acceptor = Acceptor::new(listener);
    let poller = poller::Poller::start()
        .inspect_err(|e| {
            tracing::error!(error = %e, "cannot create the stream socket poller; event streams on this listener will be closed");
        })
        .ok();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = shutdown.triggered() => break,
        };
        let watcher = graceful.watcher();
        let builder = Arc::clone(&main_builder);
        let handler = Arc::clone(&handler);
        let held = Held {
            drain: Drain(taken_over.clone()),
            poller: poller.clone(),
        };
        tokio::spawn(async move {
            // Boxed: the fast path's future is large, and tokio moves a task's future
            // (into its cell, and again with each change of stage) whole.
            let Some(Unserved {
                stream,
                read,
                head_deadline,
            }) = Box::pin(Arc::clone(&handler).take_over(stream, peer, options, held)).await
            else {
                return;
            };
            let first_request = Arc::new(AtomicBool::new(false));
            let conn = builder
                .serve_connection_with_upgrades(
                    TokioIo::new(Rewind::new(
                        read,
                        SendTimeout::new(stream, options.send_timeout),
                    )),
                    service(handler, peer, Arc::clone(&first_request)),
                )
                .into_owned();
            // Boxed: the task of a connection taken over (a long-lived event stream) should
            // not carry the size of hyper's connection state in its own allocation.
            let mut conn = Box::pin(watcher.watch(conn));
            // hyper's header timeout only starts once it has chosen HTTP/1.1: a client that
            // sends nothing, or stalls in the HTTP/2 preface, is bounded here.
            let result = match tokio::time::timeout_at(head_deadline, &mut conn).await {
                Ok(result) => result,
                Err(_) if !first_request.load(Ordering::Relaxed) => {
                    tracing::debug!(%peer, "no request within the header timeout; closing");
                    return;
                }
                Err(_) => conn.await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }

    let mut late = tokio::task::JoinSet::new();
    let mut builder = builder(options, H::OWN_FIELD_REFUSALS);
    builder.http1().keep_alive(false);
    drop(taken_over);
    let drained = async {
        graceful.shutdown().await;
        // Every connection served outside hyper has ended (its sender is dropped).
        let _ = taken_over_done.recv().await;
        if linger {
            shutdown.finished().await;
        }
    };
    tokio::pin!(drained);
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut drained => break,
            () = &mut deadline => {
                tracing::warn!(grace = ?grace, "connections still open after the shutdown grace; closing them");
                break;
            }
            (stream, peer) = acceptor.accept() => {
                let conn = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(Rewind::new(
                            Bytes::new(),
                            SendTimeout::new(stream, options.send_timeout),
                        )),
                        service(Arc::clone(&handler), peer, Arc::new(AtomicBool::new(false))),
                    )
                    .into_owned();
                late.spawn(async move {
                    let _ = conn.await;
                });
            }
        }
    }
    drop(acceptor);
    // Connections accepted during the drain answer one request each; give them what is
    // left of the grace.
    let _ = tokio::time::timeout_at(deadline.deadline(), async {
        while late.join_next().await.is_some() {}
    })
    .await;
}

/// What the service answers a request with.
type Answer = Result<Response<stalled::WatchedBody<Sending>>, Infallible>;

/// The service for one connection; `first_request` is set when a request head arrives.
///
/// Its future is boxed: hyper keeps each HTTP/2 stream's future, sized for the largest of
/// its states, for as long as the response body is open, so an unboxed handler (about
/// 2.9 KB) would be carried by every open event stream. Boxed, it is freed once the
/// response head is ready and the stream keeps only the body; the cost is one allocation
/// per request served by hyper.
fn service<H: Handler>(
    handler: Arc<H>,
    peer: SocketAddr,
    first_request: Arc<AtomicBool>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<stalled::WatchedBody<Sending>>,
    Error = Infallible,
    Future = Pin<Box<dyn Future<Output = Answer> + Send>>,
> + Clone
+ Send
+ 'static {
    service_fn(move |req| {
        first_request.store(true, Ordering::Relaxed);
        let handler = Arc::clone(&handler);
        Box::pin(async move {
            let resp = handler.handle(req, peer).await;
            Ok::<_, Infallible>(resp.map(|body| stalled::WatchedBody::new(body.into_sending())))
        }) as Pin<Box<dyn Future<Output = Answer> + Send>>
    })
}

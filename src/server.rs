//! Accepting connections and serving them with hyper (HTTP/1.1, and HTTP/2 with prior
//! knowledge), with a graceful drain on shutdown. Both listeners use this.

use crate::response::Body;
use crate::shutdown::Shutdown;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Something that answers requests on a listener.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request from `peer`.
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// A client that sends no complete request head in this long is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr`, naming it as `what` in the error (`listen 0.0.0.0:8080: address already
/// in use`).
pub async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        let reason = match e.kind() {
            std::io::ErrorKind::AddrInUse => "address already in use".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            std::io::ErrorKind::AddrNotAvailable => "address not available".to_owned(),
            _ => e.to_string(),
        };
        format!("{what} {addr}: {reason}")
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = shutdown.triggered() => break,
        };
        let conn = builder
            .serve_connection_with_upgrades(
                TokioIo::new(stream),
                service(Arc::clone(&handler), peer),
            )
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }

    let mut late = tokio::task::JoinSet::new();
    builder.http1().keep_alive(false);
    let drained = async {
        graceful.shutdown().await;
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
            (stream, peer) = accept(&listener) => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service(Arc::clone(&handler), peer))
                    .into_owned();
                late.spawn(async move {
                    let _ = conn.await;
                });
            }
        }
    }
    drop(listener);
    // Connections accepted during the drain answer one request each; give them what is
    // left of the grace.
    let _ = tokio::time::timeout_at(deadline.deadline(), async {
        while late.join_next().await.is_some() {}
    })
    .await;
}

/// The next connection. Accept errors (typically EMFILE) back off briefly instead of
/// spinning; the connections already open keep working.
async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn service<H: Handler>(
    handler: Arc<H>,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |req| {
        let handler = Arc::clone(&handler);
        async move { Ok::<_, Infallible>(handler.handle(req, peer).await) }
    })
}

//! Overload and abuse (issue 19): HTTP/2 streams whose window stays closed are reset by the
//! send timeout, the app is shielded by the upstream connection cap, one address by its
//! in-flight cap, and refusals cannot flood the log.

use crate::support::*;
use bytes::Bytes;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ssegate::server::Options;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// A send timeout short enough to watch it act.
const SHORT: Options = Options {
    header_read_timeout: Duration::from_secs(10),
    send_timeout: Duration::from_secs(2),
};

/// The connections an app has open now, and the most it has had at once.
#[derive(Default)]
struct Open {
    now: AtomicUsize,
    max: AtomicUsize,
}

/// Held by a test app's connection task: counts it open while it lives.
struct Counted(Arc<Open>);

impl Counted {
    fn new(open: &Arc<Open>) -> Self {
        let n = open.now.fetch_add(1, Ordering::SeqCst) + 1;
        open.max.fetch_max(n, Ordering::SeqCst);
        Self(Arc::clone(open))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An app that answers `/big` with 4 MiB and anything else with "app" (after `hold`
/// resolves, for `/hold`), counting its open connections.
async fn app(hold: Option<Arc<tokio::sync::Semaphore>>) -> (Upstream, Arc<Open>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(Open::default());
    let counts = Arc::clone(&open);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counted = Counted::new(&counts);
            let hold = hold.clone();
            tokio::spawn(async move {
                let _counted = counted;
                let svc = hyper::service::service_fn(move |req| {
                    let hold = hold.clone();
                    async move {
                        let body = match req.uri().path() {
                            "/big" => Bytes::from(vec![b'x'; 4 << 20]),
                            "/hold" => {
                                if let Some(h) = hold {
                                    let _ = h.acquire().await;
                                }
                                Bytes::from_static(b"held")
                            }
                            _ => Bytes::from_static(b"app"),
                        };
                        Ok::<_, Infallible>(Response::new(full(body)))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (Upstream::from_parts(addr, task), open)
}

/// An HTTP/2 (prior knowledge) client that grants every stream a zero window: it reads
/// response heads, never a byte of a body.
async fn zero_window_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client.ready().await.unwrap()
}

/// Opens `GET path` on `client` and returns the response head's status and its body.
async fn open_stream(
    client: &mut h2::client::SendRequest<Bytes>,
    path: &str,
) -> h2::client::ResponseFuture {
    let req = hyper::Request::get(format!("http://test.local{path}"))
        .body(())
        .unwrap();
    let mut ready = client.clone().ready().await.unwrap();
    let (resp, _) = ready.send_request(req, true).unwrap();
    *client = ready;
    resp
}

/// Waits until the stream behind `resp` is reset by the server; its status is returned.
async fn reset_after_head(resp: h2::client::ResponseFuture) -> StatusCode {
    let resp = tokio::time::timeout(DEADLINE, resp)
        .await
        .expect("no response head within the deadline")
        .unwrap();
    let status = resp.status();
    let mut body = resp.into_body();
    let end = tokio::time::timeout(DEADLINE, body.data())
        .await
        .expect("the stream was not reset within the deadline");
    match end {
        Some(Err(e)) => assert!(e.is_reset(), "expected a reset, got {e}"),
        other => panic!("expected a reset, got {other:?}"),
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_whose_window_stays_closed_are_reset_by_the_send_timeout() {
    let (up, open) = app(None).await;
    let gw = sidecar_opts(test_config(&up.uri), SHORT).await;

    let mut client = zero_window_client(gw.proxy).await;
    let mut streams = Vec::new();
    for i in 0..60 {
        let path = if i % 2 == 0 {
            "/big"
        } else {
            "/events?topic=t"
        };
        streams.push(open_stream(&mut client, path).await);
    }
    // Every stream is open and stalled: the events' first frame, the app's body, stuck.
    eventually("the event streams are open", || async {
        connections(gw.admin).await == 30
    })
    .await;
    assert_eq!(
        client.current_max_send_streams(),
        100,
        "100 concurrent streams per connection"
    );

    // Another client is served meanwhile, whole.
    let resp = send(gw.proxy, request("GET", "/big", &[], Bytes::new())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_bytes(resp).await.len(), 4 << 20);

    for s in streams {
        assert_eq!(reset_after_head(s).await, StatusCode::OK);
    }
    // Reset streams hold nothing: no stream slot, no connection to the app.
    eventually("the event streams are closed", || async {
        connections(gw.admin).await == 0
    })
    .await;
    eventually("the app's connections are closed", || async {
        open.now.load(Ordering::SeqCst) <= 1
    })
    .await;
}

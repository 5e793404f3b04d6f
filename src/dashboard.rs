//! The live dashboard of the internal listener: `GET /dashboard` is one self-contained
//! page (HTML, CSS and JS compiled into the binary, nothing fetched from elsewhere), and
//! `GET /dashboard/events` an SSE stream of one JSON snapshot per second that the page
//! draws.
//!
//! It stays cheap whatever the number of viewers: one timer task builds each second's
//! snapshot once and publishes it on a `watch` channel; every viewer's stream writes the
//! same shared `Bytes`. Without viewers the task only samples a few counters (for the
//! chart's history) and builds nothing.

use crate::hub::Hub;
use crate::metrics::{Metrics, Totals};
use crate::response::{Body, FrameSource};
use crate::shutdown::Shutdown;
use crate::sse;
use bytes::Bytes;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The page, with its styles and script inline.
const PAGE: &str = include_str!("dashboard/index.html");

/// Seconds of history drawn by the chart.
const HISTORY: usize = 300;
/// Tenants sent in each snapshot (the most streams first); the total is sent too.
const TENANTS_SHOWN: usize = 200;
/// Topics in the busiest-topics list.
const TOPICS_SHOWN: usize = 10;

/// The dashboard's shared state: the latest snapshot, and what it needs to build one.
pub struct Dashboard {
    snapshots: watch::Sender<Bytes>,
    shutdown: Shutdown,
}

/// One second's sample of the counters, kept for the chart.
#[derive(Clone, Copy, Default)]
struct Sample {
    connections: i64,
    totals: Totals,
}

impl Dashboard {
    /// Starts the once-a-second snapshot task on the current runtime.
    pub fn start(hub: Hub, metrics: Arc<Metrics>, shutdown: Shutdown) -> Arc<Self> {
        let dashboard = Arc::new(Self {
            snapshots: watch::channel(Bytes::new()).0,
            shutdown,
        });
        tokio::spawn(Arc::clone(&dashboard).run(hub, metrics));
        dashboard
    }

    async fn run(self: Arc<Self>, hub: Hub, metrics: Arc<Metrics>) {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut history: VecDeque<Sample> = VecDeque::with_capacity(HISTORY + 1);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.shutdown.triggered() => return,
            }
            let sample = Sample {
                connections: metrics.connections(),
                totals: metrics.totals(),
            };
            let prev = history.back().copied().unwrap_or(sample);
            history.push_back(sample);
            if history.len() > HISTORY + 1 {
                history.pop_front();
            }
            if self.snapshots.receiver_count() == 0 {
                continue;
            }
            let json = snapshot(
                &hub,
                &metrics,
                &history,
                sample,
                prev,
                started.elapsed(),
                self.shutdown.is_triggered(),
            );
            self.snapshots
                .send_replace(sse::encode_control("snapshot", &json.to_string()));
        }
    }

    /// `GET /dashboard`.
    pub fn page() -> Response<Body> {
        let mut resp = Response::new(Body::full(PAGE));
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Everything is inline: nothing else may load, and no other site may frame it.
        h.insert(
            "content-security-policy",
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
            ),
        );
        resp
    }

    /// `GET /dashboard/events`: the latest snapshot at once (if there is one), then each
    /// new one, until the instance shuts down.
    pub fn events(&self) -> Response<Body> {
        let mut rx = self.snapshots.subscribe();
        let current = rx.borrow_and_update().clone();
        let mut first = vec![sse::encode_retry(1000)];
        if !current.is_empty() {
            first.push(current);
        }
        let shutdown = self.shutdown.clone();
        let feed = Feed {
            first: Some(first.concat().into()),
            next: Box::pin(next(rx, shutdown.clone())),
            shutdown,
        };
        let mut resp = Response::new(Body::Frames(Box::new(feed)));
        *resp.status_mut() = StatusCode::OK;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    }
}

type Next = Pin<Box<dyn Future<Output = Option<(Bytes, watch::Receiver<Bytes>)>> + Send>>;

/// The next snapshot after the one `rx` has seen, or `None` once shutting down.
async fn next(
    mut rx: watch::Receiver<Bytes>,
    shutdown: Shutdown,
) -> Option<(Bytes, watch::Receiver<Bytes>)> {
    tokio::select! {
        changed = rx.changed() => {
            changed.ok()?;
            let b = rx.borrow_and_update().clone();
            Some((b, rx))
        }
        () = shutdown.triggered() => None,
    }
}

/// One viewer's stream of snapshots.
struct Feed {
    first: Option<Bytes>,
    next: Next,
    shutdown: Shutdown,
}

impl FrameSource for Feed {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(b) = self.first.take() {
            return Poll::Ready(Some(b));
        }
        match self.next.as_mut().poll(cx) {
            Poll::Ready(Some((b, rx))) => {
                self.next = Box::pin(next(rx, self.shutdown.clone()));
                Poll::Ready(Some(b))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Per-second rate between two samples of a counter.
fn rate(now: u64, before: u64) -> u64 {
    now.saturating_sub(before)
}

fn snapshot(
    hub: &Hub,
    metrics: &Metrics,
    history: &VecDeque<Sample>,
    now: Sample,
    prev: Sample,
    uptime: Duration,
    shutting_down: bool,
) -> serde_json::Value {
    let stats = hub.stats();
    let tenants = metrics.tenants().snapshot();
    let rejected: serde_json::Map<String, serde_json::Value> = now
        .totals
        .rejected
        .iter()
        .map(|(reason, n)| ((*reason).to_owned(), (*n).into()))
        .collect();
    let rejected_now: u64 = now.totals.rejected.iter().map(|(_, n)| n).sum();
    let rejected_before: u64 = prev.totals.rejected.iter().map(|(_, n)| n).sum();
    let pairs = history.iter().zip(history.iter().skip(1));
    let (mut published, mut delivered) = (Vec::new(), Vec::new());
    for (a, b) in pairs {
        published.push(rate(b.totals.published, a.totals.published));
        delivered.push(rate(b.totals.delivered, a.totals.delivered));
    }
    let connections: Vec<i64> = history.iter().skip(1).map(|s| s.connections).collect();
    serde_json::json!({
        "time_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        "uptime_seconds": uptime.as_secs(),
        "connections": now.connections,
        "max_connections": metrics.max_connections(),
        "rates": {
            "published": rate(now.totals.published, prev.totals.published),
            "delivered": rate(now.totals.delivered, prev.totals.delivered),
            "rejected": rejected_now.saturating_sub(rejected_before),
        },
        "totals": {
            "published": now.totals.published,
            "delivered": now.totals.delivered,
            "slow_consumer_disconnects": now.totals.slow_consumer_disconnects,
            "dropped": now.totals.dropped,
        },
        "rejected": rejected,
        "broker": { "kind": hub.broker_kind(), "up": hub.broker_up(), "redis_lag": null },
        "history": { "events": stats.history_len },
        "tenants_total": tenants.len(),
        "tenants": tenants.iter().take(TENANTS_SHOWN).map(|t| serde_json::json!({
            "tenant": t.tenant,
            "streams": t.streams,
            "published": t.published,
            "delivered": t.delivered,
            "oldest_stream_secs": t.oldest_stream_secs,
        })).collect::<Vec<_>>(),
        "topics": stats.topics.iter().take(TOPICS_SHOWN)
            .map(|(t, n)| serde_json::json!({ "topic": t, "subscribers": n }))
            .collect::<Vec<_>>(),
        "series": {
            "connections": connections,
            "published": published,
            "delivered": delivered,
        },
        "shutting_down": shutting_down,
    })
}

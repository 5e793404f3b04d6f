//! Caps on work in flight: connections to the app ([`UpstreamCap`], one for both forwarding
//! paths, so the app never sees more than `limits.max_upstream_connections` from this
//! instance) and proxied requests per client IP ([`InFlight`],
//! `limits.concurrent_requests_per_ip`). Each place is an RAII guard, freed when dropped;
//! both maxima can be changed by a reload (a lowered one refuses new work until enough has
//! finished).

use crate::metrics::Metrics;
use crate::refusal::ApiError;
use hyper::StatusCode;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Why a proxied request was refused by an in-flight cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InFlightError {
    /// `concurrent_requests_per_ip` requests from this address are in flight.
    #[error(
        "{0} requests from your address are already in flight (the limit); retry when one has finished"
    )]
    TooManyRequests(usize),
    /// Every connection to the app allowed is in use, and none freed in time.
    #[error(
        "the app's {max} connections are all in use and none was free within {waited:?}; retry later"
    )]
    UpstreamBusy {
        /// `max_upstream_connections`.
        max: usize,
        /// How long the request waited (`upstream_timeouts.connect`).
        waited: Duration,
    },
}

impl ApiError for InFlightError {
    fn status(&self) -> StatusCode {
        match self {
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::TooManyRequests(_) => "too_many_requests",
            Self::UpstreamBusy { .. } => "upstream_busy",
        }
    }
    fn retry_after(&self) -> Option<u64> {
        Some(1)
    }
}

impl InFlightError {
    /// The label of `ssegate_requests_rejected_total`, and the log's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooManyRequests(_) => "concurrent_requests_per_ip",
            Self::UpstreamBusy { .. } => "upstream_busy",
        }
    }
}

/// The cap on connections to the app, shared by every forwarding path: a connection holds
/// an [`UpstreamPermit`] from before it is opened until it is closed, idle in a pool or not.
pub struct UpstreamCap {
    max: AtomicUsize,
    open: AtomicUsize,
    /// Requests waiting for a permit.
    waiting: AtomicUsize,
    freed: Notify,
    wait: Duration,
    metrics: Arc<Metrics>,
    /// Closes one idle pooled connection, if there is one (the plain path's pool).
    shed: std::sync::OnceLock<Shed>,
}

type Shed = Box<dyn Fn() + Send + Sync>;

impl UpstreamCap {
    /// At most `max` connections; a request waits up to `wait` for one.
    pub fn new(max: usize, wait: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            max: AtomicUsize::new(max),
            open: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
            wait,
            metrics,
            shed: std::sync::OnceLock::new(),
        })
    }

    /// Sets how to close an idle pooled connection when a request finds the cap reached:
    /// a connection kept for reuse must not keep a request that needs one waiting.
    pub fn on_contention(&self, shed: impl Fn() + Send + Sync + 'static) {
        let _ = self.shed.set(Box::new(shed));
    }

    /// Applies a reloaded maximum; connections over a lowered one stay until they close.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Release);
        self.freed.notify_waiters();
    }

    /// Whether a request is waiting for a connection: a pool should close, not keep, a
    /// connection it no longer needs.
    pub fn contended(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// A permit to open one connection to the app, waiting up to the connect timeout for
    /// one to be free.
    pub async fn acquire(self: &Arc<Self>) -> Result<UpstreamPermit, InFlightError> {
        if let Some(p) = self.try_acquire() {
            return Ok(p);
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if let Some(shed) = self.shed.get() {
            shed();
        }
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(p) = self.try_acquire() {
                return Ok(p);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                // One last look: a wake-up given to a waiter that timed out is not lost.
                return self.try_acquire().ok_or_else(|| {
                    self.metrics.request_rejected("upstream_busy");
                    InFlightError::UpstreamBusy {
                        max: self.max.load(Ordering::Acquire),
                        waited: self.wait,
                    }
                });
            }
        }
    }

    fn try_acquire(self: &Arc<Self>) -> Option<UpstreamPermit> {
        let max = self.max.load(Ordering::Acquire);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.metrics.upstream_connections_add(1);
        Some(UpstreamPermit(Arc::clone(self)))
    }

    /// Connections to the app open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// Counts a waiter for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection to the app's place under the cap; dropped with the connection.
pub struct UpstreamPermit(Arc<UpstreamCap>);

impl Drop for UpstreamPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.upstream_connections_add(-1);
        self.0.freed.notify_one();
    }
}

/// Shards of the per-IP counts, so requests from different addresses rarely meet on a lock.
const SHARDS: usize = 16;

/// Proxied requests in flight per client IP.
pub struct InFlight {
    max: AtomicUsize,
    shards: [Mutex<HashMap<IpAddr, usize>>; SHARDS],
}

impl InFlight {
    /// At most `max` requests in flight per address.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: AtomicUsize::new(max),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        })
    }

    /// Applies a reloaded maximum.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Release);
    }

    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        let bits = match ip {
            IpAddr::V4(v4) => u32::from(v4),
            IpAddr::V6(v6) => {
                let b = v6.to_bits();
                // The interface half too: hosts of one /64 spread over the shards.
                (b ^ (b >> 64)) as u32
            }
        };
        let i = ((bits ^ (bits >> 16)) as usize) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a place for one request from `ip` (429 when its address has `max` in flight).
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<RequestSlot, InFlightError> {
        let max = self.max.load(Ordering::Acquire);
        let mut counts = self.shard(ip);
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return Err(InFlightError::TooManyRequests(max));
        }
        *n += 1;
        Ok(RequestSlot {
            inflight: Arc::clone(self),
            ip,
        })
    }

    /// Requests in flight from `ip`.
    pub fn of(&self, ip: IpAddr) -> usize {
        self.shard(ip).get(&ip).copied().unwrap_or(0)
    }
}

/// A proxied request's place under its address's cap, held until its response is sent.
pub struct RequestSlot {
    inflight: Arc<InFlight>,
    ip: IpAddr,
}

impl RequestSlot {
    /// The address it counts for.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        let mut counts = self.inflight.shard(self.ip);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_per_ip_cap_refuses_and_a_finished_request_frees_its_place() {
        let inflight = InFlight::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = inflight.enter(a).unwrap();
        let _second = inflight.enter(a).unwrap();
        assert_eq!(
            inflight.enter(a).err(),
            Some(InFlightError::TooManyRequests(2))
        );
        let _other = inflight.enter(b).expect("other addresses unaffected");
        drop(first);
        let _third = inflight
            .enter(a)
            .expect("a finished request frees its place");
        inflight.set_max(3);
        let _fourth = inflight.enter(a).expect("a raised cap applies at once");
        assert_eq!(inflight.of(a), 3);
    }

    #[tokio::test]
    async fn a_request_beyond_the_upstream_cap_waits_then_is_busy_or_gets_a_freed_place() {
        let wait = Duration::from_millis(100);
        let cap = UpstreamCap::new(1, wait, Arc::default());
        let held = cap.acquire().await.unwrap();
        let started = tokio::time::Instant::now();
        let busy = cap.acquire().await.err().unwrap();
        assert_eq!(busy.code(), "upstream_busy");
        assert!(
            started.elapsed() >= wait,
            "waited the whole connect timeout"
        );

        let waiter = {
            let cap = Arc::clone(&cap);
            tokio::spawn(async move { cap.acquire().await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert!(cap.contended());
        drop(held);
        assert_eq!(
            waiter.await.unwrap(),
            Ok(()),
            "a freed place goes to the waiter"
        );
        assert_eq!(cap.open(), 0);
    }
}

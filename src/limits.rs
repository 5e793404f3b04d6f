//! Abuse limits: the instance-wide and per-IP stream caps, the per-IP connect rate and
//! the per-IP rate of proxied requests (the `limits` keys; docs/config.md); the caps on
//! work in flight (proxied requests per IP, connections to the app) are in
//! `limits/inflight.rs`.
//!
//! A stream holds a [`StreamSlot`] for as long as it is open; dropping it (the stream
//! ended, the client vanished, a write failed) frees the slot at once. The rate limiters are
//! `governor` keyed limiters whose memory is bounded: keys not seen recently are purged by
//! [`Limits::housekeeping`].

mod inflight;

pub use inflight::{InFlight, InFlightError, RequestSlot, UpstreamCap, UpstreamPermit};

use crate::config::{self, Rate};
use crate::refusal::ApiError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use hyper::StatusCode;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

/// Why a stream or request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// `max_connections` streams are open on this instance.
    #[error("this instance holds its maximum of {0} streams; retry later or elsewhere")]
    TooManyConnections(usize),
    /// `max_connections_per_ip` streams are open from this address.
    #[error("{0} streams are already open from your address (the limit)")]
    TooManyFromIp(usize),
    /// `max_connections_per_tenant` streams are open for one of the stream's tenants.
    #[error("tenant {tenant:?} already has {limit} streams open (the limit); retry later")]
    TooManyForTenant {
        /// The tenant at its cap.
        tenant: String,
        /// The cap.
        limit: usize,
    },
    /// More than `connect_rate_per_ip` new streams.
    #[error("too many new streams from your address (limit {rate}); retry in {retry_after} s")]
    ConnectRate {
        /// The configured rate.
        rate: String,
        /// Seconds until the next attempt may succeed.
        retry_after: u64,
    },
    /// More than `requests_per_ip` proxied requests.
    #[error("too many requests from your address (limit {rate}); retry in {retry_after} s")]
    RequestRate {
        /// The configured rate.
        rate: String,
        /// Seconds until the next request may succeed.
        retry_after: u64,
    },
}

/// How long a client refused by a connection cap is told to wait.
const CAP_RETRY_AFTER: u64 = 5;

impl ApiError for LimitError {
    fn status(&self) -> StatusCode {
        match self {
            Self::TooManyConnections(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::TOO_MANY_REQUESTS,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::TooManyConnections(_) => "too_many_connections",
            Self::TooManyFromIp(_) => "too_many_connections_per_ip",
            Self::TooManyForTenant { .. } => "too_many_connections_per_tenant",
            Self::ConnectRate { .. } => "connect_rate_limited",
            Self::RequestRate { .. } => "rate_limited",
        }
    }
    fn retry_after(&self) -> Option<u64> {
        Some(match self {
            Self::TooManyConnections(_)
            | Self::TooManyFromIp(_)
            | Self::TooManyForTenant { .. } => CAP_RETRY_AFTER,
            Self::ConnectRate { retry_after, .. } | Self::RequestRate { retry_after, .. } => {
                *retry_after
            }
        })
    }
}

impl LimitError {
    /// The label of `ssegate_connections_rejected_total` / `ssegate_rate_limited_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooManyConnections(_) => "max_connections",
            Self::TooManyFromIp(_) => "max_connections_per_ip",
            Self::TooManyForTenant { .. } => "max_connections_per_tenant",
            Self::ConnectRate { .. } => "connect_rate",
            Self::RequestRate { .. } => "requests",
        }
    }
}

struct Limiter {
    rate: Rate,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl Limiter {
    /// A limiter for `rate` with a burst of `burst` cells.
    fn new(rate: Rate, burst: NonZeroU32) -> Self {
        let period = (rate.per / rate.count.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            rate,
            limiter: DefaultKeyedRateLimiter::dashmap(quota),
        }
    }

    /// `Ok` or the seconds to wait.
    fn check(&self, ip: IpAddr) -> Result<(), u64> {
        self.limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

/// The configured caps and rates, replaced whole on reload.
struct Policy {
    max_connections: usize,
    max_per_ip: usize,
    connect: Arc<Limiter>,
    requests: Option<Arc<Limiter>>,
}

/// The instance's limits and the counts they are checked against.
pub struct Limits {
    policy: RwLock<Arc<Policy>>,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

fn request_burst(rate: Rate) -> NonZeroU32 {
    // "burst = 1 s worth" of the rate, at least one request.
    let per_sec = f64::from(rate.count.get()) / rate.per.as_secs_f64().max(1e-9);
    NonZeroU32::new(per_sec.floor().min(f64::from(u32::MAX)) as u32).unwrap_or(NonZeroU32::MIN)
}

impl Limits {
    /// Limits as configured.
    pub fn new(cfg: &config::Limits) -> Arc<Self> {
        Arc::new(Self {
            policy: RwLock::new(Arc::new(Self::policy(cfg, None))),
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    fn policy(cfg: &config::Limits, old: Option<&Policy>) -> Policy {
        // A limiter whose rate did not change keeps its state across a reload.
        let connect = match old {
            Some(p) if p.connect.rate == cfg.connect_rate_per_ip => Arc::clone(&p.connect),
            _ => Arc::new(Limiter::new(
                cfg.connect_rate_per_ip,
                cfg.connect_rate_per_ip.count,
            )),
        };
        let requests =
            cfg.requests_per_ip
                .map(|rate| match old.and_then(|p| p.requests.as_ref()) {
                    Some(l) if l.rate == rate => Arc::clone(l),
                    _ => Arc::new(Limiter::new(rate, request_burst(rate))),
                });
        Policy {
            max_connections: cfg.max_connections,
            max_per_ip: cfg.max_connections_per_ip,
            connect,
            requests,
        }
    }

    fn current(&self) -> Arc<Policy> {
        Arc::clone(
            &self
                .policy
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn per_ip(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies new limits; open streams keep their slots (a lowered cap refuses new
    /// streams until enough have closed).
    pub fn update(&self, cfg: &config::Limits) {
        let mut p = self
            .policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *p = Arc::new(Self::policy(cfg, Some(&p)));
    }

    /// Takes a stream slot for `ip`: the instance cap (503), the per-IP cap (429), then the
    /// per-IP connect rate (429).
    pub fn open_stream(self: &Arc<Self>, ip: IpAddr) -> Result<StreamSlot, LimitError> {
        let policy = self.current();
        let total = self.open.fetch_add(1, Ordering::AcqRel);
        if total >= policy.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitError::TooManyConnections(policy.max_connections));
        }
        {
            let mut per_ip = self.per_ip();
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= policy.max_per_ip {
                if *n == 0 {
                    per_ip.remove(&ip);
                }
                drop(per_ip);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(LimitError::TooManyFromIp(policy.max_per_ip));
            }
            *n += 1;
        }
        let slot = StreamSlot {
            limits: Arc::clone(self),
            ip,
        };
        policy
            .connect
            .check(ip)
            .map_err(|retry_after| LimitError::ConnectRate {
                rate: policy.connect.rate.to_string(),
                retry_after,
            })?;
        Ok(slot)
    }

    /// Counts one proxied request from `ip` against `requests_per_ip`.
    pub fn check_request(&self, ip: IpAddr) -> Result<(), LimitError> {
        let policy = self.current();
        let Some(limiter) = &policy.requests else {
            return Ok(());
        };
        limiter
            .check(ip)
            .map_err(|retry_after| LimitError::RequestRate {
                rate: limiter.rate.to_string(),
                retry_after,
            })
    }

    /// `requests_per_ip` as (requests, window seconds) for the `RateLimit-Policy` header.
    pub fn request_policy(&self) -> Option<(u32, u64)> {
        let policy = self.current();
        policy.requests.as_ref().map(|l| {
            let burst = request_burst(l.rate).get();
            (burst, 1)
        })
    }

    /// Open streams on this instance.
    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Forgets rate-limiter keys not seen recently, so memory stays bounded however many
    /// addresses have connected. Run it every minute or so.
    pub fn housekeeping(&self) {
        let policy = self.current();
        for l in std::iter::once(&policy.connect).chain(policy.requests.as_ref()) {
            l.limiter.retain_recent();
            l.limiter.shrink_to_fit();
        }
    }

    /// Rate-limiter keys held (for tests and `/stats`).
    pub fn tracked_addresses(&self) -> usize {
        let policy = self.current();
        policy.connect.limiter.len() + policy.requests.as_ref().map_or(0, |l| l.limiter.len())
    }
}

/// An open stream's place in the caps; dropping it frees the place.
pub struct StreamSlot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = self.limits.per_ip();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn cfg(max: usize, per_ip: usize, rate: &str) -> config::Limits {
        let text = format!(
            "upstream: http://127.0.0.1:1\nlimits: {{ max_connections: {max}, max_connections_per_ip: {per_ip}, connect_rate_per_ip: {rate} }}\n"
        );
        config::parse(&text, &|_| None).unwrap().limits
    }

    #[test]
    fn caps_and_rates_refuse_and_slots_free() {
        let limits = Limits::new(&cfg(3, 2, "100/s"));
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let s1 = limits.open_stream(a).unwrap();
        let _s2 = limits.open_stream(a).unwrap();
        assert_eq!(
            limits.open_stream(a).err(),
            Some(LimitError::TooManyFromIp(2))
        );
        let _s3 = limits.open_stream(b).unwrap();
        assert_eq!(
            limits.open_stream(b).err(),
            Some(LimitError::TooManyConnections(3))
        );
        drop(s1);
        let _s4 = limits
            .open_stream(a)
            .expect("a dropped slot is free at once");
        assert_eq!(limits.open_streams(), 3);
    }

    #[test]
    fn the_eleventh_stream_in_a_minute_is_refused_at_10_per_min() {
        let limits = Limits::new(&cfg(100, 100, "10/min"));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..10 {
            drop(limits.open_stream(ip).unwrap());
        }
        match limits.open_stream(ip) {
            Err(LimitError::ConnectRate { retry_after, .. }) => {
                assert!((1..=6).contains(&retry_after));
            }
            other => panic!("{:?}", other.err()),
        }
        assert_eq!(limits.open_streams(), 0, "a refused attempt holds no slot");
        assert!(
            limits.open_stream("10.0.0.2".parse().unwrap()).is_ok(),
            "other addresses unaffected"
        );
    }

    #[test]
    fn reload_keeps_unchanged_limiters_and_applies_new_caps() {
        let limits = Limits::new(&cfg(100, 1, "2/min"));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let s = limits.open_stream(ip).unwrap();
        limits.update(&cfg(100, 5, "2/min"));
        let _t = limits.open_stream(ip).unwrap();
        assert!(
            matches!(limits.open_stream(ip), Err(LimitError::ConnectRate { .. })),
            "rate state kept"
        );
        drop(s);
        assert_eq!(limits.tracked_addresses(), 1);
    }
}

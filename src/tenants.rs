//! Tenants: whose topics are whose (`tenants.topic`), the per-tenant stream cap
//! (`limits.max_connections_per_tenant`) and the per-tenant counts behind `/stats`,
//! `/metrics` and the dashboard.
//!
//! A stream's tenants are those of its topics and patterns; a stream spanning tenants holds
//! a place in each, all taken at once or none. A [`TenantSlot`] frees its places when
//! dropped, like the per-IP [`crate::limits::StreamSlot`].
//!
//! Costs: opening and closing a stream take one lock here (as the per-IP cap does).
//! Counting events is one read-locked map lookup per published event, and per event and
//! dispatcher shard for deliveries (the number the shard queued, added once), never per
//! subscriber; with no `tenants.topic` all of these return after one atomic load.
//!
//! `/metrics` shows the 100 tenants with the most open streams by name and sums the rest
//! under `tenant="other"`, so the number of series stays bounded however many tenants
//! there are. Tenants idle for a housekeeping period (no streams, no events) are forgotten.

use crate::config::TenantTopic;
use crate::hub::Selector;
use crate::limits::LimitError;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::time::Instant;

/// Tenants shown by name in `/metrics`; the others are summed under `tenant="other"`.
pub const METRICS_TOP: usize = 100;

/// One tenant's counts.
#[derive(Default)]
struct Entry {
    published: AtomicU64,
    delivered: AtomicU64,
    /// Open streams by slot number, with when they opened. Slot numbers grow with time, so
    /// the first entry is the oldest stream.
    open: Mutex<BTreeMap<u64, Instant>>,
    /// Streams ever opened.
    opened: AtomicU64,
    /// `published + delivered + opened` at the last housekeeping, to tell idle tenants
    /// apart.
    seen: AtomicU64,
}

impl Entry {
    fn open(&self) -> MutexGuard<'_, BTreeMap<u64, Instant>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Default)]
struct State {
    topic: Option<Arc<TenantTopic>>,
    cap: Option<usize>,
    tenants: HashMap<Box<str>, Arc<Entry>>,
    next_slot: u64,
}

/// The tenants of this instance and their counts. Shared through an `Arc`.
#[derive(Default)]
pub struct Tenants {
    state: RwLock<State>,
    /// Whether `tenants.topic` is set: without it, counting returns before any lock.
    enabled: AtomicBool,
}

impl std::fmt::Debug for Tenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenants").finish_non_exhaustive()
    }
}

/// A point-in-time view of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantStats {
    /// The tenant's name, as written in its topics.
    pub tenant: Box<str>,
    /// Its open streams.
    pub streams: usize,
    /// Events published to its topics through this instance.
    pub published: u64,
    /// Deliveries of its events queued to subscribers (live fan-out; replays from the
    /// history are not counted here).
    pub delivered: u64,
    /// Seconds since its oldest open stream opened; `None` with no open stream.
    pub oldest_stream_secs: Option<u64>,
}

impl Tenants {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies `tenants.topic` and `limits.max_connections_per_tenant` (at start and on
    /// reload). Open streams keep their places; a lowered cap refuses new streams until
    /// enough have closed.
    pub fn configure(&self, topic: Option<&TenantTopic>, cap: Option<usize>) {
        let mut s = self.write();
        if s.topic.as_deref() != topic {
            s.topic = topic.cloned().map(Arc::new);
        }
        s.cap = cap;
        self.enabled.store(s.topic.is_some(), Ordering::Relaxed);
    }

    /// Whether `tenants.topic` is set.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Takes a place for a stream following `selectors` in each of its tenants, or refuses
    /// it (429) if one of them is at `max_connections_per_tenant`; then it takes none.
    pub fn open(&self, selectors: &[Selector]) -> Result<TenantSlot, LimitError> {
        if !self.enabled() {
            return Ok(TenantSlot::default());
        }
        let mut s = self.write();
        let Some(topic) = s.topic.clone() else {
            return Ok(TenantSlot::default());
        };
        let mut names: Vec<&str> = Vec::new();
        for sel in selectors {
            let tenant = match sel {
                Selector::Exact(t) => topic.tenant_of(t),
                Selector::Prefix(p) => topic.tenant_of_prefix(p),
            };
            if let Some(t) = tenant.filter(|t| !names.contains(t)) {
                names.push(t);
            }
        }
        if names.is_empty() {
            return Ok(TenantSlot::default());
        }
        if let Some(cap) = s.cap {
            for name in &names {
                let streams = s.tenants.get(*name).map_or(0, |e| e.open().len());
                if streams >= cap {
                    return Err(LimitError::TooManyForTenant {
                        tenant: (*name).to_owned(),
                        limit: cap,
                    });
                }
            }
        }
        let slot = s.next_slot;
        s.next_slot += 1;
        let now = Instant::now();
        let entries = names
            .iter()
            .map(|name| {
                let entry = Arc::clone(s.tenants.entry((*name).into()).or_default());
                entry.open().insert(slot, now);
                entry.opened.fetch_add(1, Ordering::Relaxed);
                entry
            })
            .collect();
        Ok(TenantSlot { slot, entries })
    }

    /// Looks up (or adds) a tenant's entry.
    fn entry(&self, name: &str) -> Arc<Entry> {
        if let Some(e) = self.read().tenants.get(name) {
            return Arc::clone(e);
        }
        Arc::clone(self.write().tenants.entry(name.into()).or_default())
    }

    /// Calls `each` once per distinct tenant of `topics`.
    fn for_each_tenant(&self, topics: &[Arc<str>], mut each: impl FnMut(&Entry)) {
        if !self.enabled() {
            return;
        }
        let s = self.read();
        let Some(pattern) = &s.topic else {
            return;
        };
        for (i, topic) in topics.iter().enumerate() {
            let Some(name) = pattern.tenant_of(topic) else {
                continue;
            };
            // An event on two topics of one tenant counts once for it.
            if topics[..i]
                .iter()
                .any(|t| pattern.tenant_of(t) == Some(name))
            {
                continue;
            }
            match s.tenants.get(name) {
                Some(e) => each(e),
                None => {
                    // First event of a tenant nobody follows: add it outside the read lock.
                    let pattern = Arc::clone(pattern);
                    drop(s);
                    let entry = self.entry(name);
                    each(&entry);
                    return self.for_each_tenant_after(&pattern, topics, i, each);
                }
            }
        }
    }

    /// The rest of [`Self::for_each_tenant`] after a tenant was added (rare: once per new
    /// tenant).
    fn for_each_tenant_after(
        &self,
        pattern: &TenantTopic,
        topics: &[Arc<str>],
        done: usize,
        mut each: impl FnMut(&Entry),
    ) {
        for (i, topic) in topics.iter().enumerate().skip(done + 1) {
            let Some(name) = pattern.tenant_of(topic) else {
                continue;
            };
            if topics[..i]
                .iter()
                .any(|t| pattern.tenant_of(t) == Some(name))
            {
                continue;
            }
            each(&self.entry(name));
        }
    }

    /// Counts one event published to `topics`.
    pub fn published(&self, topics: &[Arc<str>]) {
        self.for_each_tenant(topics, |e| {
            e.published.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// Counts `n` deliveries queued of one event on `topics` (called once per event and
    /// dispatcher shard, with the number of subscribers that shard queued it for).
    pub fn delivered(&self, topics: &[Arc<str>], n: u64) {
        if n == 0 {
            return;
        }
        self.for_each_tenant(topics, |e| {
            e.delivered.fetch_add(n, Ordering::Relaxed);
        });
    }

    /// Every tenant, most open streams first (then by name).
    pub fn snapshot(&self) -> Vec<TenantStats> {
        let now = Instant::now();
        let s = self.read();
        let mut all: Vec<TenantStats> = s
            .tenants
            .iter()
            .map(|(name, e)| {
                let open = e.open();
                TenantStats {
                    tenant: name.clone(),
                    streams: open.len(),
                    published: e.published.load(Ordering::Relaxed),
                    delivered: e.delivered.load(Ordering::Relaxed),
                    oldest_stream_secs: open
                        .first_key_value()
                        .map(|(_, at)| now.saturating_duration_since(*at).as_secs()),
                }
            })
            .collect();
        drop(s);
        all.sort_by(|a, b| {
            b.streams
                .cmp(&a.streams)
                .then_with(|| a.tenant.cmp(&b.tenant))
        });
        all
    }

    /// Forgets tenants with no open stream and no event since the last call, so memory
    /// stays bounded however many tenants come and go. Run it every minute or so.
    pub fn housekeeping(&self) {
        let mut s = self.write();
        s.tenants.retain(|_, e| {
            let open = e.open();
            let activity = e.published.load(Ordering::Relaxed)
                + e.delivered.load(Ordering::Relaxed)
                + e.opened.load(Ordering::Relaxed);
            let before = e.seen.swap(activity, Ordering::Relaxed);
            !open.is_empty() || activity != before
        });
    }
}

/// The `/metrics` series: the top tenants by open streams, the rest under `other`.
impl Collector for Tenants {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = self.snapshot();
        let (top, rest) = all.split_at(all.len().min(METRICS_TOP));
        let other = (!rest.is_empty()).then(|| {
            rest.iter().fold(
                TenantStats {
                    tenant: "other".into(),
                    streams: 0,
                    published: 0,
                    delivered: 0,
                    oldest_stream_secs: None,
                },
                |mut sum, t| {
                    sum.streams += t.streams;
                    sum.published += t.published;
                    sum.delivered += t.delivered;
                    sum
                },
            )
        });
        let rows: Vec<&TenantStats> = top.iter().chain(other.as_ref()).collect();

        let gauge = ConstGauge::new(0i64);
        let mut m = encoder.encode_descriptor(
            "ssegate_tenant_connections",
            "Open event streams per tenant (the 100 with most streams; the rest as tenant=\"other\")",
            None,
            gauge.metric_type(),
        )?;
        for t in &rows {
            let labels = [("tenant", &*t.tenant)];
            ConstGauge::new(i64::try_from(t.streams).unwrap_or(i64::MAX))
                .encode(m.encode_family(&labels)?)?;
        }
        for (name, help, value) in [
            (
                "ssegate_tenant_events_published",
                "Events published to a tenant's topics (same tenants as ssegate_tenant_connections)",
                (|t: &TenantStats| t.published) as fn(&TenantStats) -> u64,
            ),
            (
                "ssegate_tenant_events_delivered",
                "Deliveries of a tenant's events to its subscribers (same tenants as ssegate_tenant_connections)",
                |t: &TenantStats| t.delivered,
            ),
        ] {
            let counter = ConstCounter::new(0u64);
            let mut m = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            for t in &rows {
                let labels = [("tenant", &*t.tenant)];
                ConstCounter::new(value(t)).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// An open stream's places in its tenants' counts; dropping it frees them.
#[derive(Default)]
pub struct TenantSlot {
    slot: u64,
    entries: Box<[Arc<Entry>]>,
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        for e in &self.entries {
            e.open().remove(&self.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn tenants(cap: Option<usize>) -> Tenants {
        let t = Tenants::default();
        t.configure(Some(&TenantTopic::parse("tenant/{tenant}/*").unwrap()), cap);
        t
    }

    fn sel(s: &str) -> Vec<Selector> {
        s.split(',').map(|t| Selector::parse(t).unwrap()).collect()
    }

    fn streams(t: &Tenants, name: &str) -> usize {
        t.snapshot()
            .iter()
            .find(|s| &*s.tenant == name)
            .map_or(0, |s| s.streams)
    }

    #[test]
    fn the_cap_refuses_one_tenant_and_not_the_other() {
        let t = tenants(Some(2));
        let a1 = t.open(&sel("tenant/a/x")).unwrap();
        let _a2 = t.open(&sel("tenant/a/*")).unwrap();
        assert_eq!(
            t.open(&sel("tenant/a/y")).err(),
            Some(LimitError::TooManyForTenant {
                tenant: "a".into(),
                limit: 2
            })
        );
        let _b = t.open(&sel("tenant/b/x")).unwrap();
        let _none = t.open(&sel("news,tenant/*")).unwrap();
        drop(a1);
        let _a3 = t
            .open(&sel("tenant/a/y"))
            .expect("a freed place is free at once");
        assert_eq!((streams(&t, "a"), streams(&t, "b")), (2, 1));
    }

    #[test]
    fn a_stream_spanning_tenants_counts_for_each_and_a_refusal_takes_nothing() {
        let t = tenants(Some(1));
        let _b = t.open(&sel("tenant/b/x")).unwrap();
        assert!(t.open(&sel("tenant/a/x,tenant/b/y")).is_err());
        assert_eq!(streams(&t, "a"), 0, "the refusal by b took no place in a");
        let both = t.open(&sel("tenant/a/x,tenant/a/z,tenant/c/y")).unwrap();
        assert_eq!((streams(&t, "a"), streams(&t, "c")), (1, 1));
        drop(both);
        assert_eq!((streams(&t, "a"), streams(&t, "c")), (0, 0));
    }

    #[test]
    fn no_pattern_no_tenants_and_no_cap() {
        let t = Tenants::default();
        t.configure(None, Some(0));
        let _s = t.open(&sel("tenant/a/x")).unwrap();
        t.published(&["tenant/a/x".into()]);
        assert!(t.snapshot().is_empty());
    }

    #[test]
    fn events_count_once_per_tenant_and_idle_tenants_are_forgotten() {
        let t = tenants(None);
        let s = t.open(&sel("tenant/a/x")).unwrap();
        t.published(&[
            "tenant/a/x".into(),
            "tenant/a/y".into(),
            "tenant/b/y".into(),
        ]);
        t.delivered(&["tenant/a/x".into()], 5);
        t.delivered(&["tenant/c/x".into()], 0);
        let snap = t.snapshot();
        assert_eq!(snap.len(), 2, "{snap:?}");
        assert_eq!(
            (snap[0].streams, snap[0].published, snap[0].delivered),
            (1, 1, 5)
        );
        assert_eq!(snap[0].oldest_stream_secs, Some(0));
        assert_eq!((&*snap[1].tenant, snap[1].published), ("b", 1));
        t.housekeeping();
        t.housekeeping();
        assert_eq!(t.snapshot().len(), 1, "b was idle, a has a stream");
        drop(s);
        t.housekeeping();
        assert!(t.snapshot().is_empty());
    }

    #[test]
    fn metrics_name_the_top_tenants_and_sum_the_rest() {
        let t = tenants(None);
        let mut slots = Vec::new();
        for i in 0..METRICS_TOP + 5 {
            // Tenant 0 has the most streams, then every tenant one.
            slots.push(t.open(&sel(&format!("tenant/t{i:03}/x"))).unwrap());
            t.published(&[format!("tenant/t{i:03}/x").into()]);
        }
        slots.push(t.open(&sel("tenant/t000/y")).unwrap());
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Arc::new(t)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        let series: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("ssegate_tenant_connections{"))
            .collect();
        assert_eq!(series.len(), METRICS_TOP + 1, "{out}");
        assert!(series.contains(&"ssegate_tenant_connections{tenant=\"t000\"} 2"));
        // t000..t099 by name (ties by name), t100..t104 summed.
        assert!(series.contains(&"ssegate_tenant_connections{tenant=\"other\"} 5"));
        assert!(out.contains("ssegate_tenant_events_published_total{tenant=\"other\"} 5"));
    }
}

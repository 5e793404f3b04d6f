//! Who follows what: the subscriber index, split into shards, each with its own
//! dispatcher task that reads the log in order and delivers events to its subscribers
//! (queued for the stream's task, or, for a parked stream while the dispatcher is caught
//! up, written to its connection at once), and its own heartbeat task for parked streams.
//!
//! There is no global lock on delivery: a subscriber lives in one shard, each shard's
//! index has its own lock, taken by its dispatcher once per event and by subscribe /
//! unsubscribe of that shard's subscribers. Each shard reads every event once, in log
//! order, so every subscriber sees events in id order. The log keeps every event until
//! each dispatcher has read it, however the history is trimmed meanwhile: a dispatcher
//! never skips an event, and only a subscriber's own full queue (the slow-consumer policy)
//! cuts its stream.

use super::log::MemoryLog;
use super::subscriber::{Delivery, End, Run, Stamp, Subscriber, Unregister};
use super::topic::{Selector, covering_prefixes};
use super::{Event, Timing};
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The subscribers of one topic or prefix: a vector for the dispatcher to walk, and each
/// one's place in it, so that adding and removing one is O(1) however many follow the
/// topic (a linear scan made 100,000 streams leaving one topic O(n²) under the lock the
/// dispatcher needs). A subscriber keeps its place in the list of its first selector
/// itself ([`Subscriber::home`]); `place` holds the places of those here by a later one
/// (a map of every place was ~26 bytes per idle stream).
#[derive(Default)]
struct Subs {
    list: Vec<Arc<Subscriber>>,
    place: HashMap<u64, usize>,
}

/// Whether a subscriber is in a [`Subs`] by its first selector or by a later one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum By {
    First,
    Later,
}

impl Subs {
    fn insert(&mut self, sub: &Arc<Subscriber>, by: By) {
        let at = self.list.len();
        match by {
            By::First => sub.home.store(place(at), Ordering::Relaxed),
            By::Later => match self.place.entry(sub.id) {
                // Followed by two of its selectors: listed once.
                std::collections::hash_map::Entry::Occupied(_) => return,
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(at);
                }
            },
        }
        self.list.push(Arc::clone(sub));
    }

    fn remove(&mut self, sub: &Subscriber, by: By) {
        let at = match by {
            By::First => sub.home.load(Ordering::Relaxed) as usize,
            By::Later => match self.place.remove(&sub.id) {
                Some(at) => at,
                None => return,
            },
        };
        if self.list.get(at).is_none_or(|s| s.id != sub.id) {
            return;
        }
        self.list.swap_remove(at);
        if let Some(moved) = self.list.get(at) {
            match self.place.get_mut(&moved.id) {
                Some(p) => *p = at,
                None => moved.home.store(place(at), Ordering::Relaxed),
            }
        }
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, Arc<Subscriber>> {
        self.list.iter()
    }
}

/// A shard's subscribers by what they follow. Each one is in the list of every topic and
/// pattern it follows, and is counted once by the list of its first ([`Index::each`]), so
/// no map of all subscribers is kept (at 19,000 streams it was ~26 bytes each).
#[derive(Default)]
struct Index {
    exact: HashMap<Arc<str>, Subs>,
    prefix: HashMap<Arc<str>, Subs>,
    /// Subscribers that follow nothing (the hub allows them; they still end with the rest).
    none: Subs,
    streams: usize,
}

/// Each of `selectors` with how a subscriber following them is listed under it: by its
/// first, or by a later one (a repeat of the first is left out: it names the same list).
fn by_first(selectors: &[Selector]) -> impl Iterator<Item = (&Selector, By)> {
    let first = selectors.first();
    selectors
        .iter()
        .enumerate()
        .filter_map(move |(i, sel)| match i {
            0 => Some((sel, By::First)),
            _ if Some(sel) == first => None,
            _ => Some((sel, By::Later)),
        })
}

/// A list index as a subscriber's [`Subscriber::home`] (no list holds 4 billion).
fn place(at: usize) -> u32 {
    u32::try_from(at).unwrap_or(u32::MAX)
}

impl Index {
    /// Indexes a new subscriber. Its topic and pattern names become the index's own
    /// shared copies where the index has them: a thousand followers of one topic hold
    /// one copy of its name, not a thousand.
    fn insert(&mut self, mut sub: Subscriber) -> Arc<Subscriber> {
        for sel in &mut sub.filter.selectors {
            let (map, name) = match sel {
                Selector::Exact(t) => (&self.exact, t),
                Selector::Prefix(p) => (&self.prefix, p),
            };
            if let Some((shared, _)) = map.get_key_value(&**name) {
                *name = Arc::clone(shared);
            }
        }
        let sub = Arc::new(sub);
        for (sel, by) in by_first(&sub.filter.selectors) {
            let (map, name) = match sel {
                Selector::Exact(t) => (&mut self.exact, t),
                Selector::Prefix(p) => (&mut self.prefix, p),
            };
            map.entry(Arc::clone(name)).or_default().insert(&sub, by);
        }
        if sub.filter.selectors.is_empty() {
            self.none.insert(&sub, By::First);
        }
        self.streams += 1;
        sub
    }

    /// Calls `f` with each subscriber of the shard once: in the list of its first
    /// selector.
    fn each(&self, mut f: impl FnMut(&Arc<Subscriber>)) {
        for (topic, list) in &self.exact {
            for sub in list.iter() {
                if matches!(sub.filter.selectors.first(), Some(Selector::Exact(t)) if t == topic) {
                    f(sub);
                }
            }
        }
        for (prefix, list) in &self.prefix {
            for sub in list.iter() {
                if matches!(sub.filter.selectors.first(), Some(Selector::Prefix(p)) if p == prefix)
                {
                    f(sub);
                }
            }
        }
        self.none.iter().for_each(f);
    }

    fn remove(&mut self, sub: &Subscriber) {
        for (sel, by) in by_first(&sub.filter.selectors) {
            let (map, key) = match sel {
                Selector::Exact(t) => (&mut self.exact, t),
                Selector::Prefix(p) => (&mut self.prefix, p),
            };
            if let Some(list) = map.get_mut(key) {
                list.remove(sub, by);
                if list.is_empty() {
                    // A topic nobody follows holds no memory.
                    map.remove(key);
                }
            }
        }
        if sub.filter.selectors.is_empty() {
            self.none.remove(sub, By::First);
        }
        self.streams -= 1;
    }

    /// Calls `f` with every subscriber of this shard that wants `ev` (a subscriber that
    /// follows it by several topics or patterns more than once: the queue skips repeats).
    fn each_target(&self, ev: &Event, mut f: impl FnMut(&Arc<Subscriber>)) {
        self.each_follower(&ev.topics, |sub| {
            if sub.filter.accepts_type(ev) {
                f(sub);
            }
        });
    }

    /// Calls `f` with every subscriber of this shard that follows one of `topics`, by name
    /// or pattern (more than once if by several).
    fn each_follower(&self, topics: &[Arc<str>], mut f: impl FnMut(&Arc<Subscriber>)) {
        let mut offer = |list: &Subs| {
            for sub in list.iter() {
                f(sub);
            }
        };
        for topic in topics {
            if let Some(list) = self.exact.get(&**topic) {
                offer(list);
            }
            if !self.prefix.is_empty() {
                for p in covering_prefixes(topic) {
                    if let Some(list) = self.prefix.get(p) {
                        offer(list);
                    }
                }
            }
        }
    }
}

/// What one event's fan-out in one shard did.
#[derive(Default)]
struct Fanned {
    /// Queued for the streams' tasks.
    queued: u64,
    /// Written by the dispatcher to parked streams.
    written: u64,
}

impl Fanned {
    /// Delivers `ev` to `sub`; returns the work done, in units of a queued delivery (a
    /// write costs the dispatcher a system call, some twenty times a queueing).
    fn deliver(
        &mut self,
        sub: &Subscriber,
        ev: &Arc<Event>,
        metrics: &Metrics,
        direct: Option<Stamp>,
    ) -> u64 {
        match sub.enqueue(ev, metrics, direct) {
            Delivery::Skipped => 0,
            Delivery::Queued => {
                self.queued += 1;
                1
            }
            Delivery::Written => {
                self.written += 1;
                20
            }
        }
    }
}

struct Shard {
    index: Mutex<Index>,
    /// The streams in `index`, written under its lock: read without it to tell whether the
    /// dispatcher has anyone to deliver to.
    streams: AtomicUsize,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// All subscribers of this instance, sharded.
pub(crate) struct Registry {
    shards: Box<[Shard]>,
}

/// Above this many queued deliveries (and events read) a dispatcher yields, so a burst of
/// large fan-outs does not keep the connections on its worker thread from writing.
const YIELD_EVERY: u64 = 4096;

/// Events copied out of the log per read, at most: also the longest run a dispatcher that
/// is behind queues at once, so a burst wakes and writes each stream once per this many
/// events (64, then 256 before: S3 made 5–6 writes per stream at 256, 3–4 at 512; see
/// `benches/README.md`).
const READ_BATCH: usize = 512;

/// A run of events is queued as one [`Run`] once it goes to this many of a shard's streams
/// (copying it once costs less than queueing it event by event to each of them).
pub(super) const RUN_FROM_STREAMS: usize = 4;

impl Registry {
    /// An empty registry of `shards` shards (at least one), each read by one dispatcher.
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Shard {
                    index: Mutex::new(Index::default()),
                    streams: AtomicUsize::new(0),
                })
                .collect(),
        }
    }

    fn shard(&self, id: u64) -> &Shard {
        let n = self.shards.len() as u64;
        &self.shards[usize::try_from(id % n).unwrap_or(0)]
    }

    /// Registers a new subscriber, which the registry then shares.
    pub(crate) fn insert(&self, sub: Subscriber) -> Arc<Subscriber> {
        let shard = self.shard(sub.id);
        let mut index = shard.lock();
        let sub = index.insert(sub);
        shard.streams.store(index.streams, Ordering::Relaxed);
        sub
    }

    pub(crate) fn remove(&self, sub: &Subscriber) {
        let shard = self.shard(sub.id);
        let mut index = shard.lock();
        index.remove(sub);
        shard.streams.store(index.streams, Ordering::Relaxed);
    }

    /// Whether shard `i` has no stream. A stream registers before it takes its replay
    /// snapshot from the log: asked under the log's lock, a `true` is only ever stale for a
    /// stream whose snapshot comes after (the lock orders them).
    pub(crate) fn is_idle(&self, i: usize) -> bool {
        self.shards
            .get(i)
            .is_none_or(|s| s.streams.load(Ordering::Relaxed) == 0)
    }
}

impl Unregister for Registry {
    fn unregister(&self, sub: &Subscriber) {
        self.remove(sub);
    }
}

impl Registry {
    /// Ends every stream that `pick` selects.
    pub(crate) fn end_where(&self, pick: impl Fn(&Subscriber) -> bool, end: &End) -> usize {
        let mut n = 0;
        for shard in &*self.shards {
            let mut subs = Vec::new();
            shard.lock().each(|s| {
                if pick(s) {
                    subs.push(Arc::clone(s));
                }
            });
            for s in subs {
                s.end(end.clone());
                n += 1;
            }
        }
        n
    }

    /// Ends the streams following `topic` exactly.
    pub(crate) fn end_topic(&self, topic: &str, end: &End) -> usize {
        let mut n = 0;
        for shard in &*self.shards {
            let subs: Vec<_> = shard
                .lock()
                .exact
                .get(topic)
                .map(|l| l.iter().cloned().collect())
                .unwrap_or_default();
            for s in subs {
                s.end(end.clone());
                n += 1;
            }
        }
        n
    }

    /// Subscribers and followed topics (exact and patterns) of this instance.
    pub(crate) fn counts(&self) -> (usize, HashMap<Box<str>, usize>) {
        let mut subs = 0;
        let mut topics: HashMap<Box<str>, usize> = HashMap::new();
        for shard in &*self.shards {
            let idx = shard.lock();
            subs += idx.streams;
            for (t, l) in &idx.exact {
                *topics.entry(Box::from(&**t)).or_default() += l.len();
            }
            for (p, l) in &idx.prefix {
                let name = Selector::Prefix(Arc::clone(p)).to_string();
                *topics.entry(name.into()).or_default() += l.len();
            }
        }
        (subs, topics)
    }

    /// How many shards (and dispatchers, and log readers) there are.
    pub(crate) fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Spawns one heartbeat task per shard: it writes the heartbeat comment to the
    /// shard's parked streams (streams that are not parked keep a timer of their own).
    pub(crate) fn spawn_heartbeats(self: &Arc<Self>, timing: &Arc<Timing>) {
        for i in 0..self.shards.len() {
            let registry = Arc::downgrade(self);
            let timing = Arc::clone(timing);
            tokio::spawn(heartbeats(registry, i, timing));
        }
    }

    /// Spawns one dispatcher per shard; shard `i` reads the log as its reader `i`.
    pub(crate) fn spawn_dispatchers(
        self: &Arc<Self>,
        log: &Arc<MemoryLog>,
        head: &watch::Sender<u64>,
        metrics: &Arc<Metrics>,
    ) {
        for i in 0..self.shards.len() {
            let registry = Arc::clone(self);
            let log = Arc::clone(log);
            let rx = head.subscribe();
            let metrics = Arc::clone(metrics);
            tokio::spawn(async move { registry.dispatch(i, &log, rx, &metrics).await });
        }
    }

    async fn dispatch(
        &self,
        reader: usize,
        log: &MemoryLog,
        mut head: watch::Receiver<u64>,
        metrics: &Metrics,
    ) {
        let shard = &self.shards[reader];
        let mut batch = Vec::with_capacity(READ_BATCH);
        let mut targets = Vec::new();
        let mut since_yield = 0;
        loop {
            head.borrow_and_update();
            if !log.read(reader, READ_BATCH, &mut batch) {
                if head.changed().await.is_err() {
                    return;
                }
                continue;
            }
            // Written directly only when this dispatcher is caught up: behind, it queues,
            // and each stream's task sends what piled up in one write.
            let caught_up = batch.len() < READ_BATCH;
            // The last event is written directly unless it joins the run before it (the
            // same streams, which the run has just woken: one write each, not two).
            let queued = match batch.len() {
                n if !caught_up => n,
                n if n >= 2 && batch[n - 1].topics == batch[n - 2].topics => n,
                n => n.saturating_sub(1),
            };
            // Queued a run of events for the same topics at a time: each subscriber is
            // locked and woken once per run, not once per event.
            for run in batch[..queued]
                .chunk_by(|a, b| a.topics == b.topics)
                .flat_map(Run::parts)
            {
                let topics = &run[0].topics;
                shard
                    .lock()
                    .each_follower(topics, |s| targets.push(Arc::clone(s)));
                // For several streams, the run's frames are copied once into one buffer
                // that each of them writes with one slice ([`Run`]).
                let shared = (targets.len() >= RUN_FROM_STREAMS && Run::fits(run))
                    .then(|| Arc::new(Run::new(run)));
                let mut delivered = 0;
                for sub in targets.drain(..) {
                    let n = sub.enqueue_run(run, shared.as_ref(), metrics);
                    delivered += n;
                    since_yield += n;
                    if since_yield >= YIELD_EVERY {
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
                // Per tenant: once per run and shard, not per subscriber.
                metrics.tenants().delivered(topics, delivered);
                since_yield += run.len() as u64;
            }
            if let Some(ev) = batch[queued..].first() {
                // The writes take time: made with the shard unlocked, so streams can come
                // and go meanwhile, and with yields between them.
                let mut fanned = Fanned::default();
                shard
                    .lock()
                    .each_target(ev, |s| targets.push(Arc::clone(s)));
                let now = Stamp::now();
                for sub in targets.drain(..) {
                    since_yield += fanned.deliver(&sub, ev, metrics, Some(now));
                    if since_yield >= YIELD_EVERY {
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
                metrics.delivered(fanned.written);
                metrics
                    .tenants()
                    .delivered(&ev.topics, fanned.queued + fanned.written);
                since_yield += 1;
            }
            batch.clear();
            // Reading counts too: a flood of events nobody here follows must not keep
            // this worker thread from the connections either.
            if since_yield >= YIELD_EVERY {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
    }
}

/// A shard's heartbeat: every quarter of the interval, a comment to each parked stream
/// quiet for three quarters of it or more, so that no stream stays quiet longer than the
/// interval. One timer per shard instead of one per stream; a reloaded interval applies
/// from the next tick. Ends with the registry.
async fn heartbeats(registry: Weak<Registry>, shard: usize, timing: Arc<Timing>) {
    let mut targets = Vec::new();
    loop {
        let interval = timing.heartbeat();
        let tick = (interval / 4).max(Duration::from_millis(1));
        tokio::time::sleep(tick).await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        let now = Instant::now();
        let Some(quiet_since) = now.checked_sub(interval - tick) else {
            continue;
        };
        registry.shards[shard]
            .lock()
            .each(|sub| targets.push(Arc::clone(sub)));
        drop(registry);
        let (beat_at, quiet_stamp) = (Stamp::of(now), Stamp::of(quiet_since));
        let mut written = 0u32;
        for sub in targets.drain(..) {
            if sub.beat(beat_at, quiet_stamp) {
                written += 1;
                if written.is_multiple_of(256) {
                    tokio::task::yield_now().await;
                }
            }
        }
        if targets.capacity() > 1024 {
            targets = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::hub::SlowConsumer;
    use crate::hub::subscriber::Filter;

    fn subscriber(id: u64, selectors: &[&str]) -> Subscriber {
        let filter = Filter {
            selectors: selectors
                .iter()
                .map(|s| Selector::parse(s).unwrap())
                .collect(),
            types: None,
        };
        Subscriber::new(id, filter, None, 8, SlowConsumer::Disconnect)
    }

    fn followers(index: &Index, topic: &str) -> Vec<u64> {
        let mut ids = Vec::new();
        index.each_follower(&[topic.into()], |s| ids.push(s.id));
        ids.sort_unstable();
        ids
    }

    fn everyone(index: &Index) -> Vec<u64> {
        let mut ids = Vec::new();
        index.each(|s| ids.push(s.id));
        ids.sort_unstable();
        ids
    }

    #[test]
    fn subscribers_leaving_in_any_order_leave_every_list_exact() {
        let mut index = Index::default();
        let shapes: [&[&str]; 7] = [
            &["a"],
            &["a", "b"],
            &["b", "a"],
            &["a", "a"],
            &["b", "b", "a"],
            &["x/*", "a"],
            &["a"],
        ];
        let subs: Vec<_> = (0..shapes.len())
            .map(|i| index.insert(subscriber(i as u64, shapes[i])))
            .collect();
        assert_eq!(
            followers(&index, "a"),
            [0, 1, 2, 3, 4, 5, 6],
            "each listed once"
        );
        assert_eq!(followers(&index, "b"), [1, 2, 4]);
        assert_eq!(followers(&index, "x/1"), [5]);
        assert_eq!(everyone(&index), [0, 1, 2, 3, 4, 5, 6], "each counted once");

        // Leaving from the front, the middle and the back moves others around in "a".
        for (gone, id) in [0usize, 3, 6, 1].into_iter().enumerate() {
            index.remove(&subs[id]);
            let left: Vec<u64> = (0..7u64)
                .filter(|i| ![0, 3, 6, 1][..=gone].contains(&(*i as usize)))
                .collect();
            assert_eq!(followers(&index, "a"), left);
            assert_eq!(everyone(&index), left);
        }
        assert_eq!(followers(&index, "b"), [2, 4]);
        for id in [2usize, 4, 5] {
            index.remove(&subs[id]);
        }
        assert!(
            index.exact.is_empty() && index.prefix.is_empty(),
            "no list is left behind"
        );
        assert_eq!(index.streams, 0);
    }
}

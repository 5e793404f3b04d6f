//! Who follows what: the subscriber index, split into shards, each with its own
//! dispatcher task that reads the log in order and queues events for its subscribers.
//!
//! There is no global lock on delivery: a subscriber lives in one shard, each shard's
//! index has its own lock, taken by its dispatcher once per event and by subscribe /
//! unsubscribe of that shard's subscribers. Each shard reads every event once, in log
//! order, so every subscriber sees events in id order. The log keeps every event until
//! each dispatcher has read it, however the history is trimmed meanwhile: a dispatcher
//! never skips an event, and only a subscriber's own full queue (the slow-consumer policy)
//! cuts its stream.

use super::Event;
use super::log::MemoryLog;
use super::subscriber::{End, Subscriber, Unregister};
use super::topic::{Selector, covering_prefixes};
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// The subscribers of one topic or prefix: a vector for the dispatcher to walk, and each
/// one's place in it, so that adding and removing one is O(1) however many follow the
/// topic (a linear scan made 100,000 streams leaving one topic O(n²) under the lock the
/// dispatcher needs).
#[derive(Default)]
struct Subs {
    list: Vec<Arc<Subscriber>>,
    place: HashMap<u64, usize>,
}

impl Subs {
    fn insert(&mut self, sub: &Arc<Subscriber>) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.place.entry(sub.id) {
            e.insert(self.list.len());
            self.list.push(Arc::clone(sub));
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(i) = self.place.remove(&id) {
            self.list.swap_remove(i);
            if let Some(moved) = self.list.get(i) {
                self.place.insert(moved.id, i);
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

#[derive(Default)]
struct Index {
    exact: HashMap<Box<str>, Subs>,
    prefix: HashMap<Box<str>, Subs>,
    all: HashMap<u64, Arc<Subscriber>>,
}

impl Index {
    fn insert(&mut self, sub: &Arc<Subscriber>) {
        for sel in &sub.filter.selectors {
            let (map, key) = match sel {
                Selector::Exact(t) => (&mut self.exact, t),
                Selector::Prefix(p) => (&mut self.prefix, p),
            };
            map.entry(key.clone()).or_default().insert(sub);
        }
        self.all.insert(sub.id, Arc::clone(sub));
    }

    fn remove(&mut self, sub: &Subscriber) {
        for sel in &sub.filter.selectors {
            let (map, key) = match sel {
                Selector::Exact(t) => (&mut self.exact, t),
                Selector::Prefix(p) => (&mut self.prefix, p),
            };
            if let Some(list) = map.get_mut(key) {
                list.remove(sub.id);
                if list.is_empty() {
                    // A topic nobody follows holds no memory.
                    map.remove(key);
                }
            }
        }
        self.all.remove(&sub.id);
    }

    /// Queues `ev` for every subscriber of this shard that wants it; returns how many.
    fn fan_out(&self, ev: &Arc<Event>, metrics: &Metrics) -> u64 {
        let mut queued = 0;
        let mut offer = |list: &Subs| {
            for sub in list.iter() {
                if sub.filter.accepts_type(ev) && sub.enqueue(ev, metrics) {
                    queued += 1;
                }
            }
        };
        for topic in &*ev.topics {
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
        queued
    }
}

struct Shard {
    index: Mutex<Index>,
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

/// Events copied out of the log per read.
const READ_BATCH: usize = 64;

impl Registry {
    /// An empty registry of `shards` shards (at least one), each read by one dispatcher.
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Shard {
                    index: Mutex::new(Index::default()),
                })
                .collect(),
        }
    }

    fn shard(&self, id: u64) -> &Shard {
        let n = self.shards.len() as u64;
        &self.shards[usize::try_from(id % n).unwrap_or(0)]
    }

    pub(crate) fn insert(&self, sub: &Arc<Subscriber>) {
        self.shard(sub.id).lock().insert(sub);
    }

    pub(crate) fn remove(&self, sub: &Subscriber) {
        self.shard(sub.id).lock().remove(sub);
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
            let subs: Vec<_> = shard
                .lock()
                .all
                .values()
                .filter(|s| pick(s))
                .cloned()
                .collect();
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
            subs += idx.all.len();
            for (t, l) in &idx.exact {
                *topics.entry(t.clone()).or_default() += l.len();
            }
            for (p, l) in &idx.prefix {
                let name = Selector::Prefix(p.clone()).to_string();
                *topics.entry(name.into()).or_default() += l.len();
            }
        }
        (subs, topics)
    }

    /// How many shards (and dispatchers, and log readers) there are.
    pub(crate) fn shards(&self) -> usize {
        self.shards.len()
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
        let mut since_yield = 0;
        loop {
            head.borrow_and_update();
            if !log.read(reader, READ_BATCH, &mut batch) {
                if head.changed().await.is_err() {
                    return;
                }
                continue;
            }
            for ev in batch.drain(..) {
                let queued = shard.lock().fan_out(&ev, metrics);
                // Per tenant: once per event and shard, not per subscriber.
                metrics.tenants().delivered(&ev.topics, queued);
                // Reading counts too: a flood of events nobody here follows must not
                // keep this worker thread from the connections either.
                since_yield += 1 + queued;
                if since_yield >= YIELD_EVERY {
                    since_yield = 0;
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

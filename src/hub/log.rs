//! The event log: the bounded, globally ordered history of this instance.
//!
//! With the memory broker, publishing appends here (one short lock: assign ids, encode each
//! frame once, append). With Redis, the log is the local mirror of the shared stream: the
//! reader appends the stream's entries with the ids Redis gave them ([`MemoryLog::append_remote`]).
//! Either way the dispatchers read it by sequence number to fan events out, and new
//! subscribers read it to replay what they missed, so history and live delivery come from
//! one ordered source.

use super::{Event, NewEvent, Resume};
use crate::sse::{self, EventId};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One history entry. `event` is `None` once its topic was deleted: the slot keeps its id
/// so sequence numbers and the id order stay intact.
struct Slot {
    id: EventId,
    event: Option<Arc<Event>>,
}

struct State {
    ring: VecDeque<Slot>,
    /// Sequence number of `ring[0]`; the next appended event gets `first_seq + ring.len()`.
    first_seq: u64,
    last_id: EventId,
    /// The history is complete from this id on: a resume starting before it may have missed
    /// events. It starts at the process's boot (memory) or at the oldest entry loaded from
    /// Redis, and moves up past every evicted event and every hole in the mirror.
    horizon: EventId,
    /// Dispatchers start reading at this sequence number: history loaded from Redis at
    /// startup is for replays only, never sent to live streams as new events.
    dispatch_from: u64,
}

/// The result of reading the log for fan-out.
pub(crate) enum Read {
    /// Events were copied out (possibly none); continue from this sequence number.
    Events { next: u64 },
    /// The reader fell so far behind that events it never saw were evicted.
    Lagged { next: u64 },
}

/// What a new subscriber must be sent before live events.
pub(crate) struct Replay {
    pub events: Vec<Arc<Event>>,
    /// `Some(oldest_available)` when the history no longer reaches back to the resume point.
    pub gap: Option<Option<EventId>>,
    /// The id of the newest event at the time of the snapshot: live events up to it are
    /// already covered by the replay (or predate the subscription).
    pub head: EventId,
    /// `head`, when a later resume from it would miss nothing (no gap): worth telling a
    /// client that has no later id, so that being cut before its first event loses nothing.
    pub resumable_head: Option<EventId>,
}

/// The in-memory history.
pub(crate) struct MemoryLog {
    state: Mutex<State>,
    max_events: usize,
    max_age: Duration,
    /// When the log was created, by this machine's clock.
    created_ms: u64,
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The id for an event published at `now` (Unix ms) after `last`: the clock's millisecond
/// when it moved on, else the next id after `last`, so ids keep increasing when the clock
/// stalls or goes back.
pub(crate) fn next_id(last: EventId, now: u64) -> EventId {
    if now > last.ms {
        EventId::new(now, 0)
    } else {
        last.next()
    }
}

/// Encodes a new event's frame once, under its id.
pub(crate) fn encode(id: EventId, ev: NewEvent) -> Arc<Event> {
    let frame = sse::encode_event(id, ev.event_type.as_deref(), &ev.data);
    Arc::new(Event {
        id,
        topics: ev.topics.into_boxed_slice(),
        event_type: ev.event_type,
        close: ev.close,
        frame,
    })
}

impl MemoryLog {
    /// The memory broker's log. Ids before this process started are unknown: resuming from
    /// one is a gap.
    pub fn new(max_events: usize, max_age: Duration) -> Self {
        let now = now_ms();
        // No event will get this id (the first is later), and resuming from it misses
        // nothing: a stream opened before any event can be told it as its starting point.
        // An id from before it comes from an earlier process: a gap.
        let start = EventId::new(now, 0);
        Self::with(max_events, max_age, now, start, start)
    }

    /// The local mirror of a Redis stream: every resume is a gap until [`Self::load`] has
    /// brought in the stream's history. Ids come from Redis's clock, not this machine's:
    /// nothing is assumed about them until then.
    pub fn mirror(max_events: usize, max_age: Duration) -> Self {
        let horizon = EventId::new(u64::MAX, u64::MAX);
        Self::with(max_events, max_age, now_ms(), EventId::default(), horizon)
    }

    fn with(
        max_events: usize,
        max_age: Duration,
        created_ms: u64,
        last_id: EventId,
        horizon: EventId,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                ring: VecDeque::new(),
                first_seq: 0,
                last_id,
                horizon,
                dispatch_from: 0,
            }),
            max_events: max_events.max(1),
            max_age,
            created_ms,
        }
    }

    /// When the log was created, in Unix milliseconds by this machine's clock.
    pub fn created_ms(&self) -> u64 {
        self.created_ms
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this file; the state it guards
        // is consistent after every statement, so keep serving rather than poisoning.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sequence number the next appended event will get.
    pub fn next_seq(&self) -> u64 {
        let st = self.lock();
        st.first_seq + st.ring.len() as u64
    }

    /// Appends a batch atomically and returns the ids, in order.
    pub fn append(&self, batch: Vec<NewEvent>) -> Vec<EventId> {
        let now = now_ms();
        let mut st = self.lock();
        self.trim_age(&mut st, now);
        let mut ids = Vec::with_capacity(batch.len());
        for ev in batch {
            let event = encode(next_id(st.last_id, now), ev);
            ids.push(event.id);
            self.push(&mut st, event);
        }
        ids
    }

    /// The id of the newest event appended or loaded (or the log's start).
    pub fn last_id(&self) -> EventId {
        self.lock().last_id
    }

    fn push(&self, st: &mut State, event: Arc<Event>) {
        st.last_id = event.id;
        st.ring.push_back(Slot {
            id: event.id,
            event: Some(event),
        });
        if st.ring.len() > self.max_events {
            self.evict_front(st);
        }
    }

    /// Appends events that already have their ids (read from Redis, in stream order).
    /// Events not newer than the last one appended are skipped, so a re-read is harmless.
    /// Returns how many were appended.
    pub fn append_remote(&self, events: impl IntoIterator<Item = Arc<Event>>) -> usize {
        let mut st = self.lock();
        self.trim_age(&mut st, now_ms());
        let mut n = 0;
        for event in events {
            if event.id > st.last_id {
                self.push(&mut st, event);
                n += 1;
            }
        }
        n
    }

    /// Loads the history found in Redis at startup (in stream order), before anything was
    /// appended. Resumes from before `horizon` are gaps from now on. Loaded events after
    /// `live_after` (this log's creation, in Redis's clock) are dispatched to the streams
    /// opened meanwhile; older ones only serve replays.
    pub fn load(&self, events: Vec<Arc<Event>>, horizon: EventId, live_after: EventId) {
        let mut st = self.lock();
        for event in events {
            if st.ring.back().is_none_or(|s| s.id < event.id) {
                st.ring.push_back(Slot {
                    id: event.id,
                    event: Some(event),
                });
            }
        }
        st.horizon = horizon;
        // Before trimming: the next id must follow every id ever given, kept or not.
        if let Some(last) = st.ring.back().map(|s| s.id) {
            st.last_id = st.last_id.max(last);
        }
        while st.ring.len() > self.max_events {
            self.evict_front(&mut st);
        }
        self.trim_age(&mut st, now_ms());
        let old = st.ring.partition_point(|s| s.id <= live_after) as u64;
        st.dispatch_from = st.first_seq + old;
    }

    /// Records that events after what this log holds may be lost (Redis lost its history,
    /// or trimmed it before this instance read it): a resume from before `horizon` is a gap.
    pub fn mark_hole(&self, horizon: EventId) {
        let mut st = self.lock();
        st.horizon = st.horizon.max(horizon);
    }

    fn evict_front(&self, st: &mut State) {
        if let Some(slot) = st.ring.pop_front() {
            st.first_seq += 1;
            st.horizon = st.horizon.max(slot.id.next());
        }
    }

    fn trim_age(&self, st: &mut State, now: u64) {
        let max_age = u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now.saturating_sub(max_age);
        while st.ring.front().is_some_and(|s| s.id.ms < cutoff) {
            self.evict_front(st);
        }
    }

    /// Copies up to `max` events from sequence number `from` into `out`.
    pub fn read_from(&self, from: u64, max: usize, out: &mut Vec<Arc<Event>>) -> Read {
        let st = self.lock();
        let from = from.max(st.dispatch_from);
        if from < st.first_seq {
            return Read::Lagged {
                next: st.first_seq + st.ring.len() as u64,
            };
        }
        let start = usize::try_from(from - st.first_seq).unwrap_or(usize::MAX);
        let mut next = from;
        for slot in st.ring.iter().skip(start).take(max) {
            next += 1;
            if let Some(ev) = &slot.event {
                out.push(Arc::clone(ev));
            }
        }
        Read::Events { next }
    }

    /// The events a new subscriber missed, in order, as one snapshot.
    pub fn replay(&self, resume: &Resume, wanted: impl Fn(&Event) -> bool) -> Replay {
        let mut st = self.lock();
        self.trim_age(&mut st, now_ms());
        let head = st.last_id;
        let resumable_head = (head.next() >= st.horizon).then_some(head);
        let start = match *resume {
            Resume::None => {
                return Replay {
                    events: Vec::new(),
                    gap: None,
                    head,
                    resumable_head,
                };
            }
            Resume::After(id) => id.next(),
            Resume::Since(ms) => EventId::new(ms, 0),
        };
        let from = st.ring.partition_point(|s| s.id < start);
        let events: Vec<_> = st
            .ring
            .iter()
            .skip(from)
            .filter_map(|s| s.event.as_ref())
            .filter(|e| wanted(e))
            .cloned()
            .collect();
        let missed = start < st.horizon;
        let gap = missed.then(|| {
            events.first().map(|e| e.id).or_else(|| {
                st.ring
                    .iter()
                    .skip(from)
                    .find_map(|s| s.event.as_ref().map(|e| e.id))
            })
        });
        Replay {
            events,
            gap,
            head,
            resumable_head,
        }
    }

    /// Drops the history of `topic` (events published to it alone; events that were also
    /// published to other topics stay for those).
    pub fn delete_topic(&self, topic: &str) {
        let mut st = self.lock();
        for slot in st.ring.iter_mut() {
            if slot.event.as_ref().is_some_and(|e| e.is_only_in(topic)) {
                slot.event = None;
            }
        }
    }

    /// Drops events older than `max_age` (otherwise trimmed only on append and replay, so
    /// an idle server would keep them) and gives back ring capacity the history no longer
    /// needs.
    pub fn trim_expired(&self) {
        let mut st = self.lock();
        self.trim_age(&mut st, now_ms());
        let (len, cap) = (st.ring.len(), st.ring.capacity());
        if cap > 1024 && len < cap / 4 {
            st.ring.shrink_to(len * 2);
        }
    }

    /// Number of events held and the oldest id.
    pub fn stats(&self) -> (usize, Option<EventId>) {
        let mut st = self.lock();
        self.trim_age(&mut st, now_ms());
        let len = st.ring.iter().filter(|s| s.event.is_some()).count();
        let oldest = st.ring.iter().find_map(|s| s.event.as_ref().map(|e| e.id));
        (len, oldest)
    }
}

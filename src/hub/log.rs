//! The event log: the bounded, globally ordered history of this instance, and the events
//! its dispatchers have not read yet.
//!
//! With the memory broker, publishing appends here (one short lock: assign ids, encode each
//! frame once, append). With Redis, the log is the local mirror of the shared stream: the
//! reader appends the stream's entries with the ids Redis gave them ([`MemoryLog::append_remote`]).
//! Either way the dispatchers read it by sequence number to fan events out, and new
//! subscribers read it to replay what they missed, so history and live delivery come from
//! one ordered source.
//!
//! Retention and dispatch are separate: the history (bounded by count, bytes and age) is
//! what a resume can replay, and each dispatcher has its own cursor. An event leaves the
//! ring only once it is out of the history *and* every dispatcher has read it, so trimming
//! the history never skips an event for a live stream. What the dispatchers have not read
//! is bounded too: past the history's own limits, [`MemoryLog::append`] refuses new events
//! (the webhook answers 429) and the Redis reader waits ([`MemoryLog::wait_for_room`]).

use super::{Event, NewEvent, Resume};
use crate::sse::EventId;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// One entry. `event` is `None` once its topic was deleted: the slot keeps its id so
/// sequence numbers and the id order stay intact.
struct Slot {
    id: EventId,
    event: Option<Arc<Event>>,
    /// Encoded bytes appended before this slot: the size of any run of slots is one
    /// subtraction, whatever was deleted since.
    before: u64,
}

/// How much the history holds. An event leaves it when any bound pushes it out; the same
/// bounds, again, cap what may wait for the dispatchers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
}

struct State {
    ring: VecDeque<Slot>,
    /// Sequence number of `ring[0]`; the next appended event gets `first_seq + ring.len()`.
    first_seq: u64,
    /// Sequence number of the oldest event in the history. The slots before it are held
    /// only because a dispatcher has not read them yet; replays never see them.
    history_seq: u64,
    /// Encoded size of the events in the history (deleted ones not counted).
    history_bytes: usize,
    /// Encoded bytes appended since the log was created.
    appended_bytes: u64,
    /// Each dispatcher's next sequence number.
    cursors: Box<[u64]>,
    /// The slowest dispatcher's cursor (the next sequence number without any dispatcher),
    /// and the bytes appended before it.
    dispatched: u64,
    dispatched_bytes: u64,
    /// The Redis reader waits for the dispatchers: wake it once they have made room.
    room_wanted: bool,
    last_id: EventId,
    /// The history is complete from this id on: a resume starting before it may have missed
    /// events. It starts at the process's boot (memory) or at the oldest entry loaded from
    /// Redis, and moves up past every evicted event and every hole in the mirror.
    horizon: EventId,
}

impl State {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.ring.len() as u64
    }

    fn index(&self, seq: u64) -> usize {
        usize::try_from(seq - self.first_seq).unwrap_or(usize::MAX)
    }

    /// Bytes appended before sequence number `seq` (which the ring still holds, or the next).
    fn bytes_before(&self, seq: u64) -> u64 {
        self.ring
            .get(self.index(seq))
            .map_or(self.appended_bytes, |s| s.before)
    }

    /// The slots of the history.
    fn history(&self) -> std::collections::vec_deque::Iter<'_, Slot> {
        self.ring.range(self.index(self.history_seq)..)
    }
}

/// Too many events wait for the dispatchers: nothing was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{events} events ({bytes} bytes) are still waiting to be queued for the streams, as many \
     as the history holds (max_events {max_events}, max_bytes {max_bytes})"
)]
pub struct Backlog {
    /// Events appended and not yet read by every dispatcher.
    pub events: u64,
    /// Their encoded size.
    pub bytes: u64,
    /// The history's bounds, which the backlog may not exceed either.
    pub max_events: usize,
    /// See `max_events`.
    pub max_bytes: usize,
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

/// The in-memory history and dispatch queue.
pub(crate) struct MemoryLog {
    state: Mutex<State>,
    bounds: Bounds,
    /// Woken when the dispatchers make room after [`Self::wait_for_room`] found none.
    room: Notify,
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
    Arc::new(Event::encode(
        id,
        ev.topics,
        ev.event_type,
        ev.close,
        ev.data,
    ))
}

impl MemoryLog {
    /// The memory broker's log, read by `readers` dispatchers. Ids before this process
    /// started are unknown: resuming from one is a gap.
    pub(crate) fn new(bounds: Bounds, readers: usize) -> Self {
        let now = now_ms();
        // No event will get this id (the first is later), and resuming from it misses
        // nothing: a stream opened before any event can be told it as its starting point.
        // An id from before it comes from an earlier process: a gap.
        let start = EventId::new(now, 0);
        Self::with(bounds, readers, now, start, start)
    }

    /// The local mirror of a Redis stream: every resume is a gap until [`Self::load`] has
    /// brought in the stream's history. Ids come from Redis's clock, not this machine's:
    /// nothing is assumed about them until then.
    pub(crate) fn mirror(bounds: Bounds, readers: usize) -> Self {
        let horizon = EventId::new(u64::MAX, u64::MAX);
        Self::with(bounds, readers, now_ms(), EventId::default(), horizon)
    }

    fn with(
        bounds: Bounds,
        readers: usize,
        created_ms: u64,
        last_id: EventId,
        horizon: EventId,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                ring: VecDeque::new(),
                first_seq: 0,
                history_seq: 0,
                history_bytes: 0,
                appended_bytes: 0,
                cursors: vec![0; readers].into_boxed_slice(),
                dispatched: 0,
                dispatched_bytes: 0,
                room_wanted: false,
                last_id,
                horizon,
            }),
            bounds: Bounds {
                max_events: bounds.max_events.max(1),
                max_bytes: bounds.max_bytes.max(1),
                ..bounds
            },
            room: Notify::new(),
            created_ms,
        }
    }

    /// When the log was created, in Unix milliseconds by this machine's clock.
    pub(crate) fn created_ms(&self) -> u64 {
        self.created_ms
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this file; the state it guards
        // is consistent after every statement, so keep serving rather than poisoning.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`Self::append_past`] with every dispatcher to wake.
    #[cfg(test)]
    pub(crate) fn append(
        &self,
        batch: impl IntoIterator<Item = NewEvent, IntoIter: ExactSizeIterator>,
    ) -> Result<Vec<EventId>, Backlog> {
        let mut ids = Vec::new();
        self.append_past(batch, &mut ids, |_| false)?;
        Ok(ids)
    }

    /// Appends a batch atomically and adds the ids to `ids`, in order; or appends nothing when
    /// the dispatchers are a whole history behind. A batch is taken whole as long as they
    /// are not, even one larger than the history: its oldest events then go to the live
    /// streams without staying in the history.
    ///
    /// A dispatcher that had read everything and for which `idle(reader)` holds (it serves
    /// no stream: nobody to give the batch to) has its cursor moved past the batch, so it
    /// need not be woken to read it. `idle` is asked under the log's lock: a stream that
    /// registers with that dispatcher after the answer takes its replay snapshot after this
    /// append, and the snapshot covers the batch. Returns whether some dispatcher has the
    /// batch to read.
    pub(crate) fn append_past(
        &self,
        batch: impl IntoIterator<Item = NewEvent, IntoIter: ExactSizeIterator>,
        ids: &mut Vec<EventId>,
        idle: impl Fn(usize) -> bool,
    ) -> Result<bool, Backlog> {
        let batch = batch.into_iter();
        let now = now_ms();
        let mut st = self.lock();
        self.check_room(&st)?;
        self.trim_age(&mut st, now);
        let before = st.next_seq();
        ids.reserve(batch.len());
        for ev in batch {
            let event = encode(next_id(st.last_id, now), ev);
            ids.push(event.id);
            self.push(&mut st, event);
        }
        let wake = Self::pass_idle(&mut st, before, idle);
        self.trim_size(&mut st);
        self.settle(&mut st);
        Ok(wake)
    }

    /// Moves the cursor of each dispatcher that had read everything up to `before` and
    /// for which `idle(reader)` holds past what was appended since; returns whether any
    /// dispatcher is left with something to read (and must be woken). Called under the
    /// log's lock, which orders it with a new stream's replay snapshot (see
    /// [`Self::append_past`]).
    fn pass_idle(st: &mut State, before: u64, idle: impl Fn(usize) -> bool) -> bool {
        let end = st.next_seq();
        if end == before {
            return false;
        }
        let mut wake = false;
        for (reader, cursor) in st.cursors.iter_mut().enumerate() {
            if *cursor == before && idle(reader) {
                *cursor = end;
            } else {
                wake = true;
            }
        }
        wake
    }

    /// The id of the newest event appended or loaded (or the log's start).
    pub(crate) fn last_id(&self) -> EventId {
        self.lock().last_id
    }

    fn push(&self, st: &mut State, event: Arc<Event>) {
        let size = event.frame().len();
        st.last_id = event.id;
        st.ring.push_back(Slot {
            id: event.id,
            event: Some(event),
            before: st.appended_bytes,
        });
        st.appended_bytes += size as u64;
        st.history_bytes += size;
    }

    /// Appends events that already have their ids (read from Redis, in stream order).
    /// Events not newer than the last one appended are skipped, so a re-read is harmless.
    /// Returns how many were appended. The reader bounds what waits for the dispatchers by
    /// calling [`Self::wait_for_room`] before each read.
    #[cfg(test)]
    pub(crate) fn append_remote(&self, events: impl IntoIterator<Item = Arc<Event>>) -> usize {
        let before = self.lock().next_seq();
        self.append_remote_past(events, |_| false);
        usize::try_from(self.lock().next_seq() - before).unwrap_or(usize::MAX)
    }

    /// [`Self::append_remote`], passing idle dispatchers as [`Self::append_past`] does;
    /// returns whether any dispatcher must be woken.
    pub(crate) fn append_remote_past(
        &self,
        events: impl IntoIterator<Item = Arc<Event>>,
        idle: impl Fn(usize) -> bool,
    ) -> bool {
        let mut st = self.lock();
        self.trim_age(&mut st, now_ms());
        let before = st.next_seq();
        for event in events {
            if event.id > st.last_id {
                self.push(&mut st, event);
            }
        }
        let wake = Self::pass_idle(&mut st, before, idle);
        self.trim_size(&mut st);
        self.settle(&mut st);
        wake
    }

    /// Loads the history found in Redis at startup (in stream order), before anything was
    /// appended. Resumes from before `horizon` are gaps from now on. Loaded events after
    /// `live_after` (this log's creation, in Redis's clock) are dispatched to the streams
    /// opened meanwhile; older ones only serve replays.
    pub(crate) fn load(&self, events: Vec<Arc<Event>>, horizon: EventId, live_after: EventId) {
        let mut st = self.lock();
        for event in events {
            if st.ring.back().is_none_or(|s| s.id < event.id) {
                self.push(&mut st, event);
            }
        }
        st.horizon = horizon;
        // Before trimming: the next id must follow every id ever given, kept or not.
        if let Some(last) = st.ring.back().map(|s| s.id) {
            st.last_id = st.last_id.max(last);
        }
        self.trim_size(&mut st);
        self.trim_age(&mut st, now_ms());
        // Dispatchers start after the history loaded from before this log existed.
        let old = st.ring.partition_point(|s| s.id <= live_after) as u64;
        let live_from = st.first_seq + old;
        for c in &mut st.cursors {
            *c = (*c).max(live_from);
        }
        self.settle(&mut st);
    }

    /// Records that events after what this log holds may be lost (Redis lost its history,
    /// or trimmed it before this instance read it): a resume from before `horizon` is a gap.
    pub(crate) fn mark_hole(&self, horizon: EventId) {
        let mut st = self.lock();
        st.horizon = st.horizon.max(horizon);
    }

    /// Takes the oldest event out of the history (a dispatcher may still hold it); false
    /// when the history is empty.
    fn evict_oldest(st: &mut State) -> bool {
        let Some(slot) = st.ring.get(st.index(st.history_seq)) else {
            return false;
        };
        let (id, size) = (slot.id, slot.event.as_ref().map_or(0, |e| e.frame().len()));
        st.history_bytes -= size;
        st.horizon = st.horizon.max(id.next());
        st.history_seq += 1;
        true
    }

    fn trim_size(&self, st: &mut State) {
        while st.next_seq() - st.history_seq > self.bounds.max_events as u64
            || st.history_bytes > self.bounds.max_bytes
        {
            if !Self::evict_oldest(st) {
                break;
            }
        }
    }

    fn trim_age(&self, st: &mut State, now: u64) {
        let max_age = u64::try_from(self.bounds.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now.saturating_sub(max_age);
        while st.history().next().is_some_and(|s| s.id.ms < cutoff) && Self::evict_oldest(st) {}
        self.settle(st);
    }

    /// Updates the slowest dispatcher's position and lets go of the slots that are both
    /// out of the history and read by every dispatcher.
    fn settle(&self, st: &mut State) {
        let dispatched = st.cursors.iter().copied().min().unwrap_or(st.next_seq());
        if dispatched != st.dispatched {
            st.dispatched_bytes = st.bytes_before(dispatched);
            st.dispatched = dispatched;
        }
        let keep = dispatched.min(st.history_seq);
        while st.first_seq < keep {
            st.ring.pop_front();
            st.first_seq += 1;
        }
    }

    /// `Err` when what waits for the dispatchers has reached the history's bounds.
    fn check_room(&self, st: &State) -> Result<(), Backlog> {
        let events = st.next_seq() - st.dispatched;
        let bytes = st.appended_bytes - st.dispatched_bytes;
        if events < self.bounds.max_events as u64 && bytes < self.bounds.max_bytes as u64 {
            return Ok(());
        }
        Err(Backlog {
            events,
            bytes,
            max_events: self.bounds.max_events,
            max_bytes: self.bounds.max_bytes,
        })
    }

    /// Whether an append would be taken now (the Redis broker asks before publishing).
    pub(crate) fn room(&self) -> Result<(), Backlog> {
        self.check_room(&self.lock())
    }

    /// Waits until the dispatchers are less than a history behind. Returns whether it had
    /// to wait.
    pub(crate) async fn wait_for_room(&self) -> bool {
        let mut waited = false;
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a dispatcher that makes room right after it
            // wakes this waiter.
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if self.check_room(&st).is_ok() {
                    return waited;
                }
                st.room_wanted = true;
            }
            waited = true;
            notified.await;
        }
    }

    /// Copies up to `max` events for dispatcher `reader` into `out` and moves its cursor
    /// past them. Returns false when it has read everything.
    pub(crate) fn read(&self, reader: usize, max: usize, out: &mut Vec<Arc<Event>>) -> bool {
        let mut st = self.lock();
        let Some(&from) = st.cursors.get(reader) else {
            return false;
        };
        let mut next = from;
        for slot in st.ring.range(st.index(from)..).take(max) {
            next += 1;
            if let Some(ev) = &slot.event {
                out.push(Arc::clone(ev));
            }
        }
        if next == from {
            return false;
        }
        st.cursors[reader] = next;
        if from == st.dispatched {
            self.settle(&mut st);
        }
        let wake = st.room_wanted && self.check_room(&st).is_ok();
        if wake {
            st.room_wanted = false;
        }
        drop(st);
        if wake {
            self.room.notify_waiters();
        }
        true
    }

    /// The events a new subscriber missed, in order, as one snapshot.
    pub(crate) fn replay(&self, resume: &Resume, wanted: impl Fn(&Event) -> bool) -> Replay {
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
        let from = st
            .ring
            .partition_point(|s| s.id < start)
            .max(st.index(st.history_seq));
        let events: Vec<_> = st
            .ring
            .range(from..)
            .filter_map(|s| s.event.as_ref())
            .filter(|e| wanted(e))
            .cloned()
            .collect();
        let missed = start < st.horizon;
        let gap = missed.then(|| {
            events.first().map(|e| e.id).or_else(|| {
                st.ring
                    .range(from..)
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

    /// Drops the events of `topic` (those published to it alone; events that were also
    /// published to other topics stay for those), from the history and from what the
    /// dispatchers have yet to read.
    pub(crate) fn delete_topic(&self, topic: &str) {
        let mut st = self.lock();
        let history = st.index(st.history_seq);
        let mut freed = 0;
        for (i, slot) in st.ring.iter_mut().enumerate() {
            if slot.event.as_ref().is_some_and(|e| e.is_only_in(topic)) {
                let size = slot.event.take().map_or(0, |e| e.frame().len());
                if i >= history {
                    freed += size;
                }
            }
        }
        st.history_bytes -= freed;
    }

    /// Drops events older than `max_age` (otherwise trimmed only on append and replay, so
    /// an idle server would keep them) and gives back ring capacity the log no longer
    /// needs.
    pub(crate) fn trim_expired(&self) {
        let mut st = self.lock();
        self.trim_age(&mut st, now_ms());
        let (len, cap) = (st.ring.len(), st.ring.capacity());
        if cap > 1024 && len < cap / 4 {
            st.ring.shrink_to(len * 2);
        }
    }

    /// Number of events held in the history, their encoded size, the oldest id, and the
    /// number of events waiting for the dispatchers.
    pub(crate) fn stats(&self) -> LogStats {
        let mut st = self.lock();
        self.trim_age(&mut st, now_ms());
        let events = st.history().filter(|s| s.event.is_some()).count();
        let oldest = st.history().find_map(|s| s.event.as_ref().map(|e| e.id));
        LogStats {
            events,
            bytes: st.history_bytes,
            oldest,
            waiting: st.next_seq() - st.dispatched,
        }
    }
}

/// A point-in-time view of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogStats {
    /// Events in the history.
    pub events: usize,
    /// Their encoded size.
    pub bytes: usize,
    /// The oldest of them.
    pub oldest: Option<EventId>,
    /// Events not yet read by every dispatcher.
    pub waiting: u64,
}

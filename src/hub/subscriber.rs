//! One subscriber: its bounded queue (filled by the dispatchers) and its stream of frames
//! (drained by the connection that serves it).

use super::topic::Selector;
use super::{Event, SlowConsumer};
use crate::chunked;
use crate::metrics::Metrics;
use crate::sse::{self, EventId};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// [`Subscriber::limit`]'s bit for [`SlowConsumer::DropOldest`].
const DROP_OLDEST: u32 = 1 << 31;

/// Why the server ends a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The queue overflowed under the `disconnect` policy; the client resumes from history.
    Overflow,
    /// The topic was deleted (`DELETE /topics/{topic}`): `ssegate.closed`.
    TopicDeleted(Box<str>),
    /// The server is shutting down: `ssegate.shutdown` with a retry hint.
    Shutdown {
        /// The shortest wait before reconnecting.
        retry: Duration,
        /// Each stream's hint is `retry` plus a share of this window, spread by subscriber,
        /// so thousands of clients do not reconnect elsewhere in the same millisecond.
        spread: Duration,
    },
    /// The token's subject was revoked (`DELETE /subscribers/{sub}`): `ssegate.revoked`.
    Revoked,
    /// The token expired: `ssegate.expired`.
    Expired,
    /// This instance's mirror of the Redis stream has a hole (Redis lost or trimmed entries
    /// before they were read); the client resumes, with a gap.
    Lagged,
}

impl End {
    fn frame(&self, subscriber: u64) -> Option<Bytes> {
        match self {
            Self::Overflow | Self::Lagged => None,
            Self::TopicDeleted(t) => Some(sse::encode_control(
                "ssegate.closed",
                &serde_json::json!({ "topic": t }).to_string(),
            )),
            Self::Shutdown { retry, spread } => {
                let spread = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
                let jitter = if spread == 0 {
                    0
                } else {
                    mix(subscriber) % spread
                };
                let ms = u64::try_from(retry.as_millis())
                    .unwrap_or(u64::MAX)
                    .saturating_add(jitter);
                let mut b = BytesMut::from(&sse::encode_retry(ms)[..]);
                b.extend_from_slice(&sse::encode_control(
                    "ssegate.shutdown",
                    &format!("{{\"retry_ms\":{ms}}}"),
                ));
                Some(b.freeze())
            }
            Self::Revoked => Some(sse::encode_control("ssegate.revoked", "{}")),
            Self::Expired => Some(sse::encode_control("ssegate.expired", "{}")),
        }
    }
}

/// A cheap, well-spread hash (splitmix64) of a subscriber id, for jitter.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Which events a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The topics and patterns followed.
    pub selectors: Box<[Selector]>,
    /// Only these event types (untyped events count as `message`); `None` for all.
    pub types: Option<Box<[Box<str>]>>,
}

impl Filter {
    /// Whether the event's type passes the `type=` filter.
    pub fn accepts_type(&self, ev: &Event) -> bool {
        self.types.as_ref().is_none_or(|types| {
            let t = ev.event_type.as_deref().unwrap_or("message");
            types.iter().any(|x| &**x == t)
        })
    }

    /// Whether the event belongs on this stream.
    pub fn wants(&self, ev: &Event) -> bool {
        self.accepts_type(ev)
            && ev
                .topics
                .iter()
                .any(|t| self.selectors.iter().any(|s| s.matches(t)))
    }

    /// Whether this event ends the stream: `close: true` on a topic followed exactly (a
    /// pattern subscriber, e.g. a dashboard over `job/*`, stays open).
    fn closed_by(&self, ev: &Event) -> bool {
        ev.close
            && ev.topics.iter().any(|t| {
                self.selectors
                    .iter()
                    .any(|s| matches!(s, Selector::Exact(x) if **x == **t))
            })
    }
}

/// The most bytes of frames one [`Run`] copies ([`Run::parts`]).
const RUN_MAX_BYTES: usize = 256 * 1024;

/// Events a dispatcher queues to many streams at once ([`Subscriber::enqueue_run`]): their
/// frames copied back to back into one buffer, once for all of them. A stream then hands
/// out the whole run as one frame: one slice of one write instead of one per event (the
/// kernel's copy into the socket costs most per slice, not per byte), and one reference
/// count taken and dropped per stream instead of one per event.
pub(crate) struct Run {
    /// The events' frames, back to back.
    frames: Bytes,
    /// The events, in order; none of them ends streams ([`Event::close`]).
    events: Box<[Arc<Event>]>,
}

impl Run {
    /// A run of `events` (two or more, none a `close`: [`Self::fits`]).
    pub(crate) fn new(events: &[Arc<Event>]) -> Self {
        let mut frames = BytesMut::with_capacity(events.iter().map(|e| e.frame().len()).sum());
        for ev in events {
            frames.extend_from_slice(ev.frame());
        }
        Self {
            frames: frames.freeze(),
            events: events.into(),
        }
    }

    /// Whether `events` can be queued as one run: two or more, and none ends streams (a
    /// `close` event is handed out on its own, and ends the stream there).
    pub(crate) fn fits(events: &[Arc<Event>]) -> bool {
        events.len() > 1 && events.iter().all(|e| !e.close)
    }

    /// `events` cut into runs whose frames total at most [`RUN_MAX_BYTES`] (an event larger
    /// than that is a run of its own): a burst of large events is not copied into one
    /// buffer of a whole read's size.
    pub(crate) fn parts(events: &[Arc<Event>]) -> impl Iterator<Item = &[Arc<Event>]> {
        // The bytes of the part so far: `chunk_by` asks about consecutive pairs front to
        // back, so take the parts in order (as `flat_map` does), never from the back.
        let mut bytes = events.first().map_or(0, |e| e.frame().len());
        events.chunk_by(move |_, next| {
            let len = next.frame().len();
            let joins = bytes + len <= RUN_MAX_BYTES;
            bytes = if joins { bytes + len } else { len };
            joins
        })
    }

    fn first(&self) -> EventId {
        self.events.first().map_or_else(EventId::default, |e| e.id)
    }

    fn last(&self) -> EventId {
        self.events.last().map_or_else(EventId::default, |e| e.id)
    }
}

/// What a stream's queue holds: events one by one, or a dispatcher's runs of them, less
/// the first so many that `drop_oldest` dropped (the run is shared: it is not cut).
enum Queued {
    One(Arc<Event>),
    Run(Arc<Run>, u32),
}

/// What an idle stream holds is kept small: an end and a write cut short are rare, so they
/// are boxed or share a slot with what excludes them.
struct Queue {
    events: VecDeque<Queued>,
    /// How many events `events` holds (a run counts each of its events).
    queued: u32,
    dropped: u32,
    last_enqueued: EventId,
    end: Option<Box<End>>,
    waker: Option<Waker>,
    /// Who writes to the connection next.
    writer: Writer,
    /// When the connection was last written to (by the task or a dispatcher) ([`stamp`]),
    /// or [`BEAT_DUE`]: the shard's heartbeat writes a comment to a parked stream that has
    /// been quiet for long, or has the task of one that is not parked write it.
    wrote_at: Stamp,
    /// The connection, if dispatchers may write to it while the stream is parked
    /// ([`Subscription::write_directly`]).
    direct: Option<Arc<dyn DirectWrite>>,
}

/// [`Queue::wrote_at`] once the shard's heartbeat has asked the stream's task to write a
/// heartbeat (later than any stamp: no second request until it is written).
const BEAT_DUE: Stamp = Stamp(u64::MAX);

/// A time in milliseconds since the first stamp taken by the process: a stream's last
/// write time in 8 bytes instead of an `Instant`'s 16. Taken once per dispatcher pass or
/// heartbeat tick, not per subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(u64);

impl Stamp {
    /// `at`, to the millisecond.
    pub(crate) fn of(at: Instant) -> Self {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let epoch = *EPOCH.get_or_init(Instant::now);
        let ms = u64::try_from(at.saturating_duration_since(epoch).as_millis());
        Self(ms.unwrap_or(u64::MAX).min(BEAT_DUE.0 - 1))
    }

    /// The time now.
    pub(crate) fn now() -> Self {
        Self::of(Instant::now())
    }
}

/// Who writes to a stream's connection.
enum Writer {
    /// The stream's task (always, for a connection dispatchers may not write to).
    Task,
    /// A dispatcher, while the task is parked with nothing to write: it writes a live
    /// event itself instead of queueing it and waking the task. Events up to this id were
    /// already sent (or replayed): never written again.
    Parked(EventId),
    /// The task, which first writes this unwritten rest of a dispatcher's write cut short
    /// (rare: boxed, so that every idle stream's slot stays the size of `Parked`).
    Cut(Box<Bytes>),
}

impl Queue {
    /// Takes the connection back from the dispatchers, if they have it; the rest of a write
    /// cut short stays for the task.
    fn take_back(&mut self) {
        if matches!(self.writer, Writer::Parked(_)) {
            self.writer = Writer::Task;
        }
    }

    /// Writes `chunk` to the parked stream's connection, if the stream is parked. A write
    /// cut short leaves the rest for the task to write first and unparks the stream: the
    /// task's waker is then returned, to be woken once the lock is released.
    fn write_parked(&mut self, chunk: &Bytes, now: Stamp) -> Wrote {
        let (Writer::Parked(_), Some(direct)) = (&self.writer, &self.direct) else {
            return Wrote::Refused;
        };
        match direct.try_write(chunk) {
            Written::All => {
                self.wrote_at = now;
                Wrote::Whole
            }
            Written::Part(rest) => {
                self.wrote_at = now;
                self.writer = Writer::Cut(Box::new(rest));
                Wrote::Cut(self.waker.take())
            }
            Written::Nothing => Wrote::Refused,
        }
    }
}

/// What [`Queue::write_parked`] did.
enum Wrote {
    /// The whole frame went out.
    Whole,
    /// Part of it: the task must be woken (if it left a waker) to write the rest.
    Cut(Option<Waker>),
    /// Nothing (not parked, or the socket is full).
    Refused,
}

impl Wrote {
    /// Whether the frame went out (whole or in part); wakes the task to write the rest of
    /// a cut one. Call with the subscriber's lock released.
    fn went_out(self) -> bool {
        match self {
            Self::Whole => true,
            Self::Cut(waker) => {
                if let Some(w) = waker {
                    w.wake();
                }
                true
            }
            Self::Refused => false,
        }
    }
}

/// A chunked HTTP/1.1 response body a dispatcher may write an event to itself, without
/// waking the stream's task, while that task is parked with nothing to write
/// ([`Subscription::park`]). The dispatcher holds the subscriber's lock while it writes,
/// and the task takes the connection back under the same lock before writing anything
/// itself, so writes never interleave.
pub(crate) trait DirectWrite: Send + Sync {
    /// Writes `chunk` (an event's shared [`Event::chunk`], or the heartbeat's) without
    /// blocking.
    fn try_write(&self, chunk: &Bytes) -> Written;
}

/// How much of a chunk a [`DirectWrite`] took.
pub(crate) enum Written {
    /// All of it.
    All,
    /// Part of it; the rest, for the task to write first.
    Part(Bytes),
    /// Nothing (the socket is full, or failed: the task finds out by itself).
    Nothing,
}

/// What [`Subscriber::enqueue`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Not for this subscriber (already queued, or its stream is ending).
    Skipped,
    /// Queued for the stream's task.
    Queued,
    /// Written to the connection by the caller.
    Written,
}

/// One frame a [`Subscription`] hands out: an event, written from its shared encoding
/// (the event is moved along from the queue, so handing it out costs no reference count of
/// its own), a run of events' frames shared by a shard's streams, or bytes of
/// ssegate's own (`retry:`, notices, heartbeats).
#[derive(Debug)]
pub enum Frame {
    /// An event's SSE frame ([`Event::frame`]).
    Event(Arc<Event>),
    /// A run's frames, other bytes, or what is left of a frame written in part.
    Own(Bytes),
}

impl Frame {
    /// The frame's bytes as shared `Bytes`.
    pub fn into_bytes(self) -> Bytes {
        match self {
            Self::Event(ev) => ev.frame_bytes(0),
            Self::Own(b) => b,
        }
    }

    /// Drops the first `n` bytes (written already).
    pub fn advance(&mut self, n: usize) {
        *self = Self::Own(match self {
            Self::Event(ev) => ev.frame_bytes(n),
            Self::Own(b) => b.split_off(n),
        });
    }
}

impl std::ops::Deref for Frame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Event(ev) => ev.frame(),
            Self::Own(b) => b,
        }
    }
}

/// The part of a subscriber shared with the dispatchers.
pub(crate) struct Subscriber {
    pub id: u64,
    pub filter: Filter,
    /// The `sub` claim of the token that authorized the stream, for revocation.
    pub subject: Option<Box<str>>,
    /// `subscriber_buffer` (at least one, at most 2³¹ - 1), and the slow-consumer policy in
    /// the top bit ([`DROP_OLDEST`]): with [`Self::home`], 8 bytes.
    limit: u32,
    /// Its place in the registry's list of its first topic or pattern (written under that
    /// shard's lock).
    pub(crate) home: AtomicU32,
    queue: Mutex<Queue>,
}

impl Subscriber {
    pub(crate) fn new(
        id: u64,
        filter: Filter,
        subject: Option<Box<str>>,
        capacity: usize,
        policy: SlowConsumer,
    ) -> Self {
        Self {
            id,
            filter,
            subject,
            limit: u32::try_from(capacity.clamp(1, (DROP_OLDEST - 1) as usize))
                .unwrap_or(DROP_OLDEST - 1)
                | match policy {
                    SlowConsumer::Disconnect => 0,
                    SlowConsumer::DropOldest => DROP_OLDEST,
                },
            home: AtomicU32::new(0),
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                queued: 0,
                dropped: 0,
                last_enqueued: EventId::default(),
                end: None,
                waker: None,
                writer: Writer::Task,
                // Quiet from now: the first heartbeat comes an interval after subscribing.
                wrote_at: Stamp::now(),
                direct: None,
            }),
        }
    }

    fn capacity(&self) -> usize {
        (self.limit & !DROP_OLDEST) as usize
    }

    fn policy(&self) -> SlowConsumer {
        if self.limit & DROP_OLDEST == 0 {
            SlowConsumer::Disconnect
        } else {
            SlowConsumer::DropOldest
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues an event (once, even when it reaches this subscriber by several topics) and
    /// applies the slow-consumer policy. With `direct` (the time now), a stream parked with
    /// nothing to write gets the event written by the caller instead, if the socket takes
    /// it at once: no queue, no wake-up, no task poll.
    pub(crate) fn enqueue(
        &self,
        ev: &Arc<Event>,
        metrics: &Metrics,
        direct: Option<Stamp>,
    ) -> Delivery {
        let mut q = self.lock();
        if q.end.is_some() || ev.id <= q.last_enqueued {
            return Delivery::Skipped;
        }
        q.last_enqueued = ev.id;
        if let Some(now) = direct
            && q.events.is_empty()
            && matches!(q.writer, Writer::Parked(after) if ev.id > after)
            && !self.filter.closed_by(ev)
        {
            let wrote = q.write_parked(&ev.chunk, now);
            // Refused: queued below, and the task waits for the socket.
            if !matches!(wrote, Wrote::Refused) {
                drop(q);
                wrote.went_out();
                return Delivery::Written;
            }
        }
        // Queued: the task writes it, and writes nothing before taking the socket back.
        self.push(&mut q, ev, metrics);
        let waker = q.waker.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
        Delivery::Queued
    }

    /// Queues `ev` for the task (which takes the socket back first), applying the
    /// slow-consumer policy when the queue is full.
    fn push(&self, q: &mut Queue, ev: &Arc<Event>, metrics: &Metrics) {
        q.take_back();
        if q.queued as usize >= self.capacity() {
            match self.policy() {
                SlowConsumer::Disconnect => {
                    q.events.clear();
                    q.queued = 0;
                    q.end = Some(Box::new(End::Overflow));
                    metrics.slow_consumer_disconnect();
                    // The hub does not know addresses: bounded per reason alone.
                    if let Some(suppressed) =
                        crate::logbound::admit("slow_consumer_disconnect", None)
                    {
                        tracing::warn!(
                            subscriber = self.id,
                            buffer = self.capacity(),
                            suppressed,
                            "slow consumer disconnected: its queue is full; it will resume from history"
                        );
                    }
                }
                SlowConsumer::DropOldest => {
                    // One event, as from any queue: the front of a run is skipped.
                    match q.events.front_mut() {
                        Some(Queued::Run(run, dropped))
                            if run.events.len() > *dropped as usize + 1 =>
                        {
                            *dropped += 1;
                        }
                        _ => {
                            q.events.pop_front();
                        }
                    }
                    q.queued = q.queued.saturating_sub(1);
                    if q.dropped == 0
                        && let Some(suppressed) =
                            crate::logbound::admit("slow_consumer_drop_oldest", None)
                    {
                        tracing::warn!(
                            subscriber = self.id,
                            buffer = self.capacity(),
                            suppressed,
                            "slow consumer: dropping its oldest queued events"
                        );
                    }
                    q.dropped = q.dropped.saturating_add(1);
                    metrics.dropped_overflow(1);
                    q.events.push_back(Queued::One(Arc::clone(ev)));
                    q.queued += 1;
                }
            }
        } else {
            q.events.push_back(Queued::One(Arc::clone(ev)));
            q.queued += 1;
        }
    }

    /// Queues the events of `run` this subscriber wants, in order, under one lock and with
    /// one wake-up: a burst read by a dispatcher that is behind costs each subscriber one
    /// lock (and one cache-line transfer between the dispatcher and the stream's task) per
    /// run instead of one per event. With `shared` (the same events as a [`Run`]), a
    /// subscriber that wants them all and has room for them all queues that instead.
    /// Returns how many were queued.
    pub(crate) fn enqueue_run(
        &self,
        run: &[Arc<Event>],
        shared: Option<&Arc<Run>>,
        metrics: &Metrics,
    ) -> u64 {
        let mut queued = 0;
        let mut q = self.lock();
        let room = self.capacity().saturating_sub(q.queued as usize);
        if let Some(shared) = shared
            && q.end.is_none()
            && self.filter.types.is_none()
            && shared.first() > q.last_enqueued
            && shared.events.len() <= room
        {
            q.take_back();
            q.last_enqueued = shared.last();
            q.queued += shared.events.len() as u32;
            q.events.push_back(Queued::Run(Arc::clone(shared), 0));
            queued = shared.events.len() as u64;
        } else {
            // Grown once for the run, not doubling along it (bounded by the buffer).
            q.events.reserve(run.len().min(room));
            for ev in run {
                if q.end.is_some() {
                    break;
                }
                if ev.id <= q.last_enqueued || !self.filter.accepts_type(ev) {
                    continue;
                }
                q.last_enqueued = ev.id;
                self.push(&mut q, ev, metrics);
                queued += 1;
            }
        }
        let waker = if queued > 0 { q.waker.take() } else { None };
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
        queued
    }

    /// Writes a heartbeat comment if the stream is parked and its connection has been
    /// quiet since `quiet_since`; returns whether it did. A socket that is full needs no
    /// heartbeat (bytes are on their way), and the task learns of it at its next write. A
    /// stream that only its task writes (served by hyper) has its task write the comment:
    /// no timer per stream.
    pub(crate) fn beat(&self, now: Stamp, quiet_since: Stamp) -> bool {
        let mut q = self.lock();
        if q.wrote_at > quiet_since {
            return false;
        }
        if q.direct.is_none() {
            if q.end.is_some() {
                return false;
            }
            q.wrote_at = BEAT_DUE;
            let waker = q.waker.take();
            drop(q);
            if let Some(w) = waker {
                w.wake();
            }
            return true;
        }
        let wrote = q.write_parked(&Bytes::from_static(chunked::HEARTBEAT), now);
        drop(q);
        wrote.went_out()
    }

    /// Ends the stream after what is already queued.
    pub(crate) fn end(&self, end: End) {
        let mut q = self.lock();
        q.take_back();
        if q.end.is_none() {
            q.end = Some(Box::new(end));
        }
        let waker = q.waker.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Queue and backlog buffers up to this many events are kept between refills; larger
/// ones (left by a burst) are freed.
const KEEP_CAPACITY: usize = 16;

/// Frames handed out per [`Subscription::poll_frames`] when the caller asks for more.
const MAX_FRAMES: usize = 256;

/// A subscriber's stream of SSE frames: `retry:`, an optional `ssegate.gap`, the replayed
/// history, then live events and heartbeats, until the server or the client ends it.
///
/// It knows nothing of HTTP: the public listener wraps it in a response body. Dropping it
/// (the client went away) removes the subscriber from the hub at once.
pub struct Subscription {
    sub: Arc<Subscriber>,
    shared: Arc<Shared>,
    /// What goes out before the live events; dropped once it is out.
    opening: Option<Box<Opening>>,
    /// The newest event id handed out, or, once the opening is out, the replay's head if
    /// newer: live events up to it are duplicates (or predate the stream) and are skipped.
    last_sent: EventId,
    /// Events taken from the queue and not yet handed out. Refilled only once empty, so
    /// queue and backlog together never hold more than twice `subscriber_buffer`.
    backlog: VecDeque<Queued>,
    /// The end taken from the queue, sent once the backlog is out.
    end: Option<Box<End>>,
    /// Frames were handed out since the last-write stamp was taken (at the last park, or,
    /// for a stream only its task writes, at the last refill).
    handed_out: bool,
    expires: Option<Pin<Box<Sleep>>>,
    finishing: bool,
    done: bool,
    /// Events handed out since the delivery counter was last updated (at most one
    /// poll's: a few hundred runs). 32 bits keep the subscription at 96 bytes, and an
    /// HTTP/2 stream's body (this and its guard) in jemalloc's 112-byte class.
    counted: u32,
    /// Its writer lets dispatchers write to the connection ([`Self::park`]).
    direct: bool,
}

/// What every subscription of one hub shares: one pointer per stream, not two.
pub(crate) struct Shared {
    /// Where a subscription removes its subscriber when dropped.
    pub registry: Arc<dyn Unregister>,
    /// Counts deliveries.
    pub metrics: Arc<Metrics>,
}

/// What a stream sends before its live events: `retry:` and perhaps a gap notice, the
/// replay, and an id announcement.
struct Opening {
    preamble: VecDeque<Bytes>,
    replay: std::vec::IntoIter<Arc<Event>>,
    /// The newest event id at subscription time: the replay covers everything up to it.
    head: EventId,
    /// Sent as an id-only block once the replay is done, if the client knows no later id.
    announce: Option<EventId>,
    /// The id the client resumed from, if any: an announced id must never move it back.
    resumed_from: EventId,
}

impl Subscription {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        sub: Arc<Subscriber>,
        shared: Arc<Shared>,
        preamble: VecDeque<Bytes>,
        replay: Vec<Arc<Event>>,
        head: EventId,
        announce: Option<EventId>,
        resumed_from: EventId,
        expires: Option<Instant>,
    ) -> Self {
        Self {
            sub,
            shared,
            opening: Some(Box::new(Opening {
                preamble,
                replay: replay.into_iter(),
                head,
                announce,
                resumed_from,
            })),
            last_sent: EventId::default(),
            backlog: VecDeque::new(),
            end: None,
            handed_out: false,
            expires: expires.map(|at| Box::pin(tokio::time::sleep_until(at))),
            finishing: false,
            done: false,
            counted: 0,
            direct: false,
        }
    }

    /// Lets dispatchers write live events and heartbeats to `writer` themselves while this
    /// stream is parked ([`Self::park`]).
    pub(crate) fn write_directly(&mut self, writer: Arc<dyn DirectWrite>) {
        self.sub.lock().direct = Some(writer);
        self.direct = true;
        self.handed_out = true;
    }

    /// Parks the stream: until [`Self::unpark`], a dispatcher writes the next live event
    /// (and the shard's heartbeat, a heartbeat) to the connection itself, if the socket
    /// takes it at once, instead of queueing it and waking the task. Call only when
    /// `poll_frames` has just returned `Pending` and everything it handed out before is
    /// written; the task must then write nothing before calling [`Self::unpark`].
    pub(crate) fn park(&mut self) {
        if !self.direct
            || self.opening.is_some()
            || self.done
            || self.finishing
            || !self.backlog.is_empty()
            || self.end.is_some()
        {
            return;
        }
        let mut q = self.sub.lock();
        if self.handed_out {
            self.handed_out = false;
            q.wrote_at = Stamp::now();
        }
        if q.events.is_empty() && q.end.is_none() && matches!(q.writer, Writer::Task) {
            q.writer = Writer::Parked(self.last_sent);
            // A parked stream may stay idle for hours: it keeps no queue buffers (the
            // dispatchers write its next events themselves, or queue into a new one).
            q.events = VecDeque::new();
            self.backlog = VecDeque::new();
        }
    }

    /// Takes the connection back from the dispatchers before the task writes anything:
    /// returns the unwritten rest of a dispatcher's write cut short, to be written first.
    pub(crate) fn unpark(&mut self) -> Bytes {
        if !self.direct {
            return Bytes::new();
        }
        let mut q = self.sub.lock();
        match std::mem::replace(&mut q.writer, Writer::Task) {
            Writer::Cut(rest) => *rest,
            Writer::Task | Writer::Parked(_) => Bytes::new(),
        }
    }

    /// The hub's id for this subscriber (appears in log lines).
    pub fn id(&self) -> u64 {
        self.sub.id
    }

    fn push_event(&mut self, out: &mut Vec<Frame>, ev: Arc<Event>) {
        if ev.id <= self.last_sent {
            return;
        }
        self.last_sent = ev.id;
        self.counted += 1;
        if self.sub.filter.closed_by(&ev) {
            self.finishing = true;
        }
        out.push(Frame::Event(ev));
    }

    /// Hands out the events of `run` after its first `dropped` and not sent yet (all of
    /// them, unless the replay covered or `drop_oldest` dropped its first ones) as one
    /// frame.
    fn push_run(&mut self, out: &mut Vec<Frame>, run: &Run, dropped: u32) {
        let mut from = 0;
        let mut sent = 0;
        for ev in run.events.iter() {
            if sent >= dropped as usize && ev.id > self.last_sent {
                break;
            }
            from += ev.frame().len();
            sent += 1;
        }
        if sent == run.events.len() {
            return;
        }
        self.last_sent = run.last();
        self.counted += (run.events.len() - sent) as u32;
        out.push(Frame::Own(run.frames.slice(from..)));
    }

    /// Appends the frames ready to be written to `out`, at most `max` (at least one) of
    /// them: `Ready(Some(()))` with at least one appended, `Ready(None)` once the stream is
    /// over. Each frame is shared (an event's encoding, or a run's frames copied once for
    /// all the streams of a shard), never a copy of the stream's own, so a writer can send
    /// everything queued since its last write in one vectored write.
    pub fn poll_frames(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> Poll<Option<()>> {
        if self.done {
            return Poll::Ready(None);
        }
        let start = out.len();
        let limit = start + max.max(1);
        if let Some(mut opening) = self.opening.take() {
            out.extend(opening.preamble.drain(..).map(Frame::Own));
            while !self.finishing && out.len() < limit {
                let Some(ev) = opening.replay.next() else {
                    break;
                };
                self.push_event(out, ev);
            }
            if self.finishing || opening.replay.len() > 0 || out.len() >= limit {
                self.opening = Some(opening);
            } else {
                if let Some(head) = opening.announce
                    && self.last_sent.max(opening.resumed_from) < head
                {
                    // A client cut before it ever received an event (or whose replay
                    // matched none) would otherwise reconnect without an id, or with an old
                    // one, and miss or re-scan what was published in between.
                    out.push(Frame::Own(sse::encode_id(head)));
                }
                self.last_sent = self.last_sent.max(opening.head);
            }
        }
        if self.opening.is_none() && !self.finishing && out.len() < limit {
            self.drain_live(cx, out, limit);
        }
        if out.len() > start {
            self.shared
                .metrics
                .delivered(u64::from(std::mem::take(&mut self.counted)));
            self.handed_out = true;
            return Poll::Ready(Some(()));
        }
        if self.finishing {
            self.done = true;
            return Poll::Ready(None);
        }
        if let Some(exp) = &mut self.expires
            && exp.as_mut().poll(cx).is_ready()
        {
            self.sub.end(End::Expired);
            self.expires = None;
            return self.poll_frames(cx, out, max);
        }
        Poll::Pending
    }

    /// The next bytes to write, several frames copied into one buffer if several are
    /// ready; `Ready(None)` once the stream is over. For writers that take one buffer at a
    /// time (hyper's response bodies); [`Self::poll_frames`] copies nothing.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut frames = Vec::new();
        match self.poll_frames(cx, &mut frames, MAX_FRAMES) {
            Poll::Ready(Some(())) if frames.len() == 1 => {
                Poll::Ready(frames.pop().map(Frame::into_bytes))
            }
            Poll::Ready(Some(())) => {
                let mut all = BytesMut::with_capacity(frames.iter().map(|f| f.len()).sum());
                for f in &frames {
                    all.extend_from_slice(f);
                }
                Poll::Ready(Some(all.freeze()))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Ready once the slow-consumer policy has cut this stream (its queue overflowed under
    /// `disconnect`), without taking anything from the queue: a writer blocked on a client
    /// that does not read can then drop the connection at once instead of waiting for the
    /// write to time out.
    pub fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if matches!(self.end.as_deref(), Some(End::Overflow)) {
            return Poll::Ready(());
        }
        let mut q = self.sub.lock();
        if matches!(q.end.as_deref(), Some(End::Overflow)) {
            return Poll::Ready(());
        }
        if !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            q.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn drain_live(&mut self, cx: &mut Context<'_>, out: &mut Vec<Frame>, limit: usize) {
        loop {
            let refilled = self.backlog.is_empty() && self.end.is_none();
            if refilled {
                self.refill(cx, out);
            }
            // Grown once for what goes out now (after a burst, hundreds of frames), not
            // doubling along the way.
            out.reserve(self.backlog.len().min(limit.saturating_sub(out.len())));
            while !self.finishing && out.len() < limit {
                match self.backlog.pop_front() {
                    Some(Queued::One(ev)) => self.push_event(out, ev),
                    Some(Queued::Run(run, dropped)) => self.push_run(out, &run, dropped),
                    None => break,
                }
            }
            if self.finishing {
                self.backlog.clear();
            }
            if self.backlog.is_empty()
                && let Some(end) = self.end.take()
            {
                if let Some(frame) = end.frame(self.sub.id) {
                    out.push(Frame::Own(frame));
                }
                self.finishing = true;
            }
            // Returning with nothing handed out is only right after a refill, which left
            // the waker; a backlog whose events were all already sent is not enough.
            if refilled || self.finishing || out.len() >= limit {
                return;
            }
        }
    }

    /// Moves what the dispatchers queued into the backlog and leaves the waker.
    fn refill(&mut self, cx: &mut Context<'_>, out: &mut Vec<Frame>) {
        if self.backlog.capacity() > KEEP_CAPACITY {
            // A burst's buffers are not kept for the stream's idle hours.
            self.backlog = VecDeque::new();
        }
        let mut q = self.sub.lock();
        let dropped = std::mem::take(&mut q.dropped);
        // The empty backlog's buffer becomes the queue's: no allocation per refill.
        std::mem::swap(&mut self.backlog, &mut q.events);
        if self.backlog.is_empty() {
            // Nothing was queued: the stream is idle, perhaps for hours, and keeps no
            // buffers (a parked stream drops them in `park`; this is for the streams only
            // their task writes, HTTP/2's: 64 bytes each). The next event allocates again.
            self.backlog = VecDeque::new();
            q.events = VecDeque::new();
        }
        q.queued = 0;
        // Events are queued only before an end is set, so they go out first, then the end.
        self.end = q.end.take();
        // A stream only its task writes: what it handed out since is written (or on its
        // way), and a heartbeat the shard asked for goes out unless events do.
        let mut beat = false;
        if !self.direct {
            let due = q.wrote_at == BEAT_DUE;
            if std::mem::take(&mut self.handed_out) || due {
                q.wrote_at = Stamp::now();
                beat = due && self.backlog.is_empty() && self.end.is_none();
            }
        }
        // Always leave the waker, even when events were taken: they may all be skipped as
        // already sent (the replay covered them), and the next enqueue must wake us then.
        if self.end.is_none() && !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            q.waker = Some(cx.waker().clone());
        }
        drop(q);
        if beat {
            out.push(Frame::Own(Bytes::from_static(sse::HEARTBEAT)));
        }
        if dropped > 0 {
            out.push(Frame::Own(sse::encode_control(
                "ssegate.overflow",
                &format!("{{\"dropped\":{dropped}}}"),
            )));
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.direct {
            // The connection closes with its stream, not when the dispatchers let go.
            let mut q = self.sub.lock();
            q.writer = Writer::Task;
            q.direct = None;
        }
        self.shared.registry.unregister(&self.sub);
    }
}

/// Where a subscriber is registered, so that its [`Subscription`] removes it when dropped.
/// Implemented by the registry, which knows subscribers; a subscription needs to know no
/// more of the registry than this.
pub(crate) trait Unregister: Send + Sync {
    /// Removes `sub`: its stream has ended.
    fn unregister(&self, sub: &Subscriber);
}

#[cfg(test)]
#[path = "subscriber_tests.rs"]
mod tests;

//! The hub: topics, history and subscriptions. Publishing appends to the log; per-shard
//! dispatchers read the log in order and queue each event for the subscribers that want
//! it; each subscriber's [`Subscription`] turns its queue into SSE frames.
//!
//! The hub knows nothing of HTTP. Each event is encoded once into `Bytes` at publish and
//! every subscriber queue holds a reference-counted pointer to it.
//!
//! With `broker: disk` (the `disk` submodule), each batch is stored in a directory (by a
//! writer thread, or with `sync: <duration>` by the publishes themselves, in groups) before
//! it is appended to the log, and the log is read back from there at start.
//! With `broker: redis` (the `redis` submodule), publishing writes to a Redis stream
//! instead, and the log is this instance's mirror of that stream, filled by one reader
//! task. Either way, everything downstream of the log (dispatchers, replay, the seam) is
//! the same.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use ssegate::hub::{Hub, HubSettings, NewEvent, SubscribeRequest, Filter, Resume, Selector};
//! let hub = Hub::start(HubSettings::default(), Default::default());
//! let mut sub = hub.subscribe(SubscribeRequest::new(Filter {
//!     selectors: [Selector::parse("job/1").unwrap()].into(), types: None }));
//! let ids = hub.publish(vec![NewEvent::new("job/1", "done")]).await.unwrap();
//! let first = std::future::poll_fn(|cx| sub.poll_chunk(cx)).await.unwrap(); // retry:
//! let event = std::future::poll_fn(|cx| sub.poll_chunk(cx)).await.unwrap();
//! assert_eq!(&event[..], format!("id: {}\ndata: done\n\n", ids[0]).as_bytes());
//! # }
//! ```

mod disk;
mod log;
mod redis;
mod registry;
mod subscriber;
pub mod topic;

pub use log::Backlog;
pub(crate) use subscriber::{DirectWrite, Written};
pub use subscriber::{End, Filter, Frame, Subscription};
pub use topic::{Selector, TopicError, validate_topic};

use self::disk::DiskBroker;
use self::redis::RedisBroker;
use crate::metrics::Metrics;
use crate::sse::{self, EventId};
use bytes::Bytes;
use log::{Bounds, MemoryLog};
use registry::Registry;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use subscriber::Subscriber;
use tokio::sync::watch;

/// What to do when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowConsumer {
    /// End the stream; the client reconnects and resumes from history.
    #[default]
    Disconnect,
    /// Drop the oldest queued events and tell the client how many with `ssegate.overflow`.
    DropOldest,
}

/// Where events are stored and how instances share them (the `broker` section).
#[derive(Clone, Default, PartialEq, Eq)]
pub enum BrokerSettings {
    /// In this process only.
    #[default]
    Memory,
    /// In this process, the history also written to a directory and read back at start.
    Disk {
        /// The directory holding the segment files.
        dir: std::path::PathBuf,
        /// Flush at least this often; `None` flushes before answering each publish.
        sync: Option<Duration>,
    },
    /// One Redis stream shared by every instance.
    Redis {
        /// `redis://` or `rediss://` URL; password and database index come from it.
        url: String,
        /// The stream's key.
        stream: String,
    },
}

impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Disk { dir, sync } => f
                .debug_struct("Disk")
                .field("dir", dir)
                .field("sync", sync)
                .finish(),
            // The URL may carry a password: show only where it points.
            Self::Redis { url, stream } => {
                let shown = match url.split_once("://") {
                    Some((scheme, rest)) => match rest.split_once('@') {
                        Some((_, host)) => format!("{scheme}://***@{host}"),
                        None => url.clone(),
                    },
                    None => "***".to_owned(),
                };
                f.debug_struct("Redis")
                    .field("url", &shown)
                    .field("stream", stream)
                    .finish()
            }
        }
    }
}

/// The hub's settings (from the `events` and `broker` sections of the configuration).
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Events kept in the history.
    pub history_max_events: usize,
    /// Encoded bytes kept in the history.
    pub history_max_bytes: usize,
    /// Age after which events leave the history.
    pub history_max_age: Duration,
    /// Events queued per subscriber before the slow-consumer policy applies.
    pub subscriber_buffer: usize,
    /// The slow-consumer policy.
    pub slow_consumer: SlowConsumer,
    /// Silence after which a stream gets a heartbeat comment.
    pub heartbeat: Duration,
    /// The `retry:` sent first on every stream.
    pub retry: Duration,
    /// Dispatcher shards (one per core is right).
    pub shards: usize,
    /// The broker.
    pub broker: BrokerSettings,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            history_max_events: 10_000,
            history_max_bytes: 64 << 20,
            history_max_age: Duration::from_secs(3600),
            subscriber_buffer: 1000,
            slow_consumer: SlowConsumer::Disconnect,
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            shards: std::thread::available_parallelism().map_or(1, usize::from),
            broker: BrokerSettings::Memory,
        }
    }
}

/// An event's topics: one is kept inline (most events have one), and each is a shared
/// string, so that events to one topic need not each copy it (a `derive` rule's events
/// share the rule's).
pub type Topics = SmallVec<[Arc<str>; 1]>;

/// A published event, encoded once and shared by every subscriber it reaches.
#[derive(Debug)]
pub struct Event {
    /// Its id, unique and increasing across all topics.
    pub id: EventId,
    /// The topics it was published to (one event, one id, even for several topics).
    pub topics: Topics,
    /// Its SSE event type, if any.
    pub event_type: Option<Box<str>>,
    /// Whether it ends the streams of its topics.
    pub close: bool,
    /// Its frame ([`Event::frame`]) framed as one HTTP/1.1 chunk (size line, frame, CRLF):
    /// a raw HTTP/1.1 stream sends it with one plain write.
    pub chunk: Bytes,
    /// Where the frame starts in `chunk`: after the size line (at most 18 bytes). Kept as
    /// an offset rather than a second `Bytes`, the event is 32 bytes smaller (and its
    /// allocation at most 120 bytes: jemalloc's 128-byte class, glibc's fast bins).
    frame_at: u8,
}

impl Event {
    /// An event encoded once under `id`, as a frame and as a chunk. Data of one line that
    /// comes with room for the rest of the chunk ([`frame_room`]) is framed in its own
    /// buffer; other data is copied into a new one.
    pub(crate) fn encode(
        id: EventId,
        topics: Topics,
        event_type: Option<Box<str>>,
        close: bool,
        data: String,
    ) -> Self {
        if let Some(one) = sse::OneLine::new(id, event_type.as_deref(), &data) {
            let frame_len = one.head().len() + data.len() + sse::ONE_LINE_TAIL.len();
            if data.capacity() >= crate::chunked::chunk_len(frame_len) {
                let chunk =
                    crate::chunked::build_around(data.into_bytes(), one.head(), sse::ONE_LINE_TAIL);
                return Self::new(id, topics, event_type, close, chunk, frame_len);
            }
        }
        let hint = sse::encoded_len_hint(event_type.as_deref(), &data);
        Self::build(id, topics, event_type, close, hint, |buf, t| {
            sse::encode_event_into(buf, id, t, &data);
        })
    }

    /// An event whose frame was encoded before (read back from disk), copied once.
    pub(crate) fn with_frame(
        id: EventId,
        topics: Topics,
        event_type: Option<Box<str>>,
        close: bool,
        frame: &[u8],
    ) -> Self {
        Self::build(id, topics, event_type, close, frame.len(), |buf, _| {
            buf.extend_from_slice(frame);
        })
    }

    /// The event whose frame `write` puts into a buffer of about `hint` bytes.
    fn build(
        id: EventId,
        topics: Topics,
        event_type: Option<Box<str>>,
        close: bool,
        hint: usize,
        write: impl FnOnce(&mut bytes::BytesMut, Option<&str>),
    ) -> Self {
        let (chunk, frame) = crate::chunked::build(hint, |buf| write(buf, event_type.as_deref()));
        Self::new(id, topics, event_type, close, chunk, frame.len())
    }

    /// The event of a chunk (as `chunked` builds them) of a frame of `frame_len` bytes.
    fn new(
        id: EventId,
        topics: Topics,
        event_type: Option<Box<str>>,
        close: bool,
        chunk: Bytes,
        frame_len: usize,
    ) -> Self {
        let line = chunk
            .len()
            .saturating_sub(frame_len + crate::chunked::CRLF.len());
        Self {
            id,
            topics,
            event_type,
            close,
            chunk,
            frame_at: u8::try_from(line).unwrap_or_default(),
        }
    }

    /// The complete SSE frame, written as is to every subscriber: its chunk without the
    /// size line and the CRLF after it.
    pub fn frame(&self) -> &[u8] {
        self.chunk.get(self.frame_range(0)).unwrap_or_default()
    }

    /// The frame from its byte `from` on, as shared `Bytes` (no copy).
    pub fn frame_bytes(&self, from: usize) -> Bytes {
        self.chunk.slice(self.frame_range(from))
    }

    /// Where the frame from its byte `from` on is in `chunk`.
    fn frame_range(&self, from: usize) -> std::ops::Range<usize> {
        let end = self.chunk.len().saturating_sub(crate::chunked::CRLF.len());
        (usize::from(self.frame_at) + from).min(end)..end
    }

    /// Whether it was published to `topic` alone: deleting `topic` deletes it.
    pub(crate) fn is_only_in(&self, topic: &str) -> bool {
        self.topics.len() == 1 && &*self.topics[0] == topic
    }
}

/// The room one line of data needs after it for [`Event::encode`] to frame it in place, as
/// an event of type `event_type` and of up to 64 KiB, under an id up to [`ROOMY_ID`]'s
/// length. Room for any id would be 21 bytes more, most never used (and a derived `meta`
/// event's buffer would move up an allocator size class).
pub(crate) fn frame_room(event_type: Option<&str>) -> usize {
    let framing = sse::one_line_head_len(ROOMY_ID, event_type) + sse::ONE_LINE_TAIL.len();
    crate::chunked::chunk_len(0xffff) - 0xffff + framing
}

/// The longest id [`frame_room`] makes room for: any millisecond before the year 2286, and
/// up to a million events in one.
const ROOMY_ID: EventId = EventId::new(9_999_999_999_999, 999_999);

/// An event to publish, already validated (topics are exact, the type is valid and not
/// reserved, the data is the text to send).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Exact topics, at least one, no duplicates.
    pub topics: Topics,
    /// The SSE event type.
    pub event_type: Option<Box<str>>,
    /// The data, sent as one `data:` line per line.
    pub data: String,
    /// End the streams of these topics after this event.
    pub close: bool,
}

impl NewEvent {
    /// An untyped event on one topic.
    pub fn new(topic: &str, data: &str) -> Self {
        Self {
            topics: smallvec::smallvec![topic.into()],
            event_type: None,
            data: data.to_owned(),
            close: false,
        }
    }
}

/// Where a new stream starts in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resume {
    /// Live events only.
    #[default]
    None,
    /// Everything after this id (`Last-Event-ID`, `last_event_id=`).
    After(EventId),
    /// Everything at or after this instant, in Unix milliseconds (`since=`).
    Since(u64),
}

/// A request for a stream.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    /// What the stream follows.
    pub filter: Filter,
    /// Where it starts.
    pub resume: Resume,
    /// The resume point as the client gave it, echoed in `ssegate.gap`.
    pub resume_raw: Option<String>,
    /// The token subject, for revocation.
    pub subject: Option<Box<str>>,
    /// When the authorizing token expires.
    pub expires: Option<tokio::time::Instant>,
}

impl SubscribeRequest {
    /// A live-only, unauthenticated request.
    pub fn new(filter: Filter) -> Self {
        Self {
            filter,
            resume: Resume::None,
            resume_raw: None,
            subject: None,
            expires: None,
        }
    }
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The broker cannot store events right now.
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    /// The dispatchers are a whole history behind: taking more would grow memory without
    /// bound. Nothing was stored; retry shortly.
    #[error(transparent)]
    Overloaded(#[from] Backlog),
}

/// A point-in-time view of the hub, for `/stats`.
#[derive(Debug, Clone)]
pub struct HubStats {
    /// Open streams.
    pub subscribers: usize,
    /// Followed topics and patterns with their subscriber counts.
    pub topics: Vec<(Box<str>, usize)>,
    /// Events in the history.
    pub history_len: usize,
    /// Their encoded size in bytes.
    pub history_bytes: usize,
    /// The oldest event in the history.
    pub oldest: Option<EventId>,
    /// Events published and not yet queued for the streams by every dispatcher.
    pub dispatch_waiting: u64,
}

/// The broker behind the log.
enum Broker {
    /// The log is the history.
    Memory,
    /// The log is the history, also written to disk.
    Disk(DiskBroker),
    /// The log mirrors a Redis stream.
    Redis(RedisBroker),
    /// A broker that could not start (a URL the Redis client refused, a directory that
    /// cannot be read): every publish fails with this.
    Unusable(&'static str, String),
}

/// The stream timings a reload may change: read by every stream at each heartbeat reset
/// and by every new stream for its `retry:`.
pub(crate) struct Timing {
    heartbeat_ms: AtomicU64,
    retry_ms: AtomicU64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Timing {
    fn new(heartbeat: Duration, retry: Duration) -> Self {
        Self {
            heartbeat_ms: AtomicU64::new(millis(heartbeat)),
            retry_ms: AtomicU64::new(millis(retry)),
        }
    }

    /// The current heartbeat interval.
    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed))
    }

    fn retry_ms(&self) -> u64 {
        self.retry_ms.load(Ordering::Relaxed)
    }
}

/// What is appended to on this instance: the log, the subscribers (whose shards with no
/// stream need not be woken) and the dispatchers' wake-up. The memory broker appends here
/// on publish; the disk broker after its write; the Redis reader as it reads the stream.
#[derive(Clone)]
pub(crate) struct Local {
    pub log: Arc<MemoryLog>,
    pub registry: Arc<Registry>,
    /// Bumped after each append, to wake the dispatchers.
    pub head: Arc<watch::Sender<u64>>,
}

impl Local {
    /// Appends a new batch (its ids added to `ids`) and wakes the dispatchers that have
    /// streams to give it to.
    fn append(
        &self,
        batch: impl IntoIterator<Item = NewEvent, IntoIter: ExactSizeIterator>,
        ids: &mut Vec<EventId>,
    ) -> Result<(), Backlog> {
        let wake = self
            .log
            .append_past(batch, ids, |shard| self.registry.is_idle(shard))?;
        if wake {
            self.wake();
        }
        Ok(())
    }

    /// Appends events that already have their ids (stored on disk, read from Redis) and
    /// wakes the dispatchers that have streams to give them to.
    pub(crate) fn append_remote(&self, events: impl IntoIterator<Item = Arc<Event>>) {
        if self
            .log
            .append_remote_past(events, |shard| self.registry.is_idle(shard))
        {
            self.wake();
        }
    }

    /// Wakes every dispatcher to read what is new to it.
    pub(crate) fn wake(&self) {
        self.head.send_modify(|seq| *seq = seq.wrapping_add(1));
    }
}

struct Inner {
    settings: HubSettings,
    timing: Arc<Timing>,
    /// The log, the subscribers and the dispatchers' wake-up (the brokers hold a clone).
    local: Local,
    metrics: Arc<Metrics>,
    /// Handed to each subscription.
    subscriptions: Arc<subscriber::Shared>,
    next_subscriber: AtomicU64,
    broker: Broker,
}

/// Topics, history and subscriptions of this instance, on the memory broker or mirroring a
/// Redis stream shared with other instances. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// Creates the hub and spawns its dispatchers (and, with Redis, its reader) on the
    /// current tokio runtime. Redis is connected in the background: until it answers,
    /// publishes fail with [`HubError::Unavailable`] and [`Hub::broker_up`] is false.
    pub fn start(settings: HubSettings, metrics: Arc<Metrics>) -> Self {
        let (max_events, max_age) = (settings.history_max_events, settings.history_max_age);
        let bounds = Bounds {
            max_events,
            max_bytes: settings.history_max_bytes,
            max_age,
        };
        let registry = Arc::new(Registry::new(settings.shards));
        let readers = registry.shards();
        let log = Arc::new(match settings.broker {
            BrokerSettings::Memory | BrokerSettings::Disk { .. } => MemoryLog::new(bounds, readers),
            BrokerSettings::Redis { .. } => MemoryLog::mirror(bounds, readers),
        });
        let head = Arc::new(watch::channel(0).0);
        let timing = Arc::new(Timing::new(settings.heartbeat, settings.retry));
        registry.spawn_dispatchers(&log, &head, &metrics);
        registry.spawn_heartbeats(&timing);
        tokio::spawn(trim_history(Arc::clone(&log), max_age));
        let local = Local {
            log,
            registry,
            head,
        };
        let broker = match &settings.broker {
            BrokerSettings::Memory => Broker::Memory,
            BrokerSettings::Disk { dir, sync } => {
                // A file-size limit (RLIMIT_FSIZE) must fail the write, not kill the
                // process: with a handler installed, the write returns EFBIG instead.
                #[cfg(unix)]
                if let Err(e) = tokio::signal::unix::signal(
                    tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ),
                ) {
                    tracing::warn!(error = %e, "cannot handle SIGXFSZ");
                }
                match DiskBroker::start(dir, *sync, max_events, max_age, local.clone()) {
                    Ok(b) => Broker::Disk(b),
                    Err(e) => {
                        tracing::error!(error = %e, "the disk broker cannot start");
                        Broker::Unusable("disk", e.to_string())
                    }
                }
            }
            BrokerSettings::Redis { url, stream } => {
                match RedisBroker::start(url, stream, max_events, max_age, local.clone()) {
                    Ok(b) => Broker::Redis(b),
                    Err(e) => {
                        tracing::error!(error = %e, "the redis broker cannot start");
                        Broker::Unusable("redis", e.to_string())
                    }
                }
            }
        };
        let subscriptions = Arc::new(subscriber::Shared {
            registry: Arc::clone(&local.registry) as Arc<dyn subscriber::Unregister>,
            metrics: Arc::clone(&metrics),
        });
        Self {
            inner: Arc::new(Inner {
                timing,
                settings,
                local,
                metrics,
                subscriptions,
                next_subscriber: AtomicU64::new(1),
                broker,
            }),
        }
    }

    /// Appends a batch to the history, all or nothing, and returns the ids once stored
    /// (with Redis: once the transaction is acknowledged). Fan-out happens right after, on
    /// the dispatchers. Refused with [`HubError::Overloaded`] while the dispatchers are a
    /// whole history behind; a batch larger than the history is taken whole otherwise.
    pub async fn publish(&self, mut batch: Vec<NewEvent>) -> Result<Vec<EventId>, HubError> {
        let mut ids = Vec::with_capacity(batch.len());
        self.publish_from(&mut batch, &mut ids).await?;
        Ok(ids)
    }

    /// [`Hub::publish`] of the events in `batch`, which it leaves empty (whatever the outcome)
    /// with its capacity, their ids added to `ids`: for a caller that publishes batch after
    /// batch from the same vectors.
    pub(crate) async fn publish_from(
        &self,
        batch: &mut Vec<NewEvent>,
        ids: &mut Vec<EventId>,
    ) -> Result<(), HubError> {
        let n = batch.len() as u64;
        let tenants = self.inner.metrics.tenants();
        // The topics, kept only to count per tenant once the batch is stored.
        let topics: Vec<Topics> = if tenants.enabled() {
            batch.iter().map(|e| e.topics.clone()).collect()
        } else {
            Vec::new()
        };
        let inner = &*self.inner;
        let stored = match &inner.broker {
            Broker::Memory => inner
                .local
                .append(batch.drain(..), ids)
                .map_err(HubError::from),
            Broker::Disk(disk) => {
                // Refused before anything is written: a batch the dispatchers cannot take
                // must not reach the disk either.
                match inner.local.log.room() {
                    Ok(()) => disk
                        .publish(std::mem::take(batch))
                        .await
                        .map(|s| ids.extend(s)),
                    Err(e) => Err(e.into()),
                }
            }
            Broker::Redis(redis) => {
                // Every instance's reader waits for its own dispatchers; this one's backlog
                // is the signal a publisher here can act on.
                match inner.local.log.room() {
                    Ok(()) => redis.publish(batch).await.map(|s| ids.extend(s)),
                    Err(e) => Err(e.into()),
                }
            }
            Broker::Unusable(_, e) => Err(HubError::Unavailable(e.clone())),
        };
        batch.clear();
        stored?;
        self.inner.metrics.published(n);
        for t in &topics {
            tenants.published(t);
        }
        Ok(())
    }

    /// Opens a stream: registers the subscriber, then takes the replay snapshot, so every
    /// event is delivered exactly once across the replay/live seam.
    pub fn subscribe(&self, req: SubscribeRequest) -> Subscription {
        let inner = &self.inner;
        let id = inner.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let sub = inner.local.registry.insert(Subscriber::new(
            id,
            req.filter,
            req.subject,
            inner.settings.subscriber_buffer,
            inner.settings.slow_consumer,
        ));
        let resumed_from = match req.resume {
            Resume::After(id) => id,
            Resume::None | Resume::Since(_) => EventId::default(),
        };
        let replay = inner.local.log.replay(&req.resume, |e| sub.filter.wants(e));
        let mut head = replay.head;
        if let (Broker::Redis(_), Resume::After(after)) = (&inner.broker, req.resume) {
            // The client may have read its last event on an instance whose reader is ahead
            // of this one: it never needs again what it already has.
            head = head.max(after);
        }
        let retry_ms = inner.timing.retry_ms();
        let mut preamble = VecDeque::with_capacity(2);
        preamble.push_back(sse::encode_retry(retry_ms));
        if let Some(oldest) = replay.gap {
            let data = serde_json::json!({
                "last_event_id": req.resume_raw.unwrap_or_default(),
                "oldest_available": oldest.map(|id| id.to_string()),
            });
            preamble.push_back(sse::encode_control("ssegate.gap", &data.to_string()));
        }
        Subscription::new(
            sub,
            Arc::clone(&inner.subscriptions),
            preamble,
            replay.events,
            head,
            replay.resumable_head,
            resumed_from,
            req.expires,
        )
    }

    /// Ends every stream following `topic` with `ssegate.closed` and drops its history.
    /// With Redis, the other instances do the same when they read the control entry
    /// (queued while Redis is unreachable). Returns the streams ended on this instance.
    pub fn delete_topic(&self, topic: &str) -> usize {
        self.inner.local.log.delete_topic(topic);
        match &self.inner.broker {
            Broker::Redis(redis) => redis.delete_topic(topic),
            Broker::Disk(disk) => disk.delete_topic(topic),
            Broker::Memory | Broker::Unusable(..) => {}
        }
        self.inner
            .local
            .registry
            .end_topic(topic, &End::TopicDeleted(topic.into()))
    }

    /// Ends every stream authorized for `subject`, on every instance with Redis. Returns
    /// the streams ended on this instance.
    pub fn revoke(&self, subject: &str) -> usize {
        if let Broker::Redis(redis) = &self.inner.broker {
            redis.revoke(subject);
        }
        self.inner
            .local
            .registry
            .end_where(|s| s.subject.as_deref() == Some(subject), &End::Revoked)
    }

    /// Applies reloaded timings: open streams use the new heartbeat from their next beat,
    /// new streams get the new `retry:`.
    pub fn set_timing(&self, heartbeat: Duration, retry: Duration) {
        let t = &self.inner.timing;
        t.heartbeat_ms.store(millis(heartbeat), Ordering::Relaxed);
        t.retry_ms.store(millis(retry), Ordering::Relaxed);
    }

    /// Ends every stream with `ssegate.shutdown`, telling each client to retry after
    /// `retry` plus its own share of `spread`.
    pub fn shutdown(&self, retry: Duration, spread: Duration) -> usize {
        self.inner
            .local
            .registry
            .end_where(|_| true, &End::Shutdown { retry, spread })
    }

    /// Claims `name` for `ttl` among the instances sharing the broker, for work that must be
    /// done by one of them at a time (a `watch` poll): always granted on a broker of one
    /// instance; on Redis, unless another instance holds it (the holder renews its claim).
    pub async fn claim(&self, name: &str, ttl: Duration) -> bool {
        match &self.inner.broker {
            Broker::Redis(redis) => redis.claim(name, ttl).await,
            _ => true,
        }
    }

    /// The value another instance stored under `name` ([`Hub::store`]); `None` on a broker
    /// of one instance, where the caller's own memory is the only one.
    pub async fn load(&self, name: &str) -> Option<String> {
        match &self.inner.broker {
            Broker::Redis(redis) => redis.load(name).await,
            _ => None,
        }
    }

    /// Stores `value` under `name` for `ttl` for the other instances; nothing on a broker of
    /// one instance.
    pub async fn store(&self, name: &str, value: &str, ttl: Duration) {
        if let Broker::Redis(redis) = &self.inner.broker {
            redis.store(name, value, ttl).await;
        }
    }

    /// Whether the broker can take publishes: always for the memory broker; for disk, while
    /// its last write succeeded; for Redis, while this instance's reader is connected.
    pub fn broker_up(&self) -> bool {
        match &self.inner.broker {
            Broker::Memory => true,
            Broker::Disk(disk) => disk.is_up(),
            Broker::Redis(redis) => redis.is_up(),
            Broker::Unusable(..) => false,
        }
    }

    /// The broker's kind, for `/stats`.
    pub fn broker_kind(&self) -> &'static str {
        match self.inner.broker {
            Broker::Memory => "memory",
            Broker::Disk(_) => "disk",
            Broker::Redis(_) => "redis",
            Broker::Unusable(kind, _) => kind,
        }
    }

    /// Counts for `/stats`.
    pub fn stats(&self) -> HubStats {
        let (subscribers, topics) = self.inner.local.registry.counts();
        let log = self.inner.local.log.stats();
        let mut topics: Vec<_> = topics.into_iter().collect();
        topics.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        HubStats {
            subscribers,
            topics,
            history_len: log.events,
            history_bytes: log.bytes,
            oldest: log.oldest,
            dispatch_waiting: log.waiting,
        }
    }
}

/// Trims expired history on an idle server too, a few times per `max_age`.
async fn trim_history(log: Arc<MemoryLog>, max_age: Duration) {
    let period = (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        log.trim_expired();
    }
}

#[cfg(test)]
mod tests;

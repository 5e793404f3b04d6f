//! The reader: one task per instance following the stream with `XREAD BLOCK` and appending
//! what it reads to the local mirror, from which the dispatchers fan out.
//!
//! Its cursor is the id of the last entry it applied, events and control entries alike;
//! after a lost connection it reconnects with capped, jittered backoff and reads on from
//! that cursor, so nothing written meanwhile by another instance is skipped. On reconnect
//! it checks that the stream still holds what follows the cursor: if Redis lost or trimmed
//! entries it had not read, the mirror records a hole (resumes from before it get
//! `ssegate.gap`) and this instance's streams are ended so they resume with that gap:
//! never silence.
//!
//! It reads nothing while this instance's dispatchers are a whole history behind
//! ([`MemoryLog::wait_for_room`](super::super::log::MemoryLog::wait_for_room)): the backlog
//! stays in Redis, not in this process's memory.

use super::entry::{self, Control, Entry, RawEntry};
use super::{CONNECT_TIMEOUT, Error, PUBLISH_TIMEOUT, Shared, bounded, random_u64};
use crate::hub::End;
use crate::hub::Local;
use crate::hub::log::now_ms;
use crate::sse::EventId;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long one `XREAD` blocks in Redis.
const BLOCK: Duration = Duration::from_secs(2);

/// Longest the reader waits for an `XREAD` reply before it drops the connection.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Entries per `XREAD`.
const READ_COUNT: usize = 1024;

/// Entries per `XREVRANGE` page when loading the history at startup.
const LOAD_PAGE: usize = 1000;

/// First and longest wait between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Capped exponential backoff with "equal jitter": each wait is half the step plus a random
/// part of the other half, so instances that lost Redis together do not retry together.
pub(crate) struct Backoff {
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self {
            attempt: 0,
            rng: random_u64() | 1,
        }
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let step = BACKOFF_MIN
            .saturating_mul(1 << self.attempt.min(16))
            .min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = step / 2;
        let half_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_millis(self.rng % half_ms)
    }
}

/// The reader task's state.
pub(crate) struct Reader {
    shared: Arc<Shared>,
    local: Local,
    /// The last entry applied; `None` until the history was loaded.
    cursor: Option<EventId>,
    /// No entry below this id was unread when the history was loaded (an empty stream
    /// gets only ids above Redis's clock at that time).
    floor: EventId,
    backoff: Backoff,
}

impl Reader {
    pub(super) fn new(shared: Arc<Shared>, local: Local) -> Self {
        Self {
            shared,
            local,
            cursor: None,
            floor: EventId::default(),
            backoff: Backoff::new(),
        }
    }

    /// Reads until `stop` fires (the hub was dropped), reconnecting whenever Redis fails.
    pub(super) async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut failures = 0u32;
        loop {
            let error = tokio::select! {
                _ = &mut stop => return,
                e = self.session() => e,
            };
            let was_up = self.shared.up.swap(false, Ordering::Relaxed);
            let stream = self.shared.key.as_str();
            if was_up {
                tracing::warn!(%error, stream,
                    "lost redis: publishing answers 503 until it is back; reconnecting");
                failures = 0;
            } else if failures == 0 {
                tracing::warn!(%error, stream, "cannot reach redis; retrying with backoff");
            } else {
                tracing::debug!(%error, failures, "redis still unreachable");
            }
            failures = failures.saturating_add(1);
            let delay = self.backoff.next_delay();
            tokio::select! {
                _ = &mut stop => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection's life: connect, load or check the history, then read until an error.
    async fn session(&mut self) -> Error {
        match self.session_inner().await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn session_inner(&mut self) -> Result<std::convert::Infallible, Error> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // The reads carry their own deadline, longer than BLOCK.
            .set_response_timeout(None);
        let mut conn = bounded(
            CONNECT_TIMEOUT,
            self.shared
                .client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        let first_time = self.cursor.is_none();
        match self.cursor {
            None => self.load(&mut conn).await?,
            Some(cursor) => self.check_continuity(&mut conn, cursor).await?,
        }
        self.kick_publisher().await?;
        self.shared.up.store(true, Ordering::Relaxed);
        let history = self.local.log.stats().events;
        if first_time {
            tracing::info!(stream = self.shared.key, history, "connected to redis");
        } else {
            tracing::info!(stream = self.shared.key, "reconnected to redis");
        }
        // Trimming keeps at least `max_events` entries: Redis can only have dropped
        // entries this reader has not read yet if a read returns that many (or a full one).
        let lots = READ_COUNT.min(self.shared.max_events);
        let mut behind = false;
        loop {
            // Read no more while this instance's dispatchers are a whole history behind:
            // the entries wait in Redis rather than in memory. If Redis trimmed some of
            // them meanwhile, the continuity check finds the hole.
            if self.local.log.wait_for_room().await {
                behind = true;
            }
            if behind {
                self.check_continuity(&mut conn, self.cursor.unwrap_or_default())
                    .await?;
            }
            let cursor = self.cursor.unwrap_or_default().to_string();
            let mut read = redis::cmd("XREAD");
            read.arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(u64::MAX))
                .arg("STREAMS")
                .arg(&self.shared.key)
                .arg(cursor);
            let reply = bounded(READ_TIMEOUT, read.query_async::<Value>(&mut conn)).await?;
            let entries = entry::parse_read(reply)?;
            if entries.is_empty() {
                // A quiet stream: keep the publisher's connection in use, so an idle
                // timeout on the server side never costs a publish its answer.
                self.kick_publisher().await?;
            }
            behind = entries.len() >= lots;
            self.apply(entries);
            // Reset only once reading works, so a connection that fails at its first read
            // is retried with growing delays.
            self.backoff.reset();
        }
    }

    /// Loads the stream's newest `max_events` entries into the mirror (startup only), in
    /// pages so that no single reply is huge.
    async fn load(&mut self, conn: &mut MultiplexedConnection) -> Result<(), Error> {
        let redis_now = Self::redis_time(conn).await?;
        let local_now = now_ms();
        // Newest first; each page ends just before the oldest entry of the previous one.
        let mut entries: Vec<RawEntry> = Vec::new();
        let mut end = "+".to_owned();
        while entries.len() < self.shared.max_events {
            let count = LOAD_PAGE.min(self.shared.max_events - entries.len());
            let mut range = redis::cmd("XREVRANGE");
            range
                .arg(&self.shared.key)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(count);
            let page =
                entry::parse_range(bounded(READ_TIMEOUT, range.query_async::<Value>(conn)).await?)?;
            let Some((oldest, _)) = page.last() else {
                break;
            };
            end = format!("({oldest}");
            let full = page.len() == count;
            entries.extend(page);
            if !full {
                break;
            }
        }
        entries.reverse();
        let newest = entries.last().map(|e| e.0);
        // The mirror is complete from the oldest entry loaded; with an empty stream, from
        // now: an older resume point is from history this stream does not hold.
        let horizon = entries.first().map_or(EventId::new(redis_now, 0), |e| e.0);
        let mut events = Vec::with_capacity(entries.len());
        let mut malformed = 0;
        for (id, fields) in entries {
            match entry::decode(id, fields) {
                Ok(Entry::Event(ev)) => events.push(ev),
                Ok(Entry::Control {
                    action: Control::DeleteTopic(t),
                    ..
                }) => events.retain(|e| !(e.topics.len() == 1 && *e.topics[0] == *t)),
                Ok(_) => {}
                Err(_) => malformed += 1,
            }
        }
        self.warn_malformed(malformed);
        // Streams opened before this load get the loaded events written after the mirror
        // was created; Redis's clock may differ from ours, so measure the creation in it.
        let skew = i64::try_from(redis_now).unwrap_or(i64::MAX)
            - i64::try_from(local_now).unwrap_or(i64::MAX);
        let created = self.local.log.created_ms().saturating_add_signed(skew);
        self.local
            .log
            .load(events, horizon, EventId::new(created, 0));
        self.local.wake();
        self.cursor = Some(newest.unwrap_or_default());
        self.floor = newest.map_or(EventId::new(redis_now, 0), EventId::next);
        Ok(())
    }

    /// After a reconnect, or a read that shows this reader behind: does the stream still
    /// hold everything after `cursor`? If not, record the hole and end this instance's
    /// streams so they resume with a gap.
    async fn check_continuity(
        &mut self,
        conn: &mut MultiplexedConnection,
        cursor: EventId,
    ) -> Result<(), Error> {
        let redis_now = Self::redis_time(conn).await?;
        let mut info = redis::cmd("XINFO");
        info.arg("STREAM").arg(&self.shared.key);
        let info = match bounded(PUBLISH_TIMEOUT, info.query_async::<Value>(conn)).await {
            Ok(v) => Some(entry::parse_info(v)?),
            Err(Error::Redis(e)) if e.detail().is_some_and(|d| d.contains("no such key")) => None,
            Err(e) => return Err(e),
        };
        let restarted = EventId::new(redis_now, 0).max(cursor.next());
        let hole = match info {
            // The stream is gone: entries after the cursor, if any, are lost.
            None => (cursor != EventId::default()).then_some(restarted),
            Some(i) if i.last_generated == cursor => None,
            // Ids went back: the stream was recreated; its entries up to the cursor are
            // never read by this instance.
            Some(i) if i.last_generated < cursor => Some(restarted),
            Some(i) => match i.first {
                Some(first) if first <= cursor.next().max(self.floor) => None,
                // Nothing read yet, and nothing ever trimmed from this stream: all of it is
                // still there to read.
                Some(_) if cursor == EventId::default() && i.entries_added == Some(i.length) => {
                    None
                }
                Some(first) => Some(first),
                None => Some(i.last_generated.next()),
            },
        };
        if let Some(horizon) = hole {
            self.local.log.mark_hole(horizon);
            let ended = self.local.registry.end_where(|_| true, &End::Lagged);
            tracing::warn!(stream = self.shared.key, after = %cursor, streams = ended,
                "redis no longer holds entries this instance had not read (restarted without \
                 its data, or trimmed): ending the streams here so they resume with ssegate.gap");
        }
        Ok(())
    }

    /// Redis's clock, in Unix milliseconds: every entry added afterwards has a greater id.
    async fn redis_time(conn: &mut MultiplexedConnection) -> Result<u64, Error> {
        let time = bounded(
            PUBLISH_TIMEOUT,
            redis::cmd("TIME").query_async::<Value>(conn),
        )
        .await?;
        Ok(entry::parse_time(time)?)
    }

    /// Makes the publisher's connection current: after an outage its first command fails
    /// (and reconnects it); readiness is only reported once a publish would succeed.
    async fn kick_publisher(&self) -> Result<(), Error> {
        let mut last = Error::Timeout(PUBLISH_TIMEOUT);
        for _ in 0..3 {
            let mut conn = self.shared.publisher.clone();
            match bounded(
                PUBLISH_TIMEOUT,
                redis::cmd("PING").query_async::<Value>(&mut conn),
            )
            .await
            {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Applies one read: events are appended in batches, control entries in their place.
    fn apply(&mut self, entries: Vec<RawEntry>) {
        let mut events = Vec::with_capacity(entries.len());
        let mut malformed = 0;
        for (id, fields) in entries {
            self.cursor = Some(id);
            match entry::decode(id, fields) {
                Ok(Entry::Event(ev)) => events.push(ev),
                Ok(Entry::Control { action, origin }) => {
                    self.flush(&mut events);
                    self.control(&action, origin);
                }
                Ok(Entry::Unknown) => {}
                Err(_) => malformed += 1,
            }
        }
        self.flush(&mut events);
        self.warn_malformed(malformed);
    }

    fn flush(&self, events: &mut Vec<Arc<crate::hub::Event>>) {
        if !events.is_empty() {
            self.local.append_remote(events.drain(..));
        }
    }

    /// Applies a control entry. The instance that wrote it already ended its own streams
    /// when asked; it only drops the history here, at the entry's place in the stream.
    fn control(&self, action: &Control, origin: u64) {
        let foreign = origin != self.shared.origin;
        match action {
            Control::DeleteTopic(t) => {
                self.local.log.delete_topic(t);
                if foreign {
                    let n = self
                        .local
                        .registry
                        .end_topic(t, &End::TopicDeleted(t.clone()));
                    tracing::info!(
                        topic = &**t,
                        streams = n,
                        "topic deleted by another instance"
                    );
                }
            }
            Control::Revoke(sub) if foreign => {
                let n = self
                    .local
                    .registry
                    .end_where(|s| s.subject.as_deref() == Some(&**sub), &End::Revoked);
                tracing::info!(
                    sub = &**sub,
                    streams = n,
                    "subscriber revoked by another instance"
                );
            }
            Control::Revoke(_) => {}
        }
    }

    fn warn_malformed(&self, n: usize) {
        if n > 0 {
            tracing::warn!(
                stream = self.shared.key,
                entries = n,
                "skipped stream entries that are not valid ssegate events"
            );
        }
    }
}

//! The Redis broker: several instances share one Redis stream.
//!
//! - **Publish** writes a batch in one `MULTI … EXEC`: an `XADD … MAXLEN ~ max_events` per
//!   event, then `XTRIM … MINID ~` for `max_age`. The ids are the stream's entry ids, and
//!   the webhook answers only once `EXEC` succeeded; an unreachable Redis is a 503 within
//!   [`PUBLISH_TIMEOUT`], and a transaction cut off before `EXEC` writes nothing.
//! - **One reader per instance** ([`reader`]) follows the stream with `XREAD BLOCK` and
//!   appends each entry to the local log, which mirrors the stream. The dispatchers, the
//!   replay and the replay/live seam work exactly as with the memory broker, so each event
//!   is encoded once per instance and a reconnecting client costs no round trip to Redis.
//!   At startup the reader loads the stream's recent history into the mirror.
//! - **Control actions** (`DELETE /topics/…`, `DELETE /subscribers/…`) act at once on this
//!   instance and are written to the stream as control entries, which every other instance
//!   applies at the same place in the order of events. Replays never contain them.
//!
//! Why a full mirror rather than an `XRANGE` per resuming client: `Hub::subscribe` stays
//! synchronous with the same exactly-once seam as the memory broker; a reconnect storm
//! (an instance died, its clients come to the others with `Last-Event-ID`) costs Redis
//! nothing; and resuming works while Redis is briefly away. The price is the memory the
//! memory broker would use anyway: `max_events` events per instance.
//!
//! Needs Redis 6.2 or later (`XTRIM MINID`); with 7.0 or later (`entries-added`), a reader
//! that had read nothing yet tells a new stream from one that lost entries.
//!
//! Nothing here runs per subscriber or per delivered event.

mod entry;
mod reader;
#[cfg(test)]
mod tests;

use super::Local;
use super::log::now_ms;
use super::{HubError, NewEvent};
use crate::sse::EventId;
use entry::Control;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Value};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Longest a publish (or a control write) waits for Redis before answering 503.
pub(crate) const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Control actions waiting for Redis; beyond this many, new ones act on this instance only.
const CONTROL_QUEUE: usize = 1024;

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The client or the server reported an error.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// No answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// An answer that does not parse.
    #[error(transparent)]
    Reply(#[from] entry::Malformed),
}

/// Runs `fut` with a deadline.
async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::Timeout(limit)),
    }
}

/// What the publisher, the control writer and the reader share.
pub(crate) struct Shared {
    client: Client,
    /// A multiplexed connection that reconnects by itself; publishes and control writes.
    publisher: ConnectionManager,
    key: String,
    max_events: usize,
    max_age: Duration,
    /// This instance's random id, written into its control entries.
    origin: u64,
    /// Whether the reader is connected and the publisher answered: `/readyz`, `broker_up`.
    up: AtomicBool,
}

/// The Redis side of a hub: publishing, control actions, and the reader task.
pub(crate) struct RedisBroker {
    shared: Arc<Shared>,
    control: mpsc::Sender<Control>,
    /// Dropped with the hub, which stops the reader.
    _stop: oneshot::Sender<()>,
}

/// A random number from the standard library's per-process random hasher keys.
pub(crate) fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.finish()
}

/// Why the Redis broker cannot start: a URL the client refuses.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// `broker.redis.url` is not one the client takes.
    #[error("broker.redis.url: {0}")]
    Url(#[source] redis::RedisError),
    /// The connection manager could not be set up.
    #[error("broker.redis: {0}")]
    Manager(#[source] redis::RedisError),
}

impl RedisBroker {
    /// Connects in the background: the hub serves at once, publishes answer 503 and
    /// `broker_up` is false until Redis answers. Fails only on a URL the client refuses.
    pub(super) fn start(
        url: &str,
        key: &str,
        max_events: usize,
        max_age: Duration,
        local: Local,
    ) -> Result<Self, StartError> {
        if url.starts_with("rediss://") {
            // redis-rs builds its TLS config from rustls's process-wide provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = Client::open(url).map_err(StartError::Url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(PUBLISH_TIMEOUT))
            // One attempt per reconnect: a publish while Redis is down fails at once
            // instead of waiting through retries; the next publish tries again.
            .set_number_of_retries(0);
        let publisher = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(StartError::Manager)?;
        let shared = Arc::new(Shared {
            client,
            publisher,
            key: key.to_owned(),
            max_events: max_events.max(1),
            max_age,
            origin: random_u64(),
            up: AtomicBool::new(false),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        tokio::spawn(reader::Reader::new(Arc::clone(&shared), local).run(stop_rx));
        tokio::spawn(write_controls(Arc::clone(&shared), control_rx));
        Ok(Self {
            shared,
            control,
            _stop: stop_tx,
        })
    }

    /// Whether the reader is connected (and the publisher answered when it connected).
    pub(super) fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// Writes a batch to the stream in one transaction and returns the ids Redis gave.
    pub(super) async fn publish(&self, batch: &[NewEvent]) -> Result<Vec<EventId>, HubError> {
        let s = &self.shared;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for ev in batch {
            entry::add_event(&mut pipe, &s.key, s.max_events, ev);
        }
        let max_age = u64::try_from(s.max_age.as_millis()).unwrap_or(u64::MAX);
        let min_id = EventId::new(now_ms().saturating_sub(max_age), 0);
        pipe.cmd("XTRIM")
            .arg(&s.key)
            .arg("MINID")
            .arg("~")
            .arg(min_id.to_string())
            .ignore();
        let mut conn = s.publisher.clone();
        let reply: Value = bounded(PUBLISH_TIMEOUT, pipe.query_async(&mut conn))
            .await
            .map_err(|e| HubError::Unavailable(e.to_string()))?;
        entry::parse_ids(reply, batch.len()).map_err(|e| HubError::Unavailable(e.to_string()))
    }

    /// Claims `name` (a short key of this stream's) for `ttl` unless another instance holds
    /// it; the holder renews its claim. Unreachable Redis: not claimed.
    pub(super) async fn claim(&self, name: &str, ttl: Duration) -> bool {
        let s = &self.shared;
        let key = format!("{}:{name}", s.key);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = s.publisher.clone();
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(s.origin).arg("NX").arg("PX").arg(ms);
        match bounded(
            PUBLISH_TIMEOUT,
            set.query_async::<Option<String>>(&mut conn),
        )
        .await
        {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(_) => return false,
        }
        let holder: Result<Option<u64>, _> = bounded(
            PUBLISH_TIMEOUT,
            redis::cmd("GET").arg(&key).query_async(&mut conn),
        )
        .await;
        if holder.ok().flatten() != Some(s.origin) {
            return false;
        }
        let renew = redis::cmd("PEXPIRE").arg(&key).arg(ms).to_owned();
        bounded(PUBLISH_TIMEOUT, renew.query_async::<i64>(&mut conn))
            .await
            .is_ok_and(|n| n == 1)
    }

    /// The value stored under `name` by any instance; `None` when unset or unreachable.
    pub(super) async fn load(&self, name: &str) -> Option<String> {
        let s = &self.shared;
        let mut conn = s.publisher.clone();
        let get = redis::cmd("GET")
            .arg(format!("{}:{name}", s.key))
            .to_owned();
        bounded(
            PUBLISH_TIMEOUT,
            get.query_async::<Option<String>>(&mut conn),
        )
        .await
        .ok()
        .flatten()
    }

    /// Stores `value` under `name` for `ttl`, for every instance to read.
    pub(super) async fn store(&self, name: &str, value: &str, ttl: Duration) {
        let s = &self.shared;
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = s.publisher.clone();
        let mut set = redis::cmd("SET");
        set.arg(format!("{}:{name}", s.key))
            .arg(value)
            .arg("PX")
            .arg(ms);
        let _ = bounded(
            PUBLISH_TIMEOUT,
            set.query_async::<Option<String>>(&mut conn),
        )
        .await;
    }

    /// Sends a control action to the other instances (this one has already applied it).
    /// While Redis is unreachable it waits in a queue, written once Redis is back.
    pub(super) fn send_control(&self, action: Control) {
        if self.control.try_send(action).is_err() {
            tracing::warn!(
                queued = CONTROL_QUEUE,
                "too many control actions wait for redis: this one acts on this instance only"
            );
        }
    }

    /// A topic was deleted here.
    pub(super) fn delete_topic(&self, topic: &str) {
        self.send_control(Control::DeleteTopic(topic.into()));
    }

    /// A subject was revoked here.
    pub(super) fn revoke(&self, subject: &str) {
        self.send_control(Control::Revoke(subject.into()));
    }
}

/// Writes queued control actions to the stream in order, each retried until Redis takes it.
async fn write_controls(shared: Arc<Shared>, mut rx: mpsc::Receiver<Control>) {
    while let Some(action) = rx.recv().await {
        let cmd = entry::control_cmd(&shared.key, shared.max_events, &action, shared.origin);
        let mut backoff = reader::Backoff::new();
        let mut warned = false;
        loop {
            let mut conn = shared.publisher.clone();
            match bounded(PUBLISH_TIMEOUT, cmd.query_async::<Value>(&mut conn)).await {
                Ok(_) => break,
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, action = ?action,
                            "could not write a control action to redis; retrying until it is back");
                        warned = true;
                    }
                    if rx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

//! `watch` rules: ssegate polls an app URL for each topic that has streams, and publishes
//! the body when it changes. N browsers polling one endpoint become one poll per topic.
//!
//! A topic is followed from its first stream to its last ([`Watcher::follow`] returns a
//! guard each stream holds): the first stream starts a poller, which polls at once; the
//! last one leaving stops it. With several instances on Redis, each poll is claimed
//! through the broker ([`Hub::claim`], held and renewed by one instance at a time) and the
//! last published version is kept there too ([`Hub::store`]), so a change is published
//! once whichever instance polls.
//!
//! Knows nothing of the public listener's HTTP stacks: it has its own small client.

use crate::config::{Config, TopicPart, WatchRule};
use crate::hub::{Hub, NewEvent};
use crate::metrics::Metrics;
use crate::publish::body_as_data;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ETAG, HeaderName, HeaderValue, IF_NONE_MATCH};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

/// How long the last published version of a topic is remembered in a shared broker.
const MARK_TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest wait between polls of a failing URL: `every` doubles up to this many times.
const MAX_BACKOFF_DOUBLINGS: u32 = 4;

/// Starts and stops the pollers of followed topics.
#[derive(Clone)]
pub struct Watcher {
    inner: Arc<Inner>,
}

struct Inner {
    rules: RwLock<Arc<Vec<WatchRule>>>,
    followed: Mutex<HashMap<Box<str>, Followed>>,
    hub: Hub,
    metrics: Arc<Metrics>,
    client: Client<HttpConnector, Empty<Bytes>>,
    upstream: Uri,
    timeout: Duration,
    max_event_bytes: usize,
}

struct Followed {
    streams: usize,
    stop: Arc<Notify>,
}

/// Held by a stream for as long as it follows its watched topics.
pub struct Following {
    inner: Arc<Inner>,
    topics: Box<[Box<str>]>,
}

impl Watcher {
    /// The watcher for `config`'s rules, publishing to `hub`.
    pub fn new(config: &Config, hub: Hub, metrics: Arc<Metrics>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.upstream_timeouts.connect));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .http1_max_buf_size(crate::head::MAX_HEAD_BYTES)
            .build(connector);
        Self {
            inner: Arc::new(Inner {
                rules: RwLock::new(Arc::new(config.watch.clone())),
                followed: Mutex::new(HashMap::new()),
                hub,
                metrics,
                client,
                upstream: config.upstream.clone(),
                timeout: config.upstream_timeouts.response,
                max_event_bytes: config.publish.max_event_bytes,
            }),
        }
    }

    /// Takes reloaded rules: topics followed from now on use them.
    pub fn reload(&self, config: &Config) {
        *self
            .inner
            .rules
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(config.watch.clone());
    }

    /// Whether any rule is configured (streams skip [`Watcher::follow`] otherwise).
    pub fn is_active(&self) -> bool {
        !self
            .inner
            .rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// A stream follows `topics`: those a rule serves are polled while it is open.
    pub fn follow<'t>(&self, topics: impl IntoIterator<Item = &'t str>) -> Option<Following> {
        let rules = Arc::clone(
            &self
                .inner
                .rules
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut mine = Vec::new();
        for topic in topics {
            let Some((rule, params)) = rules
                .iter()
                .find_map(|r| match_topic(&r.topic, topic).map(|p| (r, p)))
            else {
                continue;
            };
            let mut followed = self
                .inner
                .followed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let entry = followed.entry(topic.into()).or_insert_with(|| {
                let stop = Arc::new(Notify::new());
                tokio::spawn(poll_topic(
                    Arc::clone(&self.inner),
                    rule.clone(),
                    topic.into(),
                    params,
                    Arc::clone(&stop),
                ));
                Followed { streams: 0, stop }
            });
            entry.streams += 1;
            mine.push(topic.into());
        }
        (!mine.is_empty()).then(|| Following {
            inner: Arc::clone(&self.inner),
            topics: mine.into(),
        })
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut followed = self
            .inner
            .followed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for topic in &self.topics {
            if let Some(entry) = followed.get_mut(topic) {
                entry.streams -= 1;
                if entry.streams == 0 {
                    entry.stop.notify_one();
                    followed.remove(topic);
                }
            }
        }
    }
}

/// What one poll came to (`ssegate_watch_polls_total{rule, outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Published,
    Unchanged,
    /// Another instance holds this topic's poll.
    Elsewhere,
    BodyOmitted,
    PollFailed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Published => "published",
            Self::Unchanged => "unchanged",
            Self::Elsewhere => "elsewhere",
            Self::BodyOmitted => "body_omitted",
            Self::PollFailed => "poll_failed",
        }
    }
}

/// Polls `topic` every `rule.every` (at once first) until `stop`.
async fn poll_topic(
    inner: Arc<Inner>,
    rule: WatchRule,
    topic: Box<str>,
    params: Vec<(String, String)>,
    stop: Arc<Notify>,
) {
    let Some(path) = fill_url(&rule.url, &params) else {
        tracing::warn!(rule = rule.name, topic = %topic, "watch URL could not be built; not polled");
        return;
    };
    let mut state = PollState::default();
    let mut failures = 0u32;
    loop {
        let outcome = if inner
            .hub
            .claim(&format!("watch:{topic}"), rule.every * 2)
            .await
        {
            poll_once(&inner, &rule, &topic, &path, &mut state).await
        } else {
            Outcome::Elsewhere
        };
        inner.metrics.watched(&rule.name, outcome.as_str());
        if outcome == Outcome::PollFailed {
            failures = (failures + 1).min(MAX_BACKOFF_DOUBLINGS + 1);
        } else {
            if failures > 0 {
                tracing::info!(rule = rule.name, topic = %topic, "watched URL answers again");
            }
            failures = 0;
        }
        let wait = rule.every * 2u32.pow(failures.saturating_sub(1).min(MAX_BACKOFF_DOUBLINGS));
        tokio::select! {
            () = stop.notified() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// What a poller remembers between polls.
#[derive(Default)]
struct PollState {
    etag: Option<HeaderValue>,
    /// The version last published (an ETag or a hash of the body), on this instance.
    last: Option<String>,
}

async fn poll_once(
    inner: &Inner,
    rule: &WatchRule,
    topic: &str,
    path: &str,
    state: &mut PollState,
) -> Outcome {
    let failed = |why: &dyn std::fmt::Display| {
        tracing::warn!(rule = rule.name, topic, error = %why, "watch poll failed");
        Outcome::PollFailed
    };
    let uri = match Uri::builder()
        .scheme("http")
        .authority(inner.upstream.authority().map_or("", |a| a.as_str()))
        .path_and_query(path)
        .build()
    {
        Ok(uri) => uri,
        Err(e) => return failed(&e),
    };
    let mut req = Request::get(uri);
    for (name, value) in &rule.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            req = req.header(n, v);
        }
    }
    if let Some(etag) = &state.etag {
        req = req.header(IF_NONE_MATCH, etag.clone());
    }
    let Ok(req) = req.body(Empty::new()) else {
        return Outcome::PollFailed;
    };
    let resp = match tokio::time::timeout(inner.timeout, inner.client.request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return failed(&e),
        Err(_) => return failed(&"no answer within upstream_timeouts.response"),
    };
    if resp.status() == StatusCode::NOT_MODIFIED {
        return Outcome::Unchanged;
    }
    if !resp.status().is_success() {
        return failed(&format!("the app answered {}", resp.status()));
    }
    let etag = resp.headers().get(ETAG).cloned();
    let body = match tokio::time::timeout(
        inner.timeout,
        Limited::new(resp.into_body(), inner.max_event_bytes).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Outcome::BodyOmitted;
        }
        Ok(Err(e)) => return failed(&e),
        Err(_) => return failed(&"the body did not arrive within upstream_timeouts.response"),
    };
    let Some(data) = body_as_data(&body) else {
        return Outcome::BodyOmitted;
    };
    let version = match &etag {
        Some(e) => format!("etag:{}", String::from_utf8_lossy(e.as_bytes())),
        None => {
            let mut h = std::hash::DefaultHasher::new();
            body.hash(&mut h);
            format!("hash:{:016x}", h.finish())
        }
    };
    state.etag = etag;
    let mark = format!("watch:{topic}:last");
    let last = inner.hub.load(&mark).await.or_else(|| state.last.clone());
    if last.as_deref() == Some(version.as_str()) {
        state.last = Some(version);
        return Outcome::Unchanged;
    }
    let event = NewEvent {
        topics: smallvec::smallvec![topic.into()],
        event_type: rule.event.as_deref().map(Into::into),
        data,
        close: false,
    };
    match inner.hub.publish(vec![event]).await {
        Ok(_) => {
            inner.hub.store(&mark, &version, MARK_TTL).await;
            state.last = Some(version);
            Outcome::Published
        }
        Err(e) => failed(&e),
    }
}

/// The parameters of `topic` under `template` (each `{name}` one segment), if it fits.
fn match_topic(template: &[TopicPart], topic: &str) -> Option<Vec<(String, String)>> {
    let mut rest = topic;
    let mut params = Vec::new();
    for part in template {
        match part {
            TopicPart::Literal(l) => rest = rest.strip_prefix(l.as_str())?,
            TopicPart::Param(name) => {
                let end = rest.find('/').unwrap_or(rest.len());
                if end == 0 {
                    return None;
                }
                params.push((name.clone(), rest[..end].to_owned()));
                rest = &rest[end..];
            }
            TopicPart::ResponseHeader(_) => return None,
        }
    }
    rest.is_empty().then_some(params)
}

/// The app path of `template` with `params` filled in, percent-encoded.
fn fill_url(template: &[TopicPart], params: &[(String, String)]) -> Option<String> {
    let mut out = String::new();
    for part in template {
        match part {
            TopicPart::Literal(l) => out.push_str(l),
            TopicPart::Param(name) => {
                let value = &params.iter().find(|(n, _)| n == name)?.1;
                for b in value.bytes() {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        out.push(char::from(b));
                    } else {
                        out.push_str(&format!("%{b:02X}"));
                    }
                }
            }
            TopicPart::ResponseHeader(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_fit_templates_one_segment_per_placeholder() {
        let t = vec![
            TopicPart::Literal("job/".into()),
            TopicPart::Param("job".into()),
        ];
        assert_eq!(
            match_topic(&t, "job/abc"),
            Some(vec![("job".into(), "abc".into())])
        );
        assert_eq!(match_topic(&t, "job/"), None);
        assert_eq!(match_topic(&t, "job/a/b"), None);
        assert_eq!(match_topic(&t, "jobs/a"), None);
        let url = vec![
            TopicPart::Literal("/api/jobs/".into()),
            TopicPart::Param("job".into()),
            TopicPart::Literal("/status".into()),
        ];
        let params = vec![("job".to_owned(), "a:b@c".to_owned())];
        assert_eq!(
            fill_url(&url, &params).as_deref(),
            Some("/api/jobs/a%3Ab%40c/status")
        );
    }

    #[test]
    fn bodies_become_body_as_data() {
        assert_eq!(
            body_as_data(br#"{ "a" : 1 }"#).as_deref(),
            Some(r#"{"a":1}"#)
        );
        assert_eq!(body_as_data(br#""text""#).as_deref(), Some("text"));
        assert_eq!(
            body_as_data(b"plain\nlines").as_deref(),
            Some("plain\nlines")
        );
        assert_eq!(body_as_data(b"\xff"), None);
    }
}

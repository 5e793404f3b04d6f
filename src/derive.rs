//! Events derived from proxied requests (the `derive` rules): a legacy app that cannot
//! publish still gets live pages, because ssegate publishes for it when a request that
//! changes something has been answered.
//!
//! A rule is matched twice: on the request (method and path, before it is forwarded) and
//! on the app's answer (status, and the response headers a topic may name). The event is
//! published once the response has been relayed, when the [`Publication`] is dropped, so
//! a page that refetches on it sees the change; the client's response is never delayed
//! or altered. The topic is filled only from the path and the app's response headers,
//! never from anything else the client sent.
//!
//! Knows nothing of HTTP stacks: both forwarding paths call [`Rules::matching`] and
//! [`Matched::answered`] with what they parsed.

use crate::config::{DeriveData, DeriveRule, PathPart, TopicPart};
use crate::hub::{self, Hub, NewEvent, validate_topic};
use crate::metrics::Metrics;
use crate::publish::body_as_data;
use crate::response::Tap;
use crate::sse::EventId;
use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use smallvec::SmallVec;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use tokio::sync::Notify;

/// The rules of the current configuration.
#[derive(Default)]
pub struct Rules {
    rules: Vec<Arc<Compiled>>,
}

struct Compiled {
    rule: DeriveRule,
    /// The path's literal start (up to the first placeholder): most requests fail here.
    prefix: String,
    /// The path has no placeholder: `prefix` is the whole path, and a request matches it
    /// when its path is that, as [`match_path`] would find segment by segment.
    literal: bool,
    /// The path's parameter names, sorted (the order `meta` lists them), each with its
    /// position in the template (and in [`Params`]).
    names: Box<[(String, usize)]>,
    /// The topic, when the template is all literal text and a valid topic: filled and
    /// validated once, here, and shared by the rule's events.
    fixed_topic: Option<Arc<str>>,
    /// The topic names a response header: [`Matched::wants_header`] asks.
    reads_headers: bool,
    /// Each of its methods' [`Meta::head`], in the order of `rule.methods`.
    heads: Box<[String]>,
    /// What its events' data needs after it to be framed in place ([`hub::frame_room`]).
    frame_room: usize,
    /// `publish.max_event_bytes`: a body larger than this is not put in an event.
    max_body: usize,
    /// The rule's `published` series, looked up at its first batch: then one increment a
    /// batch, not a lookup (and a key built) each time.
    published: OnceLock<Counter>,
}

impl Rules {
    /// Compiles `rules`; bodies over `max_body` bytes stay out of events.
    pub fn new(rules: &[DeriveRule], max_body: usize) -> Self {
        let rules = rules
            .iter()
            .map(|rule| {
                let mut prefix = String::new();
                for part in &rule.path {
                    match part {
                        PathPart::Literal(l) => {
                            prefix.push('/');
                            prefix.push_str(l);
                        }
                        PathPart::Param(_) | PathPart::Rest(_) => {
                            prefix.push('/');
                            break;
                        }
                    }
                }
                let mut names: Vec<(String, usize)> = rule
                    .path
                    .iter()
                    .filter_map(|part| match part {
                        PathPart::Param(name) | PathPart::Rest(name) => Some(name.clone()),
                        PathPart::Literal(_) => None,
                    })
                    .zip(0..)
                    .collect();
                names.sort();
                let no_params = std::iter::empty();
                let fixed_topic = rule
                    .topic
                    .iter()
                    .all(|part| matches!(part, TopicPart::Literal(_)))
                    .then(|| fill_topic(&rule.topic, &no_params, &|_| None))
                    .flatten()
                    .map(Arc::from);
                Arc::new(Compiled {
                    literal: rule.path.iter().all(|p| matches!(p, PathPart::Literal(_))),
                    heads: rule.methods.iter().map(|m| Meta::head(m)).collect(),
                    frame_room: hub::frame_room(rule.event.as_deref()),
                    max_body,
                    rule: rule.clone(),
                    prefix,
                    names: names.into(),
                    fixed_topic,
                    reads_headers: rule
                        .topic
                        .iter()
                        .any(|part| matches!(part, TopicPart::ResponseHeader(_))),
                    published: OnceLock::new(),
                })
            })
            .collect();
        Self { rules }
    }

    /// The rules a request with `method` and (still encoded) `path` matches, with their
    /// parameters and what their `meta` says of the request; `None`, without allocating,
    /// when none does (the common case).
    pub fn matching(&self, method: &str, path: &str) -> Option<Matched> {
        let mut matched: Option<Matched> = None;
        for compiled in &self.rules {
            if !path.starts_with(compiled.prefix.as_str()) {
                continue;
            }
            let Some(head) = compiled
                .rule
                .methods
                .iter()
                .position(|m| m == method)
                .and_then(|i| compiled.heads.get(i))
            else {
                continue;
            };
            let params = if compiled.literal {
                (path == compiled.prefix).then(Vec::new)
            } else {
                match_path(&compiled.rule.path, path)
            };
            if let Some(params) = params {
                let hit = Hit::new(compiled, head, path, params);
                match &mut matched {
                    None => matched = Some(Matched::new(hit)),
                    Some(m) => m.add(hit),
                }
            }
        }
        matched
    }
}

/// A path's parameters, decoded, in the order of the template.
type Params = Vec<String>;

impl Compiled {
    /// The parameters' names and values, sorted by name.
    fn params<'p>(
        &'p self,
        params: &'p [String],
    ) -> impl Iterator<Item = (&'p str, &'p str)> + Clone {
        self.names
            .iter()
            .filter_map(|(name, i)| Some((name.as_str(), params.get(*i)?.as_str())))
    }
}

/// A rule a request matched.
struct Hit {
    compiled: Arc<Compiled>,
    params: Box<[String]>,
    /// Its `meta`, as far as the request tells.
    meta: Meta,
}

impl Hit {
    /// Out of line: the scan of the rules, which every request goes through, stays small.
    #[inline(never)]
    fn new(compiled: &Arc<Compiled>, head: &str, path: &str, params: Params) -> Self {
        Self {
            meta: Meta::after_head(head, path, compiled.params(&params), compiled.frame_room),
            compiled: Arc::clone(compiled),
            // Sized exactly by `match_path`: no copy.
            params: params.into_boxed_slice(),
        }
    }
}

/// A request some rules matched, waiting for the app's answer. The first hit is held
/// inline (a matched request usually matches one rule, and its `meta` is the one
/// allocation it needs); what fewer requests need is boxed, so that every request's state,
/// matched or not, stays as small (and as quick to move) as it was with the hits on the
/// heap.
pub struct Matched {
    first: Hit,
    more: Option<Box<More>>,
    /// A hit's topic names a response header.
    reads_headers: bool,
}

/// What few matched requests have: more rules matched, and a request body kept for an
/// event.
#[derive(Default)]
struct More {
    hits: Vec<Hit>,
    request_body: Option<Bytes>,
}

/// The response header `meta` carries.
const LOCATION: &str = "location";

impl Matched {
    fn new(first: Hit) -> Self {
        Self {
            reads_headers: first.compiled.reads_headers,
            first,
            more: None,
        }
    }

    /// Adds a hit after the first.
    #[inline(never)]
    fn add(&mut self, hit: Hit) {
        self.reads_headers |= hit.compiled.reads_headers;
        self.more.get_or_insert_with(Box::default).hits.push(hit);
    }

    /// The hits, in the order of the rules.
    fn hits(&self) -> impl Iterator<Item = &Hit> {
        let more = self.more.iter().flat_map(|m| m.hits.iter());
        std::iter::once(&self.first).chain(more)
    }

    /// `publish.max_event_bytes` (every rule has it).
    fn max_body(&self) -> usize {
        self.first.compiled.max_body
    }

    /// Whether a matched rule reads the app's response header `name` (any case): `Location`
    /// for `meta`, or one its topic names.
    pub fn wants_header(&self, name: &str) -> bool {
        let topic_reads = |hit: &Hit| {
            hit.compiled.reads_headers
                && hit.compiled.rule.topic.iter().any(|part| {
                    matches!(part, TopicPart::ResponseHeader(h) if name.eq_ignore_ascii_case(h))
                })
        };
        name.eq_ignore_ascii_case(LOCATION) || (self.reads_headers && self.hits().any(topic_reads))
    }

    /// Whether a matched rule puts the request's body in its event.
    pub fn wants_request_body(&self) -> bool {
        let wants = |hit: &Hit| hit.compiled.rule.data == DeriveData::Request;
        wants(&self.first) || self.more.as_ref().is_some_and(|m| m.hits.iter().any(wants))
    }

    /// The request's whole body, kept if a rule wants it and it fits.
    pub fn request_body(&mut self, body: &[u8]) {
        if self.wants_request_body() && body.len() <= self.max_body() {
            self.more.get_or_insert_with(Box::default).request_body =
                Some(Bytes::copy_from_slice(body));
        }
    }

    /// The event of `hit` for the app's answer (see [`Matched::answered`]), if its rule
    /// matches the answer and its topic is valid.
    fn event<'h>(
        Hit {
            compiled,
            params,
            meta,
        }: Hit,
        status: u16,
        location: Option<&str>,
        header: &impl Fn(&str) -> Option<&'h str>,
        metrics: &Metrics,
    ) -> Option<Pending> {
        let rule = &compiled.rule;
        if !rule.status.iter().any(|s| s.matches(status)) {
            metrics.derived(&rule.name, "no_match");
            return None;
        }
        let topic = match &compiled.fixed_topic {
            Some(topic) => Some(Arc::clone(topic)),
            None => fill_topic(&rule.topic, &compiled.params(&params), header).map(Arc::from),
        };
        let Some(topic) = topic else {
            metrics.derived(&rule.name, "invalid_topic");
            tracing::warn!(
                rule = rule.name,
                path = meta.path(),
                "derived topic is not a valid topic; nothing published"
            );
            return None;
        };
        // Whole now, before the response is relayed: what is left once it has been is a
        // push on the publisher's queue (and, for a body rule, its data).
        let event = NewEvent {
            topics: smallvec::smallvec![topic],
            event_type: rule.event.as_deref().map(Into::into),
            data: meta.answered(status, location),
            close: false,
        };
        Some(Pending {
            rule: compiled,
            event,
        })
    }

    /// The events for the app's answer: its `status`, and its headers through `header`
    /// (by lower-case name). Published when the returned value is dropped, with the
    /// response's body if a rule wants it (seen through [`Tap`]).
    pub fn answered<'h>(
        self,
        status: u16,
        header: impl Fn(&str) -> Option<&'h str>,
        publisher: &Publisher,
    ) -> Publication {
        let metrics = &publisher.0.metrics;
        let location = header(LOCATION);
        let max_body = self.max_body();
        let mut pending: SmallVec<[Pending; 1]> = SmallVec::new();
        let mut answer = |hit| {
            if let Some(p) = Self::event(hit, status, location, &header, metrics) {
                pending.push(p);
            }
        };
        answer(self.first);
        let mut request = None;
        if let Some(more) = self.more {
            more.hits.into_iter().for_each(&mut answer);
            request = more.request_body;
        }
        let wants_response = pending
            .iter()
            .any(|p| p.rule.rule.data == DeriveData::Response);
        Publication {
            publisher: publisher.clone(),
            pending,
            request,
            response: wants_response.then(BytesMut::new),
            chunked: false,
            max_body,
        }
    }
}

/// An event of a matched rule, waiting for the response to be relayed.
struct Pending {
    rule: Arc<Compiled>,
    /// The event, its data the `meta` JSON.
    event: NewEvent,
}

/// Derived events waiting for the response to be relayed: published when dropped.
pub struct Publication {
    publisher: Publisher,
    /// Usually one (one rule matched): inline.
    pending: SmallVec<[Pending; 1]>,
    request: Option<Bytes>,
    /// The response's body so far, while a rule wants it and it fits.
    response: Option<BytesMut>,
    /// `response` holds the body with its chunked framing.
    chunked: bool,
    max_body: usize,
}

impl Tap for Publication {
    fn data(&mut self, chunk: &[u8]) {
        // Framing takes a few bytes per chunk: room for it, checked again once removed.
        let room = if self.chunked {
            self.max_body.saturating_mul(2).saturating_add(1024)
        } else {
            self.max_body
        };
        if let Some(body) = &mut self.response {
            if body.len() + chunk.len() > room {
                self.response = None;
            } else {
                body.extend_from_slice(chunk);
            }
        }
    }

    fn chunked(&mut self) {
        self.chunked = true;
    }
}

impl Publication {
    /// The response's body, if it was kept and fits.
    fn response_body(&mut self) -> Option<Bytes> {
        let raw = self.response.take()?.freeze();
        let body = if self.chunked {
            Bytes::from(dechunk(&raw)?)
        } else {
            raw
        };
        (body.len() <= self.max_body).then_some(body)
    }
}

/// The data of a complete chunked body (extensions and trailers ignored).
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

impl Drop for Publication {
    fn drop(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let response = self.response_body();
        let metrics = &self.publisher.0.metrics;
        for Pending {
            rule: compiled,
            mut event,
        } in std::mem::take(&mut self.pending)
        {
            let rule = &compiled.rule;
            let body = match rule.data {
                DeriveData::Meta => None,
                DeriveData::Request => Some(self.request.as_deref()),
                DeriveData::Response => Some(response.as_deref()),
            };
            if let Some(body) = body {
                match body.and_then(body_as_data) {
                    Some(data) => event.data = data,
                    None => {
                        metrics.derived(&rule.name, "body_omitted");
                        // First, as in a sorted map; `meta` always has other keys.
                        event.data.insert_str(1, "\"body_omitted\":true,");
                    }
                }
            }
            if let Err((_, rule)) = self.publisher.0.send((event, compiled)) {
                metrics.derived(&rule.rule.name, "overloaded");
                tracing::warn!(
                    rule = rule.rule.name,
                    "derived events wait faster than they are published; one dropped"
                );
            }
        }
    }
}

/// Derived events waiting for the broker, at most this many.
const QUEUE: usize = 4096;

/// The most derived events published in one call: enough to publish (and wake the
/// dispatchers) once for many requests, few enough that a batch waits little.
const BATCH: usize = 16;

/// The outcome of a derived event the broker took.
const PUBLISHED: &str = "published";

/// An event and the rule it came from.
type Derived = (NewEvent, Arc<Compiled>);

/// Publishes derived events in order and in batches, on one task: a request that matched
/// a rule costs a push on a queue, not a task and a publish (and a wake of every
/// dispatcher) of its own. The task lives as long as the runtime.
#[derive(Clone)]
pub struct Publisher(Arc<Queue>);

/// The publishing task's queue, shared by every [`Publication`] (one count to take, where
/// a queue and the metrics would be two). A vector under a lock rather than a channel: a
/// push is one uncontended lock and no semaphore, and the vector keeps its capacity.
struct Queue {
    /// Events waiting for the publishing task, oldest first; at most [`QUEUE`].
    waiting: Mutex<Vec<Derived>>,
    /// Wakes the publishing task once `waiting` has events again.
    ready: Notify,
    metrics: Arc<Metrics>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Vec<Derived>> {
        // Nothing panics while holding it (pushes and drains): keep going rather than poison.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `derived` for the publishing task; gives it back when the queue is full.
    fn send(&self, derived: Derived) -> Result<(), Derived> {
        let mut waiting = self.lock();
        if waiting.len() >= QUEUE {
            return Err(derived);
        }
        let first = waiting.is_empty();
        waiting.push(derived);
        drop(waiting);
        // Later events find the task woken already, or busy and reading again before it
        // waits: only the first of a run wakes it.
        if first {
            self.ready.notify_one();
        }
        Ok(())
    }
}

impl Publisher {
    /// Starts the publishing task on the current runtime.
    pub fn start(hub: Hub, metrics: Arc<Metrics>) -> Self {
        let queue = Arc::new(Queue {
            waiting: Mutex::new(Vec::new()),
            ready: Notify::new(),
            metrics,
        });
        tokio::spawn(publish_all(Arc::clone(&queue), hub));
        Self(queue)
    }
}

async fn publish_all(queue: Arc<Queue>, hub: Hub) {
    let metrics = &queue.metrics;
    // Allocated once: a batch's vectors are not small (16 events take over a KiB; glibc's
    // malloc consolidates its free lists at each allocation that large).
    let mut events = Vec::with_capacity(BATCH);
    let mut rules: Vec<Arc<Compiled>> = Vec::with_capacity(BATCH);
    // The ids the hub gives them, which nothing reads.
    let mut ids = Vec::with_capacity(BATCH);
    loop {
        queue.ready.notified().await;
        // The requests served in this turn of the scheduler queue theirs too: waiting for
        // the turn to end makes one batch of them, so that a busy proxy publishes (and wakes
        // every dispatcher) once a turn rather than once a request. Pushes meanwhile wake
        // nothing.
        tokio::task::yield_now().await;
        loop {
            {
                let mut waiting = queue.lock();
                let n = waiting.len().min(BATCH);
                for (event, rule) in waiting.drain(..n) {
                    events.push(event);
                    rules.push(rule);
                }
            }
            if events.is_empty() {
                break;
            }
            publish_batch(&hub, metrics, &mut events, &mut rules, &mut ids).await;
        }
    }
}

/// Publishes `events` (of `rules`, in order) and counts the outcome; leaves both empty
/// (and `ids`, where the hub puts their ids).
async fn publish_batch(
    hub: &Hub,
    metrics: &Metrics,
    events: &mut Vec<NewEvent>,
    rules: &mut Vec<Arc<Compiled>>,
    ids: &mut Vec<EventId>,
) {
    let published = hub.publish_from(events, ids).await;
    ids.clear();
    let outcome = match published {
        Ok(_) => PUBLISHED,
        Err(e) => {
            tracing::warn!(events = rules.len(), error = %e, "derived events not published");
            if matches!(e, crate::hub::HubError::Overloaded(..)) {
                "overloaded"
            } else {
                "broker_unavailable"
            }
        }
    };
    // Counted by runs of one rule: a series looked up once a run, not once an event.
    for run in rules.chunk_by(Arc::ptr_eq) {
        if let Some(compiled) = run.first() {
            let n = run.len() as u64;
            if outcome == PUBLISHED {
                compiled
                    .published
                    .get_or_init(|| metrics.derived_counter(&compiled.rule.name, PUBLISHED))
                    .inc_by(n);
            } else {
                metrics.derived_n(&compiled.rule.name, outcome, n);
            }
        }
    }
    rules.clear();
}

/// The parameters of `path` under `template`, decoded; `None` when it does not match.
fn match_path(template: &[PathPart], path: &str) -> Option<Params> {
    let mut segments = path.strip_prefix('/')?.split('/');
    // Exactly as many as it will hold: kept as they are, without a copy (see `Hit`).
    let placeholders = template
        .iter()
        .filter(|part| !matches!(part, PathPart::Literal(_)))
        .count();
    let mut params = Vec::with_capacity(placeholders);
    for part in template {
        match part {
            PathPart::Literal(l) => {
                if segments.next()? != l {
                    return None;
                }
            }
            PathPart::Param(_) => {
                let seg = segments.next().filter(|s| !s.is_empty())?;
                params.push(decode(seg)?);
            }
            PathPart::Rest(_) => {
                let rest: Vec<&str> = segments.by_ref().collect();
                if rest.is_empty() || rest.iter().all(|s| s.is_empty()) {
                    return None;
                }
                let decoded: Option<Vec<String>> = rest.iter().map(|s| decode(s)).collect();
                params.push(decoded?.join("/"));
            }
        }
    }
    segments.next().is_none().then_some(params)
}

/// Percent-decodes one path segment; `None` when it decodes to a `/` or to invalid UTF-8
/// (a parameter is one segment).
fn decode(seg: &str) -> Option<String> {
    let bytes: Vec<u8> = percent_decode(seg.as_bytes())?;
    let s = String::from_utf8(bytes).ok()?;
    (!s.contains('/')).then_some(s)
}

fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The topic of `template` with `params` (name and value) and the response headers filled
/// in, if it is a valid topic.
fn fill_topic<'p, 'h>(
    template: &[TopicPart],
    params: &(impl Iterator<Item = (&'p str, &'p str)> + Clone),
    header: &impl Fn(&str) -> Option<&'h str>,
) -> Option<String> {
    let mut topic = String::new();
    for part in template {
        match part {
            TopicPart::Literal(l) => topic.push_str(l),
            TopicPart::Param(name) => {
                topic.push_str(params.clone().find(|(n, _)| n == name)?.1);
            }
            TopicPart::ResponseHeader(name) => topic.push_str(header(name)?.trim()),
        }
    }
    validate_topic(&topic).ok()?;
    Some(topic)
}

/// The `meta` data of a derived event, as JSON: `location` (when the app sent one),
/// `method`, `params`, `path` and `status`, keys in this (sorted) order. Written in two
/// steps, so that only one buffer is allocated: what the request says when it matches a
/// rule ([`Meta::request`]), the app's answer once it arrives ([`Meta::answered`]). The
/// buffer keeps room after the JSON for the hub to frame the event in it.
#[derive(Clone)]
struct Meta {
    /// `{"method":…,"params":{…},"path":…,"status":`
    json: String,
    /// Room kept after the whole JSON ([`crate::hub::frame_room`]).
    room: usize,
}

/// What comes before the path's JSON string in [`Meta`]: the end of `params`, whose
/// strings are escaped (a `"` in one is `\"`), so that this is its first occurrence.
const BEFORE_PATH: &str = "},\"path\":";

/// What the app's answer adds to [`Meta`] without a `Location`: the status and the closing
/// brace. Room for them is kept from the start.
const STATUS_ROOM: usize = 6;

impl Meta {
    /// The part the request tells: method, parameters (sorted by name) and path; `room`
    /// bytes are kept free after the whole JSON.
    #[cfg(test)]
    fn request<'p>(
        method: &str,
        path: &str,
        params: impl Iterator<Item = (&'p str, &'p str)> + Clone,
        room: usize,
    ) -> Self {
        Self::after_head(&Self::head(method), path, params, room)
    }

    /// What every request of `method` starts with: `{"method":…,"params":{`, which a rule
    /// writes once for each of its methods.
    fn head(method: &str) -> String {
        let mut head = String::from("{\"method\":");
        json_string(&mut head, method);
        head.push_str(",\"params\":{");
        head
    }

    /// [`Meta::request`] of a request whose method has the [`Meta::head`] `head`.
    fn after_head<'p>(
        head: &str,
        path: &str,
        params: impl Iterator<Item = (&'p str, &'p str)> + Clone,
        room: usize,
    ) -> Self {
        // Exact when nothing needs escaping: the keys, the strings and their quotes.
        let strings: usize = params
            .clone()
            .map(|(name, value)| name.len() + value.len() + 6)
            .sum();
        let len = head.len() + strings + BEFORE_PATH.len() + path.len() + 2 + 10;
        let mut json = String::with_capacity(len + STATUS_ROOM + room);
        json.push_str(head);
        for (i, (name, value)) in params.enumerate() {
            if i > 0 {
                json.push(',');
            }
            json_string(&mut json, name);
            json.push(':');
            json_string(&mut json, value);
        }
        json.push_str(BEFORE_PATH);
        json_string(&mut json, path);
        json.push_str(",\"status\":");
        Self { json, room }
    }

    /// The request's path, for a log line (decoded back from its JSON string).
    fn path(&self) -> String {
        let Some((_, rest)) = self.json.split_once(BEFORE_PATH) else {
            return String::new();
        };
        // The string, and whatever follows it.
        let mut strings = serde_json::Deserializer::from_str(rest).into_iter::<String>();
        strings.next().and_then(Result::ok).unwrap_or_default()
    }

    /// The whole JSON, with the app's `status` and `location` (if it sent one).
    fn answered(mut self, status: u16, location: Option<&str>) -> String {
        let json = &mut self.json;
        if let Some(location) = location {
            // After the opening brace, the last piece first.
            let escaped;
            let (key, value, comma) = if needs_no_escape(location) {
                ("\"location\":\"", location, "\",")
            } else {
                escaped = serde_json::to_string(location).unwrap_or_default();
                ("\"location\":", escaped.as_str(), ",")
            };
            json.reserve_exact(key.len() + value.len() + comma.len() + STATUS_ROOM + self.room);
            for piece in [comma, value, key] {
                json.insert_str("{".len(), piece);
            }
        }
        let mut digits = itoa::Buffer::new();
        json.push_str(digits.format(status));
        json.push('}');
        self.json
    }
}
/// The whole `meta` JSON at once (the two steps of [`Meta`] in one).
#[cfg(test)]
fn meta<'p>(
    method: &str,
    path: &str,
    status: u16,
    params: impl Iterator<Item = (&'p str, &'p str)> + Clone,
    location: Option<&str>,
) -> String {
    Meta::request(method, path, params, 0).answered(status, location)
}

/// Appends `s` as a JSON string.
fn json_string(out: &mut String, s: &str) {
    if needs_no_escape(s) {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Serializing a string cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

/// Whether `s` is its own JSON string's content: serde_json escapes control characters,
/// `"` and `\` only, so methods and most paths are copied as they are.
fn needs_no_escape(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn template(s: &str) -> Vec<PathPart> {
        s.trim_start_matches('/')
            .split('/')
            .map(
                |seg| match seg.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
                    Some(n) if n.ends_with('*') => PathPart::Rest(n.trim_end_matches('*').into()),
                    Some(n) => PathPart::Param(n.into()),
                    None => PathPart::Literal(seg.into()),
                },
            )
            .collect()
    }

    #[test]
    fn paths_match_segment_by_segment() {
        let t = template("/t/{tenant}/questions/{rest*}");
        assert_eq!(
            match_path(&t, "/t/acme/questions/q1/answers"),
            Some(vec!["acme".into(), "q1/answers".into()])
        );
        assert_eq!(
            match_path(&t, "/t/acme/questions"),
            None,
            "{{rest*}} needs a segment"
        );
        assert_eq!(
            match_path(&t, "/t//questions/x"),
            None,
            "{{tenant}} needs a segment"
        );
        assert_eq!(match_path(&t, "/u/acme/questions/x"), None);
        let t = template("/items/{id}");
        assert_eq!(match_path(&t, "/items/a%20b"), Some(vec!["a b".into()]));
        assert_eq!(
            match_path(&t, "/items/a%2Fb"),
            None,
            "an encoded / is not one segment"
        );
        assert_eq!(
            match_path(&t, "/items/1/x"),
            None,
            "longer paths do not match"
        );
        assert_eq!(match_path(&t, "/items/%zz"), None);
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\ntrailer: 1\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert_eq!(dechunk(b"3\r\nab"), None);
        assert_eq!(dechunk(b"zz\r\n"), None);
    }

    #[test]
    fn topics_are_filled_from_params_and_response_headers_only() {
        let t = vec![
            TopicPart::Literal("t/".into()),
            TopicPart::Param("tenant".into()),
            TopicPart::Literal("/".into()),
            TopicPart::ResponseHeader("x-kind".into()),
        ];
        let params = [("tenant", "acme")].into_iter();
        let headers = |name: &str| (name == "x-kind").then_some("q");
        assert_eq!(
            fill_topic(&t, &params, &headers).as_deref(),
            Some("t/acme/q")
        );
        let none = |_: &str| None;
        assert_eq!(
            fill_topic(&t, &params, &none),
            None,
            "a missing header publishes nothing"
        );
        let params = [("tenant", "a b")].into_iter();
        assert_eq!(fill_topic(&t, &params, &headers), None, "not a valid topic");
    }

    #[test]
    fn meta_is_the_json_a_sorted_map_would_be() {
        let params = [("id", "a\"b"), ("rest", "x/y")].into_iter();
        let m = meta("POST", "/i/a%22b/x/y", 201, params, Some("/i/\u{e9}\n"));
        let value: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(m, value.to_string(), "keys sorted, compact, escaped");
        assert_eq!(value["params"]["id"], "a\"b");
        assert_eq!(value["location"], "/i/\u{e9}\n");
        let m = meta("GET", "/", 200, std::iter::empty(), None);
        assert_eq!(m, r#"{"method":"GET","params":{},"path":"/","status":200}"#);
    }

    #[test]
    fn meta_keeps_room_for_its_frame_after_the_json() {
        let room = hub::frame_room(Some("changed"));
        for location in [None, Some("/items/7"), Some("/items/\"7\"\n")] {
            let params = [("id", "7")].into_iter();
            let m = Meta::request("POST", "/items/7", params, room).answered(201, location);
            assert!(m.capacity() >= m.len() + room, "{location:?}");
            let params = [("id", "7")].into_iter();
            assert_eq!(m, meta("POST", "/items/7", 201, params, location));
        }
    }

    #[test]
    fn a_literal_path_matches_as_its_segments_would() {
        for template_path in ["/", "/items", "/a/b", "/a//b", "/a/"] {
            let rules = Rules::new(&[post_rule(template_path, "t")], 1024);
            let compiled = &rules.rules[0];
            assert!(compiled.literal, "{template_path}");
            for path in [
                "/", "", "/items", "/items/", "/a/b", "/a//b", "/a/", "/a", "/a/b/",
            ] {
                assert_eq!(
                    rules.matching("POST", path).is_some(),
                    match_path(&compiled.rule.path, path).is_some(),
                    "{template_path} {path}"
                );
            }
        }
    }

    #[test]
    fn the_path_is_found_after_params_that_look_like_it() {
        let params = [("a", "x},\"path\":\"/no"), ("b", "}")].into_iter();
        let m = Meta::request("POST", "/y\"z", params, 0);
        assert_eq!(m.path(), "/y\"z");
    }

    #[test]
    fn a_match_is_no_larger_than_its_hits_on_the_heap_would_be() {
        // A vector, a flag, an optional body and `max_body`: what every request carried.
        assert!(std::mem::size_of::<Option<Matched>>() <= 72);
    }

    #[test]
    fn every_rule_a_request_matches_publishes() {
        let rules = Rules::new(
            &[
                post_rule("/i/{id}", "a"),
                post_rule("/x", "b"),
                post_rule("/i/{n}", "c"),
            ],
            1024,
        );
        let mut m = rules.matching("POST", "/i/7").unwrap();
        assert!(!m.wants_request_body());
        m.request_body(b"ignored");
        let metas: Vec<String> = m
            .hits()
            .map(|h| h.meta.clone().answered(201, None))
            .collect();
        assert_eq!(metas.len(), 2);
        assert!(metas[0].contains(r#""params":{"id":"7"}"#), "{metas:?}");
        assert!(metas[1].contains(r#""params":{"n":"7"}"#), "{metas:?}");
    }

    #[test]
    fn json_strings_are_what_serde_json_writes() {
        for s in [
            "",
            "GET",
            "/a/b%20c",
            "\u{e9}\u{7f}/\u{1f600}",
            "a\"b",
            "a\\b",
            "\n",
            "\u{1f}x",
        ] {
            let mut out = String::new();
            json_string(&mut out, s);
            assert_eq!(out.into_bytes(), serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    /// A rule for POSTs to `path` answered 2xx, publishing meta to the literal `topic`.
    fn post_rule(path: &str, topic: &str) -> DeriveRule {
        DeriveRule {
            name: "r".into(),
            methods: vec!["POST".into()],
            path: template(path),
            status: vec![crate::config::StatusMatch::Class(2)],
            topic: vec![TopicPart::Literal(topic.into())],
            event: None,
            data: DeriveData::Meta,
        }
    }

    #[test]
    fn the_queue_keeps_order_and_gives_back_what_does_not_fit() {
        let compiled = Arc::clone(&Rules::new(&[post_rule("/items", "items")], 1024).rules[0]);
        let queue = Queue {
            waiting: Mutex::new(Vec::new()),
            ready: Notify::new(),
            metrics: Arc::new(Metrics::default()),
        };
        for i in 0..QUEUE {
            let event = NewEvent::new("items", &i.to_string());
            assert!(queue.send((event, Arc::clone(&compiled))).is_ok());
        }
        let last = NewEvent::new("items", "one too many");
        let (back, _) = queue.send((last, compiled)).unwrap_err();
        assert_eq!(back.data, "one too many");
        let waiting = queue.lock();
        assert_eq!(waiting.len(), QUEUE);
        assert!(
            waiting
                .iter()
                .enumerate()
                .all(|(i, (e, _))| e.data == i.to_string())
        );
    }

    #[test]
    fn a_literal_topic_is_filled_once_and_only_if_valid() {
        let rule = |topic| post_rule("/items", topic);
        let rules = Rules::new(&[rule("items/all"), rule("not a topic")], 1024);
        assert_eq!(rules.rules[0].fixed_topic.as_deref(), Some("items/all"));
        assert_eq!(
            rules.rules[1].fixed_topic, None,
            "left to be refused per request"
        );
    }

    #[test]
    fn meta_lists_params_by_name() {
        let rules = Rules::new(&[post_rule("/t/{tenant}/q/{id}", "t")], 1024);
        let m = rules.matching("POST", "/t/acme/q/7").unwrap();
        assert!(rules.matching("GET", "/t/acme/q/7").is_none());
        let hit = &m.first;
        assert_eq!(hit.meta.path(), "/t/acme/q/7");
        let meta = hit.meta.clone().answered(200, None);
        assert_eq!(
            meta,
            r#"{"method":"POST","params":{"id":"7","tenant":"acme"},"path":"/t/acme/q/7","status":200}"#
        );
    }
}

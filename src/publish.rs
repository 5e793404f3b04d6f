//! The publish webhook's rules: a JSON body (one event or a batch) becomes validated
//! [`NewEvent`]s, or one refusal that names the field and the item. Nothing of a batch is
//! published when any item is bad. No HTTP here; `admin` serves it.

use crate::hub::{Backlog, HubError, NewEvent, Topics, validate_topic};
use crate::refusal::ApiError;
use crate::sse::{self, EventId};
use hyper::StatusCode;
use serde_json::Value;

/// Most topics one event may be published to.
pub const MAX_TOPICS_PER_EVENT: usize = 32;

/// Why a publish is refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    /// A field is missing, of the wrong type or invalid.
    #[error("{0}")]
    InvalidEvent(String),
    /// The publish token is missing or wrong.
    #[error("POST /publish needs \"Authorization: Bearer <publish.token>\"")]
    Unauthorized,
    /// The body or one event is too large.
    #[error("{0}")]
    TooLarge(String),
    /// Not `application/json`.
    #[error("the body must be sent with Content-Type: application/json")]
    UnsupportedMediaType,
    /// The broker could not store the events.
    #[error("the broker is unavailable, nothing was published: {0}")]
    BrokerUnavailable(String),
    /// The events already accepted are not yet dispatched: taking more would only grow
    /// memory. Nothing was published.
    #[error("nothing was published, retry shortly: {0}")]
    Overloaded(#[source] Backlog),
}

impl PublishError {
    /// Every `error` code a publish can be refused with, for the metric's labels.
    pub const CODES: [&'static str; 7] = [
        "invalid_json",
        "invalid_event",
        "unauthorized",
        "too_large",
        "unsupported_media_type",
        "broker_unavailable",
        "overloaded",
    ];
}

impl From<HubError> for PublishError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Unavailable(why) => Self::BrokerUnavailable(why),
            HubError::Overloaded(backlog) => Self::Overloaded(backlog),
        }
    }
}

impl ApiError for PublishError {
    fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) | Self::InvalidEvent(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BrokerUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidEvent(_) => "invalid_event",
            Self::Unauthorized => "unauthorized",
            Self::TooLarge(_) => "too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BrokerUnavailable(_) => "broker_unavailable",
            Self::Overloaded(_) => "overloaded",
        }
    }
    fn retry_after(&self) -> Option<u64> {
        matches!(self, Self::BrokerUnavailable(_) | Self::Overloaded(_)).then_some(1)
    }
}

/// Whether a `Content-Type` value is JSON (`application/json`, any parameters).
pub fn is_json_content_type(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    })
}

/// Parses and validates a publish body. `max_event_bytes` bounds each event's data.
pub fn parse_body(body: &[u8], max_event_bytes: usize) -> Result<Vec<NewEvent>, PublishError> {
    let batch = body_is_batch(body);
    if let Some(events) = read_plain(body, batch) {
        return events
            .into_iter()
            .enumerate()
            .map(|(i, ev)| ev.build(batch.then_some(i), max_event_bytes))
            .collect();
    }
    parse_value(body, max_event_bytes)
}

/// [`parse_body`] by way of a JSON value tree: every body, and a refusal that names what
/// is wrong.
fn parse_value(body: &[u8], max_event_bytes: usize) -> Result<Vec<NewEvent>, PublishError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        PublishError::InvalidJson(format!(
            "{} (line {}, column {})",
            strip_position(&e),
            e.line(),
            e.column()
        ))
    })?;
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(PublishError::InvalidEvent("the batch is empty".to_owned()));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| parse_event(item, Some(i), max_event_bytes))
                .collect()
        }
        item => Ok(vec![parse_event(item, None, max_event_bytes)?]),
    }
}

/// Whether the body is a batch (a JSON array) rather than one event.
fn body_is_batch(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// An event as the webhook's usual body sends it: known fields only, each of its expected
/// type, `data` a string, topics and type without escapes (read in place). Reading into
/// this allocates nothing per field but `data` with escapes; what it does not take (a
/// field of another type, `null` where a value is needed, an unknown or repeated field, an
/// empty batch) is read again as a JSON value by [`parse_event`], whose refusal names the
/// field, and which hands the fields it read to [`Plain::build`]: one set of rules.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Plain<'a> {
    #[serde(borrow, default, deserialize_with = "given")]
    topic: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "given")]
    topics: Option<Vec<&'a str>>,
    #[serde(borrow, default)]
    event: Option<&'a str>,
    #[serde(borrow)]
    data: std::borrow::Cow<'a, str>,
    #[serde(default)]
    close: Option<bool>,
}

/// A field that, when present, must hold a value: `null` is not read here (the JSON value
/// reading then says what is wrong with it).
fn given<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// The body's events read as [`Plain`] (a `batch` is an array of them), or `None` for
/// anything else.
fn read_plain(body: &[u8], batch: bool) -> Option<Vec<Plain<'_>>> {
    if batch {
        serde_json::from_slice::<Vec<Plain<'_>>>(body)
            .ok()
            .filter(|events| !events.is_empty())
    } else {
        serde_json::from_slice::<Plain<'_>>(body)
            .ok()
            .map(|e| vec![e])
    }
}

impl Plain<'_> {
    fn build(self, index: Option<usize>, max_event_bytes: usize) -> Result<NewEvent, PublishError> {
        let at = |field: &str, why: &str| invalid(index, field, why);
        let mut topics = Topics::new();
        match (self.topic, self.topics) {
            (Some(_), Some(_)) => {
                return Err(at("topics", "cannot be given together with `topic`"));
            }
            (None, None) => return Err(at("topic", "is required (or `topics`)")),
            (Some(t), None) => add_topic(&mut topics, t, "topic", index)?,
            (None, Some(list)) => {
                check_topic_count(list.len(), index)?;
                for t in list {
                    add_topic(&mut topics, t, "topics", index)?;
                }
            }
        }
        let event_type = self.event.map(|t| event_type(t, index)).transpose()?;
        let data = self.data.into_owned();
        check_data_size(&data, index, max_event_bytes)?;
        Ok(NewEvent {
            topics,
            event_type,
            data,
            close: self.close.unwrap_or(false),
        })
    }
}

/// A refusal naming `field` (of item `index` in a batch).
fn invalid(index: Option<usize>, field: &str, why: &str) -> PublishError {
    let msg = match index {
        Some(i) => format!("item {i}: field `{field}` {why}"),
        None => format!("field `{field}` {why}"),
    };
    PublishError::InvalidEvent(msg)
}

/// Validates topic `t` (given in `field`) and adds it unless already there.
fn add_topic(
    topics: &mut Topics,
    t: &str,
    field: &str,
    index: Option<usize>,
) -> Result<(), PublishError> {
    validate_topic(t).map_err(|e| invalid(index, field, &format!("{t:?} is not valid: {e}")))?;
    if !topics.iter().any(|x| &**x == t) {
        topics.push(t.into());
    }
    Ok(())
}

fn check_topic_count(n: usize, index: Option<usize>) -> Result<(), PublishError> {
    if n == 0 || n > MAX_TOPICS_PER_EVENT {
        return Err(invalid(
            index,
            "topics",
            &format!("must hold 1 to {MAX_TOPICS_PER_EVENT} topics"),
        ));
    }
    Ok(())
}

/// A valid event type that is not one of ssegate's own.
fn event_type(t: &str, index: Option<usize>) -> Result<Box<str>, PublishError> {
    if !sse::is_valid_event_type(t) {
        return Err(invalid(
            index,
            "event",
            &format!(
                "{t:?} is not a valid event type (1-64 characters, no whitespace or control characters)"
            ),
        ));
    }
    if t.starts_with(sse::RESERVED_TYPE_PREFIX) {
        return Err(invalid(
            index,
            "event",
            &format!("{t:?} uses the reserved prefix `ssegate.`"),
        ));
    }
    Ok(t.into())
}

fn check_data_size(
    data: &str,
    index: Option<usize>,
    max_event_bytes: usize,
) -> Result<(), PublishError> {
    if data.len() > max_event_bytes {
        let which = index.map_or_else(String::new, |i| format!("item {i}: "));
        return Err(PublishError::TooLarge(format!(
            "{which}`data` is {} bytes; the limit (publish.max_event_bytes) is {max_event_bytes}",
            data.len()
        )));
    }
    Ok(())
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// Reads one event of a body that [`Plain`] did not take: each field's type is checked
/// here (the refusal names it), then the fields go through the same rules as the usual
/// body's ([`Plain::build`]).
fn parse_event(
    item: Value,
    index: Option<usize>,
    max_event_bytes: usize,
) -> Result<NewEvent, PublishError> {
    let at = |field: &str, why: &str| invalid(index, field, why);
    let Value::Object(mut obj) = item else {
        let msg = match index {
            Some(i) => format!("item {i} is not a JSON object"),
            None => "the body must be a JSON object or an array of them".to_owned(),
        };
        return Err(PublishError::InvalidEvent(msg));
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "topic" | "topics" | "event" | "data" | "close"))
    {
        return Err(at(
            k,
            "is not known (expected topic, topics, event, data, close)",
        ));
    }
    // Taken out first (a string is moved, not copied); the other fields are borrowed.
    let data = match obj.remove("data") {
        None => return Err(at("data", "is required")),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    };
    let topic = match obj.get("topic") {
        None => None,
        Some(t) => Some(t.as_str().ok_or_else(|| at("topic", "must be a string"))?),
    };
    let topics = match obj.get("topics") {
        None => None,
        Some(list) => Some(
            list.as_array()
                .and_then(|l| l.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
                .ok_or_else(|| at("topics", "must be an array of strings"))?,
        ),
    };
    let event = match obj.get("event") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => return Err(at("event", "must be a string")),
    };
    let close = match obj.get("close") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(at("close", "must be true or false")),
    };
    Plain {
        topic,
        topics,
        event,
        data: std::borrow::Cow::Owned(data),
        close,
    }
    .build(index, max_event_bytes)
}

/// The answer to a publish: `{"ids":["<id>",…]}`, written straight into one buffer (an id
/// is digits and a dash: nothing to escape).
pub fn ids_answer(ids: &[EventId]) -> String {
    let mut out = String::with_capacity(10 + ids.len() * 24);
    out.push_str("{\"ids\":[");
    for (i, id) in ids.iter().enumerate() {
        out.push_str(if i == 0 { "\"" } else { ",\"" });
        out.push_str(id.text().as_str());
        out.push('"');
    }
    out.push_str("]}");
    out
}

/// An app's body as event data, by the webhook's rule for `data`: a JSON string as it is,
/// any other JSON value as compact JSON, and other UTF-8 text as it is. `None` for
/// anything else (bytes that are not text).
pub fn body_as_data(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::String(s)) => Some(s),
        Ok(v) => Some(v.to_string()),
        Err(_) => std::str::from_utf8(body).ok().map(str::to_owned),
    }
}

/// Whether `authorization` carries `token` as a bearer token (compared in constant time).
pub fn token_matches(authorization: Option<&[u8]>, token: &str) -> bool {
    let Some(presented) = authorization.and_then(|v| v.strip_prefix(b"Bearer ")) else {
        return false;
    };
    let expected = token.as_bytes();
    if presented.len() != expected.len() {
        return false;
    }
    presented
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn err(body: &str) -> PublishError {
        parse_body(body.as_bytes(), 64).unwrap_err()
    }

    #[test]
    fn single_and_batch_bodies_parse() {
        let evs = parse_body(br#"{"topic":"a","event":"x","data":{"k":[1,2]}}"#, 64).unwrap();
        assert_eq!(evs[0].data, r#"{"k":[1,2]}"#);
        assert_eq!(evs[0].event_type.as_deref(), Some("x"));
        let evs = parse_body(
            br#"[{"topics":["a","b","a"],"data":"x\ny","close":true},{"topic":"c","data":1}]"#,
            64,
        )
        .unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].topics.len(), 2);
        assert!(evs[0].close);
        assert_eq!(evs[1].data, "1");
    }

    #[test]
    fn the_in_place_reading_and_the_value_reading_agree() {
        // Bodies the in-place reading takes, and bodies it leaves to the value reading:
        // every one gives the same events, or the same refusal, either way.
        let bodies = [
            r#"{"topic":"a","data":"x"}"#,
            r#" [ {"topic":"a","data":"x","event":"t","close":true}, {"topics":["b","c","b"],"data":"y"} ] "#,
            r#"{"topic":"a","data":"q \"x\" \u00e9\n","event":null,"close":null}"#,
            r#"{"topic":"a\/b","data":"x"}"#,
            r#"{"topic":"a","data":{"k":[1, 2]}}"#,
            r#"{"topic":"a","data":null}"#,
            r#"{"topic":"a","topic":"b","data":"x"}"#,
            r#"{"topic":null,"topics":["a"],"data":"x"}"#,
            r#"{"topics":null,"topic":"a","data":"x"}"#,
            r#"{"topic":"a","data":"x","event":"ssegate.gap"}"#,
            r#"{"topic":"a b","data":"x"}"#,
            r#"[{"topic":"a","data":"x"},{"topic":"b","data":"y","extra":1}]"#,
            r#"[{"topic":"a","data":"xxxxx"},{"topic":"b","data":5}]"#,
            r#"[]"#,
            r#"{"topic":"a","data":"x"} trailing"#,
        ];
        for body in bodies {
            let fast = parse_body(body.as_bytes(), 4).map_err(|e| e.to_string());
            let slow = parse_value(body.as_bytes(), 4).map_err(|e| e.to_string());
            assert_eq!(fast, slow, "{body}");
        }
        assert!(read_plain(br#"{"topic":"a","data":"q \"x\""}"#, false).is_some());
        assert!(read_plain(br#"{"topic":null,"topics":["a"],"data":"x"}"#, false).is_none());
    }

    #[test]
    fn the_answer_lists_the_ids_as_json() {
        let ids = [
            EventId { ms: 1, seq: 0 },
            EventId {
                ms: 1733581234567,
                seq: 12,
            },
        ];
        let answer: Value = serde_json::from_str(&ids_answer(&ids)).unwrap();
        assert_eq!(
            answer,
            serde_json::json!({"ids": ["1-0", "1733581234567-12"]})
        );
        assert_eq!(ids_answer(&[]), r#"{"ids":[]}"#);
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            (r#"{"data":"x"}"#, "`topic`"),
            (r#"{"topic":"a b","data":"x"}"#, "`topic`"),
            (r#"{"topic":"a/*","data":"x"}"#, "`topic`"),
            (r#"{"topic":"a","topics":["b"],"data":"x"}"#, "`topics`"),
            (r#"{"topics":[],"data":"x"}"#, "`topics`"),
            (r#"{"topic":"a"}"#, "`data`"),
            (r#"{"topic":"a","data":"x","event":"a b"}"#, "`event`"),
            (
                r#"{"topic":"a","data":"x","event":"ssegate.gap"}"#,
                "`event`",
            ),
            (r#"{"topic":"a","data":"x","event":5}"#, "`event`"),
            (r#"{"topic":"a","data":"x","close":"yes"}"#, "`close`"),
            (r#"{"topic":"a","data":"x","evnt":"t"}"#, "`evnt`"),
            (
                r#"[{"topic":"a","data":"x"},{"topic":"b"}]"#,
                "item 1: field `data`",
            ),
        ];
        for (body, needle) in cases {
            match err(body) {
                PublishError::InvalidEvent(m) => assert!(m.contains(needle), "{body}: {m}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(matches!(err("[]"), PublishError::InvalidEvent(_)));
        assert!(matches!(err("5"), PublishError::InvalidEvent(_)));
        assert!(matches!(
            err(&format!(r#"{{"topic":"a","data":"{}"}}"#, "x".repeat(65))),
            PublishError::TooLarge(_)
        ));
        match err("{\n  \"topic\": }") {
            PublishError::InvalidJson(m) => assert!(m.contains("line 2"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_overloaded_hub_is_a_429_to_retry_and_every_code_has_a_metric_label() {
        let backlog = Backlog {
            events: 10,
            bytes: 300,
            max_events: 10,
            max_bytes: 1 << 20,
        };
        let e = PublishError::from(HubError::Overloaded(backlog));
        assert_eq!(
            (e.status(), e.code(), e.retry_after()),
            (StatusCode::TOO_MANY_REQUESTS, "overloaded", Some(1))
        );
        assert!(e.to_string().contains("max_events 10"), "{e}");
        let every = [
            PublishError::InvalidJson(String::new()),
            PublishError::InvalidEvent(String::new()),
            PublishError::Unauthorized,
            PublishError::TooLarge(String::new()),
            PublishError::UnsupportedMediaType,
            PublishError::from(HubError::Unavailable(String::new())),
            e,
        ];
        let codes: Vec<_> = every.iter().map(ApiError::code).collect();
        assert_eq!(codes, PublishError::CODES);
    }

    #[test]
    fn tokens_and_content_types() {
        assert!(token_matches(Some(b"Bearer s3cret"), "s3cret"));
        assert!(!token_matches(Some(b"Bearer s3cres"), "s3cret"));
        assert!(!token_matches(Some(b"s3cret"), "s3cret"));
        assert!(!token_matches(None, "s3cret"));
        assert!(is_json_content_type(Some(
            "application/json; charset=utf-8"
        )));
        assert!(is_json_content_type(Some("Application/JSON")));
        assert!(!is_json_content_type(Some(
            "application/x-www-form-urlencoded"
        )));
        assert!(!is_json_content_type(None));
    }
}

//! The events path: a `GET` becomes a subscription to the hub, answered with an SSE stream.
//!
//! Parsing is kept apart from serving: [`parse_request`] turns the path, query and headers
//! into a [`SubscribeRequest`] or a refusal, without touching the hub.

use crate::hub::{Filter, Resume, Selector, SubscribeRequest};
use crate::response::ApiError;
use crate::sse::{self, EventId};
use hyper::StatusCode;

/// Why a stream request is refused before it reaches the hub.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A topic or pattern that is not valid, or none at all.
    #[error("{0}")]
    InvalidTopic(String),
    /// A `type=` value that is not a valid event type.
    #[error(
        "type {0:?} is not a valid event type (1-64 characters, no whitespace or control characters)"
    )]
    InvalidType(String),
    /// A resume point that cannot be parsed.
    #[error("{0}")]
    InvalidResume(String),
    /// The instance is shutting down.
    #[error("the server is shutting down; reconnect to another instance")]
    ShuttingDown,
    /// Not a GET.
    #[error("event streams are opened with GET")]
    Method,
}

impl ApiError for StreamError {
    fn status(&self) -> StatusCode {
        match self {
            Self::InvalidTopic(_) | Self::InvalidType(_) | Self::InvalidResume(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Method => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::InvalidTopic(_) => "invalid_topic",
            Self::InvalidType(_) => "invalid_type",
            Self::InvalidResume(_) => "invalid_last_event_id",
            Self::ShuttingDown => "shutting_down",
            Self::Method => "method_not_allowed",
        }
    }
    fn retry_after(&self) -> Option<u64> {
        matches!(self, Self::ShuttingDown).then_some(1)
    }
}

/// Turns a stream request into what the hub needs.
///
/// `rest` is the path after the events prefix (`""` or `/{topic}`), still percent-encoded;
/// `last_event_id` is the header's value.
pub fn parse_request(
    rest: &str,
    query: Option<&str>,
    last_event_id: Option<&[u8]>,
    max_topics: usize,
) -> Result<SubscribeRequest, StreamError> {
    let mut raw_topics: Vec<String> = Vec::new();
    if let Some(t) = rest.strip_prefix('/') {
        let decoded = percent_decode(t)
            .ok_or_else(|| StreamError::InvalidTopic(format!("topic {t:?} is not valid UTF-8")))?;
        raw_topics.push(decoded);
    }
    let mut types: Option<Vec<Box<str>>> = None;
    let mut last_id_param = None;
    let mut since = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "topic" => raw_topics.push(v.into_owned()),
            "type" => {
                let list = types.get_or_insert_with(Vec::new);
                for t in v.split(',').filter(|t| !t.is_empty()) {
                    if !sse::is_valid_event_type(t) {
                        return Err(StreamError::InvalidType(t.to_owned()));
                    }
                    list.push(t.into());
                }
            }
            "last_event_id" => last_id_param = Some(v.into_owned()),
            "since" => since = Some(v.into_owned()),
            _ => {}
        }
    }
    if raw_topics.is_empty() {
        return Err(StreamError::InvalidTopic(
            "no topic given: use ?topic=NAME or /events/NAME".to_owned(),
        ));
    }
    if raw_topics.len() > max_topics {
        return Err(StreamError::InvalidTopic(format!(
            "{} topics requested; at most {max_topics} per stream",
            raw_topics.len()
        )));
    }
    let mut selectors: Vec<Selector> = Vec::with_capacity(raw_topics.len());
    for t in &raw_topics {
        let sel = Selector::parse(t)
            .map_err(|e| StreamError::InvalidTopic(format!("topic {t:?} is not valid: {e}")))?;
        if !selectors.contains(&sel) {
            selectors.push(sel);
        }
    }

    let header = last_event_id
        .map(|v| {
            std::str::from_utf8(v).map(str::trim).map_err(|_| {
                StreamError::InvalidResume("Last-Event-ID is not valid UTF-8".to_owned())
            })
        })
        .transpose()?
        .filter(|v| !v.is_empty());
    let (resume, resume_raw) = if let Some(id) = header
        .map(str::to_owned)
        .or(last_id_param.filter(|v| !v.is_empty()))
    {
        let parsed: EventId = id.parse().map_err(|_| {
            StreamError::InvalidResume(format!(
                "last event id {id:?} is not an id of the form <ms>-<seq>"
            ))
        })?;
        (Resume::After(parsed), Some(id))
    } else if let Some(s) = since.filter(|v| !v.is_empty()) {
        let ms = parse_since(&s).ok_or_else(|| {
            StreamError::InvalidResume(format!(
                "since {s:?} is neither Unix milliseconds nor an RFC 3339 time"
            ))
        })?;
        (Resume::Since(ms), Some(s))
    } else {
        (Resume::None, None)
    };

    Ok(SubscribeRequest {
        filter: Filter {
            selectors: selectors.into(),
            types: types.map(Into::into),
        },
        resume,
        resume_raw,
        subject: None,
        expires: None,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `since=`: Unix milliseconds, or an RFC 3339 time (`Z` or a `±hh:mm` offset).
fn parse_since(s: &str) -> Option<u64> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    let (base, offset_secs) = split_offset(s)?;
    let t = humantime::parse_rfc3339_weak(base).ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    let ms = i128::try_from(ms).ok()? - i128::from(offset_secs) * 1000;
    u64::try_from(ms).ok()
}

/// Splits `2026-11-23T10:00:00+02:00` into the local time and the offset in seconds.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    if let Some(base) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return Some((base, 0));
    }
    let tail = s.get(s.len().checked_sub(6)?..)?;
    let sign = match tail.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = tail[1..].split_once(':')?;
    let secs = h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60;
    Some((&s[..s.len() - 6], sign * secs))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn topics_come_from_the_path_and_the_query() {
        let r = parse_request("/job%2F1", Some("topic=tenant/a/*&type=a,b&x=1"), None, 32).unwrap();
        let names: Vec<_> = r.filter.selectors.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["job/1", "tenant/a/*"]);
        assert_eq!(r.filter.types.unwrap().len(), 2);
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert!(matches!(
            parse_request("", None, None, 32),
            Err(StreamError::InvalidTopic(_))
        ));
        assert!(matches!(
            parse_request("", Some("topic=a%20b"), None, 32),
            Err(StreamError::InvalidTopic(_))
        ));
        assert!(matches!(
            parse_request("/%ff", None, None, 32),
            Err(StreamError::InvalidTopic(_))
        ));
        assert!(matches!(
            parse_request("", Some("topic=a&topic=b"), None, 1),
            Err(StreamError::InvalidTopic(_))
        ));
        assert!(matches!(
            parse_request("", Some("topic=a&type=a%0Ab"), None, 32),
            Err(StreamError::InvalidType(_))
        ));
        assert!(matches!(
            parse_request("", Some("topic=a"), Some(b"nope"), 32),
            Err(StreamError::InvalidResume(_))
        ));
        assert!(matches!(
            parse_request("", Some("topic=a&since=yesterday"), None, 32),
            Err(StreamError::InvalidResume(_))
        ));
    }

    #[test]
    fn resume_prefers_the_header_then_the_parameter_then_since() {
        let r = parse_request(
            "",
            Some("topic=a&last_event_id=5-0&since=1"),
            Some(b"7-1"),
            32,
        )
        .unwrap();
        assert_eq!(r.resume, Resume::After(EventId::new(7, 1)));
        let r = parse_request("", Some("topic=a&last_event_id=5-0&since=1"), None, 32).unwrap();
        assert_eq!(r.resume, Resume::After(EventId::new(5, 0)));
        let r = parse_request("", Some("topic=a&since=1732320000000"), None, 32).unwrap();
        assert_eq!(r.resume, Resume::Since(1_732_320_000_000));
        let r = parse_request("", Some("topic=a&since=2024-11-23T00:00:00Z"), None, 32).unwrap();
        assert_eq!(r.resume, Resume::Since(1_732_320_000_000));
        let r = parse_request(
            "",
            Some("topic=a&since=2024-11-23T02:00:00%2B02:00"),
            None,
            32,
        )
        .unwrap();
        assert_eq!(r.resume, Resume::Since(1_732_320_000_000));
    }
}

//! The stream's entry format, and the parsing of Redis replies. No I/O.
//!
//! Every entry has a `kind` field. An event is
//! `kind=event topics="a b" type=<type or ""> data=<data> close=<0|1>` (topics never contain
//! spaces); a control action is `kind=delete_topic|revoke arg=<topic or subject>
//! origin=<instance>`. Events share one field layout, so Redis stores their field names once
//! per stream node. Everything read back is checked here: an entry that does not decode is
//! reported, never unwrapped, and an event type that could break the SSE framing is refused.

use crate::hub::topic::validate_topic;
use crate::hub::{Event, NewEvent, Topics};
use crate::sse::{self, EventId};
use redis::{Pipeline, Value};
use std::sync::Arc;

/// A reply from Redis that is not what the command returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected reply from redis: {0}")]
pub(crate) struct Malformed(pub &'static str);

/// A control action carried through the stream to every instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// `DELETE /topics/{topic}`: end its streams, drop its history.
    DeleteTopic(Box<str>),
    /// `DELETE /subscribers/{sub}`: end the streams authorized for this subject.
    Revoke(Box<str>),
}

/// One decoded stream entry.
#[derive(Debug)]
pub(crate) enum Entry {
    /// An event, its SSE frame encoded.
    Event(Arc<Event>),
    /// A control action, with the instance that wrote it.
    Control {
        /// What to do.
        action: Control,
        /// The writing instance's random id.
        origin: u64,
    },
    /// An entry of a kind this version does not know (a newer writer's): skipped.
    Unknown,
}

/// A raw entry: its id and its field/value list.
pub(crate) type RawEntry = (EventId, Vec<Value>);

/// Adds `XADD key MAXLEN ~ max_events * …` for one event to `pipe`.
pub(crate) fn add_event(pipe: &mut Pipeline, key: &str, max_events: usize, ev: &NewEvent) {
    pipe.cmd("XADD")
        .arg(key)
        .arg("MAXLEN")
        .arg("~")
        .arg(max_events)
        .arg("*")
        .arg("kind")
        .arg("event")
        .arg("topics")
        .arg(ev.topics.join(" "))
        .arg("type")
        .arg(ev.event_type.as_deref().unwrap_or(""))
        .arg("data")
        .arg(&ev.data)
        .arg("close")
        .arg(if ev.close { "1" } else { "0" });
}

/// The `XADD` of a control action.
pub(crate) fn control_cmd(
    key: &str,
    max_events: usize,
    action: &Control,
    origin: u64,
) -> redis::Cmd {
    let (kind, arg) = match action {
        Control::DeleteTopic(t) => ("delete_topic", t),
        Control::Revoke(s) => ("revoke", s),
    };
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key)
        .arg("MAXLEN")
        .arg("~")
        .arg(max_events)
        .arg("*")
        .arg("kind")
        .arg(kind)
        .arg("arg")
        .arg(&**arg)
        .arg("origin")
        .arg(origin);
    cmd
}

fn text(v: Value) -> Result<String, Malformed> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).map_err(|_| Malformed("text is not UTF-8")),
        Value::SimpleString(s) => Ok(s),
        Value::VerbatimString { text, .. } => Ok(text),
        _ => Err(Malformed("expected a string")),
    }
}

fn id(v: Value) -> Result<EventId, Malformed> {
    text(v)?
        .parse()
        .map_err(|_| Malformed("an entry id is not <ms>-<seq>"))
}

fn array(v: Value) -> Result<Vec<Value>, Malformed> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        _ => Err(Malformed("expected an array")),
    }
}

/// The ids in the reply to the publish transaction (`EXEC`: one per `XADD`, in order).
pub(crate) fn parse_ids(v: Value, expected: usize) -> Result<Vec<EventId>, Malformed> {
    let ids = array(v)?
        .into_iter()
        .map(id)
        .collect::<Result<Vec<_>, _>>()?;
    if ids.len() == expected {
        Ok(ids)
    } else {
        Err(Malformed(
            "the transaction returned a different number of ids",
        ))
    }
}

/// The entries of an `XRANGE` / `XREVRANGE` reply.
pub(crate) fn parse_range(v: Value) -> Result<Vec<RawEntry>, Malformed> {
    array(v)?
        .into_iter()
        .map(|e| {
            let mut parts = array(e)?.into_iter();
            let entry_id = id(parts.next().ok_or(Malformed("an entry has no id"))?)?;
            let fields = match parts.next() {
                Some(Value::Nil) | None => Vec::new(),
                Some(f) => array(f)?,
            };
            Ok((entry_id, fields))
        })
        .collect()
}

/// The entries of an `XREAD` reply on one stream (`Nil` when `BLOCK` timed out).
pub(crate) fn parse_read(v: Value) -> Result<Vec<RawEntry>, Malformed> {
    let streams = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(m) => m.into_iter().map(|(_, entries)| entries).collect(),
        v => array(v)?
            .into_iter()
            .map(|s| {
                array(s)?
                    .into_iter()
                    .nth(1)
                    .ok_or(Malformed("a stream in XREAD has no entries"))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let mut out = Vec::new();
    for entries in streams {
        out.extend(parse_range(entries)?);
    }
    Ok(out)
}

/// The milliseconds of a `TIME` reply (seconds and microseconds).
pub(crate) fn parse_time(v: Value) -> Result<u64, Malformed> {
    let mut parts = array(v)?.into_iter();
    let mut num = || -> Result<u64, Malformed> {
        let t = text(parts.next().ok_or(Malformed("TIME has two parts"))?)?;
        t.parse().map_err(|_| Malformed("TIME is not numeric"))
    };
    let (secs, micros) = (num()?, num()?);
    Ok(secs.saturating_mul(1000).saturating_add(micros / 1000))
}

/// What `XINFO STREAM` says about where the stream starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamInfo {
    /// The id of the last entry ever added (kept when entries are trimmed).
    pub last_generated: EventId,
    /// The oldest entry still held, if any.
    pub first: Option<EventId>,
    /// Entries held.
    pub length: u64,
    /// Entries ever added to this stream (Redis 7 and later): equal to `length` when
    /// nothing was ever trimmed.
    pub entries_added: Option<u64>,
}

/// Parses an `XINFO STREAM` reply (a flat key/value array, or a map with RESP3).
pub(crate) fn parse_info(v: Value) -> Result<StreamInfo, Malformed> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Map(m) => m,
        v => {
            let mut flat = array(v)?.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                pairs.push((k, v));
            }
            pairs
        }
    };
    let mut last_generated = None;
    let mut first = None;
    let mut length = 0;
    let mut entries_added = None;
    let count = |v: Value| match v {
        Value::Int(n) => u64::try_from(n).map_err(|_| Malformed("a negative count")),
        _ => Err(Malformed("a count is not an integer")),
    };
    for (k, v) in pairs {
        match text(k).as_deref() {
            Ok("last-generated-id") => last_generated = Some(id(v)?),
            Ok("length") => length = count(v)?,
            Ok("entries-added") => entries_added = Some(count(v)?),
            Ok("first-entry") if v != Value::Nil => {
                let entry = array(v)?;
                let entry_id = entry
                    .into_iter()
                    .next()
                    .ok_or(Malformed("first-entry has no id"))?;
                first = Some(id(entry_id)?);
            }
            _ => {}
        }
    }
    Ok(StreamInfo {
        last_generated: last_generated
            .ok_or(Malformed("XINFO STREAM without last-generated-id"))?,
        first,
        length,
        entries_added,
    })
}

/// Decodes one entry's fields. The event's frame is encoded here, once per instance.
pub(crate) fn decode(entry_id: EventId, fields: Vec<Value>) -> Result<Entry, Malformed> {
    let mut kind = None;
    let mut topics = None;
    let mut event_type = None;
    let mut data = None;
    let mut close = false;
    let mut arg = None;
    let mut origin = 0;
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let v = text(v)?;
        match text(k)?.as_str() {
            "kind" => kind = Some(v),
            "topics" => topics = Some(v),
            "type" => event_type = Some(v),
            "data" => data = Some(v),
            "close" => close = v == "1",
            "arg" => arg = Some(v),
            "origin" => origin = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    let kind = kind.ok_or(Malformed("an entry has no kind"))?;
    let control = |make: fn(Box<str>) -> Control| {
        let arg = arg.ok_or(Malformed("a control entry has no arg"))?;
        Ok(Entry::Control {
            action: make(arg.into()),
            origin,
        })
    };
    match kind.as_str() {
        "event" => {}
        "delete_topic" => return control(Control::DeleteTopic),
        "revoke" => return control(Control::Revoke),
        _ => return Ok(Entry::Unknown),
    }
    let topics: Topics = topics
        .ok_or(Malformed("an event has no topics"))?
        .split(' ')
        .map(Arc::from)
        .collect();
    if topics.is_empty() || topics.iter().any(|t| validate_topic(t).is_err()) {
        return Err(Malformed("an event has an invalid topic"));
    }
    let event_type = match event_type {
        None => None,
        Some(t) if t.is_empty() => None,
        Some(t) => {
            if !sse::is_valid_event_type(&t) || t.starts_with(sse::RESERVED_TYPE_PREFIX) {
                return Err(Malformed("an event has an invalid type"));
            }
            Some(t.into_boxed_str())
        }
    };
    let data = data.ok_or(Malformed("an event has no data"))?;
    Ok(Entry::Event(Arc::new(Event::encode(
        entry_id, topics, event_type, close, data,
    ))))
}

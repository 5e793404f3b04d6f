//! The SSE wire format, and nothing else: event ids, frames, the heartbeat, and a
//! spec-following parser for the client side (tests, the load generator, fuzzing).
//!
//! No I/O and no HTTP types live here. Frames are built once into [`Bytes`] and shared by
//! every subscriber. Whatever a publisher sends as data can never break the framing: each
//! CR, LF or CRLF in the data starts a new `data:` line, so no `id:`, `event:` or `retry:`
//! line and no premature blank line can be injected.
//!
//! ```
//! use ssegate::sse::{encode_event, EventId, Parser};
//! let frame = encode_event(EventId::new(1, 0), Some("note"), "a\nb");
//! assert_eq!(&frame[..], b"id: 1-0\nevent: note\ndata: a\ndata: b\n\n");
//! let events = Parser::default().feed(&frame);
//! assert_eq!(events[0].data, "a\nb");
//! ```

mod parser;

pub use parser::{ParsedEvent, Parser};

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;
use std::str::FromStr;

/// The heartbeat: one SSE comment line, sent after `events.heartbeat` of silence.
pub const HEARTBEAT: &[u8] = b": hb\n";

/// Longest accepted event type, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 64;

/// Event types starting with this prefix are ssegate's own and cannot be published.
pub const RESERVED_TYPE_PREFIX: &str = "ssegate.";

/// An event id, `<ms>-<seq>`: milliseconds since the Unix epoch and a counter within that
/// millisecond. Ordered numerically (the derived order compares `ms`, then `seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    /// Milliseconds since the Unix epoch.
    pub ms: u64,
    /// Counter within the millisecond.
    pub seq: u64,
}

impl EventId {
    /// The id `<ms>-<seq>`.
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// The smallest id greater than `self`.
    pub const fn next(self) -> Self {
        match self.seq.checked_add(1) {
            Some(seq) => Self { ms: self.ms, seq },
            None => Self {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }

    /// The id as text, `<ms>-<seq>`, on the stack: the one place the form is written
    /// (a stream's `id:` line, the publish answer, logs).
    pub fn text(self) -> IdText {
        // itoa (already built for serde_json) writes two digits a step.
        let (mut ms, mut seq) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (ms, seq) = (
            ms.format(self.ms).as_bytes(),
            seq.format(self.seq).as_bytes(),
        );
        let mut text = IdText {
            bytes: [0; ID_MAX],
            len: ms.len() + 1 + seq.len(),
        };
        text.bytes[..ms.len()].copy_from_slice(ms);
        text.bytes[ms.len()] = b'-';
        text.bytes[ms.len() + 1..text.len].copy_from_slice(seq);
        text
    }
}

/// An event id as text ([`EventId::text`]).
pub struct IdText {
    bytes: [u8; ID_MAX],
    len: usize,
}

impl IdText {
    /// The text's bytes: ASCII digits and one dash.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// Why a string is not an event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an event id of the form <ms>-<seq>")]
pub struct BadEventId;

impl FromStr for EventId {
    type Err = BadEventId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').ok_or(BadEventId)?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(BadEventId);
        }
        Ok(Self {
            ms: ms.parse().map_err(|_| BadEventId)?,
            seq: seq.parse().map_err(|_| BadEventId)?,
        })
    }
}

/// Whether `t` may be used as an SSE event type: 1–64 bytes, no whitespace, no control
/// characters (so it cannot end its own line). The reserved prefix is checked by callers.
pub fn is_valid_event_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_EVENT_TYPE_LEN
        && !t.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Encodes one event: `id:`, then `event:` if any, then one `data:` line per line of
/// `data` (CR, LF and CRLF each end a line), then the blank line that dispatches it.
///
/// `event_type` must satisfy [`is_valid_event_type`]; the caller validates it.
pub fn encode_event(id: EventId, event_type: Option<&str>, data: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(encoded_len_hint(event_type, data));
    encode_event_into(&mut buf, id, event_type, data);
    buf.freeze()
}

/// [`encode_event`], appended to `buf` (sized by the caller, e.g. with
/// [`encoded_len_hint`]).
pub fn encode_event_into(buf: &mut BytesMut, id: EventId, event_type: Option<&str>, data: &str) {
    put_fields(buf, id, event_type);
    put_data(buf, data);
    buf.put_u8(b'\n');
}

/// The `id:` line and the `event:` line, if any.
fn put_fields(buf: &mut impl BufMut, id: EventId, event_type: Option<&str>) {
    buf.put_slice(b"id: ");
    write_id(buf, id);
    buf.put_u8(b'\n');
    if let Some(t) = event_type {
        buf.put_slice(b"event: ");
        buf.put_slice(t.as_bytes());
        buf.put_u8(b'\n');
    }
}

/// How long [`OneLine::head`] is for the event `id` of type `event_type`.
pub(crate) fn one_line_head_len(id: EventId, event_type: Option<&str>) -> usize {
    b"id: ".len()
        + id.text().as_bytes().len()
        + 1
        + event_type.map_or(0, |t| b"event: ".len() + t.len() + 1)
        + DATA.len()
}

/// The longest id: `<ms>-<seq>`, each up to 20 digits.
const ID_MAX: usize = 20 + 1 + 20;

/// What follows the data of a [`OneLine`] event: the end of its `data:` line and the blank
/// line that dispatches it.
pub(crate) const ONE_LINE_TAIL: &[u8] = b"\n\n";

/// The frame of an event whose data is one line (no CR or LF), as the pieces around the
/// data: [`encode_event`] is `head`, the data, then [`ONE_LINE_TAIL`]. Lets a caller frame
/// data in a buffer it already has.
pub(crate) struct OneLine {
    head: [u8; ONE_LINE_HEAD_MAX],
    len: usize,
}

/// The longest head of a [`OneLine`] event, whatever its type.
const ONE_LINE_HEAD_MAX: usize =
    b"id: ".len() + ID_MAX + 1 + b"event: ".len() + MAX_EVENT_TYPE_LEN + 1 + DATA.len();

impl OneLine {
    /// The head of the event `id` of type `event_type` (valid, see [`encode_event`]) with
    /// `data`; `None` when the data has a line break (or the type is too long).
    pub(crate) fn new(id: EventId, event_type: Option<&str>, data: &str) -> Option<Self> {
        if memchr::memchr2(b'\r', b'\n', data.as_bytes()).is_some()
            || event_type.is_some_and(|t| t.len() > MAX_EVENT_TYPE_LEN)
        {
            return None;
        }
        let mut head = [0u8; ONE_LINE_HEAD_MAX];
        let mut rest = &mut head[..];
        put_fields(&mut rest, id, event_type);
        rest.put_slice(DATA);
        let len = ONE_LINE_HEAD_MAX - rest.len();
        Some(Self { head, len })
    }

    /// The fields and `data: `, up to the data.
    pub(crate) fn head(&self) -> &[u8] {
        &self.head[..self.len]
    }
}

/// Encodes one of ssegate's own events (no id, so the client's last event id is kept).
pub fn encode_control(event_type: &str, data: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(encoded_len_hint(Some(event_type), data));
    buf.put_slice(b"event: ");
    buf.put_slice(event_type.as_bytes());
    buf.put_u8(b'\n');
    put_data(&mut buf, data);
    buf.put_u8(b'\n');
    buf.freeze()
}

/// A block with only an `id:`: it sets the client's last event id without dispatching an
/// event (WHATWG: the id is committed at the blank line, and empty data dispatches nothing).
pub fn encode_id(id: EventId) -> Bytes {
    let mut buf = BytesMut::with_capacity(48);
    buf.put_slice(b"id: ");
    write_id(&mut buf, id);
    buf.put_slice(b"\n\n");
    buf.freeze()
}

/// The `retry:` field telling the client how long to wait before reconnecting.
pub fn encode_retry(retry_ms: u64) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n\n"))
}

/// About how many bytes an event with this type and data encodes to (a little more, so
/// that the buffer never grows).
pub fn encoded_len_hint(event_type: Option<&str>, data: &str) -> usize {
    // id line + event line + data lines; a small overestimate avoids regrowth.
    32 + event_type.map_or(0, |t| t.len() + 8) + data.len() + 8
}

fn write_id(buf: &mut impl BufMut, id: EventId) {
    buf.put_slice(id.text().as_bytes());
}

fn put_data(buf: &mut BytesMut, data: &str) {
    let mut rest = data.as_bytes();
    while let Some(i) = memchr::memchr2(b'\r', b'\n', rest) {
        put_data_line(buf, &rest[..i]);
        let crlf = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
        rest = &rest[i + 1 + usize::from(crlf)..];
    }
    put_data_line(buf, rest);
}

/// What starts each data line.
const DATA: &[u8] = b"data: ";

fn put_data_line(buf: &mut BytesMut, line: &[u8]) {
    buf.put_slice(DATA);
    buf.put_slice(line);
    buf.put_u8(b'\n');
}

#[cfg(test)]
mod tests;

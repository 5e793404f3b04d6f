//! The on-disk format: numbered segment files of checksummed records.
//!
//! A segment is `<number>.seg` (20 digits, so names sort like numbers): an 8-byte magic,
//! then records, each `len: u32 LE`, `crc32(payload): u32 LE`, `payload`. The payload is
//! the event: `id.ms u64`, `id.seq u64`, `flags u8` (1 = close, 2 = has a type),
//! `topic count u16`, each topic and the type as `u16 length + UTF-8`, then the SSE frame
//! as sent (the rest of the payload), so loading never re-encodes. A deleted topic is a
//! record with flag 4, id 0-0 and the topic, and no frame: it hides the topic's earlier
//! events when the history is read back.
//!
//! A record that is cut short or fails its checksum ends the reading of its segment: the
//! rest of that file is dropped with a warning. Only a write the broker never answered
//! can leave one (a crash mid-write, or a failed write whose truncation failed too).

use super::super::{Event, Topics};
use crate::sse::EventId;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The first bytes of every segment file.
pub(super) const MAGIC: &[u8; 8] = b"SSEGLOG1";
const HEADER: usize = 8;
const CLOSE: u8 = 1;
const TYPED: u8 = 2;
const DELETE: u8 = 4;

/// One record read back.
pub(super) enum Record {
    /// A published event.
    Event(Arc<Event>),
    /// `DELETE /topics/{topic}`: the topic's events before it are gone.
    Delete(Box<str>),
}

/// The path of segment `number` in `dir`.
pub(super) fn path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.seg"))
}

/// The segment numbers found in `dir`, ascending. Other files are left alone.
pub(super) fn list(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok());
        numbers.extend(number);
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Appends one event's record to `buf`.
pub(super) fn encode(event: &Event, buf: &mut Vec<u8>) {
    let flags =
        if event.close { CLOSE } else { 0 } | if event.event_type.is_some() { TYPED } else { 0 };
    let texts = event
        .topics
        .iter()
        .map(|t| &**t)
        .chain(event.event_type.as_deref());
    record(
        buf,
        event.id,
        flags,
        event.topics.len(),
        texts,
        event.frame(),
    );
}

/// Appends the record of a deleted topic to `buf`.
pub(super) fn encode_delete(topic: &str, buf: &mut Vec<u8>) {
    record(
        buf,
        EventId::default(),
        DELETE,
        1,
        std::iter::once(topic),
        &[],
    );
}

fn record<'t>(
    buf: &mut Vec<u8>,
    id: EventId,
    flags: u8,
    topics: usize,
    texts: impl Iterator<Item = &'t str>,
    frame: &[u8],
) {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    buf.extend_from_slice(&id.ms.to_le_bytes());
    buf.extend_from_slice(&id.seq.to_le_bytes());
    buf.push(flags);
    // Topics and types are short (validated at publish); the counts fit with room to spare.
    buf.extend_from_slice(&(topics as u16).to_le_bytes());
    for text in texts {
        buf.extend_from_slice(&(text.len() as u16).to_le_bytes());
        buf.extend_from_slice(text.as_bytes());
    }
    buf.extend_from_slice(frame);
    let payload = &buf[start + HEADER..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// What reading one segment found.
pub(super) struct Scan {
    /// Its valid records, in file order.
    pub records: Vec<Record>,
    /// Where and why reading stopped early, if it did.
    pub torn: Option<(usize, &'static str)>,
}

/// Reads every valid record of a segment's bytes, stopping at the first bad one.
pub(super) fn scan(bytes: &[u8]) -> Scan {
    let mut records = Vec::new();
    if bytes.len() < HEADER || &bytes[..HEADER] != MAGIC {
        return Scan {
            records,
            torn: Some((0, "not a segment file (bad magic)")),
        };
    }
    let mut at = HEADER;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + HEADER) else {
            return torn(records, at, "record header cut short");
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            return torn(records, at, "record cut short");
        };
        if crc32fast::hash(payload) != crc {
            return torn(records, at, "bad checksum");
        }
        let Some(record) = decode(payload) else {
            return torn(records, at, "record does not decode");
        };
        records.push(record);
        at += HEADER + len;
    }
    Scan {
        records,
        torn: None,
    }
}

fn torn(records: Vec<Record>, at: usize, why: &'static str) -> Scan {
    Scan {
        records,
        torn: Some((at, why)),
    }
}

/// A payload back into a record (`None` if it does not hold together).
fn decode(p: &[u8]) -> Option<Record> {
    let mut r = Reader(p);
    let id = EventId::new(r.u64()?, r.u64()?);
    let flags = r.take(1)?[0];
    let topics = (0..r.u16()?)
        .map(|_| r.text())
        .collect::<Option<Topics>>()?;
    if flags & DELETE != 0 {
        return topics.first().map(|t| Record::Delete(Box::from(&**t)));
    }
    let event_type = if flags & TYPED != 0 {
        Some(r.text()?)
    } else {
        None
    };
    Some(Record::Event(Arc::new(Event::with_frame(
        id,
        topics,
        event_type,
        flags & CLOSE != 0,
        r.0,
    ))))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let b: [u8; 8] = self.take(8)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    }

    fn text<T: for<'t> From<&'t str>>(&mut self) -> Option<T> {
        let n = usize::from(self.u16()?);
        std::str::from_utf8(self.take(n)?).ok().map(T::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::NewEvent;
    use crate::hub::log::encode as new_event;

    fn event(ms: u64, close: bool, ty: Option<&str>) -> Arc<Event> {
        let mut e = NewEvent::new("a/b", "line 1\nline 2");
        e.topics.push("c".into());
        e.close = close;
        e.event_type = ty.map(Box::from);
        new_event(EventId::new(ms, 3), e)
    }

    fn segment(events: &[Arc<Event>]) -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        for e in events {
            encode(e, &mut buf);
        }
        buf
    }

    fn split(records: Vec<Record>) -> (Vec<Arc<Event>>, Vec<Box<str>>) {
        let (mut events, mut deleted) = (Vec::new(), Vec::new());
        for r in records {
            match r {
                Record::Event(e) => events.push(e),
                Record::Delete(t) => deleted.push(t),
            }
        }
        (events, deleted)
    }

    #[test]
    fn records_read_back_as_written() {
        let written = [event(1, false, None), event(2, true, Some("done"))];
        let mut bytes = segment(&written);
        encode_delete("a/b", &mut bytes);
        let scan = scan(&bytes);
        assert!(scan.torn.is_none());
        let (events, deleted) = split(scan.records);
        assert_eq!((events.len(), deleted), (2, vec![Box::from("a/b")]));
        for (a, b) in written.iter().zip(&events) {
            assert_eq!(
                (a.id, &a.topics, &a.event_type, a.close),
                (b.id, &b.topics, &b.event_type, b.close)
            );
            assert_eq!(a.frame(), b.frame());
        }
    }

    #[test]
    fn a_torn_or_corrupt_record_ends_the_segment_and_keeps_what_came_before() {
        let bytes = segment(&[event(1, false, None), event(2, false, None)]);
        for cut in 1..30 {
            let scan = scan(&bytes[..bytes.len() - cut]);
            assert_eq!(scan.records.len(), 1, "cut {cut}");
            assert!(scan.torn.is_some());
        }
        let mut flipped = bytes;
        let last = flipped.len() - 2;
        flipped[last] ^= 0x20;
        let scan = scan(&flipped);
        assert_eq!(
            (scan.records.len(), scan.torn.map(|t| t.1)),
            (1, Some("bad checksum"))
        );
        assert_eq!(super::scan(b"garbage!!").torn.map(|t| t.0), Some(0));
    }
}

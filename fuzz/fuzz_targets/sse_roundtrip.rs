//! The SSE encoder against the spec-following parser: whatever data and (valid) type are
//! encoded, the parser sees exactly that one event: the same id and type, the data equal
//! modulo CR / CRLF → LF, no `retry:`, no comment, and nothing left over to corrupt the next
//! frame. No frame injection, however the bytes are split into reads.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use ssegate::sse::{self, EventId, ParsedEvent, Parser};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    ms: u64,
    seq: u64,
    event_type: Option<&'a str>,
    data: &'a str,
    /// ssegate's own events (`encode_control`) carry no id.
    control: bool,
    /// Where the frame is split between two reads.
    split: u16,
}

fuzz_target!(|input: Input<'_>| {
    let id = EventId::new(input.ms, input.seq);
    // The callers validate the type first (publish refuses others).
    let event_type = input.event_type.filter(|t| sse::is_valid_event_type(t));
    let frame = match (input.control, event_type) {
        (true, Some(t)) => sse::encode_control(t, input.data),
        (true, None) => return,
        (false, t) => sse::encode_event(id, t, input.data),
    };
    let sentinel = sse::encode_event(EventId::new(1, 2), Some("sentinel"), "end");

    let mut parser = Parser::default();
    let at = usize::from(input.split) % (frame.len() + 1);
    let mut events = parser.feed(&frame[..at]);
    events.extend(parser.feed(&frame[at..]));
    events.extend(parser.feed(&sentinel));

    let expected = ParsedEvent {
        id: (!input.control).then(|| id.to_string()),
        event: event_type.map(str::to_owned),
        data: input.data.replace("\r\n", "\n").replace('\r', "\n"),
        retry: None,
        comments: Vec::new(),
    };
    let end = ParsedEvent {
        id: Some("1-2".to_owned()),
        event: Some("sentinel".to_owned()),
        data: "end".to_owned(),
        retry: None,
        comments: Vec::new(),
    };
    assert_eq!(events, [expected, end]);
    // The parsed id is the one that was encoded, read back as an event id.
    if !input.control {
        assert_eq!(
            events[0].id.as_deref().map(str::parse::<EventId>),
            Some(Ok(id))
        );
    }
});

//! `publish::parse_body` with arbitrary bytes: it never panics, and whatever it accepts is
//! valid by the publish rules and survives a round trip (the accepted events, written back
//! as JSON, parse to the same events).
//!
//! The first input byte picks `max_event_bytes` so the size limit is exercised too; the
//! rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssegate::hub::{NewEvent, validate_topic};
use ssegate::publish::{MAX_TOPICS_PER_EVENT, parse_body};
use ssegate::sse;

const LIMITS: [usize; 4] = [0, 8, 256, 64 * 1024];

fuzz_target!(|input: &[u8]| {
    let Some((&pick, body)) = input.split_first() else {
        return;
    };
    let max = LIMITS[usize::from(pick & 3)];
    let Ok(events) = parse_body(body, max) else {
        return;
    };
    assert!(!events.is_empty(), "an accepted body publishes something");
    for ev in &events {
        check(ev, max);
    }
    // Written back as the most explicit form, the same events come out again.
    let json: Vec<serde_json::Value> = events.iter().map(to_json).collect();
    let text = serde_json::to_vec(&json).expect("a Value always serialises");
    let again = parse_body(&text, max).expect("an accepted event re-validates");
    assert_eq!(again, events);
});

fn check(ev: &NewEvent, max: usize) {
    assert!(!ev.topics.is_empty() && ev.topics.len() <= MAX_TOPICS_PER_EVENT);
    for (i, t) in ev.topics.iter().enumerate() {
        assert!(validate_topic(t).is_ok(), "accepted topic {t:?}");
        assert!(!ev.topics[..i].contains(t), "duplicate topic {t:?}");
    }
    if let Some(t) = &ev.event_type {
        assert!(sse::is_valid_event_type(t), "accepted type {t:?}");
        assert!(
            !t.starts_with(sse::RESERVED_TYPE_PREFIX),
            "reserved type {t:?}"
        );
    }
    assert!(ev.data.len() <= max, "data over max_event_bytes");
}

fn to_json(ev: &NewEvent) -> serde_json::Value {
    let topics: Vec<&str> = ev.topics.iter().map(|t| &**t).collect();
    let mut obj = serde_json::json!({ "topics": topics, "data": ev.data, "close": ev.close });
    if let Some(t) = &ev.event_type {
        obj["event"] = serde_json::Value::from(&**t);
    }
    obj
}

#![allow(clippy::unwrap_used)]
//! The entry format and reply parsing, on hand-built replies (the integration tests in
//! `tests/it/redis.rs` run against a real redis-server).

use super::entry::*;
use crate::sse::EventId;
use redis::Value;

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn fields(kv: &[(&str, &str)]) -> Vec<Value> {
    kv.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]).collect()
}

#[test]
fn an_event_entry_decodes_and_is_encoded_once() {
    let id = EventId::new(5, 1);
    let f = fields(&[
        ("kind", "event"),
        ("topics", "a/b c"),
        ("type", "t"),
        ("data", "x\ny"),
        ("close", "1"),
    ]);
    let Entry::Event(ev) = decode(id, f).unwrap() else {
        panic!("not an event")
    };
    assert_eq!(
        &*ev.topics,
        &["a/b".into(), "c".into()] as &[std::sync::Arc<str>]
    );
    assert_eq!(ev.event_type.as_deref(), Some("t"));
    assert!(ev.close);
    assert_eq!(ev.frame(), b"id: 5-1\nevent: t\ndata: x\ndata: y\n\n");
    let untyped = fields(&[
        ("kind", "event"),
        ("topics", "a"),
        ("type", ""),
        ("data", ""),
    ]);
    let Entry::Event(ev) = decode(id, untyped).unwrap() else {
        panic!("not an event")
    };
    assert_eq!(ev.event_type, None);
    assert!(!ev.close);
}

#[test]
fn foreign_or_broken_entries_are_refused_not_unwrapped() {
    let id = EventId::new(1, 0);
    for bad in [
        fields(&[("topics", "a"), ("data", "x")]),
        fields(&[("kind", "event"), ("data", "x")]),
        fields(&[("kind", "event"), ("topics", "a b/*"), ("data", "x")]),
        fields(&[
            ("kind", "event"),
            ("topics", "a"),
            ("type", "x\nid: 9"),
            ("data", ""),
        ]),
        fields(&[
            ("kind", "event"),
            ("topics", "a"),
            ("type", "ssegate.gap"),
            ("data", ""),
        ]),
        fields(&[("kind", "event"), ("topics", "a")]),
        fields(&[("kind", "delete_topic")]),
        vec![bulk("kind"), Value::Int(3)],
    ] {
        assert!(decode(id, bad.clone()).is_err(), "{bad:?}");
    }
    let bad_utf8 = vec![bulk("kind"), Value::BulkString(vec![0xff])];
    assert!(decode(id, bad_utf8).is_err());
    let newer = fields(&[("kind", "something_new")]);
    assert!(matches!(decode(id, newer), Ok(Entry::Unknown)));
}

#[test]
fn control_entries_round_trip() {
    let cmd = control_cmd("s", 10, &Control::Revoke("u1".into()), 42);
    let args: Vec<Vec<u8>> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(b) => Some(b.to_vec()),
            _ => None,
        })
        .collect();
    let f: Vec<Value> = args[6..]
        .iter()
        .map(|b| Value::BulkString(b.clone()))
        .collect();
    let Entry::Control { action, origin } = decode(EventId::new(1, 0), f).unwrap() else {
        panic!("not a control entry")
    };
    assert_eq!(action, Control::Revoke("u1".into()));
    assert_eq!(origin, 42);
}

#[test]
fn replies_parse_in_resp2_and_resp3_shapes() {
    let entry = |id: &str, data: &str| {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields(&[
                ("kind", "event"),
                ("topics", "t"),
                ("data", data),
            ])),
        ])
    };
    let range = Value::Array(vec![entry("1-0", "a"), entry("2-5", "b")]);
    let got = parse_range(range.clone()).unwrap();
    assert_eq!(
        got.iter().map(|e| e.0).collect::<Vec<_>>(),
        [EventId::new(1, 0), EventId::new(2, 5)]
    );
    let read2 = Value::Array(vec![Value::Array(vec![bulk("s"), range.clone()])]);
    assert_eq!(parse_read(read2).unwrap().len(), 2);
    let read3 = Value::Map(vec![(bulk("s"), range)]);
    assert_eq!(parse_read(read3).unwrap().len(), 2);
    assert!(parse_read(Value::Nil).unwrap().is_empty());
    assert!(parse_read(Value::Int(1)).is_err());
    assert!(parse_range(Value::Array(vec![Value::Array(vec![bulk("x")])])).is_err());

    let time = Value::Array(vec![bulk("1700000000"), bulk("123456")]);
    assert_eq!(parse_time(time).unwrap(), 1_700_000_000_123);
    assert!(parse_time(Value::Array(vec![bulk("1")])).is_err());

    let ids = Value::Array(vec![bulk("1-0"), bulk("1-1")]);
    assert_eq!(parse_ids(ids.clone(), 2).unwrap().len(), 2);
    assert!(parse_ids(ids, 3).is_err());

    let info = Value::Array(vec![
        bulk("length"),
        Value::Int(1),
        bulk("last-generated-id"),
        bulk("9-0"),
        bulk("first-entry"),
        entry("3-0", "x"),
    ]);
    assert_eq!(
        parse_info(info).unwrap(),
        StreamInfo {
            last_generated: EventId::new(9, 0),
            first: Some(EventId::new(3, 0)),
            length: 1,
            entries_added: None,
        }
    );
    let empty = Value::Map(vec![
        (bulk("length"), Value::Int(0)),
        (bulk("last-generated-id"), bulk("9-0")),
        (bulk("entries-added"), Value::Int(4)),
        (bulk("first-entry"), Value::Nil),
    ]);
    let info = parse_info(empty).unwrap();
    assert_eq!(
        (info.first, info.length, info.entries_added),
        (None, 0, Some(4))
    );
    assert!(parse_info(Value::Array(vec![])).is_err());
}

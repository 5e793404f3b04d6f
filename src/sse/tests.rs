#![allow(clippy::unwrap_used)]
use super::*;
use proptest::prelude::*;

#[test]
fn encodes_id_type_and_data_lines() {
    let f = encode_event(EventId::new(1732320000000, 7), Some("q:created"), "x");
    assert_eq!(
        &f[..],
        b"id: 1732320000000-7\nevent: q:created\ndata: x\n\n"
    );
    let f = encode_event(EventId::new(0, 0), None, "");
    assert_eq!(&f[..], b"id: 0-0\ndata: \n\n");
}

#[test]
fn every_line_ending_starts_a_new_data_line() {
    let f = encode_event(EventId::new(1, 2), None, "a\nb\r\nc\rd\n");
    assert_eq!(
        &f[..],
        b"id: 1-2\ndata: a\ndata: b\ndata: c\ndata: d\ndata: \n\n"
    );
}

#[test]
fn injection_attempts_stay_inside_data() {
    let data = "x\n\nid: 9-9\nevent: ssegate.shutdown\nretry: 1\r\rdata: y";
    let f = encode_event(EventId::new(5, 0), None, data);
    let evs = Parser::default().feed(&f);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].id.as_deref(), Some("5-0"));
    assert_eq!(evs[0].event, None);
    assert_eq!(evs[0].retry, None);
    assert_eq!(
        evs[0].data,
        "x\n\nid: 9-9\nevent: ssegate.shutdown\nretry: 1\n\ndata: y"
    );
}

#[test]
fn event_ids_parse_and_order_numerically() {
    let a: EventId = "9-10".parse().unwrap();
    let b: EventId = "10-2".parse().unwrap();
    assert!(a < b);
    assert!("9-9".parse::<EventId>().unwrap() < a);
    for bad in [
        "",
        "1",
        "-1",
        "1-",
        "a-1",
        "1-1-1",
        "1 -1",
        "+1-1",
        "99999999999999999999999-0",
    ] {
        assert!(bad.parse::<EventId>().is_err(), "{bad}");
    }
    assert_eq!(EventId::new(3, u64::MAX).next(), EventId::new(4, 0));
}

#[test]
fn event_types_with_whitespace_or_controls_are_invalid() {
    assert!(is_valid_event_type("question:created"));
    for bad in [
        "",
        "a b",
        "a\nb",
        "a\rb",
        "a\tb",
        "a\u{0}b",
        "a\u{85}b",
        &"x".repeat(65),
    ] {
        assert!(!is_valid_event_type(bad), "{bad:?}");
    }
}

#[test]
fn parser_handles_split_crlf_and_comments() {
    let mut p = Parser::default();
    assert!(p.feed(b"retry: 2000\r").is_empty());
    let evs = p.feed(b"\n\r\n: hb\n");
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].retry, Some(2000));
    assert_eq!(p.take_comments(), vec![" hb".to_owned()]);
}

proptest! {
    #[test]
    fn data_round_trips_through_a_spec_parser(data in any::<String>(), ty in "[a-z:._-]{1,16}") {
        let frame = encode_event(EventId::new(42, 1), Some(&ty), &data);
        let mut p = Parser::default();
        let evs = p.feed(&frame);
        prop_assert_eq!(evs.len(), 1);
        // A spec parser turns CR and CRLF into LF when joining data lines.
        let expected = data.replace("\r\n", "\n").replace('\r', "\n");
        prop_assert_eq!(&evs[0].data, &expected);
        prop_assert_eq!(evs[0].id.as_deref(), Some("42-1"));
        prop_assert_eq!(evs[0].event.as_deref(), Some(ty.as_str()));
    }

    #[test]
    fn data_round_trips_when_fed_byte_by_byte(data in "[a-z\r\n ]{0,40}") {
        let frame = encode_event(EventId::new(1, 1), None, &data);
        let mut p = Parser::default();
        let mut evs = Vec::new();
        for b in frame.iter() {
            evs.extend(p.feed(&[*b]));
        }
        prop_assert_eq!(evs.len(), 1);
        let expected = data.replace("\r\n", "\n").replace('\r', "\n");
        prop_assert_eq!(&evs[0].data, &expected);
    }
}

#[test]
fn ids_are_written_in_decimal() {
    for n in [
        0,
        7,
        10,
        99,
        100,
        101,
        1_732_320_000_000,
        9_999_999_999_999,
        u64::MAX,
    ] {
        let id = EventId::new(n, n / 7);
        assert_eq!(
            &encode_id(id)[..],
            format!("id: {n}-{}\n\n", n / 7).as_bytes(),
            "{n}"
        );
    }
}

proptest! {
    #[test]
    fn an_id_reads_back_from_its_text(ms in any::<u64>(), seq in any::<u64>()) {
        let id = EventId::new(ms, seq);
        let text = id.to_string();
        prop_assert_eq!(&text, &format!("{ms}-{seq}"));
        prop_assert_eq!(text.parse::<EventId>(), Ok(id));
    }

    #[test]
    fn a_one_line_frame_is_head_data_tail(
        data in "[^\r\n]{0,40}",
        ty in proptest::option::of("[a-z:._-]{1,64}"),
        ms in any::<u64>(),
        seq in any::<u64>(),
    ) {
        let id = EventId::new(ms, seq);
        let one = OneLine::new(id, ty.as_deref(), &data).unwrap();
        let mut pieces = one.head().to_vec();
        pieces.extend_from_slice(data.as_bytes());
        pieces.extend_from_slice(ONE_LINE_TAIL);
        prop_assert_eq!(&pieces[..], &encode_event(id, ty.as_deref(), &data)[..]);
        prop_assert_eq!(one.head().len(), one_line_head_len(id, ty.as_deref()));
    }
}

#[test]
fn only_one_line_of_data_has_a_one_line_frame() {
    for data in ["a\nb", "a\r", "\r\n"] {
        assert!(
            OneLine::new(EventId::new(1, 1), None, data).is_none(),
            "{data:?}"
        );
    }
    let longest = EventId::new(u64::MAX, u64::MAX);
    let ty = "t".repeat(MAX_EVENT_TYPE_LEN);
    let one = OneLine::new(longest, Some(&ty), "x").unwrap();
    assert_eq!(one.head().len(), one_line_head_len(longest, Some(&ty)));
}

//! `proxy::parse_request` with an arbitrary path, query and `Last-Event-ID`: it never
//! panics, and every topic it accepts obeys the topic and pattern rules: an exact
//! topic passes `validate_topic`, a pattern is `*` or a valid topic followed by `/*`, and
//! each re-parses to itself; types are valid event types; a resume id is a valid id; a
//! refusal is a 400.
//!
//! Input: one byte for `max_topics_per_subscription`, then the request target after the
//! events prefix (`/job%2F1?topic=a&type=x`), then optionally `\n` and the `Last-Event-ID`
//! header's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssegate::hub::{Resume, Selector, validate_topic};
use ssegate::proxy::parse_request;
use ssegate::response::ApiError;
use ssegate::sse;

fuzz_target!(|input: &[u8]| {
    let Some((&max_topics, rest)) = input.split_first() else {
        return;
    };
    let (target, last_event_id) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let target = String::from_utf8_lossy(target);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*target, None),
    };
    // The handler only ever passes "" or a rest starting with '/'.
    let path = if path.is_empty() || path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let max_topics = usize::from(max_topics);
    let req = match parse_request(&path, query, last_event_id, max_topics) {
        Ok(req) => req,
        // A request the parser refuses is the client's fault, never a 5xx.
        Err(e) => {
            assert_eq!(e.status(), 400, "{e}");
            return;
        }
    };

    let selectors = &req.filter.selectors;
    assert!(!selectors.is_empty() && selectors.len() <= max_topics);
    for (i, sel) in selectors.iter().enumerate() {
        match sel {
            Selector::Exact(t) => assert!(validate_topic(t).is_ok(), "accepted {t:?}"),
            Selector::Prefix(p) if p.is_empty() => {}
            Selector::Prefix(p) => {
                let base = p.strip_suffix('/').expect("a prefix ends in '/'");
                assert!(
                    validate_topic(base).is_ok(),
                    "accepted pattern base {base:?}"
                );
            }
        }
        let text = sel.to_string();
        assert_eq!(
            Selector::parse(&text).as_ref(),
            Ok(sel),
            "{text:?} re-parses"
        );
        assert!(!selectors[..i].contains(sel), "duplicate selector {sel:?}");
    }
    for t in req.filter.types.iter().flatten() {
        assert!(sse::is_valid_event_type(t), "accepted type {t:?}");
    }
    match req.resume {
        Resume::None => assert!(req.resume_raw.is_none()),
        Resume::After(id) => {
            let raw = req
                .resume_raw
                .as_deref()
                .expect("the raw resume id is kept");
            assert_eq!(raw.parse::<sse::EventId>(), Ok(id));
        }
        Resume::Since(_) => assert!(req.resume_raw.is_some()),
    }
});

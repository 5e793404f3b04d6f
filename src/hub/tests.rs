#![allow(clippy::unwrap_used)]
//! The log as a mirror of a Redis stream: loading history, remote appends, holes.

use super::log::{MemoryLog, Read, now_ms};
use super::{Event, Resume};
use crate::sse::{self, EventId};
use std::sync::Arc;
use std::time::Duration;

fn event(id: EventId, topic: &str) -> Arc<Event> {
    Arc::new(Event {
        id,
        topics: vec![topic.into()].into_boxed_slice(),
        event_type: None,
        close: false,
        frame: sse::encode_event(id, None, topic),
    })
}

fn ids(events: &[Arc<Event>]) -> Vec<EventId> {
    events.iter().map(|e| e.id).collect()
}

/// What a dispatcher starting at sequence 0 would fan out.
fn dispatched(log: &MemoryLog) -> Vec<EventId> {
    let mut out = Vec::new();
    match log.read_from(0, 1000, &mut out) {
        Read::Events { .. } => ids(&out),
        Read::Lagged { .. } => panic!("lagged"),
    }
}

#[test]
fn a_mirror_announces_gaps_until_loaded_then_replays_and_dispatches_only_new_events() {
    let log = MemoryLog::mirror(100, Duration::from_secs(3600));
    let now = now_ms();
    let resume = Resume::After(EventId::new(now - 10_000, 0));
    assert!(
        log.replay(&resume, |_| true).gap.is_some(),
        "nothing loaded yet"
    );

    // History from before the mirror existed, and one event written since.
    let old = [EventId::new(now - 5000, 0), EventId::new(now - 4000, 0)];
    let new = EventId::new(now + 1000, 0);
    let loaded = vec![event(old[0], "a"), event(old[1], "b"), event(new, "a")];
    log.load(loaded, old[0], EventId::new(now, 0));
    assert_eq!(
        dispatched(&log),
        [new],
        "history is for replays, not live streams"
    );

    let r = log.replay(&Resume::After(old[0]), |_| true);
    assert_eq!(
        (ids(&r.events), r.gap, r.head),
        (vec![old[1], new], None, new)
    );
    let r = log.replay(&Resume::After(EventId::new(now - 6000, 0)), |e| {
        &*e.topics[0] == "a"
    });
    assert_eq!(
        r.gap,
        Some(Some(old[0])),
        "older than the stream's oldest entry"
    );
    assert_eq!(ids(&r.events), [old[0], new]);
}

#[test]
fn remote_appends_keep_stream_order_and_a_hole_makes_older_resumes_gaps() {
    let log = MemoryLog::mirror(100, Duration::from_secs(3600));
    let now = now_ms();
    let e = |ms: u64, seq| EventId::new(now + ms, seq);
    log.load(Vec::new(), e(0, 0), e(0, 0));
    assert_eq!(
        log.append_remote([event(e(1, 0), "t"), event(e(1, 1), "t")]),
        2
    );
    // A re-read (or anything not newer) is ignored.
    assert_eq!(
        log.append_remote([event(e(1, 1), "t"), event(e(0, 5), "t")]),
        0
    );
    assert_eq!(log.append_remote([event(e(2, 0), "t")]), 1);
    assert_eq!(dispatched(&log), [e(1, 0), e(1, 1), e(2, 0)]);
    assert_eq!(log.replay(&Resume::After(e(1, 0)), |_| true).gap, None);

    // Redis lost entries after e(2, 0); what follows starts at e(9, 0).
    log.mark_hole(e(9, 0));
    let r = log.replay(&Resume::After(e(1, 0)), |_| true);
    assert_eq!(ids(&r.events), [e(1, 1), e(2, 0)]);
    assert_eq!(
        r.gap,
        Some(Some(e(1, 1))),
        "oldest_available is the first replayed event"
    );
    let r = log.replay(&Resume::After(e(2, 0)), |_| true);
    assert_eq!(
        (r.events.len(), r.gap),
        (0, Some(None)),
        "nothing held after the resume point"
    );
    log.append_remote([event(e(9, 0), "t")]);
    assert_eq!(log.replay(&Resume::After(e(9, 0)), |_| true).gap, None);
}

#[test]
fn the_mirror_keeps_max_events_and_moves_its_horizon_past_evictions() {
    let log = MemoryLog::mirror(2, Duration::from_secs(3600));
    let now = now_ms();
    let e = |ms: u64| EventId::new(now + ms, 0);
    log.load(
        vec![event(e(1), "t"), event(e(2), "t"), event(e(3), "t")],
        e(1),
        e(0),
    );
    assert_eq!(log.stats(), (2, Some(e(2))));
    assert!(log.replay(&Resume::After(e(1)), |_| true).gap.is_none());
    assert!(log.replay(&Resume::Since(now), |_| true).gap.is_some());
    log.append_remote([event(e(4), "t")]);
    assert_eq!(log.stats(), (2, Some(e(3))));
    assert!(log.replay(&Resume::After(e(1)), |_| true).gap.is_some());
}

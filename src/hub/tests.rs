#![allow(clippy::unwrap_used)]
//! The log: as a mirror of a Redis stream (loading history, remote appends, holes), and
//! as the dispatchers' queue, which the history's bounds never cut.

use super::log::{Bounds, MemoryLog, next_id, now_ms};
use super::{Backlog, Event, NewEvent, Resume};
use crate::sse::{self, EventId};
use std::sync::Arc;
use std::time::Duration;

fn bounds(max_events: usize, max_bytes: usize) -> Bounds {
    Bounds {
        max_events,
        max_bytes,
        max_age: Duration::from_secs(3600),
    }
}

/// A mirror no dispatcher reads (its events are dispatched as soon as appended).
fn mirror(max_events: usize) -> MemoryLog {
    MemoryLog::mirror(bounds(max_events, usize::MAX), 0)
}

fn event(id: EventId, topic: &str) -> Arc<Event> {
    Arc::new(Event::encode(
        id,
        smallvec::smallvec![topic.into()],
        None,
        false,
        topic.to_owned(),
    ))
}

fn ids(events: &[Arc<Event>]) -> Vec<EventId> {
    events.iter().map(|e| e.id).collect()
}

/// What the log's dispatcher 0 reads next.
fn dispatched(log: &MemoryLog) -> Vec<EventId> {
    let mut out = Vec::new();
    while log.read(0, 7, &mut out) {}
    ids(&out)
}

#[test]
fn a_mirror_announces_gaps_until_loaded_then_replays_and_dispatches_only_new_events() {
    let log = MemoryLog::mirror(bounds(100, usize::MAX), 1);
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
    let log = MemoryLog::mirror(bounds(100, usize::MAX), 1);
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
    let log = mirror(2);
    let now = now_ms();
    let e = |ms: u64| EventId::new(now + ms, 0);
    log.load(
        vec![event(e(1), "t"), event(e(2), "t"), event(e(3), "t")],
        e(1),
        e(0),
    );
    assert_eq!((log.stats().events, log.stats().oldest), (2, Some(e(2))));
    assert!(log.replay(&Resume::After(e(1)), |_| true).gap.is_none());
    assert!(log.replay(&Resume::Since(now), |_| true).gap.is_some());
    log.append_remote([event(e(4), "t")]);
    assert_eq!((log.stats().events, log.stats().oldest), (2, Some(e(3))));
    assert!(log.replay(&Resume::After(e(1)), |_| true).gap.is_some());
}

fn batch(topic: &str, n: usize, data: &str) -> Vec<NewEvent> {
    (0..n).map(|_| NewEvent::new(topic, data)).collect()
}

/// Everything dispatcher `reader` has not read yet, as events.
fn read_all(log: &MemoryLog, reader: usize) -> Vec<Arc<Event>> {
    let mut out = Vec::new();
    while log.read(reader, 64, &mut out) {}
    out
}

#[test]
fn a_dispatcher_reads_every_event_however_far_the_history_was_trimmed() {
    let log = MemoryLog::new(bounds(3, usize::MAX), 2);
    // One batch of more than the history: taken whole, only its end stays in the history.
    let published = log.append(batch("a", 10, "x")).unwrap();
    let stats = log.stats();
    assert_eq!((stats.events, stats.oldest), (3, Some(published[7])));
    assert_eq!(stats.waiting, 10);

    let first = read_all(&log, 0);
    assert_eq!(ids(&first), published, "dispatcher 0 skipped nothing");
    assert_eq!(log.stats().waiting, 10, "dispatcher 1 has read nothing yet");
    let second = read_all(&log, 1);
    assert_eq!(ids(&second), published, "dispatcher 1 skipped nothing");
    assert_eq!(log.stats().waiting, 0);
    drop(second);
    // Read by both and out of the history, the oldest seven are no longer held by the log;
    // the three newest still are.
    assert!(first[..7].iter().all(|e| Arc::strong_count(e) == 1));
    assert!(first[7..].iter().all(|e| Arc::strong_count(e) == 2));

    // A resume sees only the history: the seven live-only events are a gap.
    let r = log.replay(&Resume::After(published[0]), |_| true);
    assert_eq!(r.gap, Some(Some(published[7])));
    assert_eq!(ids(&r.events), published[7..]);
}

#[test]
fn appends_are_refused_while_the_dispatchers_are_a_history_behind() {
    let log = MemoryLog::new(bounds(4, usize::MAX), 1);
    log.append(batch("a", 3, "x")).unwrap();
    // Three wait, fewer than the history's four: a batch of five is still taken whole.
    let ids5 = log.append(batch("a", 5, "x")).unwrap();
    let refused = log.append(batch("a", 1, "x")).unwrap_err();
    assert_eq!(
        refused,
        Backlog {
            events: 8,
            bytes: refused.bytes,
            max_events: 4,
            max_bytes: usize::MAX
        }
    );
    assert_eq!(log.stats().waiting, 8, "a refused batch stores nothing");
    let mut out = Vec::new();
    assert!(log.read(0, 5, &mut out));
    let before = now_ms();
    let next = log.append(batch("a", 1, "x")).unwrap();
    let after = now_ms();
    // The id right after the last accepted one, by the clock of the moment (which may have
    // ticked since: then it is the new millisecond's first id).
    assert!(
        (before..=after).any(|now| next == [next_id(ids5[4], now)]),
        "the refused batch used no id: {next:?} after {:?}",
        ids5[4]
    );
    assert!(
        log.room().is_err(),
        "four wait again, as many as the history holds"
    );

    // The same bound in bytes.
    let log = MemoryLog::new(bounds(100, 100), 1);
    log.append(batch("a", 1, &"y".repeat(150))).unwrap();
    let refused = log.append(batch("a", 1, "small")).unwrap_err();
    assert!(refused.bytes > 150, "{refused:?}");
    assert!(log.room().is_err());
    read_all(&log, 0);
    assert!(log.append(batch("a", 1, "small")).is_ok());
}

#[test]
fn max_bytes_evicts_the_oldest_events_and_a_resume_before_them_is_a_gap() {
    let data = "z".repeat(100);
    // Size the history from a real frame: room for two of these events, not three.
    let frame = sse::encode_event(EventId::new(now_ms(), 0), None, &data).len();
    let log = MemoryLog::new(bounds(100, frame * 5 / 2), 0);
    let mut published = Vec::new();
    for _ in 0..5 {
        published.extend(log.append(batch("t", 1, &data)).unwrap());
    }
    let stats = log.stats();
    assert_eq!(
        (stats.events, stats.bytes, stats.oldest),
        (2, 2 * frame, Some(published[3]))
    );
    let r = log.replay(&Resume::After(published[1]), |_| true);
    assert_eq!(r.gap, Some(Some(published[3])), "oldest_available");
    assert_eq!(ids(&r.events), published[3..]);
    let r = log.replay(&Resume::After(published[2]), |_| true);
    assert_eq!((r.gap, ids(&r.events)), (None, published[3..].to_vec()));

    // A deleted topic's events no longer count.
    log.delete_topic("t");
    assert_eq!((log.stats().events, log.stats().bytes), (0, 0));
    log.append(batch("u", 2, &data)).unwrap();
    assert_eq!(log.stats().events, 2, "room for two again");
}

#[test]
fn the_redis_reader_waits_for_room_and_is_woken_when_the_dispatchers_catch_up() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let log = MemoryLog::mirror(bounds(2, usize::MAX), 1);
    let now = now_ms();
    log.load(Vec::new(), EventId::new(now, 0), EventId::new(now, 0));
    let e = |ms: u64| event(EventId::new(now + ms, 0), "t");
    assert_eq!(log.append_remote([e(1), e(2), e(3)]), 3);

    let mut cx = Context::from_waker(Waker::noop());
    let mut wait = std::pin::pin!(log.wait_for_room());
    assert_eq!(wait.as_mut().poll(&mut cx), Poll::Pending, "three wait");
    let mut out = Vec::new();
    assert!(log.read(0, 2, &mut out));
    assert_eq!(wait.as_mut().poll(&mut cx), Poll::Ready(true));
    let mut again = std::pin::pin!(log.wait_for_room());
    assert_eq!(again.as_mut().poll(&mut cx), Poll::Ready(false));
}

/// A hub with a history of 10 events, `shards` dispatchers and no heartbeat to speak of.
fn small_hub(shards: usize) -> super::Hub {
    let settings = super::HubSettings {
        history_max_events: 10,
        heartbeat: Duration::from_secs(3600),
        shards,
        ..super::HubSettings::default()
    };
    super::Hub::start(settings, Arc::new(crate::metrics::Metrics::default()))
}

#[tokio::test(flavor = "current_thread")]
async fn the_hub_refuses_a_publish_while_its_dispatcher_is_behind_and_cuts_no_stream() {
    use super::{Filter, HubError, Selector, SubscribeRequest};
    use std::task::{Context, Poll, Waker};
    let hub = small_hub(1);
    let mut b = hub.subscribe(SubscribeRequest::new(Filter {
        selectors: vec![Selector::parse("b").unwrap()].into(),
        types: None,
    }));
    // On this single thread the dispatcher runs only when the test yields: ten events wait.
    hub.publish(batch("a", 10, "x")).await.unwrap();
    let refused = hub.publish(batch("b", 1, "refused")).await.unwrap_err();
    assert!(
        matches!(refused, HubError::Overloaded(Backlog { events: 10, .. })),
        "{refused:?}"
    );
    for _ in 0..100 {
        if hub.stats().dispatch_waiting == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(hub.stats().dispatch_waiting, 0, "the dispatcher caught up");
    let sentinel = hub.publish(batch("b", 1, "sentinel")).await.unwrap();
    for _ in 0..100 {
        if hub.stats().dispatch_waiting == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut out = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(b.poll_frames(&mut cx, &mut out, 16), Poll::Ready(Some(())));
    let text: Vec<_> = out
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    // `retry:`, the starting id, then the sentinel alone: the refused event was not stored.
    assert_eq!(text.len(), 3, "{text:?}");
    assert_eq!(text[2], format!("id: {}\ndata: sentinel\n\n", sentinel[0]));
}

#[tokio::test(flavor = "current_thread")]
async fn a_dispatcher_with_no_stream_skips_what_is_published_and_a_new_stream_misses_nothing() {
    use super::{Filter, Selector, SubscribeRequest};
    use std::task::{Context, Poll, Waker};
    let hub = small_hub(2);
    // On this single thread no dispatcher runs until the test yields: with no stream, none
    // has anything to read, and publishing goes on past the history's bound.
    for _ in 0..3 {
        hub.publish(batch("a", 10, "x")).await.unwrap();
        assert_eq!(hub.stats().dispatch_waiting, 0);
    }
    let subscribe = || {
        hub.subscribe(SubscribeRequest::new(Filter {
            selectors: vec![Selector::parse("a").unwrap()].into(),
            types: None,
        }))
    };
    // Subscriber ids 1 and 2: one stream in each shard.
    let mut streams = [subscribe(), subscribe()];
    let ids = hub.publish(batch("a", 2, "live")).await.unwrap();
    assert_eq!(
        hub.stats().dispatch_waiting,
        2,
        "both dispatchers have it to read"
    );
    for _ in 0..100 {
        if hub.stats().dispatch_waiting == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut cx = Context::from_waker(Waker::noop());
    for stream in &mut streams {
        let mut out = Vec::new();
        assert_eq!(
            stream.poll_frames(&mut cx, &mut out, 16),
            Poll::Ready(Some(()))
        );
        let text: Vec<_> = out
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        // `retry:`, the starting id, then the two live events, each once.
        assert_eq!(text.len(), 4, "{text:?}");
        for (frame, id) in text[2..].iter().zip(&ids) {
            assert_eq!(*frame, format!("id: {id}\ndata: live\n\n"));
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_queued_as_runs_in_both_shards_reaches_each_stream_once_in_order() {
    use super::{Filter, Selector, SubscribeRequest};
    use std::task::{Context, Poll, Waker};
    let hub = super::Hub::start(
        super::HubSettings {
            history_max_events: 100,
            heartbeat: Duration::from_secs(3600),
            shards: 2,
            ..super::HubSettings::default()
        },
        Arc::new(crate::metrics::Metrics::default()),
    );
    let subscribe = |types: Option<&str>| {
        hub.subscribe(SubscribeRequest::new(Filter {
            selectors: vec![Selector::parse("a").unwrap()].into(),
            types: types.map(|t| vec![Box::<str>::from(t)].into()),
        }))
    };
    // Enough streams in each shard for its dispatcher to queue the burst as a run; the
    // first two take only one event type, so they get it event by event.
    let mut all: Vec<_> = (0..2 * super::registry::RUN_FROM_STREAMS + 2)
        .map(|i| subscribe((i < 2).then_some("odd")))
        .collect();
    // On this single thread the dispatchers run only when the test yields: the whole
    // burst waits, and is queued, not written event by event.
    let burst: Vec<NewEvent> = (0..40)
        .map(|i| NewEvent {
            event_type: (i % 2 == 1).then(|| "odd".into()),
            ..NewEvent::new("a", &format!("n{i}"))
        })
        .collect();
    let ids = hub.publish(burst).await.unwrap();
    for _ in 0..100 {
        if hub.stats().dispatch_waiting == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        hub.stats().dispatch_waiting,
        0,
        "the dispatchers read it all"
    );
    let mut cx = Context::from_waker(Waker::noop());
    for (n, stream) in all.iter_mut().enumerate() {
        let mut out = Vec::new();
        assert_eq!(
            stream.poll_frames(&mut cx, &mut out, 256),
            Poll::Ready(Some(()))
        );
        let got: String = out[2..]
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        let want: String = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| n >= 2 || i % 2 == 1)
            .map(|(i, id)| match i % 2 {
                1 => format!("id: {id}\nevent: odd\ndata: n{i}\n\n"),
                _ => format!("id: {id}\ndata: n{i}\n\n"),
            })
            .collect();
        assert_eq!(got, want, "stream {n}");
        // A run is one frame: all 40 events, the last one joining the run before it.
        let frames = out.len() - 2;
        if n >= 2 {
            assert_eq!(frames, 1, "stream {n}");
        } else {
            assert_eq!(frames, 20, "stream {n}");
        }
    }
}

#[test]
fn data_with_room_after_it_is_framed_in_place_as_any_other_would_be() {
    for id in [EventId::new(now_ms(), 12), super::ROOMY_ID] {
        frame_in_place(id);
    }
    // An id longer than there is room for: copied.
    let long = EventId::new(u64::MAX, u64::MAX);
    let mut roomy = String::with_capacity(2 + super::frame_room(None));
    roomy.push_str("{}");
    let at = roomy.as_ptr() as usize;
    let ev = Event::encode(long, smallvec::smallvec!["a".into()], None, false, roomy);
    assert_eq!(ev.frame(), sse::encode_event(long, None, "{}"));
    assert_ne!(ev.chunk.as_ptr() as usize, at);
}

fn frame_in_place(id: EventId) {
    for (event_type, data) in [
        (None, r#"{"a":1}"#),
        (Some("derived"), "one line"),
        (Some(&*"t".repeat(64)), ""),
        (None, "two\nlines"),
    ] {
        let encode = |data: String| {
            let t = event_type.map(Box::from);
            Event::encode(id, smallvec::smallvec!["a".into()], t, false, data)
        };
        let mut roomy = String::with_capacity(data.len() + super::frame_room(event_type));
        roomy.push_str(data);
        let at = roomy.as_ptr() as usize;
        let (copied, framed) = (encode(data.to_owned()), encode(roomy));
        assert_eq!(framed.frame(), sse::encode_event(id, event_type, data));
        assert_eq!(
            (framed.frame(), &framed.chunk),
            (copied.frame(), &copied.chunk)
        );
        let in_place = framed.chunk.as_ptr() as usize == at;
        assert_eq!(in_place, !data.contains('\n'), "{data:?}");
    }
}

#[test]
fn an_event_is_an_allocation_of_at_most_120_bytes() {
    // With the `Arc`'s two counts: jemalloc's 128-byte class (glibc: a fast-bin chunk).
    assert!(std::mem::size_of::<Event>() + 16 <= 120);
    let ev = Event::encode(
        EventId::new(1, 2),
        smallvec::smallvec!["a".into()],
        None,
        false,
        "x".into(),
    );
    assert_eq!(ev.frame(), b"id: 1-2\ndata: x\n\n");
    assert_eq!(ev.frame_bytes(4), &b"1-2\ndata: x\n\n"[..]);
    assert_eq!(ev.frame_bytes(99), &b""[..]);
}

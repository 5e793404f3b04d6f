#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What a subscription hands its writer: the events' shared frames, and never more than
//! the slow-consumer policy allows.

use crate::hub::Frame;
use crate::hub::{
    DirectWrite, Filter, Hub, HubSettings, NewEvent, Selector, SubscribeRequest, Subscription,
    Written,
};
use crate::metrics::Metrics;
use bytes::Bytes;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

fn hub(buffer: usize) -> Hub {
    let settings = HubSettings {
        subscriber_buffer: buffer,
        heartbeat: Duration::from_secs(3600),
        shards: 1,
        ..HubSettings::default()
    };
    Hub::start(settings, Arc::new(Metrics::default()))
}

fn subscribe(hub: &Hub, topic: &str) -> Subscription {
    hub.subscribe(SubscribeRequest::new(Filter {
        selectors: vec![Selector::parse(topic).unwrap()].into(),
        types: None,
    }))
}

/// The frames ready now, at most `max`; `None` once the stream is over.
fn take(s: &mut Subscription, max: usize) -> Option<Vec<Frame>> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    match s.poll_frames(&mut cx, &mut out, max) {
        Poll::Ready(Some(())) => Some(out),
        Poll::Ready(None) => None,
        Poll::Pending => Some(Vec::new()),
    }
}

/// Waits (bounded) until the dispatcher has queued something for `s`.
async fn take_live(s: &mut Subscription, max: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| s.poll_frames(cx, &mut out, max)),
    )
    .await
    .expect("frames within 5 s");
    assert_eq!(got, Some(()));
    out
}

#[tokio::test]
async fn every_subscriber_gets_the_same_encoded_frame_not_a_copy() {
    let hub = hub(100);
    let mut a = subscribe(&hub, "t");
    let mut b = subscribe(&hub, "t");
    // Each starts with `retry:` and its starting id.
    assert_eq!(take(&mut a, 8).unwrap().len(), 2);
    assert_eq!(take(&mut b, 8).unwrap().len(), 2);
    hub.publish(vec![NewEvent::new("t", "hello")])
        .await
        .unwrap();
    let fa = take_live(&mut a, 8).await;
    let fb = take_live(&mut b, 8).await;
    assert_eq!((fa.len(), fb.len()), (1, 1));
    assert!(fa[0].ends_with(b"data: hello\n\n"));
    assert_eq!(fa[0].as_ptr(), fb[0].as_ptr(), "one encoding, shared");
}

/// Waits until `sentinel` has received `n` more events: the dispatcher (one shard) has
/// then queued them for every subscriber of the topic.
async fn dispatched(sentinel: &mut Subscription, n: usize) {
    let mut got = 0;
    while got < n {
        // One block per event; a frame may hold a run of them.
        got += texts(&take_live(sentinel, 1000).await)
            .iter()
            .map(|t| t.matches("\n\n").count())
            .sum::<usize>();
    }
}

#[tokio::test]
async fn a_backlog_is_not_refilled_until_empty_so_the_policy_still_cuts() {
    // Queue and backlog together hold at most twice the buffer: a writer that takes a
    // few frames at a time must not keep draining the queue into an unbounded backlog,
    // or the slow-consumer policy would never see it fill.
    let hub = hub(8);
    let mut s = subscribe(&hub, "t");
    let mut sentinel = subscribe(&hub, "t");
    take(&mut s, 8).unwrap();
    take(&mut sentinel, 8).unwrap();
    let batch = |n| (0..n).map(|i| NewEvent::new("t", &i.to_string())).collect();

    hub.publish(batch(8)).await.unwrap();
    dispatched(&mut sentinel, 8).await;
    assert_eq!(take(&mut s, 2).unwrap().len(), 2, "six left in the backlog");
    hub.publish(batch(5)).await.unwrap();
    dispatched(&mut sentinel, 5).await;
    assert_eq!(take(&mut s, 2).unwrap().len(), 2, "from the backlog");
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        s.poll_cut(&mut cx).is_pending(),
        "not cut yet: 4 in the backlog, 5 queued"
    );
    hub.publish(batch(5)).await.unwrap();
    dispatched(&mut sentinel, 5).await;
    // The queue got 10 events for a buffer of 8 while the writer was busy with the backlog.
    assert!(
        s.poll_cut(&mut cx).is_ready(),
        "the disconnect policy fired"
    );
    // What was already taken from the queue still goes out, then the stream ends (no frame
    // for an overflow: the client resumes from history).
    let rest = take(&mut s, 100).unwrap();
    assert_eq!(rest.len(), 4);
    assert!(take(&mut s, 100).is_none());
}

/// A chunked body that takes what a dispatcher writes to it, as told: everything, nothing,
/// or the first `n` bytes.
struct Conn {
    takes: std::sync::Mutex<Option<usize>>,
    wrote: tokio::sync::mpsc::UnboundedSender<Bytes>,
}

impl Conn {
    fn new(takes: Option<usize>) -> (Arc<Self>, tokio::sync::mpsc::UnboundedReceiver<Bytes>) {
        let (wrote, rx) = tokio::sync::mpsc::unbounded_channel();
        let conn = Arc::new(Self {
            takes: std::sync::Mutex::new(takes),
            wrote,
        });
        (conn, rx)
    }
}

impl DirectWrite for Conn {
    fn try_write(&self, frame: &Bytes) -> Written {
        match *self.takes.lock().unwrap() {
            None => Written::Nothing,
            Some(n) if n >= frame.len() => {
                self.wrote.send(frame.clone()).unwrap();
                Written::All
            }
            Some(n) => {
                self.wrote.send(frame.slice(..n)).unwrap();
                Written::Part(frame.slice(n..))
            }
        }
    }
}

/// A stream past its preamble, parked with `conn` for the dispatcher to write to (each
/// write an event's chunk; what the task takes stays bare frames).
fn parked(hub: &Hub, topic: &str, conn: &Arc<Conn>) -> Subscription {
    let mut s = subscribe(hub, topic);
    s.write_directly(Arc::clone(conn) as Arc<dyn DirectWrite>);
    assert_eq!(take(&mut s, 8).unwrap().len(), 2, "retry and the id");
    assert_eq!(take(&mut s, 8).unwrap().len(), 0, "then nothing");
    s.park();
    s
}

#[tokio::test]
async fn a_parked_stream_gets_the_event_written_by_the_dispatcher_not_queued() {
    let hub = hub(100);
    let (conn, mut wrote) = Conn::new(Some(usize::MAX));
    let mut s = parked(&hub, "t", &conn);
    hub.publish(vec![NewEvent::new("t", "one")]).await.unwrap();
    let frame = wrote.recv().await.unwrap();
    assert!(frame.ends_with(b"data: one\n\n\r\n"));
    assert_eq!(take(&mut s, 8).unwrap().len(), 0, "nothing was queued");
    assert!(s.unpark().is_empty(), "the write was whole");
    // Taken back: the next event is queued for the task, not written.
    hub.publish(vec![NewEvent::new("t", "two")]).await.unwrap();
    let queued = take_live(&mut s, 8).await;
    assert!(queued[0].ends_with(b"data: two\n\n"));
    assert!(wrote.try_recv().is_err(), "written once, by the dispatcher");
}

#[tokio::test]
async fn a_full_socket_makes_the_dispatcher_queue_and_stay_off_until_parked_again() {
    let hub = hub(100);
    let (conn, mut wrote) = Conn::new(None);
    let mut s = parked(&hub, "t", &conn);
    hub.publish(vec![NewEvent::new("t", "one")]).await.unwrap();
    assert!(take_live(&mut s, 8).await[0].ends_with(b"data: one\n\n"));
    // The socket has room again, but the task did not park: still queued, in order.
    *conn.takes.lock().unwrap() = Some(usize::MAX);
    hub.publish(vec![NewEvent::new("t", "two")]).await.unwrap();
    assert!(take_live(&mut s, 8).await[0].ends_with(b"data: two\n\n"));
    assert!(wrote.try_recv().is_err());
    s.park();
    hub.publish(vec![NewEvent::new("t", "three")])
        .await
        .unwrap();
    assert!(
        wrote
            .recv()
            .await
            .unwrap()
            .ends_with(b"data: three\n\n\r\n")
    );
}

#[tokio::test]
async fn the_rest_of_a_write_cut_short_goes_first_and_later_events_are_queued() {
    let hub = hub(100);
    let (conn, mut wrote) = Conn::new(Some(5));
    let mut s = parked(&hub, "t", &conn);
    hub.publish(vec![NewEvent::new("t", "one")]).await.unwrap();
    let head = wrote.recv().await.unwrap();
    hub.publish(vec![NewEvent::new("t", "two")]).await.unwrap();
    let queued = take_live(&mut s, 8).await;
    assert!(
        queued[0].ends_with(b"data: two\n\n"),
        "two waits in the queue"
    );
    let rest = s.unpark();
    let whole = [&head[..], &rest[..]].concat();
    assert!(
        whole.ends_with(b"data: one\n\n\r\n"),
        "head and rest make one"
    );
    assert!(wrote.try_recv().is_err());
}

#[tokio::test]
async fn a_closing_event_is_never_written_directly() {
    let hub = hub(100);
    let (conn, mut wrote) = Conn::new(Some(usize::MAX));
    let mut s = parked(&hub, "t", &conn);
    let mut closing = NewEvent::new("t", "bye");
    closing.close = true;
    hub.publish(vec![closing]).await.unwrap();
    let frames = take_live(&mut s, 8).await;
    assert!(frames[0].ends_with(b"data: bye\n\n"));
    assert!(take(&mut s, 8).is_none(), "the stream ends after it");
    assert!(wrote.try_recv().is_err(), "the task wrote it, then ended");
}

#[tokio::test]
async fn an_ended_stream_is_taken_from_the_dispatchers() {
    let hub = hub(100);
    let (conn, mut wrote) = Conn::new(Some(usize::MAX));
    let mut s = parked(&hub, "t", &conn);
    let mut sentinel = subscribe(&hub, "u");
    take(&mut sentinel, 8).unwrap();
    assert_eq!(hub.delete_topic("t"), 1);
    let end = take_live(&mut s, 8).await;
    assert!(end[0].windows(14).any(|w| w == b"ssegate.closed"));
    // One event to both topics: once the sentinel has it, the dispatcher is past `s`.
    let mut late = NewEvent::new("t", "late");
    late.topics.push("u".into());
    hub.publish(vec![late]).await.unwrap();
    dispatched(&mut sentinel, 1).await;
    assert!(wrote.try_recv().is_err(), "nothing written after the end");
}

#[tokio::test]
async fn the_shard_heartbeat_writes_to_parked_streams_quiet_long_enough_and_no_other() {
    use super::Stamp;
    use tokio::time::Instant;
    let hub = hub(100);
    let (conn, mut wrote) = Conn::new(Some(usize::MAX));
    let mut s = parked(&hub, "t", &conn);
    let parked_at = Instant::now();
    assert!(
        !s.sub.beat(
            Stamp::of(parked_at),
            Stamp::of(parked_at - Duration::from_secs(1))
        ),
        "written to (its head) at parking, after the quiet window began"
    );
    let now = Instant::now();
    assert!(
        s.sub.beat(Stamp::of(now), Stamp::of(now)),
        "quiet since it parked"
    );
    assert_eq!(&wrote.recv().await.unwrap()[..], crate::chunked::HEARTBEAT);
    assert!(
        !s.sub
            .beat(Stamp::of(now), Stamp::of(now - Duration::from_secs(1))),
        "the beat itself counts as a write"
    );
    assert!(s.unpark().is_empty());
    let later = Instant::now();
    assert!(
        !s.sub.beat(Stamp::of(later), Stamp::of(later)),
        "taken back by its task: not parked"
    );
    assert!(wrote.try_recv().is_err());
}

/// The `data:` values of `frames`, in order.
/// The data of each event in `frames` (a frame may hold a run of events).
fn data_of(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .flat_map(|f| std::str::from_utf8(f).unwrap().lines())
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_burst_queued_run_by_run_reaches_each_subscriber_once_in_order_and_filtered() {
    // 300 events in one publish: more than a dispatcher reads at once, so it is behind and
    // queues runs of events with the same topics. Runs of 20 on `a`, on `b`, on both; every
    // fourth event typed `skip`.
    let hub = hub(1000);
    let subscribe_to = |topics: &[&str], types: Option<Vec<Box<str>>>| {
        hub.subscribe(SubscribeRequest::new(Filter {
            selectors: topics.iter().map(|t| Selector::parse(t).unwrap()).collect(),
            types: types.map(Into::into),
        }))
    };
    let mut both = subscribe_to(&["a", "b"], Some(vec!["message".into()]));
    let mut only_b = subscribe_to(&["b"], None);
    let mut sentinel = subscribe_to(&["a", "b"], None);
    for s in [&mut both, &mut only_b, &mut sentinel] {
        take(s, 8).unwrap();
    }
    let topics_of = |i: usize| -> crate::hub::Topics {
        match (i / 20) % 3 {
            0 => smallvec::smallvec!["a".into()],
            1 => smallvec::smallvec!["b".into()],
            _ => smallvec::smallvec!["a".into(), "b".into()],
        }
    };
    let events = (0..300)
        .map(|i| NewEvent {
            topics: topics_of(i),
            event_type: (i % 4 == 0).then(|| "skip".into()),
            data: i.to_string(),
            close: false,
        })
        .collect();
    hub.publish(events).await.unwrap();
    dispatched(&mut sentinel, 300).await;

    let want_both: Vec<String> = (0..300)
        .filter(|i| i % 4 != 0)
        .map(|i| i.to_string())
        .collect();
    let want_b: Vec<String> = (0..300)
        .filter(|i| (i / 20) % 3 != 0)
        .map(|i| i.to_string())
        .collect();
    assert_eq!(data_of(&take(&mut both, 1000).unwrap()), want_both);
    assert_eq!(data_of(&take(&mut only_b, 1000).unwrap()), want_b);
}

/// A hub of one shard whose dispatcher runs only when the test yields (call from a
/// `current_thread` test): what is published waits, and is then queued as a burst.
fn burst_hub(buffer: usize, policy: crate::hub::SlowConsumer) -> Hub {
    Hub::start(
        HubSettings {
            subscriber_buffer: buffer,
            slow_consumer: policy,
            heartbeat: Duration::from_secs(3600),
            shards: 1,
            ..HubSettings::default()
        },
        Arc::new(Metrics::default()),
    )
}

/// Lets the dispatcher read everything published.
async fn settle(hub: &Hub) {
    for _ in 0..1000 {
        if hub.stats().dispatch_waiting == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the dispatcher did not catch up");
}

fn texts(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

fn published(ids: &[crate::sse::EventId], data: &str) -> String {
    ids.iter()
        .enumerate()
        .map(|(i, id)| format!("id: {id}\ndata: {data}{i}\n\n"))
        .collect()
}

fn numbered(n: usize, data: &str) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent::new("t", &format!("{data}{i}")))
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_to_several_streams_goes_out_as_one_frame_and_a_filtered_stream_gets_its_own() {
    let hub = burst_hub(100, crate::hub::SlowConsumer::Disconnect);
    let mut all: Vec<_> = (0..5).map(|_| subscribe(&hub, "t")).collect();
    let mut typed = hub.subscribe(SubscribeRequest::new(Filter {
        selectors: vec![Selector::parse("t").unwrap()].into(),
        types: Some(vec!["message".into()].into()),
    }));
    for s in all.iter_mut().chain([&mut typed]) {
        assert_eq!(take(s, 8).unwrap().len(), 2, "`retry:` and the starting id");
    }
    let ids = hub.publish(numbered(10, "b")).await.unwrap();
    settle(&hub).await;
    let want = published(&ids, "b");
    for s in &mut all {
        let frames = take(s, 256).unwrap();
        // All ten as one run: the last one joins it rather than being written on its own
        // to the streams the run has just woken.
        assert_eq!(frames.len(), 1, "{:?}", texts(&frames));
        assert_eq!(texts(&frames).concat(), want);
    }
    let frames = take(&mut typed, 256).unwrap();
    assert_eq!(
        frames.len(),
        10,
        "one frame per event for a stream that filters"
    );
    assert_eq!(texts(&frames).concat(), want);
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_large_events_is_queued_in_runs_of_at_most_256_kib() {
    let hub = burst_hub(100, crate::hub::SlowConsumer::Disconnect);
    let mut all: Vec<_> = (0..5).map(|_| subscribe(&hub, "t")).collect();
    for s in &mut all {
        assert_eq!(take(s, 8).unwrap().len(), 2, "`retry:` and the starting id");
    }
    // Frames of a little over 60 KiB: four fit in 256 KiB, five do not.
    let data = "x".repeat(60 * 1024);
    let ids = hub.publish(numbered(10, &data)).await.unwrap();
    settle(&hub).await;
    let want = published(&ids, &data);
    for s in &mut all {
        let frames = take(s, 256).unwrap();
        let sizes: Vec<usize> = frames.iter().map(|f| f.len()).collect();
        assert_eq!(sizes.len(), 3, "runs of 4, 4 and 2 events: {sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 256 * 1024), "{sizes:?}");
        assert_eq!(texts(&frames).concat(), want);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_run_that_overlaps_the_replay_goes_out_from_the_first_event_not_replayed() {
    let hub = burst_hub(100, crate::hub::SlowConsumer::Disconnect);
    // Published before the streams open (and before the dispatcher read them): replayed.
    let early = hub.publish(numbered(10, "e")).await.unwrap();
    let mut all: Vec<_> = (0..5)
        .map(|_| {
            hub.subscribe(SubscribeRequest {
                resume: crate::hub::Resume::Since(0),
                ..SubscribeRequest::new(Filter {
                    selectors: vec![Selector::parse("t").unwrap()].into(),
                    types: None,
                })
            })
        })
        .collect();
    let late = hub.publish(numbered(10, "l")).await.unwrap();
    // One run of nineteen reaches every stream: the first nine are in its replay too.
    settle(&hub).await;
    let want = format!("{}{}", published(&early, "e"), published(&late, "l"));
    for s in &mut all {
        let mut got = String::new();
        while let Some(frames) = take(s, 256).filter(|f| !f.is_empty()) {
            // The events (and runs of them), without `retry:` and the gap notice.
            for t in texts(&frames).iter().filter(|t| t.starts_with("id: ")) {
                got.push_str(t);
            }
        }
        assert_eq!(got, want, "each event once, in order");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn drop_oldest_drops_the_oldest_events_of_a_queued_run_one_by_one() {
    let hub = burst_hub(12, crate::hub::SlowConsumer::DropOldest);
    let mut all: Vec<_> = (0..5).map(|_| subscribe(&hub, "t")).collect();
    for s in &mut all {
        take(s, 8).unwrap();
    }
    let first = hub.publish(numbered(10, "a")).await.unwrap();
    settle(&hub).await;
    // Nine queued as a run and one alone; of the next ten, eight do not fit: the run's
    // first eight make room, one each, and its last one stays.
    let second = hub.publish(numbered(10, "b")).await.unwrap();
    settle(&hub).await;
    let want = format!(
        "event: ssegate.overflow\ndata: {{\"dropped\":8}}\n\n\
         id: {}\ndata: a8\n\nid: {}\ndata: a9\n\n{}",
        first[8],
        first[9],
        published(&second, "b"),
    );
    for s in &mut all {
        assert_eq!(texts(&take(s, 256).unwrap()).concat(), want);
    }
}

#[tokio::test]
async fn a_stream_only_its_task_writes_keeps_no_queue_buffers_once_idle() {
    let hub = hub(100);
    let mut s = subscribe(&hub, "t");
    assert_eq!(
        take(&mut s, 8).unwrap().len(),
        2,
        "`retry:` and the starting id"
    );
    hub.publish(numbered(3, "q")).await.unwrap();
    assert_eq!(data_of(&take_live(&mut s, 8).await).len(), 3);
    // Nothing more queued: the poll that finds so leaves both buffers freed.
    assert!(take(&mut s, 8).unwrap().is_empty());
    assert_eq!(s.backlog.capacity(), 0);
    assert_eq!(s.sub.lock().events.capacity(), 0);
}

#[test]
fn an_http2_streams_body_fits_in_112_bytes() {
    // The body (subscription and guard) is kept in hyper's future of every HTTP/2 stream
    // (`crate::response::Sending`), 216 bytes with it, 8 short of jemalloc's 224-byte
    // class (`server::stalled`'s test of that future pins the class itself).
    assert!(std::mem::size_of::<Subscription>() <= 96);
    assert!(std::mem::size_of::<crate::response::EventBody>() <= 112);
    assert!(std::mem::size_of::<crate::response::Sending>() <= 112);
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What a subscription hands its writer: the events' shared frames, and never more than
//! the slow-consumer policy allows.

use crate::hub::{Filter, Hub, HubSettings, NewEvent, Selector, SubscribeRequest, Subscription};
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
        selectors: vec![Selector::parse(topic).unwrap()],
        types: None,
    }))
}

/// The frames ready now, at most `max`; `None` once the stream is over.
fn take(s: &mut Subscription, max: usize) -> Option<Vec<Bytes>> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    match s.poll_frames(&mut cx, &mut out, max) {
        Poll::Ready(Some(())) => Some(out),
        Poll::Ready(None) => None,
        Poll::Pending => Some(Vec::new()),
    }
}

/// Waits (bounded) until the dispatcher has queued something for `s`.
async fn take_live(s: &mut Subscription, max: usize) -> Vec<Bytes> {
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
        got += take_live(sentinel, 1000).await.len();
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

#![allow(clippy::unwrap_used)]
//! The disk broker against a real temporary directory: restart, torn tail, clock set
//! back, group commit, bounded directory.

use super::segment::{self, MAGIC};
use super::{DiskBroker, Local};
use crate::hub::log::{Bounds, MemoryLog, encode, now_ms};
use crate::hub::registry::Registry;
use crate::hub::{NewEvent, Resume};
use crate::sse::EventId;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const HOUR: Duration = Duration::from_secs(3600);

/// A broker on `dir` with its own log, as `Hub::start` builds it, with `sync: always`.
fn start(dir: &Path, max_events: usize) -> (DiskBroker, Arc<MemoryLog>) {
    start_syncing(dir, max_events, None)
}

/// The same with `sync: <every>` (`None`: always).
fn start_syncing(
    dir: &Path,
    max_events: usize,
    every: Option<Duration>,
) -> (DiskBroker, Arc<MemoryLog>) {
    // No dispatchers here: events leave memory as soon as they leave the history.
    let bounds = Bounds {
        max_events,
        max_bytes: usize::MAX,
        max_age: HOUR,
    };
    let log = Arc::new(MemoryLog::new(bounds, 0));
    let local = Local {
        log: Arc::clone(&log),
        registry: Arc::new(Registry::new(1)),
        head: Arc::new(watch::channel(0).0),
    };
    (
        DiskBroker::start(dir, every, max_events, HOUR, local).unwrap(),
        log,
    )
}

fn batch(n: usize, topic: &str) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent::new(topic, &format!("event {i}")))
        .collect()
}

/// Every id in the history after `after`, and whether the replay reports a gap.
fn history_after(log: &MemoryLog, after: EventId) -> (Vec<EventId>, bool) {
    let r = log.replay(&Resume::After(after), |_| true);
    (r.events.iter().map(|e| e.id).collect(), r.gap.is_some())
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    segment::list(dir)
        .unwrap()
        .into_iter()
        .map(|n| segment::path(dir, n))
        .collect()
}

#[tokio::test]
async fn a_restart_keeps_the_history_and_a_resume_from_before_it_has_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _) = start(dir.path(), 1000);
    let mut published = Vec::new();
    for n in [1, 5, 2] {
        published.extend(broker.publish(batch(n, "job/1")).await.unwrap());
    }
    assert!(broker.is_up());
    drop(broker);

    let (broker, log) = start(dir.path(), 1000);
    let (ids, gap) = history_after(&log, published[0]);
    assert_eq!((ids.as_slice(), gap), (&published[1..], false));
    let r = log.replay(&Resume::After(published[0]), |_| true);
    assert_eq!(&*r.events[0].topics[0], "job/1");
    assert_eq!(
        r.events[0].frame(),
        encode(published[1], NewEvent::new("job/1", "event 0")).frame()
    );
    let next = broker.publish(batch(1, "job/1")).await.unwrap();
    assert!(next[0] > published[published.len() - 1]);
}

/// 64 publishers of 1 to 3 events at a time, on two threads; then every acknowledged id
/// is read back once, in id order.
async fn concurrent_publishes_stored_once_in_id_order(every: Option<Duration>) {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _) = start_syncing(dir.path(), 10_000, every);
    let broker = Arc::new(broker);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let broker = Arc::clone(&broker);
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..20 {
                    ids.extend(broker.publish(batch(1 + i % 3, "t")).await.unwrap());
                }
                ids
            })
        })
        .collect();
    let mut acked = Vec::new();
    for t in tasks {
        let ids = t.await.unwrap();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "one publisher's ids increase"
        );
        acked.extend(ids);
    }
    acked.sort();
    drop(broker);
    let (_broker, log) = start_syncing(dir.path(), 10_000, every);
    assert_eq!(history_after(&log, EventId::default()).0, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_are_all_stored_once_in_id_order() {
    concurrent_publishes_stored_once_in_id_order(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_sync_interval_concurrent_publishes_are_all_stored_once_in_id_order() {
    concurrent_publishes_stored_once_in_id_order(Some(Duration::from_millis(100))).await;
}

#[tokio::test]
async fn a_group_whose_leader_is_dropped_is_still_written_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let every = Some(HOUR);
    let (broker, log) = start_syncing(dir.path(), 100, every);
    let mut leader = Box::pin(broker.publish(batch(1, "t")));
    let mut joined = Box::pin(broker.publish(batch(2, "t")));
    std::future::poll_fn(|cx| {
        assert!(
            leader.as_mut().poll(cx).is_pending(),
            "the leader waits for the others"
        );
        assert!(
            joined.as_mut().poll(cx).is_pending(),
            "the second joins its group"
        );
        std::task::Poll::Ready(())
    })
    .await;
    assert!(history_after(&log, EventId::default()).0.is_empty());
    // The leader's client is gone: its group is written all the same, and answered.
    drop(leader);
    let Ok(answered) = tokio::time::timeout(Duration::from_secs(10), joined).await else {
        panic!("the group of a dropped leader is never answered");
    };
    let ids = answered.unwrap();
    let stored = history_after(&log, EventId::default()).0;
    assert_eq!((stored.len(), &stored[1..]), (3, ids.as_slice()));
    // The next publish leads a group of its own.
    let next = broker.publish(batch(1, "t")).await.unwrap();
    assert!(next[0] > ids[1]);
    drop(broker);
    let (_broker, log) = start_syncing(dir.path(), 100, every);
    let mut all = stored;
    all.extend(next);
    assert_eq!(history_after(&log, EventId::default()).0, all);
}

#[tokio::test]
async fn a_torn_last_record_is_dropped_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _) = start(dir.path(), 1000);
    let ids = broker.publish(batch(5, "a")).await.unwrap();
    drop(broker);
    let files = segments(dir.path());
    let last = files.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let (broker, log) = start(dir.path(), 1000);
    assert_eq!(history_after(&log, ids[0]), (ids[1..4].to_vec(), false));
    let next = broker.publish(batch(1, "a")).await.unwrap();
    assert!(next[0] > ids[3]);
}

#[tokio::test]
async fn ids_stay_above_the_last_one_on_disk_when_the_clock_went_back() {
    let dir = tempfile::tempdir().unwrap();
    // A history written while the clock was a day ahead.
    let ahead = EventId::new(now_ms() + 86_400_000, 7);
    let mut file = MAGIC.to_vec();
    segment::encode(
        &encode(ahead, NewEvent::new("a", "from the future")),
        &mut file,
    );
    std::fs::write(segment::path(dir.path(), 1), file).unwrap();

    let (broker, log) = start(dir.path(), 1000);
    let ids = broker.publish(batch(2, "a")).await.unwrap();
    assert_eq!(ids, [ahead.next(), ahead.next().next()]);
    assert_eq!(history_after(&log, ahead), (ids, false));
}

fn bytes_on_disk(dir: &Path) -> u64 {
    segments(dir)
        .iter()
        // The remover thread may delete a segment between the listing and this look.
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test]
async fn the_directory_stays_bounded_with_a_small_history() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, log) = start(dir.path(), 100);
    let data = "x".repeat(200);
    let mut most = 0;
    for _ in 0..300 {
        let events = (0..10).map(|_| NewEvent::new("t", &data)).collect();
        broker.publish(events).await.unwrap();
        most = most.max(bytes_on_disk(dir.path()));
    }
    // 3,000 events of ~250 bytes written; 100 kept, in segments of 64: at most 3 segments
    // of history plus the one being written, plus those waiting for the remover thread.
    let segment = 64 * 300;
    assert!(
        most < (4 + super::REMOVING as u64) * segment,
        "{most} bytes on disk"
    );
    assert_eq!(broker.settle_removals(), Vec::<u64>::new());
    let settled = bytes_on_disk(dir.path());
    assert!(settled < 4 * segment, "{settled} bytes on disk");
    assert_eq!(log.stats().events, 100);
    drop(broker);
    let (_broker, log) = start(dir.path(), 100);
    assert_eq!(log.stats().events, 100);
}

#[tokio::test]
async fn a_segment_that_cannot_be_removed_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    // Segments of 64 events; the first leaves the history once the second is full.
    let (broker, _) = start(dir.path(), 64);
    for _ in 0..8 {
        broker.publish(batch(8, "t")).await.unwrap();
    }
    let first = segments(dir.path())[0].clone();
    // A directory in its place cannot be unlinked (even by root).
    std::fs::remove_file(&first).unwrap();
    std::fs::create_dir(&first).unwrap();
    for _ in 0..8 {
        broker.publish(batch(8, "t")).await.unwrap();
    }
    let failed = broker.settle_removals();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(first.is_dir());

    // Removable again: the next publish's removal takes it.
    std::fs::remove_dir(&first).unwrap();
    std::fs::write(&first, MAGIC).unwrap();
    broker.publish(batch(1, "t")).await.unwrap();
    assert_eq!(broker.settle_removals(), Vec::<u64>::new());
    assert!(!first.exists());
}

#[tokio::test]
async fn a_segment_left_by_a_crash_during_its_removal_is_not_history() {
    let dir = tempfile::tempdir().unwrap();
    // Segments of exactly 64 events, 64 kept: after 192 events, the first two have left
    // the history and the third holds it.
    let (broker, _) = start(dir.path(), 64);
    let mut published = Vec::new();
    for _ in 0..8 {
        published.extend(broker.publish(batch(8, "t")).await.unwrap());
    }
    let first = segments(dir.path())[0].clone();
    let kept = std::fs::read(&first).unwrap();
    for _ in 0..16 {
        published.extend(broker.publish(batch(8, "t")).await.unwrap());
    }
    assert_eq!(broker.settle_removals(), Vec::<u64>::new());
    assert!(!first.exists());
    drop(broker);
    // A crash before the first's removal completed, after the second's.
    std::fs::write(&first, kept).unwrap();

    let (broker, log) = start(dir.path(), 64);
    // The third segment is the history; a resume from within the second was trimmed.
    assert_eq!(log.stats().oldest, Some(published[128]));
    assert_eq!(
        history_after(&log, published[128]),
        (published[129..].to_vec(), false)
    );
    assert!(
        history_after(&log, published[100]).1,
        "a resume from the second"
    );
    assert!(
        history_after(&log, published[10]).1,
        "a resume from the first"
    );
    broker.settle_removals();
    assert!(!first.exists());
}

#[tokio::test]
async fn a_deleted_topic_stays_deleted_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _) = start(dir.path(), 1000);
    let a1 = broker.publish(batch(2, "a")).await.unwrap();
    let b = broker.publish(batch(1, "b")).await.unwrap();
    broker.delete_topic("a");
    // Queued after the deletion: published to the topic anew, it stays.
    let a2 = broker.publish(batch(1, "a")).await.unwrap();
    drop(broker);

    let (_broker, log) = start(dir.path(), 1000);
    assert_eq!(history_after(&log, a1[0]), ([b, a2].concat(), false));
}

#[tokio::test]
async fn restarts_without_publishes_leave_no_files_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _) = start(dir.path(), 1000);
    let ids = broker.publish(batch(1, "a")).await.unwrap();
    drop(broker);
    for _ in 0..3 {
        let (broker, log) = start(dir.path(), 1000);
        let stats = log.stats();
        assert_eq!((stats.events, stats.oldest), (1, Some(ids[0])));
        drop(broker);
    }
    // The segment with the event, and the one opened ahead by the last start.
    assert_eq!(segments(dir.path()).len(), 2);
}

#[tokio::test]
async fn events_read_back_in_order_across_segments_started_ahead() {
    let dir = tempfile::tempdir().unwrap();
    // Segments of 64 events: 300 events fill several, each started ahead.
    let (broker, _) = start(dir.path(), 256);
    let mut published = Vec::new();
    for _ in 0..30 {
        published.extend(broker.publish(batch(10, "t")).await.unwrap());
    }
    let files = segments(dir.path());
    drop(broker);
    // Four or more written, and the one started ahead of the next turnover.
    assert!(files.len() >= 5, "{files:?}");

    let (_broker, log) = start(dir.path(), 256);
    let (ids, gap) = history_after(&log, published[published.len() - 257]);
    assert_eq!(
        (ids.as_slice(), gap),
        (&published[published.len() - 256..], false)
    );
}

#[tokio::test]
async fn with_a_sync_interval_publishes_write_themselves_and_a_restart_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let every = Some(Duration::from_millis(100));
    let (broker, _) = start_syncing(dir.path(), 256, every);
    let mut published = Vec::new();
    for i in 0..30 {
        let n = if i % 2 == 0 { 16 } else { 3 };
        published.extend(broker.publish(batch(n, "t")).await.unwrap());
    }
    broker.delete_topic("gone");
    published.extend(broker.publish(batch(6, "t")).await.unwrap());
    assert!(broker.is_up());
    drop(broker);

    let (_broker, log) = start_syncing(dir.path(), 256, every);
    let (ids, gap) = history_after(&log, published[published.len() - 257]);
    assert_eq!(
        (ids.as_slice(), gap),
        (&published[published.len() - 256..], false)
    );
}

#[tokio::test]
async fn a_segment_removed_before_its_flush_is_closed_unflushed() {
    let dir = tempfile::tempdir().unwrap();
    // No flush due during the test: segments of 64 events, retired and removed unflushed.
    let (broker, _) = start_syncing(dir.path(), 64, Some(HOUR));
    let mut published = Vec::new();
    for _ in 0..40 {
        published.extend(broker.publish(batch(10, "t")).await.unwrap());
    }
    {
        let w = super::lock(broker.inline.as_ref().unwrap());
        let on_disk = segment::list(dir.path()).unwrap();
        assert!(!w.removed.is_empty(), "400 events in segments of 64");
        // Left to flush: only segments still on disk (and in the history).
        assert!(w.unflushed.iter().all(|(n, _)| on_disk.contains(n)));
    }
    // The flush at shutdown still covers every segment in the history.
    drop(broker);
    let (_broker, log) = start_syncing(dir.path(), 64, Some(HOUR));
    let (ids, gap) = history_after(&log, published[published.len() - 65]);
    assert_eq!(
        (ids.as_slice(), gap),
        (&published[published.len() - 64..], false)
    );
}

//! Criterion micro-benchmarks (issue 7): the SSE encoder and the hub's publish path, through
//! the crate's public API only. `cargo bench --bench micro` runs them (~1 min); the numbers
//! and what each one covers are in benches/README.md.
//!
//! Hub benchmarks run on a current-thread tokio runtime, so what is timed never overlaps
//! with the dispatcher: `publish` alone is the append to the history and the dispatcher
//! wake-up; `fan_out` adds the dispatcher queueing the events for every subscriber; `drain`
//! is the subscribers taking their queued events as one chunk each (what a stream's writer
//! does before its `write`), without any socket.
// Benchmarks measure wall-clock time, which a paused tokio clock must never stand in for.
#![allow(clippy::disallowed_types, unreachable_pub)]
#![allow(missing_docs)]
#![allow(clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ssegate::hub::{Filter, Hub, HubSettings, NewEvent, Selector, SubscribeRequest, Subscription};
use ssegate::metrics::Metrics;
use ssegate::sse::{self, EventId};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// `n` bytes of printable data, like the load generator's events.
fn data(n: usize) -> String {
    "0123456789abcdefghijklmnopqrstuvwxyz"
        .chars()
        .cycle()
        .take(n)
        .collect()
}

fn encoder(c: &mut Criterion) {
    let id = EventId::new(1_767_225_600_000, 42);
    let d100 = data(100);
    // 100 bytes in 5 lines: each line becomes its own `data:` line.
    let d100_lines: String = data(95)
        .as_bytes()
        .chunks(19)
        .map(|l| std::str::from_utf8(l).expect("ascii"))
        .collect::<Vec<_>>()
        .join("\n");
    let d1k = data(1024);
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("event 100 B", |b| {
        b.iter(|| sse::encode_event(black_box(id), None, black_box(&d100)));
    });
    g.bench_function("event 100 B typed", |b| {
        b.iter(|| sse::encode_event(black_box(id), Some("note"), black_box(&d100)));
    });
    g.bench_function("event 100 B in 5 lines", |b| {
        b.iter(|| sse::encode_event(black_box(id), None, black_box(&d100_lines)));
    });
    g.bench_function("event 1 KiB", |b| {
        b.iter(|| sse::encode_event(black_box(id), None, black_box(&d1k)));
    });
    g.bench_function("id-only block", |b| {
        b.iter(|| sse::encode_id(black_box(id)));
    });
    g.bench_function("retry", |b| {
        b.iter(|| sse::encode_retry(black_box(2000)));
    });
    // The heartbeat is a static frame: this is the cost of handing it out.
    g.bench_function("heartbeat", |b| {
        b.iter(|| bytes::Bytes::from_static(black_box(sse::HEARTBEAT)));
    });
    g.finish();
}

/// Counts wake-ups: the hub wakes a subscription's waker when it queues an event for it.
#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A hub on `rt` (memory broker, one dispatcher, no heartbeat within a run) with `subs`
/// subscriptions to topic `t` and one to `sentinel`.
struct Setup {
    hub: Hub,
    subs: Vec<Subscription>,
    sentinel: Subscription,
    sentinel_woken: Arc<Count>,
    waker: Waker,
}

fn filter(topic: &str) -> Filter {
    Filter {
        selectors: vec![Selector::parse(topic).expect("valid topic")].into(),
        types: None,
    }
}

impl Setup {
    fn new(rt: &tokio::runtime::Runtime, subs: usize) -> Self {
        let _guard = rt.enter();
        let settings = HubSettings {
            history_max_events: HISTORY,
            subscriber_buffer: 10_000,
            heartbeat: Duration::from_secs(3600),
            shards: 1,
            ..HubSettings::default()
        };
        let hub = Hub::start(settings, Arc::new(Metrics::default()));
        let subs = (0..subs)
            .map(|_| hub.subscribe(SubscribeRequest::new(filter("t"))))
            .collect();
        let sentinel = hub.subscribe(SubscribeRequest::new(filter("sentinel")));
        let sentinel_woken = Arc::new(Count::default());
        let mut s = Self {
            hub,
            subs,
            sentinel,
            sentinel_woken: Arc::clone(&sentinel_woken),
            waker: Waker::from(Arc::new(Count::default())),
        };
        s.drain();
        drain_one(&mut s.sentinel, &Waker::from(sentinel_woken));
        s
    }

    /// Takes everything queued from every subscription (leaving their wakers registered).
    fn drain(&mut self) -> usize {
        let waker = self.waker.clone();
        self.subs.iter_mut().map(|s| drain_one(s, &waker)).sum()
    }
}

/// Polls `s` until it has nothing more, as the lean stream writer does (the frames of one
/// vectored write, shared, not copied); returns the bytes taken.
fn drain_one(s: &mut Subscription, waker: &Waker) -> usize {
    let mut cx = Context::from_waker(waker);
    let mut frames = Vec::new();
    let mut n = 0;
    while let Poll::Ready(Some(())) = s.poll_frames(&mut cx, &mut frames, 256) {
        n += frames.iter().map(|f| f.len()).sum::<usize>();
        frames.clear();
    }
    n
}

fn batch(topic: &str, n: usize, d: &str) -> Vec<NewEvent> {
    (0..n).map(|_| NewEvent::new(topic, d)).collect()
}

/// The hubs' history, in events.
const HISTORY: usize = 10_000;

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn hub_publish(c: &mut Criterion) {
    let d = data(100);
    let mut g = c.benchmark_group("hub publish");
    for n in [1, 100] {
        let rt = current_thread();
        let s = Setup::new(&rt, 0);
        g.throughput(Throughput::Elements(n as u64));
        // The call alone: append to the history (encoding each event once), wake the
        // dispatcher. It does not wait for the fan-out, so it costs the same with
        // subscribers. Timed in runs of fewer than a history's worth of events: between
        // runs, untimed, the dispatcher catches up (the hub refuses a publish while a
        // whole history waits for it) and the batches of the next run are built.
        let run = (HISTORY / n - 1) as u64;
        g.bench_function(format!("publish {n}, call only"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let k = left.min(run);
                    left -= k;
                    let batches: Vec<_> = (0..k).map(|_| batch("t", n, &d)).collect();
                    let mut ids = Vec::with_capacity(batches.len());
                    let t0 = Instant::now();
                    for events in batches {
                        ids.push(rt.block_on(s.hub.publish(events)).expect("memory publish"));
                    }
                    spent += t0.elapsed();
                    drop(ids);
                    rt.block_on(async {
                        while s.hub.stats().dispatch_waiting > 0 {
                            tokio::task::yield_now().await;
                        }
                    });
                }
                spent
            });
        });
    }
    g.finish();
}

fn hub_fan_out(c: &mut Criterion) {
    let d = data(100);
    let mut g = c.benchmark_group("hub fan-out");
    // The 1,000-subscriber cases take milliseconds per iteration.
    g.sample_size(10);
    for (subs, n) in [(0, 1), (0, 100), (1000, 1), (1000, 100)] {
        let rt = current_thread();
        let mut s = Setup::new(&rt, subs);
        // Deliveries for the subscriber case, events otherwise.
        g.throughput(Throughput::Elements((n * subs.max(1)) as u64));
        // Publish, then let the dispatcher run until it has queued the batch for every
        // subscriber: it works through the log in order, so the sentinel event published
        // right after the batch reaching its own subscriber means the batch is done. The
        // subscribers' drain that follows is not timed.
        g.bench_function(
            format!("publish {n} to {subs} subscribers + fan-out"),
            |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    let sentinel_waker = Waker::from(Arc::clone(&s.sentinel_woken));
                    for _ in 0..iters {
                        let events = batch("t", n, &d);
                        let mark = batch("sentinel", 1, "x");
                        let before = s.sentinel_woken.0.load(Ordering::Relaxed);
                        let t0 = Instant::now();
                        rt.block_on(async {
                            s.hub.publish(events).await.expect("memory publish");
                            s.hub.publish(mark).await.expect("memory publish");
                            while s.sentinel_woken.0.load(Ordering::Relaxed) == before {
                                tokio::task::yield_now().await;
                            }
                        });
                        spent += t0.elapsed();
                        let taken = s.drain();
                        assert!(subs == 0 || taken > 0, "every subscriber got the batch");
                        drain_one(&mut s.sentinel, &sentinel_waker);
                    }
                    spent
                });
            },
        );
    }
    g.finish();
}

fn hub_drain(c: &mut Criterion) {
    let d = data(100);
    let mut g = c.benchmark_group("hub drain");
    g.sample_size(10);
    for n in [1, 100] {
        let rt = current_thread();
        let mut s = Setup::new(&rt, 1000);
        g.throughput(Throughput::Elements((n * 1000) as u64));
        // 1,000 subscriptions each taking `n` queued events as one chunk (the frames are
        // copied into one buffer per subscriber: the coalesced write). Publish and fan-out
        // are not timed.
        g.bench_function(format!("1000 subscribers take {n} queued"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let sentinel_waker = Waker::from(Arc::clone(&s.sentinel_woken));
                for _ in 0..iters {
                    let before = s.sentinel_woken.0.load(Ordering::Relaxed);
                    rt.block_on(async {
                        s.hub.publish(batch("t", n, &d)).await.expect("publish");
                        s.hub
                            .publish(batch("sentinel", 1, "x"))
                            .await
                            .expect("publish");
                        while s.sentinel_woken.0.load(Ordering::Relaxed) == before {
                            tokio::task::yield_now().await;
                        }
                    });
                    drain_one(&mut s.sentinel, &sentinel_waker);
                    let t0 = Instant::now();
                    let taken = s.drain();
                    spent += t0.elapsed();
                    assert!(taken >= n * 1000 * d.len(), "drained the batch");
                }
                spent
            });
        });
    }
    g.finish();
}

fn config() -> Criterion {
    // Short runs: `cargo bench` runs this target too, and the machine is shared.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = encoder, hub_publish, hub_fan_out, hub_drain
}
criterion_main!(benches);

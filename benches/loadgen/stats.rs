//! Measurement plumbing: a lock-free latency histogram, the process clock, and the
//! server's RSS and CPU time read from `/proc`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// Microseconds since the first call in this process. The publisher stamps events with it
/// and the streams read it on arrival: one process, one monotonic clock.
pub fn now_us() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Sub-buckets per power of two: values are kept within 1/64 (1.6%) of their true size.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values up to 2^42 µs (~50 days) have their own bucket; larger ones share the last.
const MAX_EXP: u32 = 42;
const BUCKETS: usize = (2 * SUB + (MAX_EXP as u64 - SUB_BITS as u64) * SUB) as usize;

/// A log-linear histogram of microsecond values that many tasks record into at once.
///
/// Striped: each recording thread adds to a shard of its own, so that two threads
/// recording every delivery (10 million in an S3 burst) do not pass the same cache lines
/// back and forth; readers add the shards up.
pub struct Histogram {
    shards: Box<[Shard]>,
}

/// One thread's part of a [`Histogram`], on cache lines of its own.
#[repr(align(128))]
struct Shard {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

/// Shards per histogram: more than the load generator's threads on these machines.
const SHARDS: usize = 8;

impl Default for Shard {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

/// This thread's shard: threads take the next one in turn as they first record.
fn my_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    MINE.with(|m| *m)
}

fn bucket_of(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    if exp >= MAX_EXP {
        return BUCKETS - 1;
    }
    let shift = exp - SUB_BITS;
    let sub = (v >> shift) - SUB; // 0..SUB
    (2 * SUB + u64::from(shift - 1) * SUB + sub) as usize
}

/// The largest value that falls into bucket `i`.
fn upper_of(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        return i;
    }
    let shift = (i - 2 * SUB) / SUB + 1;
    let sub = (i - 2 * SUB) % SUB + SUB;
    ((sub + 1) << shift) - 1
}

impl Histogram {
    /// Records one value.
    pub fn record(&self, v: u64) {
        self.record_n(v, 1);
    }

    /// Records `n` occurrences of `v`.
    pub fn record_n(&self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        let shard = &self.shards[my_shard()];
        shard.buckets[bucket_of(v)].fetch_add(n, Ordering::Relaxed);
        shard.count.fetch_add(n, Ordering::Relaxed);
        shard.sum.fetch_add(v.saturating_mul(n), Ordering::Relaxed);
        if shard.max.load(Ordering::Relaxed) < v {
            shard.max.fetch_max(v, Ordering::Relaxed);
        }
    }

    /// Adds up one field over the shards.
    fn total(&self, field: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .sum()
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.total(|s| &s.count)
    }

    /// The exact largest value.
    pub fn max(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.max.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// The mean, or 0 when empty.
    pub fn mean(&self) -> u64 {
        self.total(|s| &s.sum) / self.count().max(1)
    }

    /// The value at quantile `q` (0..=1), rounded up to its bucket's top (never above the
    /// exact maximum); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for i in 0..BUCKETS {
            seen += self.total(|s| &s.buckets[i]);
            if seen >= rank {
                return upper_of(i).min(self.max());
            }
        }
        self.max()
    }

    /// `p50/p90/p99/max` in milliseconds, for reports.
    pub fn summary_ms(&self) -> String {
        format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
            ms(self.quantile(0.50)),
            ms(self.quantile(0.90)),
            ms(self.quantile(0.99)),
            ms(self.max()),
            self.count()
        )
    }

    /// The same numbers as JSON (milliseconds).
    pub fn json_ms(&self) -> serde_json::Value {
        serde_json::json!({
            "n": self.count(),
            "p50_ms": ms(self.quantile(0.50)),
            "p90_ms": ms(self.quantile(0.90)),
            "p99_ms": ms(self.quantile(0.99)),
            "max_ms": ms(self.max()),
            "mean_ms": ms(self.mean()),
        })
    }
}

/// Microseconds as fractional milliseconds.
pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The server processes being measured (`--pid`, repeatable: nginx master and workers,
/// Pushpin's processes); their RSS and CPU times are summed.
#[derive(Debug, Clone, Default)]
pub struct Server {
    pids: Vec<u32>,
    ticks_per_sec: u64,
}

/// One reading of the server's resources.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Sum of `VmRSS` in KiB.
    pub rss_kb: u64,
    /// Sum of user + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

impl Server {
    /// The processes `pids` (may be empty: then every sample reads zero).
    pub fn new(pids: Vec<u32>) -> Self {
        Self {
            pids,
            ticks_per_sec: clock_ticks(),
        }
    }

    /// Whether any process is being measured.
    pub fn is_set(&self) -> bool {
        !self.pids.is_empty()
    }

    /// Reads RSS and CPU time of every process now. A vanished process reads zero.
    pub fn sample(&self) -> Sample {
        let mut s = Sample::default();
        for pid in &self.pids {
            s.rss_kb += rss_kb(*pid).unwrap_or(0);
            s.cpu_ticks += cpu_ticks(*pid).unwrap_or(0);
        }
        s
    }

    /// CPU seconds between two samples.
    pub fn cpu_secs(&self, from: Sample, to: Sample) -> f64 {
        to.cpu_ticks.saturating_sub(from.cpu_ticks) as f64 / self.ticks_per_sec as f64
    }
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: count fields after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) are the 12th and 13th after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `sysconf(_SC_CLK_TCK)` without libc: ask `getconf`, fall back to Linux's usual 100.
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Checks the bucket arithmetic (`loadgen selftest`).
pub fn selftest() -> Result<(), String> {
    for v in [0, 1, 127, 128, 129, 1000, 65_535, 1 << 30, 123_456_789] {
        let i = bucket_of(v);
        let up = upper_of(i);
        if up < v || up - v > v / 64 + 1 || (i > 0 && upper_of(i - 1) >= v) {
            return Err(format!(
                "histogram bucket of {v} is wrong (bucket {i}, top {up})"
            ));
        }
    }
    let h = Histogram::default();
    for v in 1..=1000 {
        h.record(v);
    }
    let p99 = h.quantile(0.99);
    if !(990..=1000).contains(&p99) || h.max() != 1000 {
        return Err(format!("histogram p99 of 1..=1000 is {p99}"));
    }
    Ok(())
}

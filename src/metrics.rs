//! Counters for `/metrics`: plain atomics, cheap enough for the hot path.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// The process's counters and gauges. Shared by every module through an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: AtomicI64,
    published: AtomicU64,
    delivered: AtomicU64,
    dropped_overflow: AtomicU64,
    slow_consumer_disconnects: AtomicU64,
}

impl Metrics {
    /// Events accepted by the broker.
    pub fn published(&self, n: u64) {
        self.published.fetch_add(n, Relaxed);
    }

    /// Events handed to subscribers' connections.
    pub fn delivered(&self, n: u64) {
        if n > 0 {
            self.delivered.fetch_add(n, Relaxed);
        }
    }

    /// Events dropped by the `drop_oldest` policy.
    pub fn dropped_overflow(&self, n: u64) {
        self.dropped_overflow.fetch_add(n, Relaxed);
    }

    /// A stream ended by the `disconnect` policy.
    pub fn slow_consumer_disconnect(&self) {
        self.slow_consumer_disconnects.fetch_add(1, Relaxed);
    }

    /// A stream opened (`+1`) or closed (`-1`).
    pub fn connections_add(&self, d: i64) {
        self.connections.fetch_add(d, Relaxed);
    }

    /// Renders the Prometheus text format.
    pub fn render(&self, broker_up: bool) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(1024);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "ssegate_connections",
            "gauge",
            "Open event streams.",
            self.connections.load(Relaxed).to_string(),
        );
        metric(
            "ssegate_events_published_total",
            "counter",
            "Events accepted by the broker.",
            self.published.load(Relaxed).to_string(),
        );
        metric(
            "ssegate_events_delivered_total",
            "counter",
            "Events written to subscribers.",
            self.delivered.load(Relaxed).to_string(),
        );
        metric(
            "ssegate_slow_consumer_disconnects_total",
            "counter",
            "Streams ended because their queue was full.",
            self.slow_consumer_disconnects.load(Relaxed).to_string(),
        );
        metric(
            "ssegate_broker_up",
            "gauge",
            "Whether the broker is reachable.",
            u8::from(broker_up).to_string(),
        );
        let _ = writeln!(
            s,
            "# HELP ssegate_events_dropped_total Events dropped before delivery.\n# TYPE ssegate_events_dropped_total counter\nssegate_events_dropped_total{{reason=\"overflow\"}} {}",
            self.dropped_overflow.load(Relaxed)
        );
        s
    }
}

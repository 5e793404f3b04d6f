//! The process's metrics, rendered for Prometheus at `/metrics`.
//!
//! Every labelled series is created up front and its handle kept, so an increment on the hot
//! path is one relaxed atomic add: no lock, no map lookup, no allocation. Label values come
//! from fixed sets (no per-topic or per-IP labels), so the number of series is bounded; the
//! one exception, `tenant`, is rendered by [`crate::tenants`] for at most 101 values.

use crate::publish::PublishError;
use crate::tenants::Tenants;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// Why a stream was refused (`ssegate_connections_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `limits.max_connections`.
    MaxConnections,
    /// `limits.max_connections_per_ip`.
    MaxConnectionsPerIp,
    /// `limits.max_connections_per_tenant`.
    MaxConnectionsPerTenant,
    /// `limits.connect_rate_per_ip`.
    ConnectRate,
    /// No or an invalid token.
    Unauthorized,
    /// A topic outside the grant.
    Forbidden,
    /// The app said no (`auth.mode: upstream`), or could not be asked.
    UpstreamAuth,
    /// A malformed request (topic, type, resume point).
    BadRequest,
    /// The instance is shutting down.
    ShuttingDown,
}

impl Rejection {
    const ALL: [Self; 9] = [
        Self::MaxConnections,
        Self::MaxConnectionsPerIp,
        Self::MaxConnectionsPerTenant,
        Self::ConnectRate,
        Self::Unauthorized,
        Self::Forbidden,
        Self::UpstreamAuth,
        Self::BadRequest,
        Self::ShuttingDown,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerIp => "max_connections_per_ip",
            Self::MaxConnectionsPerTenant => "max_connections_per_tenant",
            Self::ConnectRate => "connect_rate",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::UpstreamAuth => "upstream_auth",
            Self::BadRequest => "bad_request",
            Self::ShuttingDown => "shutting_down",
        }
    }
}

/// Which rate limit refused (`ssegate_rate_limited_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimited {
    /// New streams per IP.
    Connect,
    /// Proxied requests per IP.
    Requests,
}

type Labels = Vec<(&'static str, &'static str)>;

/// All of ssegate's metrics. Shared through an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Gauge,
    max_connections: Gauge,
    rejected: [Counter; Rejection::ALL.len()],
    published: Counter,
    delivered: Counter,
    dropped_overflow: Counter,
    slow_consumer_disconnects: Counter,
    publish_duration: Histogram,
    publish_rejected: [Counter; PublishError::CODES.len()],
    proxy_requests: [Counter; 5],
    upstream_duration: Histogram,
    rate_limited: [Counter; 2],
    broker_up: Gauge,
    derived: Family<Vec<(&'static str, String)>, Counter>,
    watched: Family<Vec<(&'static str, String)>, Counter>,
    upstream_connections: Gauge,
    requests_rejected: [Counter; REQUEST_REJECTIONS.len()],
    tenants: Arc<Tenants>,
}

/// The counters the dashboard samples each second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// `ssegate_events_published_total`.
    pub published: u64,
    /// `ssegate_events_delivered_total`.
    pub delivered: u64,
    /// `ssegate_slow_consumer_disconnects_total`.
    pub slow_consumer_disconnects: u64,
    /// `ssegate_events_dropped_total{reason="overflow"}`.
    pub dropped: u64,
    /// `ssegate_connections_rejected_total`, by reason.
    pub rejected: [(&'static str, u64); Rejection::ALL.len()],
}

/// Why ssegate refused a proxied request itself (`ssegate_requests_rejected_total{reason}`).
const REQUEST_REJECTIONS: [&str; 2] = ["concurrent_requests_per_ip", "upstream_busy"];

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let connections = Gauge::default();
        registry.register(
            "ssegate_connections",
            "Open event streams",
            connections.clone(),
        );

        let max_connections = Gauge::default();
        registry.register(
            "ssegate_max_connections",
            "The configured limits.max_connections (for alerts on ssegate_connections near it)",
            max_connections.clone(),
        );

        let rejected_family = Family::<Labels, Counter>::default();
        let rejected = Rejection::ALL.map(|r| {
            rejected_family
                .get_or_create(&vec![("reason", r.as_str())])
                .clone()
        });
        registry.register(
            "ssegate_connections_rejected",
            "Streams refused, by reason",
            rejected_family,
        );

        let published = Counter::default();
        registry.register(
            "ssegate_events_published",
            "Events accepted by the broker",
            published.clone(),
        );
        let delivered = Counter::default();
        registry.register(
            "ssegate_events_delivered",
            "Events written to subscriber connections",
            delivered.clone(),
        );

        let dropped_family = Family::<Labels, Counter>::default();
        let dropped_overflow = dropped_family
            .get_or_create(&vec![("reason", "overflow")])
            .clone();
        registry.register(
            "ssegate_events_dropped",
            "Events dropped before delivery, by reason",
            dropped_family,
        );

        let slow_consumer_disconnects = Counter::default();
        registry.register(
            "ssegate_slow_consumer_disconnects",
            "Streams ended because their queue was full",
            slow_consumer_disconnects.clone(),
        );

        let publish_duration = Histogram::new(latency_buckets());
        registry.register(
            "ssegate_publish_duration_seconds",
            "Time to store a publish request's events",
            publish_duration.clone(),
        );

        let refused_family = Family::<Labels, Counter>::default();
        let publish_rejected =
            PublishError::CODES.map(|c| refused_family.get_or_create(&vec![("reason", c)]).clone());
        registry.register(
            "ssegate_publish_rejected",
            "Publish requests refused, by error code (overloaded: the dispatchers are behind)",
            refused_family,
        );

        let proxy_family = Family::<Labels, Counter>::default();
        let proxy_requests = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| {
            proxy_family
                .get_or_create(&vec![("status_class", c)])
                .clone()
        });
        registry.register(
            "ssegate_proxy_requests",
            "Proxied requests, by response status class",
            proxy_family,
        );

        let upstream_duration = Histogram::new(latency_buckets());
        registry.register(
            "ssegate_upstream_duration_seconds",
            "Time from forwarding a request to the upstream's response head",
            upstream_duration.clone(),
        );

        let limited_family = Family::<Labels, Counter>::default();
        let rate_limited = ["connect", "requests"]
            .map(|k| limited_family.get_or_create(&vec![("kind", k)]).clone());
        registry.register(
            "ssegate_rate_limited",
            "Refusals by a per-IP rate limit, by kind",
            limited_family,
        );

        let broker_up = Gauge::default();
        registry.register(
            "ssegate_broker_up",
            "Whether the broker is reachable (1) or not (0)",
            broker_up.clone(),
        );

        let derived = Family::<Vec<(&'static str, String)>, Counter>::default();
        registry.register(
            "ssegate_derived_events",
            "Requests matched by a derive rule, by rule and outcome",
            derived.clone(),
        );

        let watched = Family::<Vec<(&'static str, String)>, Counter>::default();
        registry.register(
            "ssegate_watch_polls",
            "Polls of watched app URLs, by rule and outcome",
            watched.clone(),
        );
        let upstream_connections = Gauge::default();
        registry.register(
            "ssegate_upstream_connections",
            "Connections to the app open now, idle ones included",
            upstream_connections.clone(),
        );
        let requests_rejected_family = Family::<Labels, Counter>::default();
        let requests_rejected = REQUEST_REJECTIONS.map(|r| {
            requests_rejected_family
                .get_or_create(&vec![("reason", r)])
                .clone()
        });
        registry.register(
            "ssegate_requests_rejected",
            "Proxied requests refused by an in-flight cap, by reason",
            requests_rejected_family,
        );

        let tenants = Arc::new(Tenants::default());
        registry.register_collector(Box::new(Arc::clone(&tenants)));

        Self {
            registry,
            tenants,
            derived,
            watched,
            connections,
            max_connections,
            rejected,
            published,
            delivered,
            dropped_overflow,
            slow_consumer_disconnects,
            publish_duration,
            publish_rejected,
            proxy_requests,
            upstream_duration,
            rate_limited,
            broker_up,
            upstream_connections,
            requests_rejected,
        }
    }
}

impl Metrics {
    /// A `derive` rule's outcome. Off the hot path: only requests a rule matched get here,
    /// and the rules' names bound the series.
    pub fn derived(&self, rule: &str, outcome: &'static str) {
        self.derived_n(rule, outcome, 1);
    }

    /// `n` requests of a `derive` rule with the same outcome (a batch of its events).
    pub fn derived_n(&self, rule: &str, outcome: &'static str, n: u64) {
        self.derived_counter(rule, outcome).inc_by(n);
    }

    /// The series of a `derive` rule's outcome, for a caller that counts it often: kept,
    /// it is incremented without a lookup.
    pub fn derived_counter(&self, rule: &str, outcome: &'static str) -> Counter {
        self.derived
            .get_or_create(&vec![
                ("rule", rule.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .clone()
    }

    /// A `watch` poll's outcome (one per topic per interval at most).
    pub fn watched(&self, rule: &str, outcome: &'static str) {
        self.watched
            .get_or_create(&vec![
                ("rule", rule.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    /// Events accepted by the broker.
    pub fn published(&self, n: u64) {
        self.published.inc_by(n);
    }

    /// Events handed to subscribers' connections.
    pub fn delivered(&self, n: u64) {
        if n > 0 {
            self.delivered.inc_by(n);
        }
    }

    /// Events dropped by the `drop_oldest` policy.
    pub fn dropped_overflow(&self, n: u64) {
        self.dropped_overflow.inc_by(n);
    }

    /// A stream ended by the `disconnect` policy.
    pub fn slow_consumer_disconnect(&self) {
        self.slow_consumer_disconnects.inc();
    }

    /// A stream opened (`+1`) or closed (`-1`).
    pub fn connections_add(&self, d: i64) {
        self.connections.inc_by(d);
    }

    /// A refused stream.
    pub fn rejected(&self, why: Rejection) {
        if let Some(i) = Rejection::ALL.iter().position(|r| *r == why) {
            self.rejected[i].inc();
        }
    }

    /// A refusal by a rate limit.
    pub fn rate_limited(&self, kind: RateLimited) {
        self.rate_limited[kind as usize].inc();
    }

    /// A connection to the app opened (`+1`) or closed (`-1`).
    pub fn upstream_connections_add(&self, d: i64) {
        self.upstream_connections.inc_by(d);
    }

    /// A proxied request refused by an in-flight cap, by its reason label
    /// (`concurrent_requests_per_ip`, `upstream_busy`).
    pub fn request_rejected(&self, reason: &str) {
        if let Some(i) = REQUEST_REJECTIONS.iter().position(|r| *r == reason) {
            self.requests_rejected[i].inc();
        }
    }

    /// How long a publish took to store.
    pub fn publish_duration(&self, d: Duration) {
        self.publish_duration.observe(d.as_secs_f64());
    }

    /// A refused publish, by its error code (one of [`PublishError::CODES`]).
    pub fn publish_rejected(&self, code: &str) {
        if let Some(i) = PublishError::CODES.iter().position(|c| *c == code) {
            self.publish_rejected[i].inc();
        }
    }

    /// A proxied request's status, and the upstream's time to answer if it was reached.
    pub fn proxied(&self, status: u16, upstream: Option<Duration>) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.proxy_requests[class].inc();
        if let Some(d) = upstream {
            self.upstream_duration.observe(d.as_secs_f64());
        }
    }

    /// The per-tenant counts (and cap), shown in `/metrics` as `ssegate_tenant_*`.
    pub fn tenants(&self) -> &Arc<Tenants> {
        &self.tenants
    }

    /// Open event streams (`ssegate_connections`).
    pub fn connections(&self) -> i64 {
        self.connections.get()
    }

    /// The configured `limits.max_connections` (at start and on reload).
    pub fn set_max_connections(&self, n: usize) {
        self.max_connections
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The configured `limits.max_connections`.
    pub fn max_connections(&self) -> i64 {
        self.max_connections.get()
    }

    /// The counters as they are now.
    pub fn totals(&self) -> Totals {
        Totals {
            published: self.published.get(),
            delivered: self.delivered.get(),
            slow_consumer_disconnects: self.slow_consumer_disconnects.get(),
            dropped: self.dropped_overflow.get(),
            rejected: std::array::from_fn(|i| (Rejection::ALL[i].as_str(), self.rejected[i].get())),
        }
    }

    /// Renders the text exposition format.
    pub fn render(&self, broker_up: bool) -> String {
        self.broker_up.set(i64::from(broker_up));
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

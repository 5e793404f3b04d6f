//! The validated configuration: what the rest of ssegate reads.
//!
//! Every value here has already been checked; other modules never re-validate it.
//! Defaults live in one place, [`Config::with_upstream`] and the private `defaults()`
//! constructors, so the loader, the example file and the docs agree.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

/// The whole, validated configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Public listener: SSE streams and the proxied app. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// Internal listener: publish webhook, health, metrics. Default `127.0.0.1:8081`.
    pub admin_listen: SocketAddr,
    /// The app: `http://host[:port]` (port 80 when absent), no path, no query.
    pub upstream: hyper::Uri,
    /// Time limits on talking to the upstream.
    pub upstream_timeouts: UpstreamTimeouts,
    /// Peers whose `X-Forwarded-For` / `Forwarded` headers are believed. A bare IP is a /32 or /128.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The SSE endpoint and its streams.
    pub events: Events,
    /// The publish webhook on the internal listener.
    pub publish: Publish,
    /// Who may subscribe to what.
    pub auth: Auth,
    /// Connection caps and per-IP rates.
    pub limits: Limits,
    /// Where events are stored and fanned out.
    pub broker: Broker,
    /// Which topics belong to which tenant.
    pub tenants: super::Tenants,
    /// Graceful shutdown.
    pub shutdown: Shutdown,
    /// Logging.
    pub log: Log,
    /// Events derived from proxied requests.
    pub derive: Vec<DeriveRule>,
    /// App URLs polled while their topics have streams.
    pub watch: Vec<WatchRule>,
    /// Threads serving the public listener and the fan-out: `None` (`auto`) for one per
    /// core. Fewer suit a machine shared with the app (nginx's `worker_processes`).
    pub workers: Option<usize>,
}

impl Config {
    /// All defaults, with the given upstream (which is taken as is, not validated).
    ///
    /// Tests and `ssegate demo` use this instead of a file.
    pub fn with_upstream(upstream: hyper::Uri) -> Config {
        Config {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080)),
            admin_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8081)),
            upstream,
            upstream_timeouts: UpstreamTimeouts::defaults(),
            trusted_proxies: Vec::new(),
            events: Events::defaults(),
            publish: Publish::defaults(),
            auth: Auth::defaults(),
            limits: Limits::defaults(),
            broker: Broker::defaults(),
            tenants: super::Tenants::default(),
            shutdown: Shutdown::defaults(),
            log: Log::defaults(),
            derive: Vec::new(),
            watch: Vec::new(),
            workers: None,
        }
    }
}

/// Time limits on requests to the upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTimeouts {
    /// TCP connect to the upstream. Default 5s.
    pub connect: Duration,
    /// From request sent to response headers received. Default 60s.
    pub response: Duration,
}

impl UpstreamTimeouts {
    pub(super) fn defaults() -> Self {
        UpstreamTimeouts {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(60),
        }
    }
}

/// The SSE endpoint and the behaviour of its streams.
#[derive(Debug, Clone, PartialEq)]
pub struct Events {
    /// Path prefix terminated by ssegate. Default `/events`; starts with `/`, does not end
    /// with `/`, not under `/_ssegate`.
    pub path: String,
    /// Idle time after which a `: hb` comment is sent. Default 15s, never zero.
    pub heartbeat: Duration,
    /// Sent as the SSE `retry:` field when a stream opens. Default 2s.
    pub retry: Duration,
    /// How much history is kept for resumption.
    pub history: History,
    /// Events queued per subscriber before `slow_consumer` applies. Default 1000, at least 1.
    pub subscriber_buffer: usize,
    /// What happens to a subscriber whose queue is full. Default `disconnect`.
    pub slow_consumer: SlowConsumer,
    /// Most topics one stream may follow. Default 32, at least 1.
    pub max_topics_per_subscription: usize,
    /// Cross-origin access to the stream endpoint.
    pub cors: Cors,
}

impl Events {
    pub(super) fn defaults() -> Self {
        Events {
            path: "/events".to_owned(),
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            history: History {
                max_events: 10_000,
                max_bytes: 64 << 20,
                max_age: Duration::from_secs(3600),
            },
            subscriber_buffer: 1000,
            slow_consumer: SlowConsumer::Disconnect,
            max_topics_per_subscription: 32,
            cors: Cors {
                allow_origins: Vec::new(),
            },
        }
    }
}

/// Bounds of the event history; an event leaves when either bound pushes it out.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// Most events kept (across all topics). Default 10000, at least 1.
    pub max_events: usize,
    /// Most bytes of encoded events kept. Default 64 MiB, more than zero.
    pub max_bytes: usize,
    /// Oldest event kept. Default 1h, never zero.
    pub max_age: Duration,
}

/// What happens when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumer {
    /// End the stream; the client reconnects and resumes from history.
    Disconnect,
    /// Drop the oldest queued events and tell the client with `ssegate.overflow`.
    DropOldest,
}

impl SlowConsumer {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            SlowConsumer::Disconnect => "disconnect",
            SlowConsumer::DropOldest => "drop_oldest",
        }
    }
}

/// CORS for the stream endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Cors {
    /// Exact origins (`scheme://host[:port]`, lowercase), or the single entry `*`. Default empty:
    /// no CORS headers.
    pub allow_origins: Vec<String>,
}

/// The publish webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// When set, `POST /publish` needs `Authorization: Bearer <token>`. Empty means none.
    pub token: Option<String>,
    /// Largest accepted request body, in bytes. Default 1 MiB.
    pub max_body: usize,
    /// Largest single event, in bytes; never more than `max_body`. Default 64 KiB.
    pub max_event_bytes: usize,
}

impl Publish {
    pub(super) fn defaults() -> Self {
        Publish {
            token: None,
            max_body: 1024 * 1024,
            max_event_bytes: 64 * 1024,
        }
    }
}

/// Subscriber authorization.
#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    /// Which check applies. Default `none`.
    pub mode: AuthMode,
    /// Settings for `mode: jwt`.
    pub jwt: Jwt,
    /// Settings for `mode: upstream`.
    pub upstream: AuthUpstream,
}

impl Auth {
    pub(super) fn defaults() -> Self {
        Auth {
            mode: AuthMode::None,
            jwt: Jwt {
                algorithms: vec![JwtAlgorithm::HS256],
                secret: None,
                public_key_file: None,
                cookie: None,
                topics_claim: "topics".to_owned(),
                admin_claim: "admin".to_owned(),
                allow: Vec::new(),
            },
            upstream: AuthUpstream {
                path: "/sse-auth".to_owned(),
            },
        }
    }
}

/// How subscribers are authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Anyone may read any topic.
    None,
    /// A JWT names the topics a subscriber may read.
    Jwt,
    /// The app is asked on every new stream.
    Upstream,
}

impl AuthMode {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Jwt => "jwt",
            AuthMode::Upstream => "upstream",
        }
    }
}

/// JWT verification settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Jwt {
    /// Accepted signing algorithms. Default `[HS256]`; never empty.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Shared secret for the HS* algorithms. Empty means none.
    pub secret: Option<String>,
    /// PEM public key for RS256/ES256/EdDSA. Relative paths are relative to the working
    /// directory. Known to exist at load time when `mode` is `jwt` and a key is needed.
    pub public_key_file: Option<PathBuf>,
    /// Also read the token from this cookie. Empty means none.
    pub cookie: Option<String>,
    /// Claim listing the topic patterns a subscriber may read. Default `topics`.
    pub topics_claim: String,
    /// Claim that, when `true`, allows every topic. Default `admin`.
    pub admin_claim: String,
    /// Extra patterns filled from claims, like `user/{sub}/*`. Default empty.
    pub allow: Vec<String>,
}

/// A JWT signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 (shared secret).
    HS256,
    /// HMAC with SHA-384 (shared secret).
    HS384,
    /// HMAC with SHA-512 (shared secret).
    HS512,
    /// RSA PKCS#1 v1.5 with SHA-256 (public key).
    RS256,
    /// ECDSA P-256 with SHA-256 (public key).
    ES256,
    /// Ed25519 (public key).
    EdDSA,
}

impl JwtAlgorithm {
    /// Every algorithm, in the order of the documentation.
    pub const ALL: [JwtAlgorithm; 6] = [
        JwtAlgorithm::HS256,
        JwtAlgorithm::HS384,
        JwtAlgorithm::HS512,
        JwtAlgorithm::RS256,
        JwtAlgorithm::ES256,
        JwtAlgorithm::EdDSA,
    ];

    /// The name used in the configuration file and in a JWT's `alg` header.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::HS384 => "HS384",
            JwtAlgorithm::HS512 => "HS512",
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    /// Whether this algorithm verifies with a shared secret (HS*) rather than a public key.
    pub fn uses_secret(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    }
}

/// `mode: upstream` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthUpstream {
    /// Path on the upstream that answers authorization questions. Default `/sse-auth`.
    pub path: String,
}

/// Connection caps and per-IP rates.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Streams on the whole instance (then 503). Default 10000.
    pub max_connections: usize,
    /// Streams per client IP (then 429). Default 20.
    pub max_connections_per_ip: usize,
    /// Streams per tenant (then 429); `None`, the default, is unlimited.
    pub max_connections_per_tenant: Option<usize>,
    /// New streams per client IP (then 429). Default 60/min.
    pub connect_rate_per_ip: Rate,
    /// Proxied requests per client IP (then 429); `None` is off, the default.
    pub requests_per_ip: Option<Rate>,
    /// Proxied requests in flight per client IP (then 429). Default 64.
    pub concurrent_requests_per_ip: usize,
    /// Connections to the app, idle ones included; a request beyond waits up to
    /// `upstream_timeouts.connect`, then gets 503 `upstream_busy`. Default 512.
    pub max_upstream_connections: usize,
}

impl Limits {
    pub(super) fn defaults() -> Self {
        Limits {
            max_connections: 10_000,
            max_connections_per_ip: 20,
            max_connections_per_tenant: None,
            connect_rate_per_ip: Rate {
                count: NonZeroU32::MIN.saturating_add(59),
                per: Duration::from_secs(60),
            },
            requests_per_ip: None,
            concurrent_requests_per_ip: 64,
            max_upstream_connections: 512,
        }
    }
}

/// A rate: `count` events per `per`, written `10/min`, `100/s` or `2/500ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many in each period.
    pub count: NonZeroU32,
    /// The period; never zero.
    pub per: Duration,
}

impl Rate {
    /// Time for one unit to be earned back (`per / count`): the refill interval of a token bucket.
    pub fn interval(&self) -> Duration {
        self.per / self.count.get()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_millis() {
            1_000 => "s".to_owned(),
            60_000 => "min".to_owned(),
            3_600_000 => "h".to_owned(),
            86_400_000 => "day".to_owned(),
            _ => humantime::format_duration(self.per).to_string(),
        };
        write!(f, "{}/{}", self.count, unit)
    }
}

/// Event storage and fan-out between instances.
#[derive(Debug, Clone, PartialEq)]
pub struct Broker {
    /// Which broker. Default `memory`.
    pub kind: BrokerKind,
    /// Settings for `kind: disk` (validated whichever kind is chosen).
    pub disk: Disk,
    /// Settings for `kind: redis` (validated whichever kind is chosen).
    pub redis: Redis,
}

impl Broker {
    pub(super) fn defaults() -> Self {
        Broker {
            kind: BrokerKind::Memory,
            disk: Disk {
                dir: PathBuf::from("/var/lib/ssegate"),
                sync: DiskSync::Always,
            },
            redis: Redis {
                url: "redis://127.0.0.1:6379".to_owned(),
                stream: "ssegate:events".to_owned(),
            },
        }
    }
}

/// Which broker holds the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// In this process only: one instance.
    Memory,
    /// In this process, its history kept in a directory: one instance, survives restarts.
    Disk,
    /// A Redis stream shared by every instance.
    Redis,
}

impl BrokerKind {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Memory => "memory",
            BrokerKind::Disk => "disk",
            BrokerKind::Redis => "redis",
        }
    }
}

/// Disk broker settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    /// Directory holding the history's segment files. Default `/var/lib/ssegate`.
    pub dir: PathBuf,
    /// When writes are flushed to the disk. Default `always`.
    pub sync: DiskSync,
}

/// When the disk broker flushes its writes to the disk (`fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskSync {
    /// Before answering each publish (concurrent publishes share one flush).
    Always,
    /// At least this often; a publish is answered once written to the OS.
    Every(Duration),
}

/// Redis broker settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Redis {
    /// `redis://` or `rediss://` URL. Default `redis://127.0.0.1:6379`.
    pub url: String,
    /// Stream key. Default `ssegate:events`.
    pub stream: String,
}

/// Graceful shutdown.
#[derive(Debug, Clone, PartialEq)]
pub struct Shutdown {
    /// Time given to in-flight proxied requests after SIGTERM. Default 5s.
    pub grace: Duration,
}

impl Shutdown {
    pub(super) fn defaults() -> Self {
        Shutdown {
            grace: Duration::from_secs(5),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    /// Line format. Default `pretty`.
    pub format: LogFormat,
    /// `trace`…`error` or an `EnvFilter` directive; `RUST_LOG` overrides it. Default `info`.
    pub level: String,
}

impl Log {
    pub(super) fn defaults() -> Self {
        Log {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        }
    }
}

/// A `derive` rule: a proxied request the app accepted becomes an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeriveRule {
    /// Its name, in logs and metrics.
    pub name: String,
    /// The methods it matches (upper case). Default POST, PUT, PATCH, DELETE.
    pub methods: Vec<String>,
    /// The path template, segment by segment.
    pub path: Vec<PathPart>,
    /// The app's statuses it matches. Default `2xx`.
    pub status: Vec<StatusMatch>,
    /// The topic template.
    pub topic: Vec<TopicPart>,
    /// The SSE event type, if any.
    pub event: Option<String>,
    /// What the event's data is.
    pub data: DeriveData,
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    /// A segment that must be exactly this.
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Param(String),
    /// `{name*}`: the rest of the path, one segment or more (last only).
    Rest(String),
}

/// One piece of a topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPart {
    /// Text taken as is.
    Literal(String),
    /// `{name}`: a parameter of the path.
    Param(String),
    /// `{response.header.NAME}`: a header of the app's response (name in lower case).
    ResponseHeader(String),
}

/// A status a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    /// Exactly this code.
    Code(u16),
    /// A class: `2` for `2xx`.
    Class(u16),
}

impl StatusMatch {
    /// Whether `status` matches.
    pub fn matches(self, status: u16) -> bool {
        match self {
            Self::Code(c) => c == status,
            Self::Class(c) => status / 100 == c,
        }
    }
}

/// What a derived event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeriveData {
    /// Method, path, status, parameters and `Location`: no body.
    #[default]
    Meta,
    /// The request's body, when it is JSON or text and fits `max_event_bytes`.
    Request,
    /// The response's body, likewise.
    Response,
}

/// A `watch` rule: an app URL polled while a topic has streams, published when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRule {
    /// Its name, in logs and metrics.
    pub name: String,
    /// The topics it serves: literal text and `{name}` placeholders (one segment each).
    pub topic: Vec<TopicPart>,
    /// The app's path (and query), with the topic's placeholders.
    pub url: Vec<TopicPart>,
    /// How often a followed topic is polled.
    pub every: Duration,
    /// The SSE event type, if any.
    pub event: Option<String>,
    /// Headers sent with every poll.
    pub headers: Vec<(String, String)>,
}

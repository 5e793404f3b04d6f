//! The public listener: event streams are terminated here, `/_ssegate/` is ssegate's own,
//! and everything else is forwarded to the app.
//!
//! A stream request goes: parse (400) → caps, connect rate and the tenant cap (503/429) →
//! auth (401/403, or the app's own answer in `upstream` mode) → hub subscription. Every
//! refusal is one metric increment, and a log line unless its (reason, address) logged one
//! in the last 10 s ([`crate::logbound`]).

mod client_ip;
mod cors;
mod events;
mod forward;
mod http1;
mod raw;
mod relay;

pub use client_ip::client_ip;
pub use cors::Cors;
pub use events::{StreamError, parse_request};
pub use forward::{ForwardError, Forwarder};

use crate::auth::{self, Authenticator, Grant, KeyError};
use crate::config::Config;
use crate::head::{self, HeadError};
use crate::hub::{Hub, Selector};
use crate::limits::{InFlight, InFlightError, LimitError, Limits, RequestSlot, UpstreamCap};
use crate::logbound;
use crate::metrics::{Metrics, RateLimited, Rejection};
use crate::response::{ApiError, Body, EventBody, GuardedBody, error_response, json_error};
use crate::server::Handler;
use crate::shutdown::Shutdown;
use crate::watch::Watcher;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// Paths under this prefix belong to ssegate and are never proxied.
pub const OWN_PREFIX: &str = "/_ssegate";

/// What a reload may change in the public listener.
struct Policy {
    auth: Authenticator,
    auth_path: String,
    cors: Cors,
    max_topics: usize,
    trusted_proxies: Vec<IpNet>,
    derive: crate::derive::Rules,
}

impl Policy {
    fn new(config: &Config) -> Result<Self, KeyError> {
        Ok(Self {
            auth: Authenticator::new(&config.auth)?,
            auth_path: config.auth.upstream.path.clone(),
            cors: Cors::new(&config.events.cors.allow_origins),
            max_topics: config.events.max_topics_per_subscription,
            trusted_proxies: config.trusted_proxies.clone(),
            derive: crate::derive::Rules::new(&config.derive, config.publish.max_event_bytes),
        })
    }
}

/// The public listener's request handler.
pub struct Public {
    events_path: String,
    policy: RwLock<Arc<Policy>>,
    limits: Arc<Limits>,
    hub: Hub,
    forwarder: Forwarder,
    /// Kept-alive connections to the app for [`http1`]'s forwards.
    upstreams: relay::Upstreams,
    /// `limits.concurrent_requests_per_ip`.
    inflight: Arc<InFlight>,
    /// `limits.max_upstream_connections`, shared by `forwarder` and `upstreams`.
    upstream_cap: Arc<UpstreamCap>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    /// Polls the app for watched topics while they have streams.
    watcher: Watcher,
    /// Publishes the events `derive` rules make.
    derived: crate::derive::Publisher,
}

/// A refused stream: either one of ours, or the app's own answer (`auth.mode: upstream`).
enum Refusal {
    Ours(Box<dyn ApiError + Send>, Rejection),
    App(Response<Body>),
}

impl<E: ApiError + Send + 'static> From<(E, Rejection)> for Refusal {
    fn from((e, why): (E, Rejection)) -> Self {
        Self::Ours(Box::new(e), why)
    }
}

impl Public {
    /// Tries one connection to the app and logs a warning if it fails: a missing app shows
    /// in the terminal at start, not only as 502s in a browser. Nothing waits for it.
    pub async fn warn_if_upstream_down(&self) {
        if let Err(e) = self.upstreams.probe().await {
            tracing::warn!(
                upstream = self.upstreams.authority(),
                "{e}: proxied requests get 502 until it accepts connections"
            );
        }
    }

    /// The handler for `config`, streaming from `hub`. Fails if the auth keys cannot be read.
    pub fn new(
        config: &Config,
        hub: Hub,
        limits: Arc<Limits>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Result<Self, KeyError> {
        let watcher = Watcher::new(config, hub.clone(), Arc::clone(&metrics));
        let derived = crate::derive::Publisher::start(hub.clone(), Arc::clone(&metrics));
        let upstream_cap = UpstreamCap::new(
            config.limits.max_upstream_connections,
            config.upstream_timeouts.connect,
            Arc::clone(&metrics),
        );
        Ok(Self {
            events_path: config.events.path.clone(),
            policy: RwLock::new(Arc::new(Policy::new(config)?)),
            limits,
            hub,
            forwarder: Forwarder::new(
                config.upstream.clone(),
                config.upstream_timeouts.connect,
                config.upstream_timeouts.response,
                Arc::clone(&upstream_cap),
            ),
            upstreams: relay::Upstreams::new(
                &config.upstream,
                config.upstream_timeouts.connect,
                config.upstream_timeouts.response,
                Arc::clone(&upstream_cap),
            ),
            watcher,
            derived,
            inflight: InFlight::new(config.limits.concurrent_requests_per_ip),
            upstream_cap,
            metrics,
            shutdown,
        })
    }

    /// Applies a reloaded configuration (auth keys, CORS, topic limit, trusted proxies,
    /// in-flight caps); open streams are untouched. On error the old policy stays.
    pub fn reload(&self, config: &Config) -> Result<(), KeyError> {
        let policy = Arc::new(Policy::new(config)?);
        self.watcher.reload(config);
        self.inflight
            .set_max(config.limits.concurrent_requests_per_ip);
        self.upstream_cap
            .set_max(config.limits.max_upstream_connections);
        *self
            .policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = policy;
        Ok(())
    }

    fn policy(&self) -> Arc<Policy> {
        Arc::clone(
            &self
                .policy
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The part of `path` after the events prefix (`""` or `/…`), if it is an events path.
    fn events_rest<'p>(&self, path: &'p str) -> Option<&'p str> {
        let rest = path.strip_prefix(self.events_path.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }

    async fn stream(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let (parts, _) = req.into_parts();
        self.stream_parts(parts, peer).await
    }

    /// Answers a request for the events path: a stream, or a refusal.
    async fn stream_parts(&self, parts: Parts, peer: SocketAddr) -> Response<Body> {
        let policy = self.policy();
        let mut resp = if parts.method == Method::OPTIONS {
            let mut resp = crate::response::empty(StatusCode::NO_CONTENT);
            policy.cors.preflight(&parts.headers, resp.headers_mut());
            return resp;
        } else if parts.method != Method::GET {
            let mut resp = error_response(&StreamError::Method);
            resp.headers_mut().insert(
                hyper::header::ALLOW,
                HeaderValue::from_static("GET, OPTIONS"),
            );
            resp
        } else {
            let ip = client_ip(peer.ip(), &parts.headers, &policy.trusted_proxies);
            match self.open(&policy, &parts, peer, ip).await {
                Ok(resp) => resp,
                Err(Refusal::App(resp)) => {
                    self.metrics.rejected(Rejection::UpstreamAuth);
                    if let Some(suppressed) = logbound::admit("refused_by_app", Some(ip)) {
                        tracing::info!(%ip, status = resp.status().as_u16(), suppressed, "stream refused by the app");
                    }
                    resp
                }
                Err(Refusal::Ours(e, why)) => {
                    self.metrics.rejected(why);
                    if let Some(suppressed) = logbound::admit(why.as_str(), Some(ip)) {
                        tracing::info!(%ip, reason = why.as_str(), status = e.status().as_u16(), suppressed, "stream refused");
                    }
                    error_response(&*e)
                }
            }
        };
        policy.cors.apply(&parts.headers, resp.headers_mut());
        resp
    }

    async fn open(
        &self,
        policy: &Policy,
        parts: &Parts,
        peer: SocketAddr,
        ip: IpAddr,
    ) -> Result<Response<Body>, Refusal> {
        if self.shutdown.is_triggered() {
            return Err((StreamError::ShuttingDown, Rejection::ShuttingDown).into());
        }
        let rest = self.events_rest(parts.uri.path()).unwrap_or("");
        let last_event_id = parts
            .headers
            .get("last-event-id")
            .map(HeaderValue::as_bytes);
        let mut sub_req = parse_request(rest, parts.uri.query(), last_event_id, policy.max_topics)
            .map_err(|e| (e, Rejection::BadRequest))?;
        let slot = self.limits.open_stream(ip).map_err(|e| {
            let why = match e {
                LimitError::TooManyConnections(_) => Rejection::MaxConnections,
                LimitError::TooManyFromIp(_) => Rejection::MaxConnectionsPerIp,
                _ => {
                    self.metrics.rate_limited(RateLimited::Connect);
                    Rejection::ConnectRate
                }
            };
            (e, why)
        })?;
        // Dropped with `slot` if a later step refuses: a refusal holds no place anywhere.
        let tenant_slot = self
            .metrics
            .tenants()
            .open(&sub_req.filter.selectors)
            .map_err(|e| (e, Rejection::MaxConnectionsPerTenant))?;
        let grant = if policy.auth.is_upstream() {
            self.ask_app(policy, parts, peer, &sub_req.filter.selectors)
                .await?
        } else {
            policy
                .auth
                .grant(&parts.headers, parts.uri.query())
                .map_err(|e| (e, Rejection::Unauthorized))?
        };
        grant
            .authorize(&sub_req.filter.selectors)
            .map_err(|e| (e, Rejection::Forbidden))?;
        sub_req.subject = grant.subject.map(String::into_boxed_str);
        sub_req.expires = grant.expires.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + left
        });

        let watched: Vec<Arc<str>> = if self.watcher.is_active() {
            sub_req
                .filter
                .selectors
                .iter()
                .filter_map(|s| match s {
                    Selector::Exact(t) => Some(t.clone()),
                    Selector::Prefix(_) => None,
                })
                .collect()
        } else {
            Vec::new()
        };
        let subscription = self.hub.subscribe(sub_req);
        self.metrics.connections_add(1);
        // After the subscription: a first poll's event reaches this stream.
        // Boxed: most streams follow no watched topic, and the guard of every idle stream
        // should not carry the room for one.
        let following = self
            .watcher
            .follow(watched.iter().map(|t| &**t))
            .map(Box::new);
        let guard = (
            ConnectionGauge(Arc::clone(&self.metrics)),
            slot,
            tenant_slot,
            following,
        );
        let mut resp = Response::new(Body::Stream(Box::new(EventBody {
            subscription,
            guard: Box::new(guard),
        })));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(resp)
    }

    /// `auth.mode: upstream`: the app answers 2xx with `X-Ssegate-Allow` (and optionally
    /// `X-Ssegate-Subject` for revocation), or anything else, passed back unchanged.
    async fn ask_app(
        &self,
        policy: &Policy,
        parts: &Parts,
        peer: SocketAddr,
        selectors: &[crate::hub::Selector],
    ) -> Result<Grant, Refusal> {
        let topics: Vec<String> = selectors.iter().map(ToString::to_string).collect();
        let trusted = policy
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&peer.ip()));
        let resp = self
            .forwarder
            .ask(&policy.auth_path, parts, &topics.join(","), peer, trusted)
            .await
            .map_err(|e| (e, Rejection::UpstreamAuth))?;
        if !resp.status().is_success() {
            let (parts, body) = resp.into_parts();
            return Err(Refusal::App(Response::from_parts(
                parts,
                Body::Incoming(body),
            )));
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let allow = header("x-ssegate-allow").unwrap_or_default();
        Ok(Grant {
            patterns: Some(auth::parse_patterns(&allow)),
            subject: header("x-ssegate-subject").filter(|s| !s.is_empty()),
            expires: None,
        })
    }

    /// Admits a proxied request from `ip`: its place under `concurrent_requests_per_ip`
    /// (held until its response is sent), after `requests_per_ip`; or the 429 answer. Both
    /// forwarding paths call this.
    #[allow(clippy::result_large_err)] // a refusal is the rare path; no box for the common one
    fn admit_request(&self, ip: IpAddr) -> Result<RequestSlot, Response<Body>> {
        if let Some(resp) = self.limit_request(ip) {
            return Err(resp);
        }
        self.inflight
            .enter(ip)
            .map_err(|e| self.refuse_request(ip, &e))
    }

    /// ssegate's own answer to a proxied request it could not pass on (429 or 503 from an
    /// in-flight cap, 502 or 504 from the app), logged and counted. Both forwarding paths
    /// call this.
    fn refuse_request(&self, ip: IpAddr, e: &(dyn ProxyRefusal + Send)) -> Response<Body> {
        let status = e.status().as_u16();
        if let Some(reason) = e.cap() {
            if reason == "concurrent_requests_per_ip" {
                // `upstream_busy` is counted by the cap, for every caller.
                self.metrics.request_rejected(reason);
            }
            if let Some(suppressed) = logbound::admit(reason, Some(ip)) {
                tracing::info!(%ip, reason, status, suppressed, "request refused");
            }
        } else if let Some(suppressed) = logbound::admit(e.code(), Some(ip)) {
            tracing::warn!(%ip, status, error = %e, suppressed, "request not forwarded");
        }
        error_response(e)
    }

    /// Counts a proxied request against `requests_per_ip`; the 429 answer if it is over.
    fn limit_request(&self, ip: IpAddr) -> Option<Response<Body>> {
        let e = self.limits.check_request(ip).err()?;
        self.metrics.rate_limited(RateLimited::Requests);
        if let Some(suppressed) = logbound::admit("requests_per_ip", Some(ip)) {
            tracing::info!(%ip, suppressed, "request rate limited");
        }
        let mut resp = error_response(&e);
        if let (Some((quota, window)), Some(reset)) =
            (self.limits.request_policy(), e.retry_after())
        {
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&format!("\"per-ip\";q={quota};w={window}")) {
                h.insert("ratelimit-policy", v);
            }
            if let Ok(v) = HeaderValue::from_str(&format!("\"per-ip\";r=0;t={reset}")) {
                h.insert("ratelimit", v);
            }
        }
        Some(resp)
    }
}

/// The head rules ([`crate::head`]) on a request hyper parsed (HTTP/1.x or HTTP/2), the
/// same as the hand-written path applies to the bytes it reads.
fn check_head<B>(req: &Request<B>) -> Result<(), HeadError> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", hyper::http::uri::PathAndQuery::as_str);
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let h2 = req.version() == hyper::Version::HTTP_2;
    head::check(head::View {
        target: target.as_bytes(),
        // The request line as HTTP/1.1 writes it, the fields, the blank line.
        len: req.method().as_str().len() + target.len() + 12 + fields + 2,
        fields: req.headers().len(),
        hosts: req
            .headers()
            .get_all(hyper::header::HOST)
            .iter()
            .map(hyper::header::HeaderValue::as_bytes),
        host_optional: req.version() < hyper::Version::HTTP_11
            || (h2 && req.uri().authority().is_some()),
    })
}

/// Keeps `ssegate_connections` right however a stream ends.
struct ConnectionGauge(Arc<Metrics>);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.connections_add(-1);
    }
}

impl Handler for Public {
    const OWN_FIELD_REFUSALS: bool = true;

    async fn take_over(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        options: crate::server::Options,
        held: crate::server::Held,
    ) -> Option<crate::server::Unserved> {
        self.serve_http1(stream, peer, options, held).await
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if let Err(e) = check_head(&req) {
            self.metrics.proxied(e.status().as_u16(), None);
            return error_response(&e);
        }
        let path = req.uri().path();
        if path == OWN_PREFIX || path.starts_with("/_ssegate/") {
            if let Some(resp) = crate::client::serve(req.method(), path, req.headers()) {
                return resp;
            }
            if let Some(resp) = path
                .strip_prefix(OWN_PREFIX)
                .and_then(|p| crate::admin::probe(p, &self.shutdown, &self.hub))
            {
                return resp;
            }
            return json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("{path} is not served by ssegate"),
            );
        }
        if self.events_rest(path).is_some() {
            return self.stream(req, peer).await;
        }
        let policy = self.policy();
        let derived = policy.derive.matching(req.method().as_str(), path);
        let (ip, trusted) = {
            let trusted = policy
                .trusted_proxies
                .iter()
                .any(|n| n.contains(&peer.ip()));
            (
                client_ip(peer.ip(), req.headers(), &policy.trusted_proxies),
                trusted,
            )
        };
        let slot = match self.admit_request(ip) {
            Ok(slot) => slot,
            Err(resp) => {
                self.metrics.proxied(resp.status().as_u16(), None);
                return resp;
            }
        };
        let started = tokio::time::Instant::now();
        let resp = match self.forwarder.forward(req, peer, trusted).await {
            Ok(resp) => resp,
            Err(e) => self.refuse_request(ip, &e),
        };
        self.metrics
            .proxied(resp.status().as_u16(), Some(started.elapsed()));
        // The request is in flight until its response has been sent; derived events are
        // published when hyper drops the body: once it has been relayed (or the client has
        // gone).
        let resp = match derived {
            Some(m) => {
                let publication = m.answered(
                    resp.status().as_u16(),
                    |name| resp.headers().get(name).and_then(|v| v.to_str().ok()),
                    &self.derived,
                );
                resp.map(|body| Body::Tapped(Box::new(body), Box::new(publication)))
            }
            None => resp,
        };
        resp.map(|body| {
            Body::Guarded(Box::new(GuardedBody {
                body,
                guard: Box::new(slot),
            }))
        })
    }
}

/// A refusal of a proxied request made by ssegate: an in-flight cap's, or the app's fault.
trait ProxyRefusal: ApiError {
    /// The cap that refused, if one did (its metric and log label).
    fn cap(&self) -> Option<&'static str>;
}

impl ProxyRefusal for InFlightError {
    fn cap(&self) -> Option<&'static str> {
        Some(self.reason())
    }
}

impl ProxyRefusal for ForwardError {
    fn cap(&self) -> Option<&'static str> {
        match self {
            Self::Busy(e) => Some(e.reason()),
            _ => None,
        }
    }
}

//! The public listener: event streams are terminated here, `/_ssegate/` is ssegate's own,
//! and everything else is forwarded to the app.
//!
//! A stream request goes: parse (400) → caps, connect rate and the tenant cap (503/429) →
//! auth (401/403, or the app's own answer in `upstream` mode) → hub subscription. Every
//! refusal is one log line and one metric increment.

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

use crate::auth::{self, Authenticator, Grant};
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::{LimitError, Limits};
use crate::metrics::{Metrics, RateLimited, Rejection};
use crate::response::{ApiError, Body, EventBody, error_response, json_error};
use crate::server::Handler;
use crate::shutdown::Shutdown;
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
}

impl Policy {
    fn new(config: &Config) -> Result<Self, String> {
        Ok(Self {
            auth: Authenticator::new(&config.auth)?,
            auth_path: config.auth.upstream.path.clone(),
            cors: Cors::new(&config.events.cors.allow_origins),
            max_topics: config.events.max_topics_per_subscription,
            trusted_proxies: config.trusted_proxies.clone(),
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
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
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
    /// The handler for `config`, streaming from `hub`. Fails if the auth keys cannot be read.
    pub fn new(
        config: &Config,
        hub: Hub,
        limits: Arc<Limits>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Result<Self, String> {
        Ok(Self {
            events_path: config.events.path.clone(),
            policy: RwLock::new(Arc::new(Policy::new(config)?)),
            limits,
            hub,
            forwarder: Forwarder::new(
                config.upstream.clone(),
                config.upstream_timeouts.connect,
                config.upstream_timeouts.response,
            ),
            upstreams: relay::Upstreams::new(
                &config.upstream,
                config.upstream_timeouts.connect,
                config.upstream_timeouts.response,
            ),
            metrics,
            shutdown,
        })
    }

    /// Applies a reloaded configuration (auth keys, CORS, topic limit, trusted proxies);
    /// open streams are untouched. On error the old policy stays.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let policy = Arc::new(Policy::new(config)?);
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
                    tracing::info!(%ip, status = resp.status().as_u16(), "stream refused by the app");
                    resp
                }
                Err(Refusal::Ours(e, why)) => {
                    self.metrics.rejected(why);
                    tracing::info!(%ip, reason = why.as_str(), status = e.status().as_u16(), "stream refused");
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

        let subscription = self.hub.subscribe(sub_req);
        self.metrics.connections_add(1);
        let guard = (
            ConnectionGauge(Arc::clone(&self.metrics)),
            slot,
            tenant_slot,
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

    /// Counts a proxied request against `requests_per_ip`; the 429 answer if it is over.
    fn limit_request(&self, ip: IpAddr) -> Option<Response<Body>> {
        let e = self.limits.check_request(ip).err()?;
        self.metrics.rate_limited(RateLimited::Requests);
        tracing::info!(%ip, "request rate limited");
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

/// Keeps `ssegate_connections` right however a stream ends.
struct ConnectionGauge(Arc<Metrics>);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.connections_add(-1);
    }
}

impl Handler for Public {
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
        let path = req.uri().path();
        if path == OWN_PREFIX || path.starts_with("/_ssegate/") {
            if let Some(resp) = crate::client::serve(req.method(), path, req.headers()) {
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
        let (ip, trusted) = {
            let policy = self.policy();
            let trusted = policy
                .trusted_proxies
                .iter()
                .any(|n| n.contains(&peer.ip()));
            (
                client_ip(peer.ip(), req.headers(), &policy.trusted_proxies),
                trusted,
            )
        };
        if let Some(resp) = self.limit_request(ip) {
            self.metrics.proxied(resp.status().as_u16(), None);
            return resp;
        }
        let started = tokio::time::Instant::now();
        let resp = self.forwarder.forward(req, peer, trusted).await;
        self.metrics
            .proxied(resp.status().as_u16(), Some(started.elapsed()));
        resp
    }
}

//! The public listener: event streams are terminated here, `/_ssegate/` is ssegate's own,
//! and everything else is forwarded to the app.

mod client_ip;
mod events;
mod forward;

pub use client_ip::client_ip;
pub use events::{StreamError, parse_request};
pub use forward::{ForwardError, Forwarder};

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::response::{Body, EventBody, error_response, json_error};
use crate::server::Handler;
use crate::shutdown::Shutdown;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::sync::Arc;

/// Paths under this prefix belong to ssegate and are never proxied.
pub const OWN_PREFIX: &str = "/_ssegate";

/// The public listener's request handler.
pub struct Public {
    events_path: String,
    max_topics: usize,
    trusted_proxies: Vec<IpNet>,
    hub: Hub,
    forwarder: Forwarder,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
}

impl Public {
    /// The handler for `config`, streaming from `hub`.
    pub fn new(config: &Config, hub: Hub, metrics: Arc<Metrics>, shutdown: Shutdown) -> Self {
        Self {
            events_path: config.events.path.clone(),
            max_topics: config.events.max_topics_per_subscription,
            trusted_proxies: config.trusted_proxies.clone(),
            hub,
            forwarder: Forwarder::new(
                config.upstream.clone(),
                config.upstream_timeouts.connect,
                config.upstream_timeouts.response,
            ),
            metrics,
            shutdown,
        }
    }

    /// The part of `path` after the events prefix (`""` or `/…`), if it is an events path.
    fn events_rest<'p>(&self, path: &'p str) -> Option<&'p str> {
        let rest = path.strip_prefix(self.events_path.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }

    fn stream(&self, req: &Request<Incoming>, rest: &str) -> Response<Body> {
        if req.method() != Method::GET {
            let mut resp = error_response(&StreamError::Method);
            resp.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("GET"));
            return resp;
        }
        if self.shutdown.is_triggered() {
            return error_response(&StreamError::ShuttingDown);
        }
        let last_event_id = req
            .headers()
            .get("last-event-id")
            .map(HeaderValue::as_bytes);
        let sub_req = match parse_request(rest, req.uri().query(), last_event_id, self.max_topics) {
            Ok(r) => r,
            Err(e) => return error_response(&e),
        };
        let subscription = self.hub.subscribe(sub_req);
        self.metrics.connections_add(1);
        let guard = ConnectionGauge(Arc::clone(&self.metrics));
        let mut resp = Response::new(Body::Stream(Box::new(EventBody {
            subscription,
            guard: Box::new(guard),
        })));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        resp
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
    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let path = req.uri().path();
        if path == OWN_PREFIX || path.starts_with("/_ssegate/") {
            return json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("{path} is not served by ssegate"),
            );
        }
        if let Some(rest) = self.events_rest(path) {
            let rest = rest.to_owned();
            return self.stream(&req, &rest);
        }
        let trusted = self.trusted_proxies.iter().any(|n| n.contains(&peer.ip()));
        self.forwarder.forward(req, peer, trusted).await
    }
}

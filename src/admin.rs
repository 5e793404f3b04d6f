//! The internal listener: the publish webhook, topic deletion and revocation, and the
//! operator endpoints (`/healthz`, `/readyz`, `/metrics`, `/stats`, `/dashboard`). It must
//! only be reachable from the app's side (loopback by default).

use crate::config::Config;
use crate::dashboard::Dashboard;
use crate::hub::{Hub, validate_topic};
use crate::metrics::Metrics;
use crate::publish::{self, PublishError};
use crate::response::{ApiError, Body, empty, error_response, json, json_error};
use crate::server::{Handler, LINGER_MAX, LINGER_TIME};
use crate::shutdown::Shutdown;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use tokio::time::Instant;

/// The `publish` section, replaced whole on reload.
struct PublishPolicy {
    token: Option<String>,
    max_body: usize,
    max_event_bytes: usize,
}

impl PublishPolicy {
    fn new(config: &Config) -> Self {
        Self {
            token: config.publish.token.clone(),
            max_body: config.publish.max_body,
            max_event_bytes: config.publish.max_event_bytes,
        }
    }
}

/// The internal listener's request handler.
pub struct Admin {
    hub: Hub,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    policy: RwLock<Arc<PublishPolicy>>,
    started: Instant,
    dashboard: Arc<Dashboard>,
}

impl Admin {
    /// The handler for `config`, publishing to `hub`, serving `dashboard`.
    pub fn new(
        config: &Config,
        hub: Hub,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
        dashboard: Arc<Dashboard>,
    ) -> Self {
        Self {
            hub,
            metrics,
            shutdown,
            policy: RwLock::new(Arc::new(PublishPolicy::new(config))),
            started: Instant::now(),
            dashboard,
        }
    }

    /// Applies a reloaded `publish` section.
    pub fn reload(&self, config: &Config) {
        *self
            .policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::new(PublishPolicy::new(config));
    }

    fn policy(&self) -> Arc<PublishPolicy> {
        Arc::clone(
            &self
                .policy
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The one rule for every endpoint that changes something (publish, topic deletion,
    /// revocation): with `publish.token` set, the request must carry it as a bearer token.
    fn authorize(&self, req: &Request<Incoming>) -> Result<Arc<PublishPolicy>, PublishError> {
        let policy = self.policy();
        if let Some(token) = &policy.token {
            let auth = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
            if !publish::token_matches(auth, token) {
                return Err(PublishError::Unauthorized);
            }
        }
        Ok(policy)
    }

    async fn publish(&self, req: Request<Incoming>) -> Result<Response<Body>, PublishError> {
        let policy = self.authorize(&req)?;
        let ct = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !publish::is_json_content_type(ct) {
            return Err(PublishError::UnsupportedMediaType);
        }
        let too_large = || {
            PublishError::TooLarge(format!(
                "the body is larger than publish.max_body ({} bytes)",
                policy.max_body
            ))
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > policy.max_body as u64) {
            discard(req.into_body()).await;
            return Err(too_large());
        }
        let mut body = req.into_body();
        let body = match Limited::new(&mut body, policy.max_body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                discard(body).await;
                return Err(too_large());
            }
            Err(e) => {
                return Err(PublishError::InvalidJson(format!(
                    "the body could not be read: {e}"
                )));
            }
        };
        let batch = publish::parse_body(&body, policy.max_event_bytes)?;
        let started = Instant::now();
        let ids = self.hub.publish(batch).await?;
        self.metrics.publish_duration(started.elapsed());
        Ok(json(StatusCode::OK, publish::ids_answer(&ids)))
    }

    fn stats(&self) -> Response<Body> {
        let stats = self.hub.stats();
        let top: Vec<_> = stats
            .topics
            .iter()
            .take(100)
            .map(|(t, n)| serde_json::json!({ "topic": t, "subscribers": n }))
            .collect();
        let tenants: Vec<_> = self
            .metrics
            .tenants()
            .snapshot()
            .iter()
            .map(|t| {
                serde_json::json!({
                    "tenant": t.tenant,
                    "streams": t.streams,
                    "events_published": t.published,
                    "events_delivered": t.delivered,
                    "oldest_stream_age_seconds": t.oldest_stream_secs,
                })
            })
            .collect();
        let body = serde_json::json!({
            "connections": stats.subscribers,
            "topics": stats.topics.len(),
            "top_topics": top,
            "tenants": tenants,
            "history": {
                "events": stats.history_len,
                "bytes": stats.history_bytes,
                "oldest_id": stats.oldest.map(|id| id.to_string()),
            },
            "dispatch": { "waiting_events": stats.dispatch_waiting },
            "uptime_seconds": self.started.elapsed().as_secs(),
            "broker": { "kind": self.hub.broker_kind(), "up": self.hub.broker_up() },
            "shutting_down": self.shutdown.is_triggered(),
        });
        json(StatusCode::OK, body.to_string())
    }
}

/// Reads and drops up to `LINGER_MAX` bytes of `body` for at most `LINGER_TIME`, so a
/// client still sending past `publish.max_body` reads the 413 instead of a reset.
async fn discard(mut body: Incoming) {
    let drain = async {
        let mut left = LINGER_MAX;
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, Bytes::len);
            let Some(rest) = left.checked_sub(n) else {
                break;
            };
            left = rest;
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// `/healthz` (200 while the process runs) and `/readyz` (503 while shutting down or while
/// the broker is unreachable); `None` for any other path. The public listener serves the
/// same answers under `/_ssegate/`, so probes reach them while this listener stays on
/// loopback.
pub fn probe(path: &str, shutdown: &Shutdown, hub: &Hub) -> Option<Response<Body>> {
    Some(match path {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned()),
        "/readyz" if shutdown.is_triggered() => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ),
        "/readyz" if !hub.broker_up() => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            "the broker is unreachable",
        ),
        "/readyz" => json(StatusCode::OK, r#"{"status":"ready"}"#.to_owned()),
        _ => return None,
    })
}

fn not_found(path: &str) -> Response<Body> {
    json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no such endpoint: {path}"),
    )
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("use {allow}"),
    );
    resp.headers_mut()
        .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn decode_segment(s: &str) -> Option<String> {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

impl Handler for Admin {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        match path.as_str() {
            "/healthz" | "/readyz" => {
                probe(&path, &self.shutdown, &self.hub).unwrap_or_else(|| not_found(&path))
            }
            "/metrics" => {
                let mut resp = Response::new(Body::full(self.metrics.render(self.hub.broker_up())));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            "/stats" => self.stats(),
            "/dashboard" | "/dashboard/" if method == Method::GET => Dashboard::page(),
            "/dashboard/events" if method == Method::GET => self.dashboard.events(),
            "/dashboard" | "/dashboard/" | "/dashboard/events" => method_not_allowed("GET"),
            "/publish" if method == Method::POST => match self.publish(req).await {
                Ok(resp) => resp,
                Err(e) => {
                    self.metrics.publish_rejected(e.code());
                    error_response(&e)
                }
            },
            "/publish" => method_not_allowed("POST"),
            p => {
                if let Some(raw) = p.strip_prefix("/topics/") {
                    if method != Method::DELETE {
                        return method_not_allowed("DELETE");
                    }
                    if let Err(e) = self.authorize(&req) {
                        return error_response(&e);
                    }
                    let topic = decode_segment(raw).unwrap_or_default();
                    if let Err(e) = validate_topic(&topic) {
                        return json_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_topic",
                            &format!("topic {topic:?} is not valid: {e}"),
                        );
                    }
                    let ended = self.hub.delete_topic(&topic);
                    tracing::info!(topic, streams = ended, "topic deleted");
                    return empty(StatusCode::NO_CONTENT);
                }
                if let Some(raw) = p.strip_prefix("/subscribers/") {
                    if method != Method::DELETE {
                        return method_not_allowed("DELETE");
                    }
                    if let Err(e) = self.authorize(&req) {
                        return error_response(&e);
                    }
                    let sub = decode_segment(raw).unwrap_or_default();
                    let ended = self.hub.revoke(&sub);
                    tracing::info!(sub, streams = ended, "subscriber revoked");
                    return empty(StatusCode::NO_CONTENT);
                }
                not_found(p)
            }
        }
    }
}

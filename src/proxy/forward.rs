//! Forwarding to the app: every method, bodies streamed both ways, hop-by-hop headers
//! removed, `X-Forwarded-*` and `Forwarded` added, `Host` kept, upgrades tunnelled, and a
//! JSON 502 or 504 instead of a hang when the app is down or slow.

use crate::limits::{InFlightError, UpstreamCap, UpstreamPermit};
use crate::response::{ApiError, Body};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Why a request could not be forwarded; the upstream is the cause of each.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The app refused the connection or broke it.
    #[error("the upstream app at {0} could not be reached: {1}")]
    Unreachable(String, String),
    /// The app answered, but not with a response ssegate can relay safely (malformed, over
    /// the head limits, or framed ambiguously).
    #[error("the upstream app at {0} sent an invalid response: {1}")]
    InvalidResponse(String, String),
    /// The app did not answer within the timeout.
    #[error("the upstream app at {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// Every connection to the app allowed is in use (`max_upstream_connections`).
    #[error(transparent)]
    Busy(#[from] InFlightError),
}

impl ApiError for ForwardError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Unreachable(..) | Self::InvalidResponse(..) => StatusCode::BAD_GATEWAY,
            Self::Timeout(..) => StatusCode::GATEWAY_TIMEOUT,
            Self::Busy(e) => e.status(),
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::Unreachable(..) | Self::InvalidResponse(..) => "bad_gateway",
            Self::Timeout(..) => "gateway_timeout",
            Self::Busy(e) => e.code(),
        }
    }
    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Busy(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded either way.
pub(super) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// A pooled HTTP/1.1 client for the app.
pub struct Forwarder {
    client: Client<CappedConnector, Body>,
    upstream: Uri,
    response_timeout: Duration,
    connect_timeout: Duration,
}

impl Forwarder {
    /// A forwarder to `upstream` (scheme and authority are used), whose connections each
    /// hold a place under `cap`.
    pub fn new(
        upstream: Uri,
        connect_timeout: Duration,
        response_timeout: Duration,
        cap: Arc<UpstreamCap>,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(super::relay::IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE)
            // The app's response heads are held to the request heads' limits (502 past them),
            // as on the hand-written path.
            .http1_max_buf_size(crate::head::MAX_HEAD_BYTES)
            .http1_max_headers(crate::head::MAX_FIELDS)
            .build(CappedConnector { http, cap });
        Self {
            client,
            upstream,
            response_timeout,
            connect_timeout,
        }
    }

    fn authority(&self) -> String {
        self.upstream
            .authority()
            .map_or_else(String::new, ToString::to_string)
    }

    /// Forwards `req` from `peer` and returns the app's response, or why there is none
    /// (502, 503 `upstream_busy`, 504).
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        peer_trusted: bool,
    ) -> Result<Response<Body>, ForwardError> {
        let upgrade = upgrade_protocol(req.headers(), req.version());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();

        let mut uri = self.upstream.clone().into_parts();
        uri.path_and_query = parts.uri.path_and_query().cloned();
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        parts.uri = Uri::from_parts(uri)
            .map_err(|e| ForwardError::Unreachable(self.authority(), e.to_string()))?;
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        // ssegate answers `Expect: 100-continue` itself when it starts reading the body.
        parts.headers.remove(header::EXPECT);
        if let Some(h) = &host {
            parts.headers.insert(header::HOST, h.clone());
        }
        add_forwarded(&mut parts.headers, peer.ip(), host.as_ref(), peer_trusted);
        if let Some(proto) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, proto.clone());
        }
        let req = Request::from_parts(parts, Body::Incoming(body));

        let sent = tokio::time::timeout(self.response_timeout, self.client.request(req)).await;
        let mut resp = match sent {
            Err(_) => {
                return Err(ForwardError::Timeout(
                    self.authority(),
                    self.response_timeout,
                ));
            }
            Ok(Err(e)) => return Err(self.classify(&e)),
            Ok(Ok(resp)) => resp,
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
            let (parts, _) = resp.into_parts();
            return Ok(Response::from_parts(parts, Body::Empty));
        }
        let (mut parts, body) = resp.into_parts();
        if parts.headers.contains_key(header::TRANSFER_ENCODING) {
            // hyper has decoded the chunked body; a length sent with it is not the body's
            // (RFC 9112 §6.3) and would truncate or stall the client.
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::Incoming(body)))
    }

    /// Asks the app whether a subscriber may open a stream (`auth.mode: upstream`):
    /// `GET {path}` with the subscriber's cookies and `Authorization`, the requested topics
    /// in `X-Ssegate-Topics` and the original URI in `X-Original-URI`. Bounded by the
    /// response timeout.
    pub async fn ask(
        &self,
        path: &str,
        original: &hyper::http::request::Parts,
        topics: &str,
        peer: SocketAddr,
        peer_trusted: bool,
    ) -> Result<Response<Incoming>, ForwardError> {
        let mut uri = self.upstream.clone().into_parts();
        uri.path_and_query = path.parse().ok();
        let uri = Uri::from_parts(uri)
            .map_err(|e| ForwardError::Unreachable(self.authority(), e.to_string()))?;
        let mut req = Request::get(uri)
            .body(Body::Empty)
            .map_err(|e| ForwardError::Unreachable(self.authority(), e.to_string()))?;
        let h = req.headers_mut();
        for name in [
            header::COOKIE,
            header::AUTHORIZATION,
            header::USER_AGENT,
            header::ORIGIN,
        ] {
            for v in original.headers.get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
        let host = original.headers.get(header::HOST).cloned();
        if let Some(host) = &host {
            h.insert(header::HOST, host.clone());
        }
        if let Ok(v) = HeaderValue::from_str(topics) {
            h.insert("x-ssegate-topics", v);
        }
        if let Some(pq) = original.uri.path_and_query()
            && let Ok(v) = HeaderValue::from_str(pq.as_str())
        {
            h.insert("x-original-uri", v);
        }
        for name in [
            "x-forwarded-for",
            "forwarded",
            "x-forwarded-proto",
            "x-forwarded-host",
        ] {
            if peer_trusted && let Some(v) = original.headers.get(name) {
                h.insert(name, v.clone());
            }
        }
        add_forwarded(h, peer.ip(), host.as_ref(), peer_trusted);
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => Err(ForwardError::Timeout(
                self.authority(),
                self.response_timeout,
            )),
            Ok(Err(e)) => Err(self.classify(&e)),
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, body))
            }
        }
    }

    fn classify(&self, e: &hyper_util::client::legacy::Error) -> ForwardError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        let mut detail = e.to_string();
        while let Some(s) = source {
            if let Some(busy) = s.downcast_ref::<InFlightError>() {
                return ForwardError::Busy(busy.clone());
            }
            if let Some(h) = s.downcast_ref::<hyper::Error>()
                && h.is_parse()
            {
                return ForwardError::InvalidResponse(self.authority(), h.to_string());
            }
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::TimedOut {
                    return ForwardError::Timeout(self.authority(), self.connect_timeout);
                }
                detail = io.to_string();
            }
            source = s.source();
        }
        ForwardError::Unreachable(self.authority(), detail)
    }
}

/// The most idle connections hyper's pool keeps for reuse. They count under
/// `max_upstream_connections` like busy ones; the plain path's pool closes its idle ones
/// when a request waits for a place, this one keeps them until the idle timeout, so it
/// keeps fewer than the plain path (which carries most requests).
const MAX_IDLE: usize = 64;

/// hyper's connector to the app: each connection takes a place under the cap first (waiting
/// up to the connect timeout for one) and keeps it until it is closed.
#[derive(Clone)]
struct CappedConnector {
    http: HttpConnector,
    cap: Arc<UpstreamCap>,
}

type ConnectError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for CappedConnector {
    type Response = Capped;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Capped, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let cap = Arc::clone(&self.cap);
        Box::pin(async move {
            let permit = cap.acquire().await?;
            let io = tower_service::Service::call(&mut http, uri).await?;
            Ok(Capped {
                io,
                _permit: permit,
            })
        })
    }
}

/// A connection to the app opened by hyper, with its place under the cap.
struct Capped {
    io: TokioIo<tokio::net::TcpStream>,
    _permit: UpstreamPermit,
}

impl Connection for Capped {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl hyper::rt::Read for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The `Upgrade` protocol of an HTTP/1.1 upgrade request.
fn upgrade_protocol(headers: &HeaderMap, version: Version) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    wants
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Adds `X-Forwarded-For` (appending the peer), `X-Forwarded-Proto`, `X-Forwarded-Host`
/// and `Forwarded`. A trusted proxy's own proto and host values are kept.
fn add_forwarded(headers: &mut HeaderMap, peer: IpAddr, host: Option<&HeaderValue>, trusted: bool) {
    let hops = Hops::new(
        peer,
        host.and_then(|h| h.to_str().ok()),
        joined(headers, "x-forwarded-for"),
        joined(headers, "forwarded"),
    );
    if let Ok(v) = HeaderValue::from_str(&hops.x_forwarded_for) {
        headers.insert("x-forwarded-for", v);
    }
    if !(trusted && headers.contains_key("x-forwarded-proto")) {
        headers.insert("x-forwarded-proto", HeaderValue::from_static(PROTO));
    }
    if !(trusted && headers.contains_key("x-forwarded-host")) {
        match host {
            Some(h) => headers.insert("x-forwarded-host", h.clone()),
            None => headers.remove("x-forwarded-host"),
        };
    }
    if let Ok(v) = HeaderValue::from_str(&hops.forwarded) {
        headers.insert(header::FORWARDED, v);
    }
}

/// The scheme ssegate is reached by, for `X-Forwarded-Proto` and `Forwarded`.
pub(super) const PROTO: &str = "http";

/// The two list headers that record the path of a request, with this hop added: the one
/// place that decides their values, for hyper's path and for [`super::relay`]'s.
pub(super) struct Hops {
    /// `X-Forwarded-For`: the hops received, then the peer.
    pub x_forwarded_for: String,
    /// `Forwarded`: the elements received, then `for=<peer>;proto=http;host="<host>"`.
    pub forwarded: String,
}

impl Hops {
    /// This hop (from `peer`, for `host`) after the hops the request arrived with: its
    /// `x_forwarded_for` and `forwarded` lines, each header's joined as [`joined`] does.
    pub(super) fn new(
        peer: IpAddr,
        host: Option<&str>,
        x_forwarded_for: Option<String>,
        forwarded: Option<String>,
    ) -> Self {
        use std::fmt::Write;
        // Writing into a String cannot fail.
        let mut x_forwarded_for = x_forwarded_for.unwrap_or_default();
        if !x_forwarded_for.is_empty() {
            x_forwarded_for.push_str(", ");
        }
        push_ip(&mut x_forwarded_for, peer);
        let mut forwarded = forwarded.unwrap_or_default();
        if !forwarded.is_empty() {
            forwarded.push_str(", ");
        }
        match peer {
            IpAddr::V4(_) => {
                forwarded.push_str("for=");
                push_ip(&mut forwarded, peer);
            }
            IpAddr::V6(_) => {
                forwarded.push_str("for=\"[");
                push_ip(&mut forwarded, peer);
                forwarded.push_str("]\"");
            }
        }
        forwarded.push_str(";proto=");
        forwarded.push_str(PROTO);
        if let Some(h) = host
            && h.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            let _ = write!(forwarded, ";host=\"{h}\"");
        }
        Self {
            x_forwarded_for,
            forwarded,
        }
    }
}

/// Appends `ip` as text. An IPv4 address is written digit by digit: through `Display` it
/// cost about 2,000 instructions, twice per forwarded request (callgrind).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            // Writing into a String cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// Every line of the list header `name` as one comma-separated value (RFC 9110 §5.3), so a
/// hop sent on a second line is not lost when the header is rewritten.
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    join_lines(headers.get_all(name).iter().map(HeaderValue::as_bytes))
}

/// The lines of one list header as one comma-separated value; lines that are not visible
/// ASCII (which `HeaderValue::to_str` refuses) or are empty are left out.
pub(super) fn join_lines<'v>(lines: impl Iterator<Item = &'v [u8]>) -> Option<String> {
    let parts: Vec<&str> = lines
        .filter(|v| v.iter().all(|&b| b == b'\t' || (b' '..0x7f).contains(&b)))
        .filter_map(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "2001:db8::8:800:200c:417a",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn this_hop_follows_the_hops_received() {
        let hops = Hops::new(
            "10.0.0.7".parse().unwrap(),
            Some("app.example"),
            Some("1.1.1.1".into()),
            None,
        );
        assert_eq!(hops.x_forwarded_for, "1.1.1.1, 10.0.0.7");
        assert_eq!(
            hops.forwarded,
            "for=10.0.0.7;proto=http;host=\"app.example\""
        );
        let v6 = Hops::new("::1".parse().unwrap(), None, None, Some("for=a".into()));
        assert_eq!(v6.forwarded, "for=a, for=\"[::1]\";proto=http");
    }
}

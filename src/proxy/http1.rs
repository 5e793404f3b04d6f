//! Plain HTTP/1.1 connections served without hyper: ssegate reads each request head
//! itself and either opens an event stream ([`super::raw`]) or forwards the request to the
//! app ([`super::relay`]), keeping the client's connection alive between requests, all in
//! the connection's own task.
//!
//! hyper's server and client cost twice nginx's CPU per forwarded request here: header
//! maps on both sides, a hop to the pooled client connection's task, and re-armed timers.
//! This path takes only what it can forward byte for byte with no doubt about framing:
//! an HTTP/1.1 request in origin form, with one `Host`, at most one plain
//! `Content-Length` of a small body (read whole before it is sent) and no
//! `Transfer-Encoding`, `Upgrade` or `Expect`. Anything else (HTTP/1.0 and HTTP/2,
//! upgrades, large or chunked bodies, ssegate's own paths, an oversized or malformed head)
//! is handed to hyper with the bytes already read, and hyper serves the connection from
//! that request on, exactly as it serves a connection from its start. The decisions that
//! matter (rate limits, which headers are forwarded and how `X-Forwarded-*` is built) are
//! the same code as hyper's path.

use super::forward::{Hops, PROTO, join_lines};
use super::relay::{
    self, Framing, Kept, Relayed, Want, connection_named, is_hop_by_hop, parse_length, tokens,
};
use super::{ForwardError, Public, client_ip};
use crate::derive::Matched;
use crate::head::{self, HeadError};
use crate::limits::RequestSlot;
use crate::response::{ApiError, Body, Tap, error_response, json_error};
use crate::server::{Held, LINGER_MAX, LINGER_TIME, Options, SendTimeout, Unserved};
use bytes::{Buf, Bytes, BytesMut};
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Response, StatusCode};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The largest request body forwarded here, read whole first; a larger one streams
/// through hyper.
const MAX_BODY: u64 = 64 * 1024;

/// How much is read from the client at a time.
const READ_SIZE: usize = 4 * 1024;

/// What to do with the bytes at the front of a connection's buffer.
enum Next {
    /// Not a whole request head yet.
    Partial,
    /// An event stream (the request is the whole buffer).
    Stream(hyper::http::request::Parts),
    /// Forward the request rewritten into the output buffer, holding its place under the
    /// in-flight cap of its address.
    Forward(Plain, RequestSlot),
    /// Answer it here (a 429).
    Answer(Plain, Response<Body>),
    /// Refuse it here and close the connection: a head no path takes.
    Refuse(HeadError),
    /// hyper serves the connection from this request on.
    Hyper,
    /// Not a request head this path can read (malformed, HTTP/2's preface, too many
    /// header lines): hyper answers it, within what is left of the header timeout.
    Unreadable,
}

/// A request this path takes.
struct Plain {
    head_len: usize,
    body_len: usize,
    /// A `HEAD` request: its response has no body.
    head_request: bool,
    /// Safe to send again if a kept-alive connection to the app turns out to be closed.
    idempotent: bool,
    /// The client asked for the connection to close after the response.
    close: bool,
    /// The `derive` rules the request matched, if any.
    derived: Option<Matched>,
}

impl Public {
    /// Serves a new connection on the public listener: event streams and plain forwards
    /// here; anything else is handed back with the bytes read so far, for hyper.
    pub async fn serve_http1(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        options: Options,
        held: Held,
    ) -> Option<Unserved> {
        let mut client = SendTimeout::new(stream, options.send_timeout);
        let mut buf = BytesMut::new();
        // The request as sent to the app.
        let mut out = Vec::new();
        // The response head as sent to the client.
        let mut head_out = Vec::new();
        let mut upstream_buf = BytesMut::new();
        loop {
            let (next, deadline) = self
                .wait_head(&mut client, &mut buf, peer, &mut out, options)
                .await?;
            let (mut plain, answer) = match next {
                Next::Partial | Next::Hyper | Next::Unreadable => {
                    // A whole head is hyper's at once; anything less has the rest of the
                    // header timeout to become one.
                    let head_deadline = if matches!(next, Next::Hyper) {
                        Instant::now() + options.header_read_timeout
                    } else {
                        deadline
                    };
                    return Some(Unserved {
                        stream: client.into_inner(),
                        read: buf.freeze(),
                        head_deadline,
                    });
                }
                Next::Stream(parts) => {
                    drop((buf, out, head_out, upstream_buf));
                    let resp = self.stream_parts(parts, peer).await;
                    super::raw::respond(client.into_inner(), resp, options.send_timeout, held)
                        .await;
                    return None;
                }
                Next::Forward(plain, slot) => (plain, Ok(slot)),
                Next::Answer(plain, resp) => (plain, Err(resp)),
                Next::Refuse(e) => {
                    self.metrics.proxied(e.status().as_u16(), None);
                    answer_here(&mut client, error_response(&e), false, true, &mut out).await;
                    linger(&mut client).await;
                    return None;
                }
            };
            let whole = plain.head_len + plain.body_len;
            match read_to(&mut client, &mut buf, whole, options.header_read_timeout).await {
                Ok(()) => {}
                Err(BodyCut::Gone) => return None,
                Err(BodyCut::Late) => {
                    // nginx's `client_body_timeout` answer, then the connection closes.
                    let wait = options.header_read_timeout;
                    let late = json_error(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        &format!("the request body did not arrive within {wait:?}"),
                    );
                    answer_here(&mut client, late, plain.head_request, true, &mut out).await;
                    return None;
                }
            }
            // From here on, `plain.close` also says whether a shutdown has begun.
            plain.close |= self.shutdown.is_triggered();
            let close = plain.close;
            let keep = match answer {
                Err(resp) => {
                    buf.advance(whole);
                    answer_here(&mut client, resp, plain.head_request, close, &mut out).await
                }
                // The slot is held until the response has been relayed.
                Ok(slot) => {
                    out.extend_from_slice(&buf[plain.head_len..whole]);
                    if let Some(m) = &mut plain.derived {
                        m.request_body(&buf[plain.head_len..whole]);
                    }
                    buf.advance(whole);
                    self.forward_plain(
                        &mut client,
                        &mut plain,
                        slot.ip(),
                        &mut out,
                        &mut head_out,
                        &mut upstream_buf,
                    )
                    .await
                }
            };
            if !keep || close {
                return None;
            }
        }
    }

    /// Reads until `buf` starts with a whole request head (or as much of one as is read
    /// here) and decides what to do with it; also says by when the head had to arrive.
    /// `None`: the client left, sent no whole head within the header timeout, or the
    /// shutdown began while it was idle; the connection is closed.
    async fn wait_head(
        &self,
        client: &mut SendTimeout,
        buf: &mut BytesMut,
        peer: SocketAddr,
        out: &mut Vec<u8>,
        options: Options,
    ) -> Option<(Next, Instant)> {
        let deadline = Instant::now() + options.header_read_timeout;
        loop {
            if !buf.is_empty() {
                match self.next(buf, peer, out) {
                    Next::Partial if buf.len() <= head::MAX_HEAD_BYTES => {}
                    Next::Partial => return Some((Next::Refuse(head::oversized(buf)), deadline)),
                    next => return Some((next, deadline)),
                }
            }
            let idle = buf.is_empty();
            buf.reserve(READ_SIZE);
            let read = tokio::time::timeout_at(deadline, client.read_buf(buf));
            let read = if idle {
                // Idle between requests: a shutdown closes the connection, as hyper's
                // graceful drain closes its idle keep-alive connections.
                tokio::select! {
                    biased;
                    read = read => read,
                    () = self.shutdown.triggered() => return None,
                }
            } else {
                read.await
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                // Closed, broken, or no whole head within the header timeout.
                _ => return None,
            }
        }
    }

    /// What to do with the request whose head starts `buf`; for a forward, the request as
    /// it goes to the app is written to `out`, all but the body.
    fn next(&self, buf: &[u8], peer: SocketAddr, out: &mut Vec<u8>) -> Next {
        let mut headers = [httparse::EMPTY_HEADER; head::MAX_FIELDS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Next::Partial,
            Err(httparse::Error::TooManyHeaders) => return Next::Refuse(HeadError::TooManyFields),
            Err(_) => return Next::Unreadable,
        };
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
        else {
            return Next::Hyper;
        };
        let view = head::View {
            target: target.as_bytes(),
            len: head_len,
            fields: req.headers.len(),
            hosts: req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("host"))
                .map(|h| h.value),
            host_optional: version == 0,
        };
        if let Err(e) = head::check(view) {
            return Next::Refuse(e);
        }
        if version != 1 {
            return Next::Hyper;
        }
        // hyper's parser drops a fragment; so does this path.
        let target = head::without_fragment(target);
        if !target.starts_with('/') || method == "CONNECT" {
            return Next::Hyper;
        }
        let path = target.split('?').next().unwrap_or(target);
        if path == super::OWN_PREFIX || path.starts_with("/_ssegate/") {
            return Next::Hyper;
        }
        if self.events_rest(path).is_some() {
            return match super::raw::stream_request(&req, head_len, buf.len()) {
                Some(parts) => Next::Stream(parts),
                None => Next::Hyper,
            };
        }

        let mut host = None;
        let mut hosts = 0;
        let mut length = None;
        let mut lengths = 0;
        let mut close = false;
        let mut has = Has::default();
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                hosts += 1;
                host = Some(h.value);
            } else if name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                length = parse_length(h.value);
            } else if name.eq_ignore_ascii_case("connection") {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case("upgrade") {
                        return Next::Hyper;
                    }
                    close |= t.eq_ignore_ascii_case("close");
                    has.connection = true;
                }
            } else if ["transfer-encoding", "upgrade", "expect"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
            {
                return Next::Hyper;
            } else if name.eq_ignore_ascii_case("x-forwarded-for")
                || name.eq_ignore_ascii_case("forwarded")
            {
                has.hops = true;
            } else if name.eq_ignore_ascii_case("x-forwarded-proto") {
                has.proto = true;
            } else if name.eq_ignore_ascii_case("x-forwarded-host") {
                has.host = true;
            }
        }
        let (Some(host), 1) = (host, hosts) else {
            return Next::Hyper;
        };
        let body_len = match (length, lengths) {
            (None, 0) => 0,
            (Some(n), 1) if n <= MAX_BODY => n as usize,
            _ => return Next::Hyper,
        };
        let plain = Plain {
            head_len,
            body_len,
            head_request: method == "HEAD",
            idempotent: matches!(
                method,
                "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
            ),
            close,
            derived: None,
        };

        let policy = self.policy();
        let trusted = policy
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&peer.ip()));
        // Headers the `Connection` header names are hop-by-hop too.
        let named = if has.connection {
            connection_named(req.headers)
        } else {
            Vec::new()
        };
        let ip = if trusted && has.hops {
            let mut hops = HeaderMap::new();
            for name in ["x-forwarded-for", "forwarded"] {
                for v in lines(req.headers, &named, name) {
                    if let Ok(v) = HeaderValue::from_bytes(v) {
                        hops.append(name, v);
                    }
                }
            }
            client_ip(peer.ip(), &hops, &policy.trusted_proxies)
        } else {
            peer.ip()
        };
        let slot = match self.admit_request(ip) {
            Ok(slot) => slot,
            Err(resp) => {
                self.metrics.proxied(resp.status().as_u16(), None);
                return Next::Answer(plain, resp);
            }
        };
        let request = Rewrite {
            method,
            target,
            headers: req.headers,
            named: &named,
            host,
            length,
            has: &has,
            trusted,
            peer: peer.ip(),
        };
        rewrite(&request, out);
        let derived = policy.derive.matching(method, path);
        Next::Forward(Plain { derived, ..plain }, slot)
    }

    /// Sends the request in `out` to the app and relays its answer (or a 502/504) to the
    /// client. Whether the client's connection can take another request.
    async fn forward_plain(
        &self,
        client: &mut SendTimeout,
        plain: &mut Plain,
        ip: IpAddr,
        out: &mut Vec<u8>,
        head_out: &mut Vec<u8>,
        upstream_buf: &mut BytesMut,
    ) -> bool {
        let upstreams = &self.upstreams;
        let started = Instant::now();
        let close = plain.close;
        upstream_buf.clear();
        let want = Want {
            head_request: plain.head_request,
            idempotent: plain.idempotent,
            close,
        };
        // The response headers the matched rules read are kept as the head is parsed.
        let derived = plain.derived.take();
        let wanted = |name: &str| derived.as_ref().is_some_and(|m| m.wants_header(name));
        let mut kept = Kept::new(
            derived
                .is_some()
                .then_some(&wanted as &(dyn Fn(&str) -> bool + Sync)),
        );
        let exchange = upstreams.exchange(out, want, upstream_buf, head_out, &mut kept);
        let exchanged = tokio::time::timeout(upstreams.response_timeout, exchange).await;
        let found = kept.found();
        let (conn, head) = match exchanged {
            Ok(Ok(done)) => done,
            failed => {
                let e = match failed {
                    Ok(Err(e)) => e,
                    _ => ForwardError::Timeout(
                        upstreams.authority().to_owned(),
                        upstreams.response_timeout,
                    ),
                };
                self.metrics
                    .proxied(e.status().as_u16(), Some(started.elapsed()));
                let resp = self.refuse_request(ip, &e);
                return answer_here(client, resp, plain.head_request, close, out).await;
            }
        };
        self.metrics.proxied(head.status, Some(started.elapsed()));
        // Published when dropped, after the body below has been relayed.
        let mut publication = derived.map(|m| {
            let header = |name: &str| found.get(&upstream_buf[..head.len], name);
            m.answered(head.status, header, &self.derived)
        });
        let close = close || head.framing == Framing::Close;
        upstream_buf.advance(head.len);
        let tap = publication.as_mut().map(|p| p as &mut dyn Tap);
        match relay::relay_body(client, conn, &head, head_out, upstream_buf, upstreams, tap).await {
            Relayed::Done => !close,
            Relayed::Broken => false,
        }
    }
}

/// A plain request as parsed, with what its rewrite needs to know.
struct Rewrite<'a, 'h> {
    method: &'a str,
    target: &'a str,
    headers: &'a [httparse::Header<'h>],
    /// Headers the `Connection` header names: hop-by-hop too.
    named: &'a [&'h str],
    host: &'h [u8],
    length: Option<u64>,
    has: &'a Has,
    /// The peer is a trusted proxy: its forwarding headers are believed.
    trusted: bool,
    peer: std::net::IpAddr,
}

/// The values of the `name` lines of `headers` that are not hop-by-hop by `named`.
fn lines<'a, 'h>(
    headers: &'a [httparse::Header<'h>],
    named: &'a [&str],
    name: &'static str,
) -> impl Iterator<Item = &'h [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| {
            h.name.eq_ignore_ascii_case(name)
                && !named.iter().any(|c| c.eq_ignore_ascii_case(h.name))
        })
        .map(|h| h.value)
}

/// Writes `r` as it goes to the app into `out`, all but the body: hop-by-hop headers (and
/// those `Connection` names) dropped, `Host` kept, the forwarding headers built by [`Hops`]
/// (those of a trusted peer kept), the length restated.
fn rewrite(r: &Rewrite<'_, '_>, out: &mut Vec<u8>) {
    let has = r.has;
    let kept = |name: &str| !r.named.iter().any(|n| n.eq_ignore_ascii_case(name));
    let lines = |name| lines(r.headers, r.named, name);
    out.clear();
    out.extend_from_slice(r.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(r.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let keep_proto = r.trusted && has.proto && lines("x-forwarded-proto").next().is_some();
    let keep_host = r.trusted && has.host && lines("x-forwarded-host").next().is_some();
    for h in r.headers {
        let name = h.name;
        let replaced = [
            "host",
            "content-length",
            "x-forwarded-for",
            "forwarded",
            "expect",
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
            || (!keep_proto && name.eq_ignore_ascii_case("x-forwarded-proto"))
            || (!keep_host && name.eq_ignore_ascii_case("x-forwarded-host"));
        if replaced || is_hop_by_hop(name) || !kept(name) {
            continue;
        }
        line(out, name.as_bytes(), h.value);
    }
    let hops = Hops::new(
        r.peer,
        std::str::from_utf8(r.host).ok(),
        if has.hops {
            join_lines(lines("x-forwarded-for"))
        } else {
            None
        },
        if has.hops {
            join_lines(lines("forwarded"))
        } else {
            None
        },
    );
    line(out, b"host", r.host);
    line(out, b"x-forwarded-for", hops.x_forwarded_for.as_bytes());
    if !keep_proto {
        line(out, b"x-forwarded-proto", PROTO.as_bytes());
    }
    if !keep_host {
        line(out, b"x-forwarded-host", r.host);
    }
    line(out, b"forwarded", hops.forwarded.as_bytes());
    if let Some(n) = r.length {
        let _ = write!(out, "content-length: {n}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Which forwarding-related headers a request carries.
#[derive(Default)]
struct Has {
    connection: bool,
    hops: bool,
    proto: bool,
    host: bool,
}

/// Appends the header line `name: value`.
fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Why a request body was not read whole.
enum BodyCut {
    /// The client closed the connection or broke it.
    Gone,
    /// It did not arrive within the header timeout.
    Late,
}

/// Reads until `buf` holds at least `len` bytes, within `wait` (a body on this path is
/// small: 64 KiB at most).
async fn read_to(
    client: &mut SendTimeout,
    buf: &mut BytesMut,
    len: usize,
    wait: std::time::Duration,
) -> Result<(), BodyCut> {
    if buf.len() >= len {
        return Ok(());
    }
    let deadline = Instant::now() + wait;
    while buf.len() < len {
        buf.reserve(len - buf.len());
        match tokio::time::timeout_at(deadline, client.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(BodyCut::Gone),
            Err(_) => return Err(BodyCut::Late),
        }
    }
    Ok(())
}

/// Writes a response of ssegate's own (a 429, 502 or 504) with its length, keeping the
/// connection unless `close`. Whether the connection can take another request.
/// Ends a connection whose client may still be sending (a refused head): closes our side,
/// then reads and drops what comes for a bounded while, so the client reads the answer
/// rather than a reset.
async fn linger(client: &mut SendTimeout) {
    let _ = client.shutdown().await;
    let drain = async {
        let mut sink = [0u8; READ_SIZE];
        let mut left = LINGER_MAX;
        while let Ok(n) = client.read(&mut sink).await {
            match left.checked_sub(n) {
                Some(rest) if n > 0 => left = rest,
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

async fn answer_here(
    client: &mut SendTimeout,
    resp: Response<Body>,
    head_request: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> bool {
    let (parts, body) = resp.into_parts();
    let body = match body {
        Body::Full(b) => b.unwrap_or_default(),
        _ => Bytes::new(),
    };
    out.clear();
    super::raw::encode_head(&parts, out);
    let _ = write!(out, "content-length: {}\r\n", body.len());
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(&body);
    }
    client.write_all(out).await.is_ok()
}

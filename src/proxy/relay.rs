//! The app's side of a plain HTTP/1.1 forward served without hyper ([`super::http1`]):
//! kept-alive connections to the app, one exchange on one of them, and the response body
//! relayed to the client by its framing (`Content-Length`, chunked, or until close).
//!
//! The response head is rewritten (hop-by-hop headers removed); the body's bytes are
//! passed on as they arrive, chunk framing included, while a small scanner finds where the
//! message ends, so that a connection is only reused at a message boundary. An app
//! connection is put back in the pool as soon as its response has been read whole, before
//! the last bytes reach the client.

use super::ForwardError;
use super::forward::HOP_BY_HOP;
use crate::limits::{UpstreamCap, UpstreamPermit};
use crate::response::Tap;
use crate::server::SendTimeout;
use bytes::{Buf, BytesMut};
use hyper::Uri;
use std::io::{self, IoSlice, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The most idle connections to the app kept for reuse.
const MAX_IDLE: usize = 256;

/// An idle connection to the app older than this is closed rather than reused (hyper's
/// pool and nginx's `keepalive_timeout` do the same; apps often close sooner).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The largest response head taken from the app: the same limit as a request's.
const MAX_RESPONSE_HEAD: usize = crate::head::MAX_HEAD_BYTES;

/// The most header lines in a response head from the app: the same limit as a request's.
const MAX_RESPONSE_HEADERS: usize = crate::head::MAX_FIELDS;

/// How much of a response body is read from the app at a time.
const READ_SIZE: usize = 16 * 1024;

/// Kept-alive connections to the app, and how to open new ones.
pub(super) struct Upstreams {
    host: String,
    port: u16,
    authority: String,
    idle: Arc<Mutex<Vec<(AppConn, Instant)>>>,
    /// The cap on connections to the app, shared with hyper's client.
    cap: Arc<UpstreamCap>,
    connect_timeout: Duration,
    /// How long the app has to send a response head (502/504 after).
    pub(super) response_timeout: Duration,
}

/// A connection to the app, with its place under the cap: the place is freed when the
/// connection is dropped (closed), whether it was busy or idle.
pub(super) struct AppConn {
    io: TcpStream,
    _permit: UpstreamPermit,
}

/// Why an exchange on a connection failed.
enum Failure {
    /// A reused connection was found closed before any byte of an answer: the request
    /// may be sent again on a new one.
    Stale,
    /// Anything else: answered 502 or 504.
    Fatal(ForwardError),
}

/// What the client's request expects of the answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Want {
    /// A `HEAD` request: the answer has no body.
    pub head_request: bool,
    /// Safe to send again if a kept-alive connection turns out to be closed.
    pub idempotent: bool,
    /// The client's connection closes after this answer.
    pub close: bool,
}

/// What the app answered, parsed.
pub(super) struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// How long the head is in the read buffer.
    pub len: usize,
    /// How the body is delimited.
    pub framing: Framing,
    /// The connection may carry another request once this response is read.
    pub reusable: bool,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (`HEAD`, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding, passed on as it is.
    Chunked,
    /// Until the app closes the connection; the client's connection is closed after it.
    Close,
}

impl Upstreams {
    /// Connections to the app at `upstream` (an `http` URI; its host and port are used).
    pub(super) fn new(
        upstream: &Uri,
        connect_timeout: Duration,
        response_timeout: Duration,
        cap: Arc<UpstreamCap>,
    ) -> Self {
        let host = upstream.host().unwrap_or("localhost");
        // An IPv6 literal is bracketed in a URI, not in a socket address.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let idle = Arc::new(Mutex::new(Vec::<(AppConn, Instant)>::new()));
        // A request waiting for a place (on hyper's path: this pool takes from its own idle
        // connections first) closes the oldest idle connection here. Weak: the cap must not
        // keep the pool's connections open once the pool is gone.
        let pool = Arc::downgrade(&idle);
        cap.on_contention(move || {
            if let Some(pool) = pool.upgrade() {
                let mut idle = pool
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !idle.is_empty() {
                    drop(idle.remove(0));
                }
            }
        });
        Self {
            host,
            port: upstream.port_u16().unwrap_or(80),
            authority: upstream
                .authority()
                .map_or_else(String::new, ToString::to_string),
            idle,
            cap,
            connect_timeout,
            response_timeout,
        }
    }

    /// The app's address as configured, for error messages.
    pub(super) fn authority(&self) -> &str {
        &self.authority
    }

    /// An idle connection that is still open, if there is one.
    fn take_idle(&self) -> Option<AppConn> {
        loop {
            let (conn, since) = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop()?;
            if since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // Closed by the app while idle (EOF), or sending what nobody asked for: not
            // reusable. Would-block is the healthy answer.
            let mut probe = [0u8; 1];
            match conn.io.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(conn),
                _ => {}
            }
        }
    }

    /// Keeps `conn`, which has just finished an exchange, for the next request; unless a
    /// request is waiting for a place under the cap (on either path): then `conn` is closed
    /// to free its place.
    pub(super) fn put_idle(&self, conn: AppConn) {
        let now = Instant::now();
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.cap.contended() {
            drop(idle);
            drop(conn);
            return;
        }
        // The oldest are at the front: forget those past their time.
        let expired = idle
            .iter()
            .take_while(|(_, since)| now.duration_since(*since) > IDLE_TIMEOUT)
            .count();
        idle.drain(..expired);
        if idle.len() < MAX_IDLE {
            idle.push((conn, now));
        }
    }

    /// Opens a connection to the app and keeps it for the first request: whether the app
    /// is there at all, asked once at start.
    pub(super) async fn probe(&self) -> Result<(), ForwardError> {
        let conn = self.connect().await?;
        self.put_idle(conn);
        Ok(())
    }

    async fn connect(&self) -> Result<AppConn, ForwardError> {
        let permit = self.cap.acquire().await?;
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Err(_) => Err(ForwardError::Timeout(
                self.authority.clone(),
                self.connect_timeout,
            )),
            Ok(Err(e)) => Err(ForwardError::Unreachable(
                self.authority.clone(),
                e.to_string(),
            )),
            Ok(Ok(io)) => {
                let _ = io.set_nodelay(true);
                Ok(AppConn {
                    io,
                    _permit: permit,
                })
            }
        }
    }

    /// Sends `request` (a whole request, head and body) and reads the response head into
    /// `buf`, on an idle connection if there is one, else on a new one; the head to send the
    /// client is written to `client_head`. A request found to have gone out on a connection
    /// the app had closed is sent once more on a new one if it is idempotent (the app
    /// answered nothing, but may have seen it).
    pub(super) async fn exchange(
        &self,
        request: &[u8],
        want: Want,
        buf: &mut BytesMut,
        client_head: &mut Vec<u8>,
    ) -> Result<(AppConn, ResponseHead), ForwardError> {
        if let Some(conn) = self.take_idle() {
            match self.send(conn, request, want, buf, client_head, true).await {
                Ok(done) => return Ok(done),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Stale) if want.idempotent => buf.clear(),
                Err(Failure::Stale) => {
                    return Err(ForwardError::Unreachable(
                        self.authority.clone(),
                        "the app closed a kept-alive connection before answering".to_owned(),
                    ));
                }
            }
        }
        let conn = self.connect().await?;
        match self
            .send(conn, request, want, buf, client_head, false)
            .await
        {
            Ok(done) => Ok(done),
            Err(Failure::Fatal(e)) => Err(e),
            Err(Failure::Stale) => Err(ForwardError::Unreachable(
                self.authority.clone(),
                "the app closed the connection without answering".to_owned(),
            )),
        }
    }

    async fn send(
        &self,
        mut conn: AppConn,
        request: &[u8],
        want: Want,
        buf: &mut BytesMut,
        client_head: &mut Vec<u8>,
        reused: bool,
    ) -> Result<(AppConn, ResponseHead), Failure> {
        let broken = |e: io::Error| {
            if reused {
                Failure::Stale
            } else {
                Failure::Fatal(ForwardError::Unreachable(
                    self.authority.clone(),
                    e.to_string(),
                ))
            }
        };
        conn.io.write_all(request).await.map_err(broken)?;
        // Whether the app has sent anything at all (an informational answer counts).
        let mut heard = false;
        loop {
            buf.reserve(READ_SIZE);
            match conn.io.read_buf(buf).await {
                Ok(0) if !heard && reused => return Err(Failure::Stale),
                Ok(0) => return Err(self.invalid("the app closed the connection mid-answer")),
                Ok(_) => heard = true,
                Err(e) if !heard => return Err(broken(e)),
                Err(e) => return Err(self.invalid(&e.to_string())),
            }
            // Every whole head read so far: informational ones are skipped.
            loop {
                match parse_response(buf, want, client_head) {
                    Ok(Some(head)) if (100..200).contains(&head.status) && head.status != 101 => {
                        // Informational (103 Early Hints and the like): not passed on, as
                        // hyper's client does not either; the final answer follows.
                        buf.advance(head.len);
                    }
                    Ok(Some(head)) if head.status == 101 => {
                        return Err(self.invalid("the app switched protocols unasked"));
                    }
                    Ok(Some(head)) => return Ok((conn, head)),
                    Ok(None) if buf.len() > MAX_RESPONSE_HEAD => {
                        return Err(self.invalid("the response head is too large"));
                    }
                    Ok(None) => break,
                    Err(why) => return Err(self.invalid(&why)),
                }
            }
        }
    }

    fn invalid(&self, why: &str) -> Failure {
        Failure::Fatal(ForwardError::Unreachable(
            self.authority.clone(),
            format!("invalid response: {why}"),
        ))
    }
}

/// The response head at the start of `buf`, if it is complete; for a final answer, the
/// head to send the client is written to `out`. `Err` for a response that cannot be
/// relayed safely (malformed, or framed ambiguously).
pub(super) fn parse_response(
    buf: &[u8],
    want: Want,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    let mut close = !http11;
    let mut named = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value).ok_or("an invalid Content-Length")?;
            if length.is_some_and(|m| m != n) {
                return Err("differing Content-Length values".to_owned());
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
            // Chunked is the last coding applied, or the body runs until close.
            chunked = tokens(h.value)
                .last()
                .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case("close") {
                    close = true;
                } else if t.eq_ignore_ascii_case("keep-alive") && !http11 {
                    close = false;
                } else {
                    named = true;
                }
            }
        }
    }
    let framing = if want.head_request || status == 204 || status == 304 || status < 200 {
        Framing::Empty
    } else if coded && chunked {
        Framing::Chunked
    } else if coded {
        Framing::Close
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    let head = ResponseHead {
        status,
        len,
        framing,
        reusable: !close && framing != Framing::Close,
    };
    if status >= 200 {
        client_head(&resp, &head, want.close, named, out);
    }
    Ok(Some(head))
}

/// A `Content-Length` value: ASCII digits only (no sign, no list).
pub(super) fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The comma-separated tokens of a header value, trimmed (`Connection`, `Transfer-Encoding`).
pub(super) fn tokens(value: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(value)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The header names a message's `Connection` header lists: hop-by-hop for that message.
pub(super) fn connection_named<'h>(headers: &[httparse::Header<'h>]) -> Vec<&'h str> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .collect()
}

/// Whether `name` is a header that concerns one connection only and is never passed on.
pub(super) fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) || name.eq_ignore_ascii_case("upgrade")
}

/// Writes the client's response head for the app's head `resp` into `out`: the status
/// line, the app's headers without the hop-by-hop ones (and, if `named`, those its
/// `Connection` header names), then the framing ssegate relays the body with, and
/// `connection: close` if the client's connection closes after it.
fn client_head(
    resp: &httparse::Response<'_, '_>,
    head: &ResponseHead,
    close: bool,
    named: bool,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    let _ = write!(out, "{}", head.status);
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let named = if named {
        connection_named(resp.headers)
    } else {
        Vec::new()
    };
    let mut length = None;
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(h.value);
            continue;
        }
        if is_hop_by_hop(name) || named.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    match head.framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        // A HEAD's or a 304's length describes the body it would have had.
        Framing::Empty => {
            if let Some(value) = length
                && head.status != 204
            {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        }
        Framing::Close => {}
    }
    if close || head.framing == Framing::Close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a relayed body ended.
pub(super) enum Relayed {
    /// Whole; the app's connection was put back in the pool if it could be reused.
    Done,
    /// The app's side failed or broke the framing mid-body, or the client went away: the
    /// client's connection must be closed (a truncated body is all it can be told).
    Broken,
}

/// Writes `head` and then the response body to the client as it arrives from `conn`;
/// `buf` holds the bytes read after the response head. Puts `conn` back in `pool` when
/// the body was read whole and the connection may be reused.
pub(super) async fn relay_body(
    client: &mut SendTimeout,
    conn: AppConn,
    response: &ResponseHead,
    head: &[u8],
    buf: &mut BytesMut,
    pool: &Upstreams,
    mut tap: Option<&mut dyn Tap>,
) -> Relayed {
    let (reusable, framing) = (response.reusable, response.framing);
    if framing == Framing::Chunked
        && let Some(tap) = tap.as_mut()
    {
        tap.chunked();
    }
    let mut body = BodyEnd::new(framing);
    let mut conn = Some(conn);
    let mut head = Some(head);
    loop {
        let Ok((take, done)) = body.scan(buf) else {
            tracing::debug!("the app broke the framing of a response body; closing");
            return Relayed::Broken;
        };
        if done
            && let Some(c) = conn.take()
            && reusable
            && take == buf.len()
        {
            // Read whole, and nothing after it: ready for the next request before the
            // client has the last bytes.
            pool.put_idle(c);
        }
        let chunk = &buf[..take];
        if let Some(tap) = tap.as_mut() {
            tap.data(chunk);
        }
        let written = match head.take() {
            Some(h) => write_two(client, h, chunk).await,
            None => client.write_all(chunk).await,
        };
        buf.clear();
        if written.is_err() {
            return Relayed::Broken;
        }
        if done {
            return Relayed::Done;
        }
        let Some(c) = conn.as_mut() else {
            return Relayed::Broken;
        };
        buf.reserve(READ_SIZE);
        match c.io.read_buf(buf).await {
            Ok(0) if framing == Framing::Close => body.finish(),
            Ok(0) | Err(_) => return Relayed::Broken,
            Ok(_) => {}
        }
    }
}

/// Writes `a` then `b`, in one vectored write where the socket takes it all.
pub(super) async fn write_two(io: &mut SendTimeout, a: &[u8], b: &[u8]) -> io::Result<()> {
    let (mut in_a, mut in_b) = (0, 0);
    while in_a < a.len() {
        let slices = [IoSlice::new(&a[in_a..]), IoSlice::new(&b[in_b..])];
        let n = io.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len() - in_a);
        in_a += from_a;
        in_b += n - from_a;
    }
    io.write_all(&b[in_b..]).await
}

/// Finds where a response body ends in the bytes read from the app.
#[derive(Debug)]
pub(super) enum BodyEnd {
    /// Nothing (left) to read.
    Done,
    /// This many bytes left.
    Length(u64),
    /// Chunked: the scanner's state.
    Chunked(Chunks),
    /// Until the app closes; `true` once it has.
    Close(bool),
}

impl BodyEnd {
    /// The scanner for a body framed by `framing`.
    pub(super) fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Self::Done,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked(Chunks::default()),
            Framing::Close => Self::Close(false),
        }
    }

    /// How many of `bytes` (the next ones read) belong to the body, and whether the body
    /// ends there. `Err` if the chunk framing is broken.
    pub(super) fn scan(&mut self, bytes: &[u8]) -> Result<(usize, bool), ()> {
        match self {
            Self::Done => Ok((0, true)),
            Self::Length(left) => {
                let take = bytes
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                Ok((take, *left == 0))
            }
            Self::Chunked(chunks) => chunks.scan(bytes),
            Self::Close(closed) => Ok((bytes.len(), *closed)),
        }
    }

    /// The app closed the connection (the end of a close-delimited body).
    pub(super) fn finish(&mut self) {
        if let Self::Close(closed) = self {
            *closed = true;
        }
    }
}

/// The longest chunk extension or trailer section taken.
const MAX_CHUNK_LINE: usize = 16 * 1024;

/// Where a chunked body (RFC 9112 §7.1) is: the scanner reads sizes, extensions, CRLFs
/// and trailers byte by byte and skips chunk data whole.
#[derive(Debug, Default)]
pub(super) struct Chunks {
    state: Chunk,
    /// The chunk size being read, then what is left of the chunk's data.
    size: u64,
    digits: u8,
    /// Bytes of extension or trailer seen (bounded).
    line: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunks {
    fn scan(&mut self, bytes: &[u8]) -> Result<(usize, bool), ()> {
        use Chunk::*;
        let mut i = 0;
        while i < bytes.len() && self.state != Done {
            if self.state == Data {
                let n = (bytes.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                i += n;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() && self.digits < 15 => {
                    self.digits += 1;
                    self.size = self.size * 16 + u64::from(hex(b));
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Ext,
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Ext, b'\r') => SizeLf,
                (Ext | Trailer | TrailerLine, b'\n') => return Err(()),
                (Ext, _) => self.line_byte(Ext)?,
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 { Trailer } else { Data }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (Trailer, b'\r') => EndLf,
                (Trailer | TrailerLine, _) if b != b'\r' => self.line_byte(TrailerLine)?,
                (TrailerLine, b'\r') => TrailerLf,
                (TrailerLf, b'\n') => Trailer,
                (EndLf, b'\n') => Done,
                _ => return Err(()),
            };
        }
        Ok((i, self.state == Done))
    }

    fn line_byte(&mut self, next: Chunk) -> Result<Chunk, ()> {
        self.line += 1;
        if self.line > MAX_CHUNK_LINE {
            return Err(());
        }
        Ok(next)
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;

//! Kept-alive connections to the app, under the shared cap on app connections, and one
//! exchange on one of them: the request out, the response head back.

use super::head::{Kept, MAX_RESPONSE_HEAD, ResponseHead, parse_response};
use crate::limits::{UpstreamCap, UpstreamPermit};
use crate::proxy::ForwardError;
use bytes::{Buf, BytesMut};
use hyper::Uri;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The most idle connections to the app kept for reuse.
const MAX_IDLE: usize = 256;

/// An idle connection to the app older than this is closed rather than reused (nginx's
/// `keepalive_timeout` does the same; apps often close sooner). hyper's pool uses it too.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How much of a response body is read from the app at a time.
pub(crate) const READ_SIZE: usize = 16 * 1024;

/// Kept-alive connections to the app, and how to open new ones.
pub(crate) struct Upstreams {
    host: String,
    port: u16,
    authority: String,
    idle: Arc<Mutex<Vec<(AppConn, Instant)>>>,
    /// The cap on connections to the app, shared with hyper's client.
    cap: Arc<UpstreamCap>,
    connect_timeout: Duration,
    /// How long the app has to send a response head (502/504 after).
    pub(crate) response_timeout: Duration,
}

/// A connection to the app, with its place under the cap: the place is freed when the
/// connection is dropped (closed), whether it was busy or idle.
pub(crate) struct AppConn {
    pub(crate) io: TcpStream,
    _permit: UpstreamPermit,
}

/// Where an exchange puts the app's answer.
struct Answer<'a, 'w> {
    /// The bytes read: the response head, and what followed it.
    buf: &'a mut BytesMut,
    /// The head to send the client.
    client_head: &'a mut Vec<u8>,
    /// The header lines kept from the head.
    kept: &'a mut Kept<'w>,
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
pub(crate) struct Want {
    /// A `HEAD` request: the answer has no body.
    pub head_request: bool,
    /// Safe to send again if a kept-alive connection turns out to be closed.
    pub idempotent: bool,
    /// The client's connection closes after this answer.
    pub close: bool,
}

impl Upstreams {
    /// Connections to the app at `upstream` (an `http` URI; its host and port are used).
    pub(crate) fn new(
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
    pub(crate) fn authority(&self) -> &str {
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
    pub(crate) fn put_idle(&self, conn: AppConn) {
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
    pub(crate) async fn probe(&self) -> Result<(), ForwardError> {
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
    /// client is written to `client_head` and the header lines `kept` wants are kept. A
    /// request found to have gone out on a connection
    /// the app had closed is sent once more on a new one if it is idempotent (the app
    /// answered nothing, but may have seen it).
    pub(crate) async fn exchange(
        &self,
        request: &[u8],
        want: Want,
        buf: &mut BytesMut,
        client_head: &mut Vec<u8>,
        kept: &mut Kept<'_>,
    ) -> Result<(AppConn, ResponseHead), ForwardError> {
        let mut answer = Answer {
            buf,
            client_head,
            kept,
        };
        if let Some(conn) = self.take_idle() {
            match self.send(conn, request, want, &mut answer, true).await {
                Ok(done) => return Ok(done),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Stale) if want.idempotent => answer.buf.clear(),
                Err(Failure::Stale) => {
                    return Err(ForwardError::Unreachable(
                        self.authority.clone(),
                        "the app closed a kept-alive connection before answering".to_owned(),
                    ));
                }
            }
        }
        let conn = self.connect().await?;
        match self.send(conn, request, want, &mut answer, false).await {
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
        answer: &mut Answer<'_, '_>,
        reused: bool,
    ) -> Result<(AppConn, ResponseHead), Failure> {
        let Answer {
            buf,
            client_head,
            kept,
        } = answer;
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
                match parse_response(buf, want, client_head, kept) {
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
        Failure::Fatal(ForwardError::InvalidResponse(
            self.authority.clone(),
            why.to_owned(),
        ))
    }
}

//! The app's response head: parsed strictly (its framing decides where the message ends),
//! held to the request heads' limits, and rewritten for the client (hop-by-hop headers
//! removed).

use super::pool::Want;
use crate::proxy::forward::HOP_BY_HOP;
use std::io::Write;
use std::ops::Range;

/// What the app answered, parsed.
pub(crate) struct ResponseHead {
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
pub(crate) enum Framing {
    /// No body (`HEAD`, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding, passed on as it is.
    Chunked,
    /// Until the app closes the connection; the client's connection is closed after it.
    Close,
}

/// Response header lines a caller keeps from the app's final head, found while it is parsed
/// (so it is parsed once): those `wanted` names, as positions of their name and value in the
/// buffer the head was parsed from.
pub(crate) struct Kept<'w> {
    wanted: Option<&'w (dyn Fn(&str) -> bool + Sync)>,
    lines: Found,
}

/// The header lines [`Kept`] found.
#[derive(Default)]
pub(crate) struct Found(Vec<(Range<usize>, Range<usize>)>);

impl<'w> Kept<'w> {
    /// Keeps the lines whose name `wanted` accepts; none if `None`.
    pub(crate) fn new(wanted: Option<&'w (dyn Fn(&str) -> bool + Sync)>) -> Self {
        Self {
            wanted,
            lines: Found::default(),
        }
    }

    /// The wanted lines of the final head parsed from `buf`.
    fn keep(&mut self, buf: &[u8], headers: &[httparse::Header<'_>]) {
        self.lines.0.clear();
        let Some(wanted) = self.wanted else {
            return;
        };
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| {
            let start = (s.as_ptr() as usize).wrapping_sub(base);
            start..start + s.len()
        };
        for h in headers.iter().filter(|h| wanted(h.name)) {
            self.lines.0.push((at(h.name.as_bytes()), at(h.value)));
        }
    }

    /// What was kept.
    pub(crate) fn found(self) -> Found {
        self.lines
    }
}

impl Found {
    /// The value of the first kept line named `name` (any case), if it is text; `buf` is the
    /// buffer the head was parsed from, still unchanged.
    pub(crate) fn get<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b str> {
        let (_, value) = self.0.iter().find(|(n, _)| {
            buf.get(n.clone())
                .is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
        })?;
        std::str::from_utf8(buf.get(value.clone())?).ok()
    }
}

/// The largest response head taken from the app: the same limit as a request's.
pub(crate) const MAX_RESPONSE_HEAD: usize = crate::head::MAX_HEAD_BYTES;

/// The most header lines in a response head from the app: the same limit as a request's.
pub(crate) const MAX_RESPONSE_HEADERS: usize = crate::head::MAX_FIELDS;

/// The response head at the start of `buf`, if it is complete; for a final answer, the
/// head to send the client is written to `out`, and the lines `kept` wants are kept. `Err`
/// for a response that cannot be relayed safely (malformed, or framed ambiguously).
pub(crate) fn parse_response(
    buf: &[u8],
    want: Want,
    out: &mut Vec<u8>,
    kept: &mut Kept<'_>,
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
        kept.keep(buf, resp.headers);
    }
    Ok(Some(head))
}

/// A `Content-Length` value: ASCII digits only (no sign, no list).
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The comma-separated tokens of a header value, trimmed (`Connection`, `Transfer-Encoding`).
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(value)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The header names a message's `Connection` header lists: hop-by-hop for that message.
pub(crate) fn connection_named<'h>(headers: &[httparse::Header<'h>]) -> Vec<&'h str> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .collect()
}

/// Whether `name` is a header that concerns one connection only and is never passed on.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
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

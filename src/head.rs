//! The rules every HTTP head must meet, whichever stack reads it: the hand-written
//! HTTP/1.1 path, hyper's HTTP/1.1 and HTTP/2, event streams and proxied requests alike,
//! and the app's responses. The limits are named here once; the server gives them to
//! hyper, and every path calls [`check`] on what it parsed, so a head gets the same answer
//! whichever way it came in.
//!
//! Knows nothing of HTTP stacks: a head is seen as its target, its size, its field count
//! and its `Host` values.

use crate::refusal::ApiError;
use hyper::StatusCode;

/// The largest request head (request line and header fields): nginx allows 32 KiB,
/// Envoy 60 KiB. 10,000 connections at hyper's default (~400 KiB) would be 4 GB.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The most header fields in a head.
pub const MAX_FIELDS: usize = 100;

/// hyper's HTTP/1.1 read buffer: room for a head over [`MAX_HEAD_BYTES`] to be read whole,
/// so that [`check`] decides (414 or 431, with the JSON body every refusal has), as on the
/// hand-written path. Heads over twice the limit get hyper's own bare 431.
pub const H1_READ_BUFFER: usize = 2 * MAX_HEAD_BYTES;

/// hyper's HTTP/1.1 field limit on the listeners that refuse heads themselves
/// ([`crate::server::Handler::OWN_FIELD_REFUSALS`]), for the same reason as
/// [`H1_READ_BUFFER`]; elsewhere hyper's default, [`MAX_FIELDS`].
pub const H1_MAX_FIELDS: usize = 2 * MAX_FIELDS;

/// The decoded header block HTTP/2 accepts before it refuses a stream itself. Larger than
/// [`MAX_HEAD_BYTES`] so that a head over the limit reaches [`check`] and gets its own 431:
/// the h2 codec ends the whole connection (`GOAWAY COMPRESSION_ERROR`) when one field does
/// not fit in this much, which would cut every other stream of a multiplexing ingress.
pub const H2_HEADER_LIST_LIMIT: u32 = 256 * 1024;

/// Why a head is refused. Nothing refused reaches the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The request line alone is over [`MAX_HEAD_BYTES`].
    #[error("the request line is longer than {MAX_HEAD_BYTES} bytes")]
    TargetTooLong,
    /// The head is over [`MAX_HEAD_BYTES`].
    #[error("the request head is larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    /// More than [`MAX_FIELDS`] header fields.
    #[error("the request has more than {MAX_FIELDS} header fields")]
    TooManyFields,
    /// A character RFC 3986 does not allow in a request target.
    #[error("the request target has a character that a URI may not contain")]
    BadTarget,
    /// No `Host` (and, over HTTP/2, no `:authority`).
    #[error("the request has no Host header")]
    NoHost,
    /// More than one `Host` field.
    #[error("the request has more than one Host header")]
    ManyHosts,
    /// A `Host` that is not `host[:port]`.
    #[error("the Host header is not a valid host[:port]")]
    BadHost,
}

impl ApiError for HeadError {
    fn status(&self) -> StatusCode {
        match self {
            Self::TargetTooLong => StatusCode::URI_TOO_LONG,
            Self::TooLarge | Self::TooManyFields => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BadTarget | Self::NoHost | Self::ManyHosts | Self::BadHost => {
                StatusCode::BAD_REQUEST
            }
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::TargetTooLong => "uri_too_long",
            Self::TooLarge | Self::TooManyFields => "header_too_large",
            Self::BadTarget => "invalid_target",
            Self::NoHost | Self::ManyHosts | Self::BadHost => "invalid_host",
        }
    }
}

/// A parsed head, as much of it as the rules look at.
pub struct View<'a, H> {
    /// The request target as sent (origin form, or absolute form).
    pub target: &'a [u8],
    /// The head's size in bytes: request line, fields, and the blank line.
    pub len: usize,
    /// How many header fields it has.
    pub fields: usize,
    /// The values of its `Host` fields.
    pub hosts: H,
    /// Whether a missing `Host` is acceptable: HTTP/1.0, or a request that names its
    /// authority elsewhere (HTTP/2's `:authority`).
    pub host_optional: bool,
}

/// Applies every rule to `head`, the cheapest first.
pub fn check<'a, H: Iterator<Item = &'a [u8]>>(head: View<'_, H>) -> Result<(), HeadError> {
    if head.target.len() > MAX_HEAD_BYTES {
        return Err(HeadError::TargetTooLong);
    }
    if head.len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    if head.fields > MAX_FIELDS {
        return Err(HeadError::TooManyFields);
    }
    check_target(head.target)?;
    let mut hosts = head.hosts;
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => check_host(host),
        (Some(_), Some(_)) => Err(HeadError::ManyHosts),
        (None, _) if head.host_optional => Ok(()),
        (None, _) => Err(HeadError::NoHost),
    }
}

/// What a head that did not fit in [`MAX_HEAD_BYTES`] is refused with: 414 when even its
/// request line did not end within the limit.
pub fn oversized(read: &[u8]) -> HeadError {
    if read.contains(&b'\n') {
        HeadError::TooLarge
    } else {
        HeadError::TargetTooLong
    }
}

/// A request target's characters: RFC 3986's `pchar`, `/`, `?`, and `%`. A `#` starts a
/// fragment, which clients should not send and which is not passed on ([`without_fragment`]).
pub fn check_target(target: &[u8]) -> Result<(), HeadError> {
    if target.is_empty() || !target.iter().all(|&b| is_uri_char(b) || b == b'#') {
        return Err(HeadError::BadTarget);
    }
    Ok(())
}

/// The target without a `#fragment` (hyper's parser drops it too).
pub fn without_fragment(target: &str) -> &str {
    target.split_once('#').map_or(target, |(t, _)| t)
}

/// `host[:port]`: a registered name or IPv4 address, or an IP literal in brackets, then
/// an optional port of digits.
pub fn check_host(value: &[u8]) -> Result<(), HeadError> {
    let (host, port) = match value.strip_prefix(b"[") {
        Some(rest) => {
            let end = rest
                .iter()
                .position(|&b| b == b']')
                .ok_or(HeadError::BadHost)?;
            let literal = &rest[..end];
            if literal.is_empty()
                || !literal
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
            {
                return Err(HeadError::BadHost);
            }
            (literal, &rest[end + 1..])
        }
        None => {
            let split = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            (&value[..split], &value[split..])
        }
    };
    let name_ok = !host.is_empty() && host.iter().all(|&b| is_reg_name_char(b) || b == b':');
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    if name_ok && port_ok {
        Ok(())
    } else {
        Err(HeadError::BadHost)
    }
}

/// RFC 3986 `unreserved`, `sub-delims` and `%` (the start of `pct-encoded`).
fn is_reg_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b'%'
        )
}

/// A character of a URI outside a fragment: `pchar`, `/` and `?`.
fn is_uri_char(b: u8) -> bool {
    is_reg_name_char(b) || matches!(b, b':' | b'@' | b'/' | b'?')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        target: &'a [u8],
        hosts: &'a [&'a [u8]],
    ) -> View<'a, impl Iterator<Item = &'a [u8]>> {
        View {
            target,
            len: 100,
            fields: 3,
            hosts: hosts.iter().copied(),
            host_optional: false,
        }
    }

    #[test]
    fn targets() {
        for ok in [
            &b"/"[..],
            b"/a/b?c=d&e=%20f",
            b"/~user/(x)!*+,;=:@",
            b"*",
            b"/a#frag",
        ] {
            assert_eq!(
                check_target(ok),
                Ok(()),
                "{:?}",
                String::from_utf8_lossy(ok)
            );
        }
        for bad in [
            &b""[..],
            b"/a b",
            b"/\"",
            b"/<",
            b"/>",
            b"/{",
            b"/}",
            b"/|",
            b"/\\",
            b"/^",
            b"/`",
            b"/\x7f",
            b"/\xc3\xa9",
        ] {
            assert_eq!(
                check_target(bad),
                Err(HeadError::BadTarget),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(without_fragment("/a?b#c"), "/a?b");
        assert_eq!(without_fragment("/a"), "/a");
    }

    #[test]
    fn hosts() {
        for ok in [
            &b"example.com"[..],
            b"example.com:8080",
            b"127.0.0.1:1",
            b"[::1]:80",
            b"[::1]",
            b"xn--bcher-kva.example",
        ] {
            assert_eq!(check_host(ok), Ok(()), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b""[..],
            b"a b",
            b"a/b",
            b"a:b",
            b"a:123456",
            b"[::1",
            b"[zz]",
            b"[]",
            b"a@b",
            b":80",
        ] {
            assert_eq!(
                check_host(bad),
                Err(HeadError::BadHost),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn every_rule_in_order() {
        assert_eq!(check(view(b"/", &[b"h"])), Ok(()));
        assert_eq!(check(view(b"/", &[])), Err(HeadError::NoHost));
        assert_eq!(check(view(b"/", &[b"h", b"h"])), Err(HeadError::ManyHosts));
        assert_eq!(check(view(b"/", &[b"h h"])), Err(HeadError::BadHost));
        assert_eq!(check(view(b"/<", &[b"h"])), Err(HeadError::BadTarget));
        let h2 = View {
            host_optional: true,
            ..view(b"/", &[])
        };
        assert_eq!(check(h2), Ok(()));
        let big = View {
            len: MAX_HEAD_BYTES + 1,
            ..view(b"/<", &[])
        };
        assert_eq!(check(big), Err(HeadError::TooLarge));
        let many = View {
            fields: MAX_FIELDS + 1,
            ..view(b"/", &[])
        };
        assert_eq!(check(many), Err(HeadError::TooManyFields));
        assert_eq!(oversized(b"GET /aaaa"), HeadError::TargetTooLong);
        assert_eq!(oversized(b"GET / HTTP/1.1\r\nx: yyyy"), HeadError::TooLarge);
        assert_eq!(HeadError::TargetTooLong.status(), StatusCode::URI_TOO_LONG);
        assert_eq!(
            HeadError::TooManyFields.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }
}

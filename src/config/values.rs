//! Parsers for single values, from the (already interpolated) text of a scalar.
//!
//! Each returns the typed value or a [`Bad`] whose message quotes the text, in the shape
//! `"10/fortnight" is not a rate`, with a hint showing what would be accepted.

use std::net::{IpAddr, SocketAddr};
use std::num::{IntErrorKind, NonZeroU32};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use hyper::Uri;
use hyper::http::uri::{Authority, PathAndQuery};
use ipnet::IpNet;

use super::types::{DiskSync, Rate};
use super::walk::Bad;

const DURATION_HINT: &str = "durations need a unit, like 500ms, 15s, 5m or 1h";
const SIZE_HINT: &str = "sizes look like 65536, 64KiB or 1MiB (KiB = 1024 bytes, KB = 1000)";
const RATE_HINT: &str = "rates look like 10/min, 100/s, 5/h or 2/500ms";
const UPSTREAM_HINT: &str = "the upstream is http://host[:port], like http://127.0.0.1:3000";
/// The characters of a topic.
const TOPIC_PUNCT: &str = "/_-.:@";

/// Text that is not blank; trimmed.
pub(super) fn non_empty(s: &str) -> Result<String, Bad> {
    match s.trim() {
        "" => Err(Bad::new("must not be empty")),
        t => Ok(t.to_owned()),
    }
}

/// Empty text means "not set".
pub(super) fn optional(s: &str) -> Result<Option<String>, Bad> {
    Ok(Some(s.to_owned()).filter(|s| !s.is_empty()))
}

/// One of a fixed set of names, written exactly.
pub(super) fn one_of<T: Copy>(
    options: &'static [(&'static str, T)],
) -> impl Fn(&str) -> Result<T, Bad> {
    move |s| {
        let t = s.trim();
        match options.iter().find(|(name, _)| *name == t) {
            Some((_, v)) => Ok(*v),
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                Err(Bad::new(format!("{t:?} is not a valid choice"))
                    .hint(format!("expected one of: {}", names.join(", "))))
            }
        }
    }
}

/// `IP:PORT`; port 0 asks the OS for a free port.
pub(super) fn socket_addr(s: &str) -> Result<SocketAddr, Bad> {
    let t = s.trim();
    t.parse().map_err(|_| {
        Bad::not_a(t, "a socket address")
            .hint("write IP:PORT, like 0.0.0.0:8080 or [::1]:8080 (an IP address, not a host name)")
    })
}

/// `http://host[:port]` with an empty or `/` path and no query.
pub(super) fn upstream(s: &str) -> Result<Uri, Bad> {
    let t = s.trim();
    let uri: Uri = t
        .parse()
        .map_err(|_| Bad::not_a(t, "a URL").hint(UPSTREAM_HINT))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                Bad::new(format!("{t:?} uses https, which is not supported"))
                    .hint("ssegate speaks plain HTTP to the app beside it; use http://"),
            );
        }
        _ => return Err(Bad::not_a(t, "an http:// URL").hint(UPSTREAM_HINT)),
    }
    let authority = uri.authority().map(Authority::as_str).unwrap_or("");
    if authority.contains('@') {
        return Err(
            Bad::new(format!("{t:?} has credentials, which are not supported")).hint(UPSTREAM_HINT),
        );
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(Bad::new(format!("{t:?} has no host")).hint(UPSTREAM_HINT));
    }
    // `Uri` accepts any text after the last `:` of the authority; only a number 1-65535
    // is a port.
    let port_text = authority
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|_| !authority.ends_with(']'));
    if let Some(p) = port_text
        && !matches!(p.parse::<u16>(), Ok(n) if n > 0)
    {
        return Err(Bad::new(format!("{t:?} has an invalid port {p:?}")).hint(UPSTREAM_HINT));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(Bad::new(format!("{t:?} has a path or query"))
            .hint("requests keep their own paths; the upstream is only http://host[:port]"));
    }
    Ok(uri)
}

/// A humantime duration, zero allowed.
pub(super) fn duration(s: &str) -> Result<Duration, Bad> {
    let t = s.trim();
    humantime::parse_duration(t).map_err(|_| Bad::not_a(t, "a duration").hint(DURATION_HINT))
}

/// A humantime duration above zero.
pub(super) fn positive_duration(s: &str) -> Result<Duration, Bad> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err(Bad::new(format!("{:?} must be more than zero", s.trim())));
    }
    Ok(d)
}

/// A byte size above zero: a plain number of bytes, or with a unit (`64KiB`, `1MiB`).
pub(super) fn size(s: &str) -> Result<usize, Bad> {
    let t = s.trim();
    let bytes = bytesize::ByteSize::from_str(t)
        .map_err(|_| Bad::not_a(t, "a size").hint(SIZE_HINT))?
        .as_u64();
    let bytes = usize::try_from(bytes).map_err(|_| Bad::new(format!("{t:?} is too large")))?;
    if bytes == 0 {
        return Err(Bad::new(format!("{t:?} must be more than zero")));
    }
    Ok(bytes)
}

/// A whole number of at least `min`.
pub(super) fn count(min: usize) -> impl Fn(&str) -> Result<usize, Bad> {
    move |s| {
        let t = s.trim();
        let n: usize = t
            .parse()
            .map_err(|e: std::num::ParseIntError| match e.kind() {
                IntErrorKind::PosOverflow => Bad::new(format!("{t:?} is too large")),
                _ => Bad::not_a(t, "a whole number"),
            })?;
        if n < min {
            return Err(Bad::new(format!("{t:?} must be at least {min}")));
        }
        Ok(n)
    }
}

/// `auto` (one per core: `None`) or a whole number of at least 1.
pub(super) fn workers(s: &str) -> Result<Option<usize>, Bad> {
    match s.trim() {
        "auto" => Ok(None),
        t => count(1)(t).map(Some),
    }
}

/// A whole number of at least `min`, or empty (null) for none.
pub(super) fn optional_count(min: usize) -> impl Fn(&str) -> Result<Option<usize>, Bad> {
    let count = count(min);
    move |s| match s.trim() {
        "" => Ok(None),
        t => count(t).map(Some),
    }
}

/// `COUNT/PERIOD`: the period is a unit (`s`, `sec`, `min`, `h`, `hour`, `day`, …) or a
/// duration (`30s`, `500ms`).
pub(super) fn rate(s: &str) -> Result<Rate, Bad> {
    let t = s.trim();
    let bad = || Bad::not_a(t, "a rate").hint(RATE_HINT);
    let (count, per) = t.split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let count = NonZeroU32::new(count)
        .ok_or_else(|| Bad::new(format!("{t:?} must allow at least 1")).hint(RATE_HINT))?;
    let per = per.trim();
    let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
        humantime::parse_duration(per)
    } else {
        humantime::parse_duration(&format!("1{per}"))
    }
    .map_err(|_| bad())?;
    if per.is_zero() {
        return Err(Bad::new(format!("{t:?} has a zero period")).hint(RATE_HINT));
    }
    Ok(Rate { count, per })
}

/// A rate, or nothing for empty text or `off`.
pub(super) fn optional_rate(s: &str) -> Result<Option<Rate>, Bad> {
    match s.trim() {
        "" | "off" => Ok(None),
        t => rate(t).map(Some),
    }
}

/// A CIDR network (host bits are cleared), or a bare IP meaning /32 or /128.
pub(super) fn cidr(s: &str) -> Result<IpNet, Bad> {
    let t = s.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(Bad::not_a(t, "an IP network").hint("like 10.0.0.0/8, 192.168.1.7 or fd00::/8"))
}

/// The SSE path prefix: `/a/b`, no trailing `/`, no empty or dot segments, not `/_ssegate`.
pub(super) fn events_path(s: &str) -> Result<String, Bad> {
    let t = s.trim();
    let bad_char = t.chars().find(|c| !is_path_char(*c));
    let why = if !t.starts_with('/') {
        "it must start with /".to_owned()
    } else if t.ends_with('/') {
        "it must not end with /".to_owned()
    } else if let Some(c) = bad_char {
        format!("{c:?} is not allowed; use letters, digits, - . _ ~ and / (no percent-encoding)")
    } else if t
        .split('/')
        .skip(1)
        .any(|seg| matches!(seg, "" | "." | ".."))
    {
        "it must not have empty, . or .. segments".to_owned()
    } else if t == "/_ssegate" || t.starts_with("/_ssegate/") {
        "/_ssegate is reserved for ssegate's own routes".to_owned()
    } else {
        return Ok(t.to_owned());
    };
    Err(Bad::not_a(t, "a valid path").hint(why))
}

/// RFC 3986 path characters, without percent-encoding.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/".contains(c)
}

/// A path (and optional query) on the upstream, starting with `/`.
pub(super) fn request_path(s: &str) -> Result<String, Bad> {
    let t = s.trim();
    if !t.starts_with('/') {
        return Err(Bad::not_a(t, "a valid path").hint("it must start with /"));
    }
    PathAndQuery::from_str(t)
        .map(|p| p.as_str().to_owned())
        .map_err(|_| Bad::not_a(t, "a valid path").hint("like /sse-auth"))
}

/// `*`, or an origin `scheme://host[:port]` (no path), lowercased as browsers send it.
pub(super) fn origin(s: &str) -> Result<String, Bad> {
    let t = s.trim();
    if t == "*" {
        return Ok(t.to_owned());
    }
    let bad = || {
        Bad::not_a(t, "an origin")
            .hint("an origin is scheme://host[:port] with no path, like https://app.example.com, or \"*\"")
    };
    let lower = t.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://").ok_or_else(bad)?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok || rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(bad());
    }
    let authority = Authority::from_str(rest).map_err(|_| bad())?;
    // `Authority` does not check the port's digits; an origin's port is a u16.
    let port = rest.strip_prefix(authority.host()).unwrap_or("");
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.parse::<u16>().is_ok());
    if authority.host().is_empty() || !port_ok {
        return Err(bad());
    }
    Ok(lower)
}

/// `redis://…` or `rediss://…`.
pub(super) fn redis_url(s: &str) -> Result<String, Bad> {
    let t = s.trim();
    let rest = t
        .strip_prefix("redis://")
        .or_else(|| t.strip_prefix("rediss://"));
    match rest {
        Some(rest) if !rest.is_empty() => Ok(t.to_owned()),
        _ => Err(Bad::not_a(t, "a Redis URL")
            .hint("like redis://127.0.0.1:6379 or rediss://user:password@host:6380/0")),
    }
}

/// A directory path, not empty.
pub(super) fn dir(s: &str) -> Result<PathBuf, Bad> {
    non_empty(s).map(PathBuf::from)
}

/// `always`, or a duration above zero (flush at least that often).
pub(super) fn disk_sync(s: &str) -> Result<DiskSync, Bad> {
    let t = s.trim();
    if t == "always" {
        return Ok(DiskSync::Always);
    }
    positive_duration(t)
        .map(DiskSync::Every)
        .map_err(|_| Bad::new(format!("{t:?} is not \"always\" or a duration")).hint(DURATION_HINT))
}

/// A file path; empty means none.
pub(super) fn optional_path(s: &str) -> Result<Option<PathBuf>, Bad> {
    Ok(Some(s.trim()).filter(|s| !s.is_empty()).map(PathBuf::from))
}

/// A cookie name (an HTTP token); empty means none.
pub(super) fn cookie_name(s: &str) -> Result<Option<String>, Bad> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.chars()
        .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
    {
        Ok(Some(t.to_owned()))
    } else {
        Err(Bad::not_a(t, "a cookie name").hint("letters, digits and !#$%&'*+-.^_`|~ only"))
    }
}

/// A topic pattern with `{claim}` placeholders, like `user/{sub}/*`.
pub(super) fn topic_template(s: &str) -> Result<String, Bad> {
    let t = s.trim();
    let bad = |why: &str| {
        Bad::not_a(t, "a topic template").hint(format!(
            "{why}; like user/{{sub}}/* or tenant/{{tenant}}/questions"
        ))
    };
    // Replace each placeholder by one topic character, then check what remains is a pattern.
    let mut filled = String::with_capacity(t.len());
    let mut rest = t;
    while let Some(open) = rest.find(['{', '}']) {
        filled.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        if rest[open..].starts_with('}') {
            return Err(bad("unmatched }"));
        }
        let close = after.find('}').ok_or_else(|| bad("unclosed {"))?;
        let name = &after[..close];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(bad("a placeholder is {claim_name}"));
        }
        filled.push('x');
        rest = &after[close + 1..];
    }
    filled.push_str(rest);
    let body = filled.strip_suffix("/*").unwrap_or(&filled);
    let topic_ok = |c: char| c.is_ascii_alphanumeric() || TOPIC_PUNCT.contains(c);
    if filled == "*" || (!body.is_empty() && body.chars().all(topic_ok)) {
        Ok(t.to_owned())
    } else {
        Err(bad("topics use A-Z a-z 0-9 / _ - . : @ and may end in /*"))
    }
}

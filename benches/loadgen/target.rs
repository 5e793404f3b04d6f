//! What differs between the servers under test: the subscribe path, and how events are
//! published (ssegate's JSON webhook, Nchan's raw body per channel, Pushpin's GRIP items,
//! the floor's raw body to its one topic).
//!
//! The event data is the same everywhere: `"<seq> <send µs> <padding>"`, plain text on one
//! `data:` line, so every server's stream is read and checked the same way.

use clap::ValueEnum;
use std::fmt::Write as _;

/// The server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// ssegate: `GET /events/{topic}`; `POST /publish` with `{"topic","data"}` (a JSON
    /// array for batches).
    Ssegate,
    /// Nchan: `GET /events/{channel}`; `POST /pub/{channel}` with the data as the body (one
    /// event per request).
    Nchan,
    /// Pushpin with the GRIP backend of the peers directory: `GET /events/{channel}`;
    /// `POST /publish/` with `{"items":[…http-stream content…]}` (batches allowed).
    Pushpin,
    /// The floor (the bare epoll server of the peers directory): `GET /{topic}`, though
    /// every stream gets every event (one topic); `POST /` with the data as the body (one
    /// event per request). No ids, no history: loss and order are read from the data's
    /// sequence numbers, as for every target.
    Floor,
}

impl Kind {
    /// The default subscribe path template (`{topic}` is replaced).
    pub fn default_sub_path(self) -> &'static str {
        match self {
            Self::Floor => "/{topic}",
            _ => "/events/{topic}",
        }
    }

    /// Whether one request can carry several events.
    pub fn batches(self) -> bool {
        !matches!(self, Self::Nchan | Self::Floor)
    }

    /// Whether the server keeps topics apart (the floor sends every event to every stream).
    pub fn has_topics(self) -> bool {
        !matches!(self, Self::Floor)
    }
}

/// The subscribe request line's target for `topic`.
pub fn sub_path(template: &str, topic: &str) -> String {
    template.replace("{topic}", topic)
}

/// The `GET` that opens a stream.
pub fn subscribe_request(path: &str, host: &str, last_event_id: Option<&[u8]>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n");
    if let Some(id) = last_event_id.filter(|id| !id.is_empty()) {
        out.extend_from_slice(b"Last-Event-ID: ");
        out.extend_from_slice(id);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// One event to publish.
pub struct Outgoing<'a> {
    /// The topic (channel).
    pub topic: &'a str,
    /// Sequence number within the topic.
    pub seq: u64,
    /// Send time, µs on the load generator's clock.
    pub sent_us: u64,
}

/// Writes the event data `"<seq> <sent_us> xxx…"`, padded to `size` bytes.
pub fn payload(seq: u64, sent_us: u64, size: usize, out: &mut String) {
    let start = out.len();
    let _ = write!(out, "{seq} {sent_us} ");
    let used = out.len() - start;
    for _ in used..size.max(used + 1) {
        out.push('x');
    }
}

/// Parses `"<seq> <sent_us> …"` back.
pub fn parse_payload(data: &[u8]) -> Option<(u64, u64)> {
    let mut it = data.split(|&b| b == b' ');
    let seq = parse_u64(it.next()?)?;
    let sent = parse_u64(it.next()?)?;
    Some((seq, sent))
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Builds the publish request for `events` (one request; more than one event only when
/// [`Kind::batches`]). `path` overrides the publish path.
pub fn publish_request(
    kind: Kind,
    path: Option<&str>,
    host: &str,
    events: &[Outgoing<'_>],
    size: usize,
    out: &mut Vec<u8>,
) {
    let mut body = String::with_capacity(events.len() * (size + 64));
    let mut data = String::with_capacity(size + 32);
    let target;
    match kind {
        Kind::Ssegate => {
            target = path.unwrap_or("/publish").to_owned();
            if events.len() > 1 {
                body.push('[');
            }
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                data.clear();
                payload(e.seq, e.sent_us, size, &mut data);
                let _ = write!(body, r#"{{"topic":"{}","data":"{data}"}}"#, e.topic);
            }
            if events.len() > 1 {
                body.push(']');
            }
        }
        Kind::Nchan => {
            let e = &events[0];
            target = path.map_or_else(
                || format!("/pub/{}", e.topic),
                |p| p.replace("{topic}", e.topic),
            );
            payload(e.seq, e.sent_us, size, &mut body);
        }
        Kind::Floor => {
            let e = &events[0];
            target = path.unwrap_or("/").to_owned();
            payload(e.seq, e.sent_us, size, &mut body);
        }
        Kind::Pushpin => {
            target = path.unwrap_or("/publish/").to_owned();
            body.push_str(r#"{"items":["#);
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                data.clear();
                payload(e.seq, e.sent_us, size, &mut data);
                let _ = write!(
                    body,
                    r#"{{"channel":"{}","formats":{{"http-stream":{{"content":"event: message\ndata: {data}\n\n"}}}}}}"#,
                    e.topic
                );
            }
            body.push_str("]}");
        }
    }
    let content_type = match kind {
        Kind::Nchan | Kind::Floor => "text/plain",
        _ => "application/json",
    };
    out.clear();
    let _ = write_head(out, &target, host, content_type, body.len());
    out.extend_from_slice(body.as_bytes());
}

fn write_head(
    out: &mut Vec<u8>,
    target: &str,
    host: &str,
    content_type: &str,
    len: usize,
) -> std::io::Result<()> {
    use std::io::Write as _;
    write!(
        out,
        "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// A plain `GET` (for `/stats`).
pub fn get_request(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// ssegate's job-closing publish: `{"topic": topic, "data": "done", "close": true}`.
pub fn close_request(topic: &str, host: &str, out: &mut Vec<u8>) {
    let body = format!(r#"{{"topic":"{topic}","data":"done","close":true}}"#);
    out.clear();
    let _ = write_head(out, "/publish", host, "application/json", body.len());
    out.extend_from_slice(body.as_bytes());
}

/// Checks the floor's publish request and the payload's round trip (`loadgen selftest`).
pub fn selftest() -> Result<(), String> {
    let events = [Outgoing {
        topic: "lg-0",
        seq: 42,
        sent_us: 1234,
    }];
    let mut req = Vec::new();
    publish_request(Kind::Floor, None, "h:1", &events, 20, &mut req);
    let text = String::from_utf8_lossy(&req);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("floor publish request has no head: {text:?}"));
    };
    if !head.starts_with("POST / HTTP/1.1\r\n")
        || !head.contains("Content-Type: text/plain\r\n")
        || !head.ends_with(&format!("Content-Length: {}", body.len()))
        || body.len() != 20
        || parse_payload(body.as_bytes()) != Some((42, 1234))
    {
        return Err(format!("floor publish request: {text:?}"));
    }
    if Kind::Floor.batches() || Kind::Floor.has_topics() || !Kind::Ssegate.has_topics() {
        return Err("the floor takes one event per request on one topic".to_owned());
    }
    if sub_path(Kind::Floor.default_sub_path(), "lg-0") != "/lg-0" {
        return Err("the floor's subscribe path is /{topic}".to_owned());
    }
    Ok(())
}

//! A client-side SSE parser following the WHATWG "event stream interpretation" rules.

/// One dispatched event, as an EventSource would see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedEvent {
    /// The `id:` field of this event, if it had one.
    pub id: Option<String>,
    /// The `event:` field, or `None` for the default `message` type.
    pub event: Option<String>,
    /// The data lines joined by `\n`.
    pub data: String,
    /// The `retry:` value seen in this block, if any.
    pub retry: Option<u64>,
    /// The comment lines seen since the previous event (without the leading `:`).
    pub comments: Vec<String>,
}

/// An incremental parser: feed it bytes as they arrive, get back completed events.
///
/// A block with a `retry:` field or comments but no data is also returned (with empty
/// `data` and `id: None` unless it set one) so callers can see heartbeats and retry hints.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    pending: ParsedEvent,
    has_data: bool,
    has_fields: bool,
}

impl Parser {
    /// Feeds `chunk` and returns every block it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<ParsedEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b == b'\n' || b == b'\r' {
                if b == b'\r' && i + 1 == self.buf.len() {
                    // A CR at the end may be the first half of CRLF: wait for more.
                    break;
                }
                let line = String::from_utf8_lossy(&self.buf[start..i]).into_owned();
                i += if b == b'\r' && self.buf.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
                if let Some(ev) = self.line(&line) {
                    out.push(ev);
                }
            } else {
                i += 1;
            }
        }
        self.buf.drain(..start);
        out
    }

    fn line(&mut self, line: &str) -> Option<ParsedEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if let Some(comment) = line.strip_prefix(':') {
            self.pending.comments.push(comment.to_owned());
            self.has_fields = true;
            return None;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        self.has_fields = true;
        match name {
            "event" => self.pending.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.pending.data.push('\n');
                }
                self.pending.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.pending.id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.pending.retry = value.parse().ok();
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<ParsedEvent> {
        let fields = std::mem::take(&mut self.has_fields);
        self.has_data = false;
        let ev = std::mem::take(&mut self.pending);
        fields.then_some(ev)
    }

    /// Comments (heartbeats) seen after the last blank line, taken out of the parser.
    pub fn take_comments(&mut self) -> Vec<String> {
        std::mem::take(&mut self.pending.comments)
    }
}

//! A strict, allocation-free (after warm-up) SSE parser for the receiving side.
//!
//! It follows the WHATWG event-stream rules like `ssegate::sse::Parser` (CR, LF and CRLF
//! end lines; one optional space after the colon; the last `id:` sticks; a block without
//! `data:` dispatches nothing), but reuses its buffers instead of building `String`s per
//! line: at 100,000 deliveries/s the load generator's own cost matters. "Strict" means
//! what a spec parser would silently ignore is counted as an error: unknown field names,
//! a non-numeric `retry:`, data that is not UTF-8.

/// One dispatched event, borrowed from the parser.
pub struct Event<'a> {
    /// The `event:` type, if the block had one.
    pub event: Option<&'a [u8]>,
    /// The data lines joined by `\n`.
    pub data: &'a [u8],
    /// The last event id seen on the stream so far (sticky, as in browsers).
    pub id: &'a [u8],
}

/// The parser's counters, besides the events it dispatches.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Comment lines (`: hb` heartbeats and the like).
    pub comments: u64,
    /// `retry:` fields.
    pub retries: u64,
    /// Lines or values a strict reader refuses.
    pub errors: u64,
}

/// The incremental parser. Feed it body bytes as they arrive.
#[derive(Default)]
pub struct Parser {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    event: Vec<u8>,
    has_event: bool,
    /// The last event id buffer: set by an `id:` line, even of an event not yet complete.
    id: Vec<u8>,
    /// The last event id string: the buffer as of the last blank line (what a browser
    /// sends as `Last-Event-ID`; an event cut off by the connection's end does not count).
    committed_id: Vec<u8>,
    after_cr: bool,
    /// What was counted so far.
    pub counters: Counters,
}

impl Parser {
    /// Feeds `input`, calling `on_event` for every event it completes.
    pub fn feed(&mut self, mut input: &[u8], on_event: &mut impl FnMut(&Event<'_>)) {
        if self.after_cr {
            // A CR ended the last line; a LF right after it belongs to that line ending.
            self.after_cr = false;
            if let Some(rest) = input.strip_prefix(b"\n") {
                input = rest;
            }
        }
        while !input.is_empty() {
            let Some(pos) = memchr::memchr2(b'\n', b'\r', input) else {
                self.line.extend_from_slice(input);
                return;
            };
            let (line, ending) = (&input[..pos], input[pos]);
            input = &input[pos + 1..];
            if ending == b'\r' {
                match input.first() {
                    Some(b'\n') => input = &input[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.line.is_empty() {
                self.line_done(line, on_event);
            } else {
                let mut owned = std::mem::take(&mut self.line);
                owned.extend_from_slice(line);
                self.line_done(&owned, on_event);
                owned.clear();
                self.line = owned;
            }
        }
    }

    /// Forgets the partial line and event of a connection that ended, keeping the last
    /// event id (to resume with `Last-Event-ID`) and the counters.
    pub fn reset_connection(&mut self) {
        self.line.clear();
        self.data.clear();
        self.has_data = false;
        self.event.clear();
        self.has_event = false;
        self.after_cr = false;
        self.id.clone_from(&self.committed_id);
    }

    /// The id of the last complete event block (empty if none): the `Last-Event-ID` to
    /// resume with.
    pub fn last_id(&self) -> &[u8] {
        &self.committed_id
    }

    fn line_done(&mut self, line: &[u8], on_event: &mut impl FnMut(&Event<'_>)) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            self.counters.comments += 1;
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
                self.has_event = true;
            }
            b"id" => {
                if value.contains(&0) {
                    self.counters.errors += 1;
                } else {
                    self.id.clear();
                    self.id.extend_from_slice(value);
                }
            }
            b"retry" => {
                if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                    self.counters.errors += 1;
                } else {
                    self.counters.retries += 1;
                }
            }
            _ => self.counters.errors += 1,
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(&Event<'_>)) {
        self.committed_id.clone_from(&self.id);
        if self.has_data {
            if std::str::from_utf8(&self.data).is_err() {
                self.counters.errors += 1;
            }
            on_event(&Event {
                event: self.has_event.then_some(&self.event[..]),
                data: &self.data,
                id: &self.id,
            });
        }
        self.data.clear();
        self.has_data = false;
        self.event.clear();
        self.has_event = false;
    }
}

/// Checks the parser against `ssegate::sse::Parser` on tricky input split every possible
/// way (`loadgen selftest`).
pub fn selftest() -> Result<(), String> {
    let wire: &[u8] = b": hb\nretry: 2000\n\nid: 1-0\nevent: x\ndata: a\r\ndata:b\rdata\n\n\
        data: no id\n\nid: 2-0\ndata: 7 99 pad\r\n\r\n";
    let reference: Vec<(Option<String>, String, String)> = ssegate::sse::Parser::default()
        .feed(wire)
        .into_iter()
        .filter(|e| !e.data.is_empty() || e.event.is_some())
        .map(|e| (e.event, e.data, e.id.unwrap_or_default()))
        .collect();
    for step in 1..wire.len() {
        let mut p = Parser::default();
        let mut got = Vec::new();
        for piece in wire.chunks(step) {
            p.feed(piece, &mut |e| {
                got.push((
                    e.event.map(|t| String::from_utf8_lossy(t).into_owned()),
                    String::from_utf8_lossy(e.data).into_owned(),
                    String::from_utf8_lossy(e.id).into_owned(),
                ));
            });
        }
        // ssegate's parser reports an event's own id only; ours is sticky like a browser's.
        let ours: Vec<_> = got.iter().map(|(t, d, _)| (t.clone(), d.clone())).collect();
        let theirs: Vec<_> = reference
            .iter()
            .map(|(t, d, _)| (t.clone(), d.clone()))
            .collect();
        if ours != theirs || got.len() != 3 || got[1].2 != "1-0" || got[2].2 != "2-0" {
            return Err(format!(
                "SSE parsing split every {step} bytes: got {got:?}, expected {reference:?}"
            ));
        }
        if p.counters.comments != 1 || p.counters.retries != 1 || p.counters.errors != 0 {
            return Err(format!("SSE counters wrong: {:?}", p.counters));
        }
    }
    Ok(())
}

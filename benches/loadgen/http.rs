//! Just enough HTTP/1.1 by hand over a raw `TcpStream`: bind to a chosen loopback source
//! address before connecting, write a request, read the response head, and decode the
//! body (chunked, content-length or until EOF) strictly and incrementally.
//!
//! No HTTP client library: the load generator must see exactly what the server wrote,
//! and the per-byte cost of reading a stream must stay small next to the server's.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Opens a TCP connection to `dst`, from `src` (port chosen by the kernel) when given.
///
/// Binding first is what lets many streams pass the ephemeral-port range of one source
/// address: each of 127.0.0.1, 127.0.0.2, … has its own ~28,000 ports.
pub async fn connect(dst: SocketAddr, src: Option<IpAddr>) -> io::Result<TcpStream> {
    connect_with(dst, src, None).await
}

/// [`connect`] with the socket's receive buffer set first (`SO_RCVBUF`, bytes), to make a
/// slow reader's kernel buffer small.
pub async fn connect_with(
    dst: SocketAddr,
    src: Option<IpAddr>,
    rcvbuf: Option<u32>,
) -> io::Result<TcpStream> {
    let sock = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    let stream = sock.connect(dst).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A protocol error: the server wrote something that is not HTTP/1.1 as expected.
#[derive(Debug)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn proto(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, ProtocolError(msg.into()))
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// `Content-Length: n`.
    Length(u64),
    /// Neither: the body ends when the server closes.
    UntilEof,
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the server will close the connection after this response.
    pub close: bool,
    /// The `Content-Type` value, lowercased.
    pub content_type: String,
}

/// A connection with its read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    /// Wraps a connected stream; `buf_size` is the read buffer (it grows for long heads).
    pub fn new(stream: TcpStream, buf_size: usize) -> Self {
        Self {
            stream,
            buf: vec![0; buf_size.max(512)],
            start: 0,
            end: 0,
        }
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The bytes read but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks `n` buffered bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF. Cancel-safe (one `read`).
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let len = self.buf.len();
                self.buf.resize(len * 2, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Reads and parses a response head.
    pub async fn read_head(&mut self) -> io::Result<Head> {
        loop {
            if let Some(pos) = find(self.buffered(), b"\r\n\r\n") {
                let head = parse_head(&self.buffered()[..pos])?;
                self.consume(pos + 4);
                return Ok(head);
            }
            if self.end - self.start > MAX_HEAD {
                return Err(proto("response head larger than 64 KiB"));
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the response head",
                ));
            }
        }
    }

    /// Reads a whole (small) response body into `out`.
    pub async fn read_body(&mut self, framing: Framing, out: &mut Vec<u8>) -> io::Result<()> {
        let mut dec = BodyDecoder::new(framing);
        loop {
            let (used, done) = dec.decode(self.buffered(), &mut |d| out.extend_from_slice(d))?;
            self.consume(used);
            if done {
                return Ok(());
            }
            if self.fill().await? == 0 {
                return dec.eof();
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(head).map_err(|_| proto("response head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(proto(format!("bad status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| proto(format!("bad status line {status_line:?}")))?;
    let mut chunked = false;
    let mut length = None;
    let mut close = version == "HTTP/1.0";
    let mut content_type = String::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| proto(format!("bad header line {line:?}")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
            if !chunked {
                return Err(proto(format!("unsupported transfer-encoding {value:?}")));
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<u64>()
                    .map_err(|_| proto(format!("bad content-length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                close = true;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                close = false;
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = value.to_ascii_lowercase();
        }
    }
    let framing = if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Length(0)
    } else {
        close = true;
        Framing::UntilEof
    };
    Ok(Head {
        status,
        framing,
        close,
        content_type,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { n: u64, digits: u8 },
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Chunked(Chunk),
    Length(u64),
    UntilEof,
    Done,
}

/// An incremental body decoder: feed it what arrived, get the body bytes in order.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
}

impl BodyDecoder {
    /// A decoder for a body with this framing.
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Chunked => State::Chunked(Chunk::Size { n: 0, digits: 0 }),
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::UntilEof => State::UntilEof,
        };
        Self { state }
    }

    /// What reaching EOF means now: the end of an until-EOF body, or an error.
    pub fn eof(&mut self) -> io::Result<()> {
        match self.state {
            State::UntilEof | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside the body",
            )),
        }
    }

    /// Decodes from `input`, passing body bytes to `sink`. Returns how many bytes of
    /// `input` were used and whether the body is complete (bytes after it are left
    /// for the next response on the connection).
    pub fn decode(
        &mut self,
        input: &[u8],
        sink: &mut impl FnMut(&[u8]),
    ) -> io::Result<(usize, bool)> {
        let mut i = 0;
        while i < input.len() {
            match &mut self.state {
                State::Done => break,
                State::UntilEof => {
                    sink(&input[i..]);
                    i = input.len();
                }
                State::Length(rem) => {
                    let take = (*rem).min((input.len() - i) as u64) as usize;
                    sink(&input[i..i + take]);
                    i += take;
                    *rem -= take as u64;
                    if *rem == 0 {
                        self.state = State::Done;
                    }
                }
                State::Chunked(c) => {
                    if let Chunk::Data(rem) = c {
                        let take = (*rem).min((input.len() - i) as u64) as usize;
                        sink(&input[i..i + take]);
                        i += take;
                        *rem -= take as u64;
                        if *rem == 0 {
                            *c = Chunk::DataCr;
                        }
                        continue;
                    }
                    let b = input[i];
                    i += 1;
                    *c = chunk_byte(*c, b)?;
                    if matches!(c, Chunk::Size { n: u64::MAX, .. }) {
                        self.state = State::Done;
                    }
                }
            }
        }
        Ok((i, self.state == State::Done))
    }
}

/// One step of the chunked-encoding state machine on a non-data byte. The end of the body
/// is signalled by returning `Size { n: u64::MAX, .. }`.
fn chunk_byte(c: Chunk, b: u8) -> io::Result<Chunk> {
    let bad = |what: &str| proto(format!("bad chunked encoding: {what} (byte {b:#04x})"));
    Ok(match c {
        Chunk::Size { n, digits } => match b {
            b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                if digits >= 15 {
                    return Err(bad("chunk size too long"));
                }
                let d = (b as char).to_digit(16).unwrap_or(0);
                Chunk::Size {
                    n: n * 16 + u64::from(d),
                    digits: digits + 1,
                }
            }
            b';' if digits > 0 => Chunk::Ext(n),
            b'\r' if digits > 0 => Chunk::SizeLf(n),
            _ => return Err(bad("expected a hex chunk size")),
        },
        Chunk::Ext(n) => match b {
            b'\r' => Chunk::SizeLf(n),
            _ => Chunk::Ext(n),
        },
        Chunk::SizeLf(n) => match b {
            b'\n' if n == 0 => Chunk::TrailerStart,
            b'\n' => Chunk::Data(n),
            _ => return Err(bad("expected LF after the chunk size")),
        },
        Chunk::Data(_) => c,
        Chunk::DataCr => match b {
            b'\r' => Chunk::DataLf,
            _ => return Err(bad("expected CR after chunk data")),
        },
        Chunk::DataLf => match b {
            b'\n' => Chunk::Size { n: 0, digits: 0 },
            _ => return Err(bad("expected LF after chunk data")),
        },
        Chunk::TrailerStart => match b {
            b'\r' => Chunk::EndLf,
            _ => Chunk::TrailerLine,
        },
        Chunk::TrailerLine => match b {
            b'\r' => Chunk::TrailerLf,
            _ => Chunk::TrailerLine,
        },
        Chunk::TrailerLf => match b {
            b'\n' => Chunk::TrailerStart,
            _ => return Err(bad("expected LF after a trailer")),
        },
        Chunk::EndLf => match b {
            b'\n' => Chunk::Size {
                n: u64::MAX,
                digits: 0,
            },
            _ => return Err(bad("expected LF after the last chunk")),
        },
    })
}

/// Checks the decoder on known input (`loadgen selftest`).
pub fn selftest() -> Result<(), String> {
    let wire = b"5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\nx-t: 1\r\n\r\nNEXT";
    for step in 1..wire.len() {
        let mut dec = BodyDecoder::new(Framing::Chunked);
        let (mut out, mut used, mut done) = (Vec::new(), 0, false);
        for piece in wire.chunks(step) {
            let (u, d) = dec
                .decode(piece, &mut |b| out.extend_from_slice(b))
                .map_err(|e| e.to_string())?;
            used += u;
            done = d;
            if d {
                break;
            }
        }
        if out != b"hello, world" || !done || &wire[used..] != b"NEXT" {
            return Err(format!(
                "chunked decoding split every {step} bytes is wrong"
            ));
        }
    }
    let mut dec = BodyDecoder::new(Framing::Chunked);
    if dec.decode(b"5\r\nhelloXX", &mut |_| {}).is_ok() {
        return Err("bad chunk framing was accepted".to_owned());
    }
    let mut dec = BodyDecoder::new(Framing::Length(3));
    let mut out = Vec::new();
    let (used, done) = dec
        .decode(b"abcdef", &mut |b| out.extend_from_slice(b))
        .map_err(|e| e.to_string())?;
    if out != b"abc" || used != 3 || !done {
        return Err("content-length decoding is wrong".to_owned());
    }
    Ok(())
}

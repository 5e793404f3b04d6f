//! Where a response body ends in the bytes read from the app: by length, by the chunked
//! framing (scanned byte by byte, never copied), or at the app's close.

use super::head::Framing;

/// Finds where a response body ends in the bytes read from the app.
#[derive(Debug)]
pub(crate) enum BodyEnd {
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
    pub(crate) fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Self::Done,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked(Chunks::default()),
            Framing::Close => Self::Close(false),
        }
    }

    /// How many of `bytes` (the next ones read) belong to the body, and whether the body
    /// ends there. `Err` if the chunk framing is broken.
    pub(crate) fn scan(&mut self, bytes: &[u8]) -> Result<(usize, bool), ()> {
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
    pub(crate) fn finish(&mut self) {
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
pub(crate) struct Chunks {
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

//! HTTP/1.1 chunked transfer coding, as bytes: chunk size lines, and frames built once
//! already framed as a chunk so that a stream sends each event with one plain `send()`.
//!
//! No I/O and no HTTP types live here; the raw HTTP/1.1 streams ([`crate::proxy`]) write
//! these bytes, and the hub ([`crate::hub`]) builds each event's chunk when it encodes it.
//!
//! ```
//! use ssegate::chunked;
//! let (chunk, frame) = chunked::build(8, |buf| buf.extend_from_slice(b"data: x\n\n"));
//! assert_eq!(&chunk[..], b"9\r\ndata: x\n\n\r\n");
//! assert_eq!(&frame[..], b"data: x\n\n");
//! ```

use bytes::{BufMut, Bytes, BytesMut};

/// The last chunk, which ends a chunked body.
pub const LAST: &[u8] = b"0\r\n\r\n";

/// The CRLF after a chunk's data.
pub const CRLF: &[u8] = b"\r\n";

/// The SSE heartbeat comment (`: hb`) as one chunk; a test checks it against
/// [`crate::sse::HEARTBEAT`].
pub const HEARTBEAT: &[u8] = b"5\r\n: hb\n\r\n";

/// Room kept in front of a frame built by [`build`] for its size line: the longest one.
const ROOM: usize = LINE_MAX;

/// Builds a frame with `write` (into a buffer sized for about `hint` bytes) and frames it
/// as one chunk in the same allocation: returns the chunk (size line, frame, CRLF) and the
/// frame alone, two views of the same bytes. An empty frame is no chunk at all (an empty
/// chunk would end the body).
pub fn build(hint: usize, write: impl FnOnce(&mut BytesMut)) -> (Bytes, Bytes) {
    let mut buf = BytesMut::with_capacity(ROOM + hint + CRLF.len());
    buf.put_bytes(0, ROOM);
    write(&mut buf);
    let len = buf.len() - ROOM;
    if len == 0 {
        return (Bytes::new(), Bytes::new());
    }
    let mut line = [0u8; LINE_MAX];
    let n = line_into(len, &mut line);
    buf[ROOM - n..ROOM].copy_from_slice(&line[..n]);
    buf.put_slice(CRLF);
    let chunk = buf.freeze().slice(ROOM - n..);
    let frame = chunk.slice(n..chunk.len() - CRLF.len());
    (chunk, frame)
}

/// How many bytes [`build_around`] needs for a frame of `frame_len` bytes: size line, frame
/// and CRLF.
pub fn chunk_len(frame_len: usize) -> usize {
    let line = match SIZE_LINES.get(frame_len) {
        Some(_) => digits(frame_len) + CRLF.len(),
        None => hex_line(frame_len, &mut [0u8; LINE_MAX]),
    };
    line + frame_len + CRLF.len()
}

/// The chunk of the frame `head`, `body`, `tail` (as [`build`] makes it), in `body`'s own
/// allocation: moved up to make room for the size line and `head`. Nothing is allocated
/// when `body` has room for the whole chunk ([`chunk_len`]); it grows when it has not.
/// The frame is the chunk without its first `chunk.len() - frame_len - 2` bytes (the size
/// line) and its last two (CRLF); the caller, who knows its length, takes it from there.
pub fn build_around(mut body: Vec<u8>, head: &[u8], tail: &[u8]) -> Bytes {
    let frame_len = head.len() + body.len() + tail.len();
    if frame_len == 0 {
        return Bytes::new();
    }
    let mut line = [0u8; LINE_MAX];
    let n = line_into(frame_len, &mut line);
    let (moved, before) = (body.len() + tail.len() + CRLF.len(), n + head.len());
    body.reserve_exact(before + tail.len() + CRLF.len());
    body.extend_from_slice(tail);
    body.extend_from_slice(CRLF);
    body.resize(moved + before, 0);
    body.copy_within(..moved, before);
    body[..n].copy_from_slice(&line[..n]);
    body[n..before].copy_from_slice(head);
    Bytes::from(body)
}

/// The longest size line: 16 hex digits and CRLF.
const LINE_MAX: usize = 18;

/// Chunks smaller than this get a static size line.
const STATIC_LINES: usize = 4096;

/// `"0\r\n"` … `"fff\r\n"`, each padded to 5 bytes; [`size_line`] takes the used part.
static SIZE_LINES: [[u8; 5]; STATIC_LINES] = {
    let mut lines = [[0u8; 5]; STATIC_LINES];
    let mut n = 0;
    while n < STATIC_LINES {
        let digits = digits(n);
        let mut i = 0;
        while i < digits {
            let nibble = (n >> (4 * (digits - 1 - i))) & 0xf;
            lines[n][i] = b"0123456789abcdef"[nibble];
            i += 1;
        }
        lines[n][digits] = b'\r';
        lines[n][digits + 1] = b'\n';
        n += 1;
    }
    lines
};

/// How many hex digits `n` (under [`STATIC_LINES`]) takes.
const fn digits(n: usize) -> usize {
    if n < 0x10 {
        1
    } else if n < 0x100 {
        2
    } else {
        3
    }
}

/// The size line of a chunk of `len` bytes; static (no allocation) under 4 KiB.
pub fn size_line(len: usize) -> Bytes {
    match SIZE_LINES.get(len) {
        Some(line) => Bytes::from_static(&line[..digits(len) + 2]),
        None => {
            let mut line = [0u8; LINE_MAX];
            let n = hex_line(len, &mut line);
            Bytes::copy_from_slice(&line[..n])
        }
    }
}

/// [`hex_line`], from [`SIZE_LINES`] when it has the line.
fn line_into(n: usize, out: &mut [u8; LINE_MAX]) -> usize {
    match SIZE_LINES.get(n) {
        Some(line) => {
            out[..line.len()].copy_from_slice(line);
            digits(n) + CRLF.len()
        }
        None => hex_line(n, out),
    }
}

/// Writes `n` in lowercase hex followed by CRLF into `out`; how many bytes that took.
fn hex_line(mut n: usize, out: &mut [u8; LINE_MAX]) -> usize {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    out[..len].copy_from_slice(&digits[i..]);
    out[len..len + 2].copy_from_slice(CRLF);
    len + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `frame` framed as one chunk, copied into a buffer of its own. An empty frame is no
    /// chunk.
    fn wrap(frame: &[u8]) -> Bytes {
        if frame.is_empty() {
            return Bytes::new();
        }
        let line = size_line(frame.len());
        let mut buf = BytesMut::with_capacity(line.len() + frame.len() + CRLF.len());
        buf.put_slice(&line);
        buf.put_slice(frame);
        buf.put_slice(CRLF);
        buf.freeze()
    }

    #[test]
    fn size_lines_are_lowercase_hex() {
        let mut out = [0u8; LINE_MAX];
        for (n, want) in [
            (0, "0\r\n"),
            (10, "a\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
        ] {
            let len = hex_line(n, &mut out);
            assert_eq!(&out[..len], want.as_bytes());
        }
        let len = hex_line(usize::MAX, &mut out);
        assert_eq!(len, LINE_MAX);
    }

    #[test]
    fn static_size_lines_match_the_computed_ones() {
        let mut out = [0u8; LINE_MAX];
        for len in (0..STATIC_LINES).chain([STATIC_LINES, 1 << 20]) {
            let n = hex_line(len, &mut out);
            assert_eq!(&size_line(len)[..], &out[..n], "{len}");
        }
    }

    #[test]
    fn a_built_chunk_is_the_wrapped_frame_in_one_buffer() {
        for len in [1usize, 15, 16, 255, 256, 4095, 4096, 70_000] {
            let body = vec![b'x'; len];
            let (chunk, frame) = build(len, |buf| buf.extend_from_slice(&body));
            assert_eq!(&frame[..], &body[..]);
            assert_eq!(chunk, wrap(&body), "{len}");
            // One allocation: the frame lies inside the chunk.
            let inner = chunk.as_ptr() as usize + size_line(len).len();
            assert_eq!(frame.as_ptr() as usize, inner);
        }
    }

    #[test]
    fn a_chunk_built_around_a_body_is_the_chunk_built_anew() {
        for len in [0usize, 1, 15, 255, 4095, 4096, 70_000] {
            let body = vec![b'x'; len];
            let frame = [&b"head "[..], &body, b" tail"].concat();
            let (want_chunk, want_frame) = build(len, |buf| buf.extend_from_slice(&frame));
            for room in [0, chunk_len(frame.len()) - len] {
                let mut owned = Vec::with_capacity(len + room);
                owned.extend_from_slice(&body);
                let at = owned.as_ptr() as usize;
                let chunk = build_around(owned, b"head ", b" tail");
                let line = chunk.len() - frame.len() - CRLF.len();
                let framed = chunk.slice(line..chunk.len() - CRLF.len());
                assert_eq!(
                    (&chunk, &framed),
                    (&want_chunk, &want_frame),
                    "{len} {room}"
                );
                if room > 0 {
                    assert_eq!(chunk.as_ptr() as usize, at, "in place: {len}");
                }
            }
        }
        assert!(build_around(Vec::new(), b"", b"").is_empty());
    }

    #[test]
    fn an_empty_frame_is_no_chunk() {
        assert!(wrap(b"").is_empty());
        assert!(build(0, |_| {}).0.is_empty());
    }

    #[test]
    fn the_heartbeat_chunk_is_the_heartbeat_comment() {
        assert_eq!(HEARTBEAT, &wrap(crate::sse::HEARTBEAT)[..]);
    }
}

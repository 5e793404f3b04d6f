#![allow(clippy::unwrap_used)]
use super::*;

/// Scans `body` fed in pieces split at every pair of points: the end is found at the same
/// place however the bytes arrive.
fn scan_split(framing: Framing, body: &[u8]) -> Result<Option<usize>, ()> {
    let whole = {
        let mut end = BodyEnd::new(framing);
        match end.scan(body)? {
            (n, true) => Some(n),
            (_, false) => None,
        }
    };
    for a in 0..=body.len() {
        for b in a..=body.len() {
            let mut end = BodyEnd::new(framing);
            let mut taken = 0;
            let mut found = None;
            for piece in [&body[..a], &body[a..b], &body[b..]] {
                let (n, done) = end.scan(piece)?;
                taken += n;
                if done {
                    found = Some(taken);
                    break;
                }
                assert_eq!(n, piece.len(), "an unfinished body takes every byte");
            }
            assert_eq!(found, whole, "split at {a} and {b}");
        }
    }
    Ok(whole)
}

#[test]
fn chunked_bodies_end_after_the_last_chunk_and_trailers() {
    let body = b"5\r\nhello\r\n1;ext=\"x\"\r\n!\r\n0\r\n\r\nNEXT";
    assert_eq!(scan_split(Framing::Chunked, body), Ok(Some(body.len() - 4)));
    let trailers = b"A\r\n0123456789\r\n0\r\nx-sum: 1\r\nx-more: 2\r\n\r\n";
    assert_eq!(
        scan_split(Framing::Chunked, trailers),
        Ok(Some(trailers.len()))
    );
    let unfinished = b"5\r\nhel";
    assert_eq!(scan_split(Framing::Chunked, unfinished), Ok(None));
}

#[test]
fn broken_chunk_framing_is_refused() {
    for bad in [
        &b"5\r\nhello!\r\n0\r\n\r\n"[..],
        b"x\r\n",
        b"\r\n",
        b"5\nhello\r\n",
        b"0\r\n\n",
        b"0\r\nbad\ntrailer\r\n\r\n",
        b"fffffffffffffffff\r\n",
    ] {
        assert_eq!(
            BodyEnd::new(Framing::Chunked).scan(bad),
            Err(()),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn lengths_and_close_delimited_bodies() {
    assert_eq!(scan_split(Framing::Length(5), b"helloNEXT"), Ok(Some(5)));
    assert_eq!(scan_split(Framing::Empty, b"NEXT"), Ok(Some(0)));
    let mut close = BodyEnd::new(Framing::Close);
    assert_eq!(close.scan(b"abc"), Ok((3, false)));
    close.finish();
    assert_eq!(close.scan(b""), Ok((0, true)));
}

fn head(raw: &str, head_request: bool) -> Result<Option<ResponseHead>, String> {
    client_head_of(raw, head_request, false).map(|h| h.map(|(h, _)| h))
}

/// The parsed head and the head for the client.
fn client_head_of(
    raw: &str,
    head_request: bool,
    close: bool,
) -> Result<Option<(ResponseHead, String)>, String> {
    let want = Want {
        head_request,
        idempotent: true,
        close,
    };
    let mut out = Vec::new();
    let head = parse_response(raw.as_bytes(), want, &mut out, &mut Kept::new(None))?;
    Ok(head.map(|h| (h, String::from_utf8(out).unwrap())))
}

#[test]
fn response_framing() {
    let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false)
        .unwrap()
        .unwrap();
    assert_eq!(
        (h.status, h.framing, h.reusable),
        (200, Framing::Length(5), true)
    );
    assert_eq!(h.len, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".len());
    // Chunked wins over a length, and the length is not believed.
    let h = head(
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!(h.framing, Framing::Chunked);
    // A coding other than chunked last, or no length at all: until close, not reusable.
    for raw in [
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\n\r\n",
    ] {
        let h = head(raw, false).unwrap().unwrap();
        assert_eq!((h.framing, h.reusable), (Framing::Close, false), "{raw}");
    }
    // No body for HEAD, 204 and 304, whatever the length says.
    let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true)
        .unwrap()
        .unwrap();
    assert_eq!((h.framing, h.reusable), (Framing::Empty, true));
    for status in ["204 No Content", "304 Not Modified"] {
        let raw = format!("HTTP/1.1 {status}\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(head(&raw, false).unwrap().unwrap().framing, Framing::Empty);
    }
    // Keep-alive rules.
    let h = head(
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert!(!h.reusable);
    let h = head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false)
        .unwrap()
        .unwrap();
    assert!(!h.reusable);
    let h = head(
        "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert!(h.reusable);
    assert!(
        head("HTTP/1.1 200 OK\r\ncontent-le", false)
            .unwrap()
            .is_none()
    );
}

#[test]
fn ambiguous_or_malformed_responses_are_refused() {
    for raw in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "NOT HTTP\r\n\r\n",
    ] {
        assert!(head(raw, false).is_err(), "{raw}");
    }
    // The same length twice is one length.
    let h = head(
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!(h.framing, Framing::Length(5));
}

#[test]
fn the_client_head_drops_hop_by_hop_headers_and_states_its_framing() {
    let raw = "HTTP/1.1 201 Made It\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
               Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\
               Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n";
    let (_, out) = client_head_of(raw, false, false).unwrap().unwrap();
    assert_eq!(
        out,
        "HTTP/1.1 201 Made It\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    let raw = "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n";
    let (_, out) = client_head_of(raw, true, true).unwrap().unwrap();
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\n"
    );
    let raw = "HTTP/1.1 200 OK\r\n\r\nuntil close";
    let (_, out) = client_head_of(raw, false, false).unwrap().unwrap();
    assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
}

#[test]
fn wanted_lines_are_kept_from_the_final_head_only() {
    let want = Want {
        head_request: false,
        idempotent: true,
        close: false,
    };
    let wanted = |name: &str| name.eq_ignore_ascii_case("location");
    let mut out = Vec::new();
    let early = "HTTP/1.1 103 Early Hints\r\nLocation: /early\r\n\r\n";
    let mut kept = Kept::new(Some(&wanted));
    let h = parse_response(early.as_bytes(), want, &mut out, &mut kept)
        .unwrap()
        .unwrap();
    assert_eq!(h.status, 103);
    assert_eq!(kept.found().get(early.as_bytes(), "location"), None);

    let raw = "HTTP/1.1 201 Created\r\nx-other: 1\r\nLOCATION: /jobs/7\r\nlocation: /second\r\n\
               content-length: 0\r\n\r\n";
    let mut kept = Kept::new(Some(&wanted));
    parse_response(raw.as_bytes(), want, &mut out, &mut kept).unwrap();
    let found = kept.found();
    assert_eq!(found.get(raw.as_bytes(), "location"), Some("/jobs/7"));
    assert_eq!(found.get(raw.as_bytes(), "Location"), Some("/jobs/7"));
    assert_eq!(
        found.get(raw.as_bytes(), "x-other"),
        None,
        "only wanted lines"
    );
    let mut none = Kept::new(None);
    parse_response(raw.as_bytes(), want, &mut out, &mut none).unwrap();
    assert_eq!(none.found().get(raw.as_bytes(), "location"), None);
}

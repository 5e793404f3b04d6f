//! ssegate's browser client, served on the public listener as `/_ssegate/client.js` (with
//! its TypeScript declarations at `/_ssegate/client.d.ts`).
//!
//! The files live in `src/client/` and are compiled into the binary with their `ETag`s, so
//! serving them allocates nothing. They are revalidated cheaply: `Cache-Control: public,
//! max-age=300`, then `If-None-Match` is answered with 304. This module knows nothing of
//! the hub or of proxying; [`crate::proxy`] calls [`serve`] for paths under `/_ssegate/`.
//!
//! ```
//! use hyper::{HeaderMap, Method, StatusCode};
//! let resp = ssegate::client::serve(&Method::GET, "/_ssegate/client.js", &HeaderMap::new());
//! assert_eq!(resp.map(|r| r.status()), Some(StatusCode::OK));
//! assert!(ssegate::client::serve(&Method::GET, "/_ssegate/other", &HeaderMap::new()).is_none());
//! ```

use crate::response::{Body, json_error};
use bytes::Bytes;
use hyper::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, ALLOW, CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderValue,
    IF_NONE_MATCH, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{HeaderMap, Method, Response, StatusCode};

/// The browser client: an ES module exporting `SsegateSource` that also sets
/// `globalThis.SsegateSource`.
pub const CLIENT_JS: &str = include_str!("client/client.js");

/// The same client as a classic script (`<script src>` without `type="module"`): the
/// module minus its `export` lines, defining the global `SsegateSource`.
pub const CLIENT_GLOBAL_JS: &str = before_marker(CLIENT_JS, "// @module-exports");

/// The part of `s` before the line holding `marker` (all of `s` if there is none).
const fn before_marker<'a>(s: &'a str, marker: &str) -> &'a str {
    let (h, m) = (s.as_bytes(), marker.as_bytes());
    let mut i = 0;
    while i + m.len() <= h.len() {
        let mut j = 0;
        while j < m.len() && h[i + j] == m[j] {
            j += 1;
        }
        if j == m.len() {
            return s.split_at(i).0;
        }
        i += 1;
    }
    s
}

/// TypeScript declarations for [`CLIENT_JS`].
pub const CLIENT_DTS: &str = include_str!("client/client.d.ts");

/// How long browsers may use a copy before revalidating it (a deploy reaches every page
/// within five minutes; revalidation costs a 304).
const CACHE: &str = "public, max-age=300";

/// One compiled-in file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
    etag: &'static str,
}

const ASSETS: [Asset; 3] = [
    Asset {
        path: "/_ssegate/client.js",
        content_type: "text/javascript; charset=utf-8",
        body: CLIENT_JS,
        etag: as_str(&etag(CLIENT_JS)),
    },
    Asset {
        path: "/_ssegate/client.global.js",
        content_type: "text/javascript; charset=utf-8",
        body: CLIENT_GLOBAL_JS,
        etag: as_str(&etag(CLIENT_GLOBAL_JS)),
    },
    Asset {
        path: "/_ssegate/client.d.ts",
        content_type: "application/typescript; charset=utf-8",
        body: CLIENT_DTS,
        etag: as_str(&etag(CLIENT_DTS)),
    },
];

/// Answers a request for one of the client's files; `None` when `path` is not one of them
/// (the caller answers 404).
pub fn serve(method: &Method, path: &str, headers: &HeaderMap) -> Option<Response<Body>> {
    let asset = ASSETS.iter().find(|a| a.path == path)?;
    if method != Method::GET && method != Method::HEAD {
        let mut resp = json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{path} is read with GET"),
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(resp);
    }
    let fresh = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .any(|v| matches_etag(v, asset.etag));
    // hyper sends no body for HEAD by itself, with the GET's Content-Length.
    let mut resp = if fresh {
        let mut r = Response::new(Body::Empty);
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Body::full(Bytes::from_static(asset.body.as_bytes())));
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        r
    };
    let h = resp.headers_mut();
    h.insert(ETAG, HeaderValue::from_static(asset.etag));
    h.insert(CACHE_CONTROL, HeaderValue::from_static(CACHE));
    // A module imported from another origin needs CORS; the file is public anyway.
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    Some(resp)
}

/// Whether an `If-None-Match` value (a list of tags, or `*`) names `etag`. The comparison is
/// weak, as RFC 9110 §13.1.2 asks for this header.
fn matches_etag(value: &HeaderValue, etag: &str) -> bool {
    let Ok(list) = value.to_str() else {
        return false;
    };
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// FNV-1a, 64 bits: enough to tell two versions of a compiled-in file apart.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The strong validator `"<16 hex digits>"` of `body`, computed at compile time.
const fn etag(body: &str) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = fnv1a(body.as_bytes());
    let mut tag = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        tag[1 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    tag
}

/// `bytes` as text; only ever called at compile time, on ASCII.
const fn as_str(bytes: &'static [u8]) -> &'static str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(_) => panic!("an ETag is ASCII"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;

    fn get(path: &str, headers: &[(&str, &str)]) -> Response<Body> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        serve(&Method::GET, path, &map).unwrap()
    }

    fn header<'r>(resp: &'r Response<Body>, name: &str) -> &'r str {
        resp.headers().get(name).unwrap().to_str().unwrap()
    }

    async fn body(resp: Response<Body>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn client_js_is_served_with_type_caching_and_etag() {
        let resp = get("/_ssegate/client.js", &[]);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header(&resp, "content-type"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(header(&resp, "cache-control"), "public, max-age=300");
        assert_eq!(header(&resp, "x-content-type-options"), "nosniff");
        let etag = header(&resp, "etag").to_owned();
        assert!(etag.len() == 18 && etag.starts_with('"') && etag.ends_with('"'));
        assert_eq!(body(resp).await, CLIENT_JS.as_bytes());

        let global = body(get("/_ssegate/client.global.js", &[])).await;
        let global = String::from_utf8_lossy(&global);
        assert!(global.contains("globalThis.SsegateSource = SsegateSource;"));
        assert!(
            !global.contains("export "),
            "a classic script cannot contain export"
        );
        let dts = get("/_ssegate/client.d.ts", &[]);
        assert_eq!(dts.status(), StatusCode::OK);
        assert_eq!(
            header(&dts, "content-type"),
            "application/typescript; charset=utf-8"
        );
        assert_ne!(header(&dts, "etag"), etag, "each file has its own tag");
    }

    #[tokio::test]
    async fn if_none_match_is_answered_with_304() {
        let etag = header(&get("/_ssegate/client.js", &[]), "etag").to_owned();
        let weak = format!("W/{etag}");
        for value in [etag.as_str(), &format!("\"x\", {weak}"), "*"] {
            let resp = get("/_ssegate/client.js", &[("if-none-match", value)]);
            assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "{value}");
            assert_eq!(header(&resp, "etag"), etag);
            assert_eq!(header(&resp, "cache-control"), "public, max-age=300");
            assert!(body(resp).await.is_empty());
        }
        let stale = get("/_ssegate/client.js", &[("if-none-match", "\"0000\"")]);
        assert_eq!(stale.status(), StatusCode::OK);
    }

    #[test]
    fn other_paths_and_methods() {
        let none = HeaderMap::new();
        assert!(serve(&Method::GET, "/_ssegate/", &none).is_none());
        assert!(serve(&Method::GET, "/_ssegate/client.js.map", &none).is_none());
        let post = serve(&Method::POST, "/_ssegate/client.js", &none).unwrap();
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header(&post, "allow"), "GET, HEAD");
        let head = serve(&Method::HEAD, "/_ssegate/client.js", &none).unwrap();
        assert_eq!(head.status(), StatusCode::OK);
    }

    #[test]
    fn etag_is_quoted_lowercase_hex() {
        const EMPTY: &str = as_str(&etag(""));
        assert_eq!(EMPTY, "\"cbf29ce484222325\"");
        assert!(matches_etag(
            &HeaderValue::from_static("W/\"ab\""),
            "\"ab\""
        ));
        assert!(!matches_etag(
            &HeaderValue::from_static("\"ab\""),
            "\"abc\""
        ));
    }
}

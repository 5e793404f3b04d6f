//! CORS for event streams (`events.cors.allow_origins`): listed origins get
//! `Access-Control-Allow-Origin` with credentials; `*` allows any origin without them.

use hyper::header::{self, HeaderMap, HeaderValue};

/// The configured origins.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    origins: Vec<String>,
    any: bool,
}

impl Cors {
    /// From `events.cors.allow_origins` (lowercase origins, or `["*"]`).
    pub fn new(origins: &[String]) -> Self {
        Self {
            any: origins.iter().any(|o| o == "*"),
            origins: origins.iter().filter(|o| *o != "*").cloned().collect(),
        }
    }

    /// Adds the CORS headers a response to `request` should carry, if its origin is allowed.
    pub fn apply(&self, request: &HeaderMap, response: &mut HeaderMap) {
        let Some(origin) = request.get(header::ORIGIN) else {
            return;
        };
        response.append(header::VARY, HeaderValue::from_static("Origin"));
        let listed = origin
            .to_str()
            .is_ok_and(|o| self.origins.iter().any(|x| x.eq_ignore_ascii_case(o)));
        if listed {
            // A listed origin may send cookies (the session the `upstream` mode relies on).
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            response.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        } else if self.any {
            response.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }

    /// The headers of a preflight (`OPTIONS`) answer.
    pub fn preflight(&self, request: &HeaderMap, response: &mut HeaderMap) {
        self.apply(request, response);
        if response.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            response.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, OPTIONS"),
            );
            response.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Authorization, Last-Event-ID, Cache-Control, Accept"),
            );
            response.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
    }
}

//! Who may read which topics: the `jwt` and `upstream` modes of `auth`, as decisions
//! separate from the HTTP that carries them.
//!
//! A [`Grant`] lists the patterns a subscriber may read (or everything, for an admin) and
//! the token's subject and expiry; [`Grant::authorize`] checks requested topics against it.
//! An [`Authenticator`] is built from the configuration once (keys parsed, templates
//! split) and rebuilt on reload.

use crate::config::{self, AuthMode, JwtAlgorithm};
use crate::hub::Selector;
use crate::refusal::ApiError;
use hyper::StatusCode;
use hyper::header::{AUTHORIZATION, COOKIE, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod mint;

/// Why a subscriber is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token where one is needed.
    #[error(
        "a token is required: send Authorization: Bearer <token>, the access_token query parameter{0}"
    )]
    Missing(String),
    /// The token is malformed, badly signed, expired, not yet valid or of a refused algorithm.
    #[error("the token is not valid: {0}")]
    Invalid(String),
    /// A requested topic is outside what the token allows.
    #[error("not allowed to read {0}")]
    Forbidden(String),
}

impl ApiError for AuthError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Missing(_) | Self::Invalid(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Self::Missing(_) | Self::Invalid(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
        }
    }
}

/// What a subscriber may read, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    /// The patterns it may read; `None` for every topic.
    pub patterns: Option<Vec<Selector>>,
    /// The token's `sub`, for revocation.
    pub subject: Option<String>,
    /// The token's `exp`.
    pub expires: Option<SystemTime>,
}

impl Grant {
    /// Everything, with no subject and no expiry (`auth.mode: none`).
    pub fn all() -> Self {
        Self::default()
    }

    /// Checks that every requested topic or pattern is covered by a granted pattern.
    pub fn authorize(&self, requested: &[Selector]) -> Result<(), AuthError> {
        let Some(granted) = &self.patterns else {
            return Ok(());
        };
        match requested
            .iter()
            .find(|r| !granted.iter().any(|g| g.covers(r)))
        {
            None => Ok(()),
            Some(r) => Err(AuthError::Forbidden(format!("topic {r}"))),
        }
    }
}

/// Parses a comma- or space-separated list of patterns (the app's `X-Ssegate-Allow`).
pub fn parse_patterns(list: &str) -> Vec<Selector> {
    list.split([',', ' '])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .filter_map(|p| Selector::parse(p).ok())
        .collect()
}

struct Jwt {
    secret: Option<DecodingKey>,
    public: Option<DecodingKey>,
    algorithms: Vec<Algorithm>,
    cookie: Option<String>,
    topics_claim: String,
    admin_claim: String,
    allow: Vec<String>,
}

enum Mode {
    None,
    Jwt(Box<Jwt>),
    Upstream,
}

/// The configured subscriber authentication.
pub struct Authenticator {
    mode: Mode,
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Why the `auth` section's keys cannot be used (at start or on reload).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The public key file cannot be read.
    #[error("auth.jwt.public_key_file {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// More than one asymmetric algorithm family for one key.
    #[error(
        "auth.jwt.algorithms: one public key serves one algorithm family; list only one of RS256, ES256, EdDSA"
    )]
    OneFamily,
    /// The file is not a PEM public key of the algorithm's kind.
    #[error("auth.jwt.public_key_file {path}: not a {algorithm} public key in PEM: {reason}")]
    NotAKey {
        /// The file.
        path: String,
        /// The algorithm it was read for.
        algorithm: String,
        /// The parser's words.
        reason: String,
    },
}

impl Authenticator {
    /// Builds the authenticator, reading and parsing the public key file if one is set.
    pub fn new(auth: &config::Auth) -> Result<Self, KeyError> {
        let mode = match auth.mode {
            AuthMode::None => Mode::None,
            AuthMode::Upstream => Mode::Upstream,
            AuthMode::Jwt => Mode::Jwt(Box::new(Self::jwt(&auth.jwt)?)),
        };
        Ok(Self { mode })
    }

    fn jwt(cfg: &config::Jwt) -> Result<Jwt, KeyError> {
        let algorithms: Vec<Algorithm> = cfg.algorithms.iter().copied().map(algorithm).collect();
        let secret = cfg
            .secret
            .as_ref()
            .filter(|_| algorithms.iter().any(|a| is_hmac(*a)))
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        let asymmetric: Vec<Algorithm> = algorithms
            .iter()
            .copied()
            .filter(|a| !is_hmac(*a))
            .collect();
        let public = match (&cfg.public_key_file, asymmetric.first()) {
            (Some(path), Some(first)) => {
                let pem = std::fs::read(path).map_err(|source| KeyError::Unreadable {
                    path: path.display().to_string(),
                    source,
                })?;
                if asymmetric.len() > 1 {
                    return Err(KeyError::OneFamily);
                }
                let key = match first {
                    Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                    Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                    _ => DecodingKey::from_ed_pem(&pem),
                }
                .map_err(|e| KeyError::NotAKey {
                    path: path.display().to_string(),
                    algorithm: format!("{first:?}"),
                    reason: e.to_string(),
                })?;
                Some(key)
            }
            _ => None,
        };
        Ok(Jwt {
            secret,
            public,
            algorithms,
            cookie: cfg.cookie.clone(),
            topics_claim: cfg.topics_claim.clone(),
            admin_claim: cfg.admin_claim.clone(),
            allow: cfg.allow.clone(),
        })
    }

    /// Whether the app is asked (`auth.mode: upstream`).
    pub fn is_upstream(&self) -> bool {
        matches!(self.mode, Mode::Upstream)
    }

    /// The grant for a request in `none` or `jwt` mode (`upstream` is decided by the app).
    pub fn grant(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Grant, AuthError> {
        match &self.mode {
            Mode::None | Mode::Upstream => Ok(Grant::all()),
            Mode::Jwt(jwt) => {
                let token = token(headers, query, jwt.cookie.as_deref()).ok_or_else(|| {
                    AuthError::Missing(
                        jwt.cookie
                            .as_ref()
                            .map_or_else(String::new, |c| format!(" or the {c} cookie")),
                    )
                })?;
                jwt.verify(&token)
            }
        }
    }
}

impl Jwt {
    fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(format!("{e}")))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        // Each family has its own key: an HMAC token is never checked against the public
        // key (algorithm confusion), nor an RSA/EC/Ed token against the secret.
        let key = if is_hmac(header.alg) {
            &self.secret
        } else {
            &self.public
        };
        let key = key
            .as_ref()
            .ok_or_else(|| AuthError::Invalid(format!("no key for {:?}", header.alg)))?;
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map_err(|e| AuthError::Invalid(format!("{e}")))?;
        Ok(self.grant_from(&data.claims))
    }

    fn grant_from(&self, claims: &Map<String, Value>) -> Grant {
        let subject = claims.get("sub").and_then(claim_text);
        let expires = claims
            .get("exp")
            .and_then(Value::as_u64)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s));
        if claims.get(&self.admin_claim) == Some(&Value::Bool(true)) {
            return Grant {
                patterns: None,
                subject,
                expires,
            };
        }
        let mut patterns = match claims.get(&self.topics_claim) {
            Some(Value::String(s)) => parse_patterns(s),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|p| Selector::parse(p).ok())
                .collect(),
            _ => Vec::new(),
        };
        patterns.extend(self.allow.iter().filter_map(|t| fill_template(t, claims)));
        Grant {
            patterns: Some(patterns),
            subject,
            expires,
        }
    }
}

/// A claim as text, if it is a string or a number.
fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Fills `{claim}` placeholders (`user/{sub}/*`). A placeholder whose claim is missing or
/// is not a single topic segment (no `/`, no `*`, topic characters only) voids the whole
/// template, so a crafted claim cannot widen what it grants.
fn fill_template(template: &str, claims: &Map<String, Value>) -> Option<Selector> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}')? + start;
        let value = claim_text(claims.get(&rest[start + 1..end])?)?;
        let segment_ok = !value.is_empty()
            && value.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@')
            });
        if !segment_ok {
            return None;
        }
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Selector::parse(&out).ok()
}

/// The token from `Authorization: Bearer`, the named cookie, or `access_token=`.
pub fn token(headers: &HeaderMap, query: Option<&str>, cookie: Option<&str>) -> Option<String> {
    if let Some(t) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim().to_owned());
    }
    if let Some(name) = cookie {
        for v in headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for pair in v.split(';') {
                if let Some((k, val)) = pair.trim().split_once('=')
                    && k == name
                    && !val.is_empty()
                {
                    return Some(val.to_owned());
                }
            }
        }
    }
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests;

//! Development tokens (`ssegate token`): a JWT that a given configuration accepts, signed
//! with its HS* secret or with a private key whose public half the configuration names.
//!
//! The token is verified by the same [`Authenticator`] that checks subscribers before it is
//! handed out, so a key that does not match `auth.jwt.public_key_file` is an error here, not
//! a 401 later.
//!
//! ```
//! use ssegate::auth::mint::{Claims, mint};
//! let config = ssegate::config::parse(
//!     "upstream: http://127.0.0.1:3000\nauth: { mode: jwt, jwt: { secret: s3cret } }\n",
//!     &|_: &str| None,
//! )
//! .unwrap();
//! let claims = Claims { sub: "42".into(), topics: vec!["user/42/*".into()], ..Claims::default() };
//! let token = mint(&config.auth, &claims, None, std::time::SystemTime::now()).unwrap();
//! assert_eq!(token.split('.').count(), 3);
//! ```

use super::{Authenticator, Mode, algorithm, is_hmac};
use crate::config::{self, AuthMode};
use crate::hub::Selector;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a minted token says about its holder.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    /// The `sub` claim (revocation with `DELETE /subscribers/{sub}`, `{sub}` in `allow`).
    pub sub: String,
    /// Topic patterns, written into the configured `topics_claim`.
    pub topics: Vec<String>,
    /// Sets the configured `admin_claim` to `true`: every topic.
    pub admin: bool,
    /// Lifetime: `exp` is this long after `iat`. `None`: no `exp`.
    pub ttl: Option<Duration>,
}

/// Why no token could be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The configuration does not check tokens at all.
    #[error("auth.mode is {0}, so no token is checked; set auth.mode: jwt to use tokens")]
    NotJwt(&'static str),
    /// An HS* algorithm is accepted but the configuration has no secret.
    #[error("auth.jwt.secret is not set (nor SSEGATE_JWT_SECRET): nothing to sign with")]
    NoSecret,
    /// Only public-key algorithms are accepted and no private key was given.
    #[error(
        "auth.jwt.algorithms accepts only {0}: pass --key FILE with the private key (PEM) of auth.jwt.public_key_file"
    )]
    NeedKey(String),
    /// A private key was given but the configuration accepts no public-key algorithm.
    #[error(
        "--key was given, but auth.jwt.algorithms lists no RS256, ES256 or EdDSA; leave out --key to sign with the secret"
    )]
    KeyNotUsed,
    /// The private key file cannot be read.
    #[error("--key {path}: {source}")]
    KeyUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The private key file is not a key of the configured algorithm.
    #[error("--key {path}: not a {alg:?} private key in PEM: {detail}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// The algorithm the configuration accepts.
        alg: Algorithm,
        /// What the PEM reader said.
        detail: String,
    },
    /// A `--topic` is not a topic or pattern.
    #[error("--topic {0:?} is not a topic or pattern: {1}")]
    BadTopic(String, String),
    /// Nothing to read: no topic and not admin.
    #[error("the token would allow nothing: give --topic PATTERN (repeatable) or --admin")]
    NothingAllowed,
    /// The configured keys cannot be loaded (e.g. `public_key_file` is unreadable).
    #[error(transparent)]
    Config(#[from] super::KeyError),
    /// Signing failed.
    #[error("cannot sign: {0}")]
    Sign(String),
    /// The signed token is refused by this configuration (the private key does not match
    /// `auth.jwt.public_key_file`).
    #[error(
        "this configuration would refuse the token ({0}); does --key match auth.jwt.public_key_file?"
    )]
    Refused(String),
}

/// Mints a token for `claims` that `auth` accepts, signed at `now`. `key` is a private key
/// PEM file, needed for RS256/ES256/EdDSA; without it the first HS* algorithm listed is
/// used with the configured secret.
pub fn mint(
    auth: &config::Auth,
    claims: &Claims,
    key: Option<&Path>,
    now: SystemTime,
) -> Result<String, MintError> {
    if auth.mode != AuthMode::Jwt {
        return Err(MintError::NotJwt(auth.mode.as_str()));
    }
    for t in &claims.topics {
        Selector::parse(t).map_err(|e| MintError::BadTopic(t.clone(), e.to_string()))?;
    }
    if claims.topics.is_empty() && !claims.admin {
        return Err(MintError::NothingAllowed);
    }
    let jwt = &auth.jwt;
    let algorithms: Vec<Algorithm> = jwt.algorithms.iter().copied().map(algorithm).collect();
    let (alg, encoding) = match key {
        Some(path) => {
            let alg = *algorithms
                .iter()
                .find(|a| !is_hmac(**a))
                .ok_or(MintError::KeyNotUsed)?;
            (alg, private_key(path, alg)?)
        }
        None => {
            let Some(alg) = algorithms.iter().copied().find(|a| is_hmac(*a)) else {
                let listed: Vec<String> = algorithms.iter().map(|a| format!("{a:?}")).collect();
                return Err(MintError::NeedKey(listed.join(", ")));
            };
            let secret = jwt.secret.as_deref().ok_or(MintError::NoSecret)?;
            (alg, EncodingKey::from_secret(secret.as_bytes()))
        }
    };

    let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut body = Map::new();
    body.insert("sub".to_owned(), Value::String(claims.sub.clone()));
    body.insert("iat".to_owned(), Value::from(iat));
    if let Some(ttl) = claims.ttl {
        body.insert(
            "exp".to_owned(),
            Value::from(iat.saturating_add(ttl.as_secs())),
        );
    }
    if !claims.topics.is_empty() {
        body.insert(jwt.topics_claim.clone(), Value::from(claims.topics.clone()));
    }
    if claims.admin {
        body.insert(jwt.admin_claim.clone(), Value::Bool(true));
    }
    let token = jsonwebtoken::encode(&Header::new(alg), &body, &encoding)
        .map_err(|e| MintError::Sign(e.to_string()))?;

    // Checked by the subscribers' own verifier: what is printed is what a stream accepts.
    let authenticator = Authenticator::new(auth).map_err(MintError::Config)?;
    if let Mode::Jwt(verifier) = &authenticator.mode {
        verifier
            .verify(&token)
            .map_err(|e| MintError::Refused(e.to_string()))?;
    }
    Ok(token)
}

fn private_key(path: &Path, alg: Algorithm) -> Result<EncodingKey, MintError> {
    let pem = std::fs::read(path).map_err(|source| MintError::KeyUnreadable {
        path: path.to_owned(),
        source,
    })?;
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .map_err(|e| MintError::BadKey {
        path: path.to_owned(),
        alg,
        detail: e.to_string(),
    })
}

#![allow(clippy::unwrap_used)]
use super::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt_config(
    algorithms: Vec<JwtAlgorithm>,
    secret: Option<&str>,
    key: Option<&str>,
) -> config::Auth {
    let mut auth = config::Config::with_upstream("http://127.0.0.1:1".parse().unwrap()).auth;
    auth.mode = AuthMode::Jwt;
    auth.jwt.algorithms = algorithms;
    auth.jwt.secret = secret.map(str::to_owned);
    auth.jwt.public_key_file = key.map(|k| format!("{KEYS}/{k}").into());
    auth.jwt.allow = vec![
        "user/{sub}/*".to_owned(),
        "tenant/{tenant}/public".to_owned(),
    ];
    auth.jwt.cookie = Some("session_jwt".to_owned());
    auth
}

fn hs(claims: &serde_json::Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    h
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

#[test]
fn hs256_grants_claimed_patterns_and_filled_templates() {
    let a = Authenticator::new(&jwt_config(vec![JwtAlgorithm::HS256], Some("k"), None)).unwrap();
    let t = hs(
        &json!({"sub": "42", "tenant": "acme", "topics": ["job/7"], "exp": now() + 60}),
        "k",
    );
    let g = a.grant(&bearer(&t), None).unwrap();
    assert_eq!(g.subject.as_deref(), Some("42"));
    assert!(g.expires.is_some());
    assert!(
        g.authorize(&[
            sel("job/7"),
            sel("user/42/inbox"),
            sel("user/42/*"),
            sel("tenant/acme/public")
        ])
        .is_ok()
    );
    assert!(matches!(
        g.authorize(&[sel("user/43/inbox")]),
        Err(AuthError::Forbidden(_))
    ));
    assert!(
        g.authorize(&[sel("job/*")]).is_err(),
        "an exact grant covers no pattern"
    );
}

#[test]
fn admin_reads_everything_and_tokens_come_from_three_places() {
    let a = Authenticator::new(&jwt_config(vec![JwtAlgorithm::HS256], Some("k"), None)).unwrap();
    let t = hs(&json!({"admin": true}), "k");
    let g = a
        .grant(
            &HeaderMap::new(),
            Some(&format!("topic=x&access_token={t}")),
        )
        .unwrap();
    assert!(g.authorize(&[sel("*")]).is_ok());
    let mut h = HeaderMap::new();
    h.insert(COOKIE, format!("a=b; session_jwt={t}").parse().unwrap());
    assert!(a.grant(&h, None).unwrap().patterns.is_none());
    assert!(matches!(
        a.grant(&HeaderMap::new(), None),
        Err(AuthError::Missing(_))
    ));
}

#[test]
fn bad_tokens_are_invalid() {
    let a = Authenticator::new(&jwt_config(vec![JwtAlgorithm::HS256], Some("k"), None)).unwrap();
    let bad = [
        hs(&json!({"sub": "1"}), "other-secret"),
        hs(&json!({"sub": "1", "exp": now() - 10}), "k"),
        hs(&json!({"sub": "1", "nbf": now() + 600}), "k"),
        "not.a.token".to_owned(),
        // alg: none, unsigned.
        format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"admin":true}"#)
        ),
    ];
    for t in bad {
        assert!(
            matches!(a.grant(&bearer(&t), None), Err(AuthError::Invalid(_))),
            "{t}"
        );
    }
}

fn b64(s: &str) -> String {
    // URL-safe base64 without padding, enough for the test's ASCII input.
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (u32::from(x) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn asymmetric_algorithms_verify_and_confusion_fails() {
    for (alg, ja, key) in [
        (Algorithm::RS256, JwtAlgorithm::RS256, "rsa"),
        (Algorithm::ES256, JwtAlgorithm::ES256, "ec"),
        (Algorithm::EdDSA, JwtAlgorithm::EdDSA, "ed"),
    ] {
        let a = Authenticator::new(&jwt_config(
            vec![JwtAlgorithm::HS256, ja],
            Some("k"),
            Some(&format!("{key}.pub")),
        ))
        .unwrap();
        let pem = std::fs::read(format!("{KEYS}/{key}.key")).unwrap();
        let enc = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .unwrap();
        let t = encode(&Header::new(alg), &json!({"topics": ["a"]}), &enc).unwrap();
        assert!(
            a.grant(&bearer(&t), None)
                .unwrap()
                .authorize(&[sel("a")])
                .is_ok(),
            "{alg:?}"
        );
        // Algorithm confusion: HS256 signed with the public key's bytes as the secret.
        let public = std::fs::read(format!("{KEYS}/{key}.pub")).unwrap();
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &json!({"admin": true}),
            &EncodingKey::from_secret(&public),
        )
        .unwrap();
        assert!(
            matches!(a.grant(&bearer(&forged), None), Err(AuthError::Invalid(_))),
            "{alg:?}"
        );
    }
}

#[test]
fn templates_never_widen_through_a_crafted_claim() {
    let claims = |sub: serde_json::Value| json!({ "sub": sub }).as_object().unwrap().clone();
    assert_eq!(
        fill_template("user/{sub}/*", &claims(json!("42"))),
        Some(sel("user/42/*"))
    );
    assert_eq!(
        fill_template("user/{sub}/*", &claims(json!(7))),
        Some(sel("user/7/*"))
    );
    for evil in [
        json!("*"),
        json!("a/b"),
        json!(""),
        json!("x y"),
        json!(null),
        json!(["a"]),
    ] {
        assert_eq!(
            fill_template("user/{sub}/*", &claims(evil.clone())),
            None,
            "{evil}"
        );
    }
    assert_eq!(fill_template("user/{missing}", &claims(json!("1"))), None);
}

#[test]
fn allow_header_patterns_parse() {
    assert_eq!(
        parse_patterns("a, b/* ,, bad pattern"),
        vec![sel("a"), sel("b/*"), sel("bad"), sel("pattern")]
    );
}

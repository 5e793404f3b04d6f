//! Checks that involve more than one key.

use super::*;

#[test]
fn jwt_needs_a_secret_or_a_key_file() {
    let e = one_err(&format!("{UP}auth:\n  mode: jwt\n"));
    assert_eq!(
        (e.path.as_str(), e.line, e.column),
        ("auth.jwt.secret", Some(3), Some(9))
    );
    assert_eq!(e.message, "required when auth.mode is jwt with HS256");
    let e = one_err(&format!(
        "{UP}auth:\n  mode: jwt\n  jwt: {{ secret: \"\" }}\n"
    ));
    assert_eq!((e.line, e.column), (Some(4), Some(18)));
    ok(&format!(
        "{UP}auth:\n  mode: jwt\n  jwt: {{ secret: abc }}\n"
    ));

    let e = one_err(&format!(
        "{UP}auth: {{ mode: jwt, jwt: {{ algorithms: [RS256] }} }}\n"
    ));
    assert_eq!(e.path, "auth.jwt.public_key_file");
    let e = one_err(&format!(
        "{UP}auth: {{ mode: jwt, jwt: {{ algorithms: [EdDSA], public_key_file: /nonexistent/k.pem }} }}\n"
    ));
    assert!(e.message.contains("cannot be read"), "{e}");
    // Mixed algorithms need both.
    let e = errs(&format!(
        "{UP}auth: {{ mode: jwt, jwt: {{ algorithms: [HS512, ES256] }} }}\n"
    ));
    assert_eq!(e.len(), 2);

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    std::fs::write(&key, "-----BEGIN PUBLIC KEY-----\n").unwrap();
    let c = ok(&format!(
        "{UP}auth: {{ mode: jwt, jwt: {{ algorithms: [ES256], public_key_file: \"{}\" }} }}\n",
        key.display()
    ));
    assert_eq!(c.auth.jwt.public_key_file.as_deref(), Some(key.as_path()));
    // Not checked unless the mode is jwt: the section may be prepared in advance.
    ok(&format!("{UP}auth: {{ jwt: {{ algorithms: [RS256] }} }}\n"));
    let e = one_err(&format!("{UP}auth: {{ jwt: {{ algorithms: [] }} }}\n"));
    assert_eq!(e.message, "must name at least one algorithm");
    let e = one_err(&format!(
        "{UP}auth: {{ jwt: {{ algorithms: [HS256, hs384] }} }}\n"
    ));
    assert_eq!(e.path, "auth.jwt.algorithms[1]");
}

#[test]
fn publish_event_must_fit_in_body() {
    let e = one_err(&format!(
        "{UP}publish:\n  max_body: 1KiB\n  max_event_bytes: 2KiB\n"
    ));
    assert_eq!(
        (e.path.as_str(), e.line),
        ("publish.max_event_bytes", Some(4))
    );
    assert_eq!(
        e.message,
        "max_event_bytes (2048 bytes) is more than max_body (1024 bytes)"
    );
    // The default follows an explicit max_body rather than contradicting it.
    let c = ok(&format!("{UP}publish:\n  max_body: 1000\n"));
    assert_eq!(
        (c.publish.max_body, c.publish.max_event_bytes),
        (1000, 1000)
    );
    let c = ok(&format!("{UP}publish:\n  max_event_bytes: 1000\n"));
    assert_eq!(
        (c.publish.max_body, c.publish.max_event_bytes),
        (1 << 20, 1000)
    );
}

#[test]
fn listeners_must_not_collide() {
    let e = one_err(&format!(
        "{UP}listen: 0.0.0.0:9000\nadmin_listen: 127.0.0.1:9000\n"
    ));
    assert_eq!(
        (e.path.as_str(), e.line, e.column),
        ("admin_listen", Some(3), Some(15))
    );
    let e = one_err(&format!("{UP}listen: 127.0.0.1:8081\n"));
    assert_eq!(e.path, "listen");
    // Port 0 is picked by the OS, so both may ask for it (tests do).
    ok(&format!(
        "{UP}listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"
    ));
    ok(&format!(
        "{UP}listen: 127.0.0.1:9000\nadmin_listen: 127.0.0.2:9000\n"
    ));
}

#[test]
fn cors_star_must_be_alone() {
    let e = one_err(&format!(
        "{UP}events: {{ cors: {{ allow_origins: [\"*\", \"https://a.b\"] }} }}\n"
    ));
    assert_eq!(e.path, "events.cors.allow_origins");
    let c = ok(&format!(
        "{UP}events: {{ cors: {{ allow_origins: [\"*\"] }} }}\n"
    ));
    assert_eq!(c.events.cors.allow_origins, vec!["*".to_owned()]);
}

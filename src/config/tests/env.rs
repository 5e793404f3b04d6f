//! `${VAR}` expansion: the expander alone, then through whole files.

use super::super::walk::interpolate;
use super::*;

#[test]
fn interpolation() {
    let env = |name: &str| match name {
        "A" => Some("1".to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let ok = |s: &str| interpolate(s, &env).unwrap();
    assert_eq!(ok("x${A}y"), "x1y");
    assert_eq!(ok("${A}${A}"), "11");
    assert_eq!(ok("${NOPE:-d}"), "d");
    assert_eq!(ok("${NOPE:-}"), "");
    assert_eq!(ok("${EMPTY:-d}"), "d");
    assert_eq!(ok("${EMPTY}"), "");
    assert_eq!(ok("${A:-d}"), "1");
    assert_eq!(ok("${NOPE:-a:-b}"), "a:-b");
    assert_eq!(ok("$${A}"), "${A}");
    // Read left to right: a lone `$`, then the escape.
    assert_eq!(ok("$$${A}"), "$${A}");
    assert_eq!(ok("cost: $5 $ $$"), "cost: $5 $ $$");
    assert_eq!(ok("é${A}é"), "é1é");
    assert_eq!(
        interpolate("${NOPE}", &env).unwrap_err().message,
        "environment variable NOPE is not set"
    );
    assert!(
        interpolate("${A", &env)
            .unwrap_err()
            .message
            .contains("without a closing")
    );
    assert!(
        interpolate("${}", &env)
            .unwrap_err()
            .message
            .contains("not an environment variable name")
    );
    assert!(interpolate("${1A}", &env).is_err());
    assert!(interpolate("${A-b}", &env).is_err());
}

#[test]
fn interpolation_from_env() {
    let text = "upstream: http://${HOST}:${PORT:-3000}\npublish: { token: \"${TOKEN}\" }\n";
    let c = with_env(text, &[("HOST", "app"), ("TOKEN", "s3cret")]).unwrap();
    assert_eq!(c.upstream, hyper::Uri::from_static("http://app:3000"));
    assert_eq!(c.publish.token.as_deref(), Some("s3cret"));
    // The default also applies when the variable is set but empty.
    let c = with_env(text, &[("HOST", "app"), ("PORT", ""), ("TOKEN", "x")]).unwrap();
    assert_eq!(c.upstream.port_u16(), Some(3000));
    let c = with_env(text, &[("HOST", "app"), ("PORT", "4000"), ("TOKEN", "x")]).unwrap();
    assert_eq!(c.upstream.port_u16(), Some(4000));
}

#[test]
fn unset_variable_names_the_variable_and_the_key() {
    let e = one_err(&format!("{UP}publish:\n  token: ${{SSEGATE_TOKEN}}\n"));
    assert_eq!(
        (e.path.as_str(), e.line, e.column),
        ("publish.token", Some(3), Some(10))
    );
    assert_eq!(e.message, "environment variable SSEGATE_TOKEN is not set");
    assert!(e.to_string().contains("${SSEGATE_TOKEN:-default}"), "{e}");
}

#[test]
fn empty_default_and_escape() {
    let c = ok(&format!(
        "{UP}publish:\n  token: ${{SSEGATE_PUBLISH_TOKEN:-}}\n"
    ));
    assert_eq!(c.publish.token, None);
    let c = ok(&format!("{UP}publish:\n  token: \"a$${{HOME}}b$c$$d\"\n"));
    assert_eq!(c.publish.token.as_deref(), Some("a${HOME}b$c$$d"));
}

#[test]
fn interpolation_into_numbers_sizes_and_lists() {
    let text = format!(
        "{UP}limits:\n  max_connections: ${{MAX:-100}}\n\
         publish:\n  max_body: ${{BODY:-2MiB}}\ntrusted_proxies: ${{TRUSTED:-}}\n"
    );
    let c = with_env(&text, &[]).unwrap();
    assert_eq!(c.limits.max_connections, 100);
    assert_eq!(c.publish.max_body, 2 << 20);
    assert!(c.trusted_proxies.is_empty());
    let c = with_env(
        &text,
        &[("MAX", "7"), ("TRUSTED", "10.0.0.0/8, 192.168.0.1")],
    )
    .unwrap();
    assert_eq!(c.limits.max_connections, 7);
    assert_eq!(c.trusted_proxies.len(), 2);
    let e = with_env(&text, &[("MAX", "lots")]).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(
        e.0[0].to_string(),
        "limits.max_connections: \"lots\" is not a whole number (line 3, column 20)"
    );
}

#[test]
fn env_values_never_become_yaml_structure() {
    let env = [("LEVEL", "{a: 1}\nlisten: 1.2.3.4:5")];
    let c = with_env(&format!("{UP}log:\n  level: ${{LEVEL}}\n"), &env).unwrap();
    assert_eq!(c.log.level, "{a: 1}\nlisten: 1.2.3.4:5");
    assert_eq!(c.listen, default_config().listen);
}

#[test]
fn secrets_left_out_of_the_file_come_from_the_environment() {
    let env = [
        ("SSEGATE_PUBLISH_TOKEN", "pub-secret"),
        ("SSEGATE_JWT_SECRET", "jwt-secret"),
    ];
    let c = with_env(&format!("{UP}auth:\n  mode: jwt\n"), &env).unwrap();
    assert_eq!(c.publish.token.as_deref(), Some("pub-secret"));
    assert_eq!(c.auth.jwt.secret.as_deref(), Some("jwt-secret"));
    // Written in the file, the file wins, even when it says "none".
    let c = with_env(
        &format!("{UP}publish:\n  token: \"\"\nauth:\n  jwt: {{ secret: mine }}\n"),
        &env,
    )
    .unwrap();
    assert_eq!(c.publish.token, None);
    assert_eq!(c.auth.jwt.secret.as_deref(), Some("mine"));
    // An empty variable is no token.
    let c = with_env(UP, &[("SSEGATE_PUBLISH_TOKEN", "")]).unwrap();
    assert_eq!(c.publish.token, None);
}

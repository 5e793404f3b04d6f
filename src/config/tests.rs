//! Tests of the loader as a whole: defaults, positions, interpolation, cross-field checks and
//! the shipped example files. Single-value parsers are tested in `tests/values.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

mod cross;
mod env;
mod values;

const UP: &str = "upstream: http://127.0.0.1:3000\n";

fn no_env(_: &str) -> Option<String> {
    None
}

fn ok(text: &str) -> Config {
    parse(text, &no_env).unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
}

fn errs(text: &str) -> Vec<ConfigError> {
    match parse(text, &no_env) {
        Ok(config) => panic!("expected errors, got {config:?}"),
        Err(e) => e.0,
    }
}

fn one_err(text: &str) -> ConfigError {
    let mut e = errs(text);
    assert_eq!(
        e.len(),
        1,
        "expected one error, got:\n{}",
        ConfigErrors(e.clone())
    );
    e.remove(0)
}

fn with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let env = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    };
    parse(text, &env)
}

fn default_config() -> Config {
    Config::with_upstream(hyper::Uri::from_static("http://127.0.0.1:3000"))
}

#[test]
fn upstream_only_gives_every_default() {
    let c = ok(UP);
    assert_eq!(c, default_config());
    assert_eq!(c.listen, "0.0.0.0:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(
        c.admin_listen,
        "127.0.0.1:8081".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.upstream_timeouts.connect, Duration::from_secs(5));
    assert_eq!(c.upstream_timeouts.response, Duration::from_secs(60));
    assert!(c.trusted_proxies.is_empty());
    assert_eq!(c.events.path, "/events");
    assert_eq!(c.events.heartbeat, Duration::from_secs(15));
    assert_eq!(c.events.retry, Duration::from_secs(2));
    assert_eq!(c.events.history.max_events, 10_000);
    assert_eq!(c.events.history.max_bytes, 64 << 20);
    assert_eq!(c.events.history.max_age, Duration::from_secs(3600));
    assert_eq!(c.events.subscriber_buffer, 1000);
    assert_eq!(c.events.slow_consumer, SlowConsumer::Disconnect);
    assert_eq!(c.events.max_topics_per_subscription, 32);
    assert!(c.events.cors.allow_origins.is_empty());
    assert_eq!(c.publish.token, None);
    assert_eq!(c.publish.max_body, 1 << 20);
    assert_eq!(c.publish.max_event_bytes, 64 << 10);
    assert_eq!(c.auth.mode, AuthMode::None);
    assert_eq!(c.auth.jwt.algorithms, vec![JwtAlgorithm::HS256]);
    assert_eq!(
        (
            c.auth.jwt.secret,
            c.auth.jwt.public_key_file,
            c.auth.jwt.cookie
        ),
        (None, None, None)
    );
    assert_eq!(c.auth.jwt.topics_claim, "topics");
    assert_eq!(c.auth.jwt.admin_claim, "admin");
    assert!(c.auth.jwt.allow.is_empty());
    assert_eq!(c.auth.upstream.path, "/sse-auth");
    assert_eq!(c.limits.max_connections, 10_000);
    assert_eq!(c.limits.max_connections_per_ip, 20);
    assert_eq!(c.limits.connect_rate_per_ip.to_string(), "60/min");
    assert_eq!(c.limits.requests_per_ip, None);
    assert_eq!(c.limits.concurrent_requests_per_ip, 64);
    assert_eq!(c.limits.max_upstream_connections, 512);
    assert_eq!(c.broker.kind, BrokerKind::Memory);
    assert_eq!(c.broker.redis.url, "redis://127.0.0.1:6379");
    assert_eq!(c.broker.disk.dir, std::path::Path::new("/var/lib/ssegate"));
    assert_eq!(c.broker.disk.sync, DiskSync::Always);
    assert_eq!(c.broker.redis.stream, "ssegate:events");
    assert_eq!(c.shutdown.grace, Duration::from_secs(5));
    assert_eq!(c.log.format, LogFormat::Pretty);
    assert_eq!(c.log.level, "info");
}

#[test]
fn empty_file_only_lacks_upstream() {
    for text in ["", "# just a comment\n", "---\n"] {
        let e = one_err(text);
        assert_eq!(e.to_string(), "upstream: required key is missing");
        assert_eq!((e.line, e.column), (None, None));
    }
}

#[test]
fn partial_section_keeps_other_defaults() {
    let c = ok(&format!(
        "{UP}events: {{ heartbeat: 5s }}\nlimits:\n  max_connections: 7\n"
    ));
    let mut want = default_config();
    want.events.heartbeat = Duration::from_secs(5);
    want.limits.max_connections = 7;
    assert_eq!(c, want);
}

#[test]
fn flow_and_block_mappings_are_the_same() {
    let flow = ok(&format!(
        "{UP}upstream_timeouts: {{ connect: 1s, response: 2s }}\n"
    ));
    let block = ok(&format!(
        "{UP}upstream_timeouts:\n  connect: 1s\n  response: 2s\n"
    ));
    assert_eq!(flow, block);
    assert_eq!(flow.upstream_timeouts.connect, Duration::from_secs(1));
}

#[test]
fn null_means_default_and_requests_per_ip_null_means_off() {
    let c = ok(&format!(
        "{UP}listen: ~\nevents:\nlimits: {{ requests_per_ip: null, max_connections: }}\n"
    ));
    assert_eq!(c, default_config());
    let c = ok(&format!("{UP}limits: {{ requests_per_ip: 100/s }}\n"));
    let rate = c.limits.requests_per_ip.unwrap();
    assert_eq!((rate.count.get(), rate.per), (100, Duration::from_secs(1)));
}

#[test]
fn every_section_reads_its_values() {
    let text = format!(
        "{UP}listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n\
         trusted_proxies: [10.0.0.0/8, 192.168.1.7, \"::1\"]\n\
         events:\n  path: /api/stream\n  retry: 500ms\n  slow_consumer: drop_oldest\n\
         \x20 cors: {{ allow_origins: [\"https://App.example.com\"] }}\n\
         publish: {{ token: t0k, max_body: 2MiB, max_event_bytes: 1000 }}\n\
         auth:\n  mode: upstream\n  jwt: {{ cookie: sess, allow: [\"user/{{sub}}/*\"] }}\n\
         \x20 upstream: {{ path: \"/auth?kind=sse\" }}\n\
         broker: {{ kind: redis, disk: {{ dir: /data/sse, sync: 100ms }},\n\
         \x20 redis: {{ url: \"rediss://r:6380\", stream: s }} }}\n\
         shutdown: {{ grace: 0s }}\nlog: {{ format: json, level: \"info,ssegate=debug\" }}\n"
    );
    let c = ok(&text);
    assert_eq!(c.listen.port(), 0);
    assert_eq!(c.trusted_proxies.len(), 3);
    assert_eq!(c.trusted_proxies[1].to_string(), "192.168.1.7/32");
    assert_eq!(c.trusted_proxies[2].to_string(), "::1/128");
    assert_eq!(c.events.path, "/api/stream");
    assert_eq!(c.events.retry, Duration::from_millis(500));
    assert_eq!(c.events.slow_consumer, SlowConsumer::DropOldest);
    assert_eq!(
        c.events.cors.allow_origins,
        vec!["https://app.example.com".to_owned()]
    );
    assert_eq!(c.publish.token.as_deref(), Some("t0k"));
    assert_eq!(
        (c.publish.max_body, c.publish.max_event_bytes),
        (2 << 20, 1000)
    );
    assert_eq!(c.auth.mode, AuthMode::Upstream);
    assert_eq!(c.auth.jwt.cookie.as_deref(), Some("sess"));
    assert_eq!(c.auth.jwt.allow, vec!["user/{sub}/*".to_owned()]);
    assert_eq!(c.auth.upstream.path, "/auth?kind=sse");
    assert_eq!(c.broker.kind, BrokerKind::Redis);
    assert_eq!(c.broker.redis.url, "rediss://r:6380");
    assert_eq!(c.broker.disk.dir, std::path::Path::new("/data/sse"));
    assert_eq!(
        c.broker.disk.sync,
        DiskSync::Every(Duration::from_millis(100))
    );
    assert_eq!(c.shutdown.grace, Duration::ZERO);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.level, "info,ssegate=debug");
}

#[test]
fn the_documented_error_shape() {
    let text = format!(
        "{UP}{}limits:\n  connect_rate_per_ip: \"10/fortnight\"\n",
        "\n".repeat(9)
    );
    let e = one_err(&text);
    assert_eq!(e.path, "limits.connect_rate_per_ip");
    assert_eq!(e.message, "\"10/fortnight\" is not a rate");
    assert_eq!((e.line, e.column), (Some(12), Some(24)));
    assert!(
        e.to_string().starts_with(
            "limits.connect_rate_per_ip: \"10/fortnight\" is not a rate (line 12, column 24)"
        ),
        "{e}"
    );
}

#[test]
fn unknown_keys_at_every_depth_are_all_reported_at_the_key() {
    let text = "\
upstream: http://127.0.0.1:3000
limits:
  max_conection: 5
events:
  history: { max_events: 5, maxage: 1h }
  cors:
    allow_origin: []
lisen: 0.0.0.0:1
";
    let e = errs(text);
    let got: Vec<_> = e
        .iter()
        .map(|e| (e.path.as_str(), e.line, e.column))
        .collect();
    assert_eq!(
        got,
        vec![
            ("limits.max_conection", Some(3), Some(3)),
            ("events.history.maxage", Some(5), Some(29)),
            ("events.cors.allow_origin", Some(7), Some(5)),
            ("lisen", Some(8), Some(1)),
        ]
    );
    assert_eq!(
        e[0].to_string(),
        "limits.max_conection: unknown key (line 3, column 3); expected one of: \
         max_connections, max_connections_per_ip, max_connections_per_tenant, connect_rate_per_ip, \
         requests_per_ip, concurrent_requests_per_ip, max_upstream_connections"
    );
    assert!(e.iter().all(|e| e.message == "unknown key"));
}

#[test]
fn many_bad_values_are_all_reported_in_file_order() {
    let text = "\
upstream: https://app.internal
upstream_timeouts: { connect: 5, response: 1m }
trusted_proxies: [10.0.0.0/8, 10.0.0.0/33]
events:
  slow_consumer: sometimes
publish:
  max_body: 1 megabyte
limits:
  connect_rate_per_ip: 10/fortnight
";
    let e = errs(text);
    let got: Vec<_> = e
        .iter()
        .map(|e| (e.path.as_str(), e.line, e.column))
        .collect();
    assert_eq!(
        got,
        vec![
            ("upstream", Some(1), Some(11)),
            ("upstream_timeouts.connect", Some(2), Some(31)),
            ("trusted_proxies[1]", Some(3), Some(31)),
            ("events.slow_consumer", Some(5), Some(18)),
            ("publish.max_body", Some(7), Some(13)),
            ("limits.connect_rate_per_ip", Some(9), Some(24)),
        ]
    );
    let shown: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert!(shown[0].contains("\"https://app.internal\" uses https, which is not supported"));
    assert!(shown[1].contains("\"5\" is not a duration"));
    assert!(shown[2].contains("\"10.0.0.0/33\" is not an IP network"));
    assert!(shown[3].contains("\"sometimes\" is not a valid choice (line 5, column 18); expected one of: disconnect, drop_oldest"));
    assert!(shown[4].contains("\"1 megabyte\" is not a size"));
    assert!(shown[5].contains("\"10/fortnight\" is not a rate"));
    // Display: one error per line.
    assert_eq!(ConfigErrors(e).to_string().lines().count(), 6);
}

#[test]
fn history_max_bytes_is_a_size_above_zero() {
    let c = ok(&format!(
        "{UP}events: {{ history: {{ max_bytes: 512KiB }} }}\n"
    ));
    assert_eq!(c.events.history.max_bytes, 512 << 10);
    assert_eq!(
        c.events.history.max_events, 10_000,
        "the others keep their defaults"
    );
    for bad in ["0", "lots", "-1MiB"] {
        let e = one_err(&format!(
            "{UP}events: {{ history: {{ max_bytes: {bad} }} }}\n"
        ));
        assert_eq!(e.path, "events.history.max_bytes", "{bad}");
    }
}

#[test]
fn two_errors_in_one_file() {
    let e = errs(&format!(
        "{UP}events: {{ heartbeat: 0s }}\nlog: {{ format: xml }}\n"
    ));
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].path, "events.heartbeat");
    assert_eq!(e[0].message, "\"0s\" must be more than zero");
    assert_eq!(e[1].path, "log.format");
}

#[test]
fn missing_and_malformed_upstream() {
    let e = one_err("listen: 0.0.0.0:9000\n");
    assert_eq!(e.to_string(), "upstream: required key is missing");
    let e = one_err("upstream: https://127.0.0.1:3000\n");
    assert_eq!(e.path, "upstream");
    assert!(
        e.to_string().contains("https, which is not supported"),
        "{e}"
    );
    assert!(e.to_string().contains("use http://"), "{e}");
    let e = one_err("upstream: [http://a]\n");
    assert_eq!(e.message, "expected a single value, found a list");
}

#[test]
fn wrong_shapes_are_reported() {
    let e = one_err(&format!("{UP}events: 5\n"));
    assert_eq!(
        (e.path.as_str(), e.line, e.column),
        ("events", Some(2), Some(9))
    );
    assert!(
        e.message
            .starts_with("expected a mapping of keys, found a single value")
    );
    let e = errs("- a\n- b\n");
    assert_eq!(e[0].message, "required key is missing");
    assert!(
        e[1].message
            .contains("expected a mapping of keys, found a list")
    );
    let e = one_err(&format!("{UP}? [a]\n: b\n"));
    assert_eq!(e.message, "a key must be a name, found a list");
    let e = one_err(&format!(
        "{UP}trusted_proxies: [10.0.0.1, ]\nevents: {{ cors: {{ allow_origins: [~] }} }}\n"
    ));
    assert_eq!(e.path, "events.cors.allow_origins[0]");
}

#[test]
fn yaml_syntax_error_is_one_error_with_position() {
    let e = one_err(&format!("{UP}limits: {{ max_connections: 5\n"));
    assert_eq!(e.path, "");
    assert!(e.message.starts_with("invalid YAML: "), "{e}");
    assert_eq!((e.line, e.column), (Some(3), Some(1)));
    let e = one_err("upstream: http://a\npublish: { token: ${TOKEN} }\n");
    assert!(e.to_string().contains("put ${VAR} in quotes"), "{e}");
    let e = one_err("upstream: a: b\n");
    assert_eq!((e.line, e.column), (Some(1), Some(12)));
    assert!(
        e.to_string()
            .starts_with("invalid YAML: mapping values are not allowed"),
        "{e}"
    );
}

#[test]
fn duplicate_keys_are_errors() {
    let e = one_err(&format!(
        "{UP}listen: 0.0.0.0:1\nlimits:\n  max_connections: 1\nlisten: 0.0.0.0:2\n"
    ));
    assert_eq!(
        (e.path.as_str(), e.line, e.column),
        ("listen", Some(5), Some(1))
    );
    assert_eq!(
        e.to_string(),
        "listen: duplicate key (line 5, column 1); first set on line 2; remove one of them"
    );
    let e = one_err(&format!(
        "{UP}events: {{ history: {{ max_age: 1h, max_age: 2h }} }}\n"
    ));
    assert_eq!(e.path, "events.history.max_age");
}

#[test]
fn aliases_and_second_documents_are_refused() {
    let e = one_err(&format!("{UP}listen: &a 0.0.0.0:1\nadmin_listen: *a\n"));
    assert!(e.message.contains("aliases"), "{e}");
    assert_eq!((e.line, e.column), (Some(3), Some(15)));
    let e = one_err(&format!("{UP}---\n{UP}"));
    assert!(e.message.contains("second YAML document"), "{e}");
    assert_eq!(e.line, Some(2));
}

#[test]
fn shipped_example_loads_with_every_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/ssegate.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let c = parse(&text, &no_env).unwrap_or_else(|e| panic!("{path}:\n{e}"));
    // The example documents the defaults, so it must equal them.
    assert_eq!(c, default_config());
}

/// Every key of the reference table exists, and the example file sets it.
#[test]
fn docs_table_and_example_cover_the_same_keys() {
    let docs = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md"));
    let keys: Vec<&str> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    // A floor, not a count: the table parses (every key is checked against the example below).
    assert!(keys.len() >= 45, "{keys:?}");
    let example = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/config/ssegate.yaml"));
    let tree = yaml::parse(example).unwrap().unwrap();
    for key in keys {
        let mut node = &tree;
        for part in key.split('.') {
            let yaml::Value::Map(entries) = &node.value else {
                panic!("{key}: {part} is not under a mapping in the example")
            };
            node = entries
                .iter()
                .find(|(k, _)| k.value == yaml::Value::Scalar(part.to_owned()))
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("{key} is missing from config/ssegate.yaml"));
        }
        if key != "upstream" {
            // Written as null, the key is known (and means its default).
            let mut text = String::from(UP);
            for (depth, part) in key.split('.').enumerate() {
                text.push_str(&format!("\n{}{part}:", "  ".repeat(depth)));
            }
            assert_eq!(ok(&text), default_config(), "{key}");
        }
    }
}

#[test]
fn shipped_default_file_loads() {
    let c = load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/default.yaml"
    )));
    assert_eq!(c.unwrap(), default_config());
}

#[test]
fn unreadable_file_is_one_error_naming_it() {
    let e = load(std::path::Path::new("/nonexistent/ssegate.yaml")).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].path, "");
    assert!(
        e.to_string().starts_with("/nonexistent/ssegate.yaml: "),
        "{e}"
    );
}

proptest::proptest! {
    #[test]
    fn never_panics_on_any_text(text in "\\PC{0,200}") {
        let _ = parse(&text, &no_env);
    }

    #[test]
    fn never_panics_on_yaml_like_text(parts in proptest::collection::vec(
        proptest::sample::select(vec![
            "upstream: ", "http://a", "events:", "\n", "  ", "{", "}", "[", "]", ",", ": ",
            "limits", "max_connections", "${", "$${", ":-", "X}", "\"", "'", "&a ", "*a", "- ",
            "? ", "~", "10/min", "1MiB", "#", "---", "!!str ", "|\n", ">\n", "\t", "é",
        ]),
        0..40,
    )) {
        let _ = parse(&parts.concat(), &|_| Some("v".to_owned()));
    }
}

#[test]
fn upstream_ports_must_be_numbers_in_range() {
    for bad in [
        "http://127.0.0.1:three",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:0",
        "http://127.0.0.1:",
    ] {
        let text = format!("upstream: \"{bad}\"\n");
        let errors = parse(&text, &|_| None).unwrap_err();
        assert!(
            errors.to_string().contains("invalid port"),
            "{bad}: {errors}"
        );
    }
    for good in [
        "http://127.0.0.1:3000",
        "http://app",
        "http://[::1]:8080",
        "http://[::1]",
    ] {
        assert!(
            parse(&format!("upstream: \"{good}\"\n"), &|_| None).is_ok(),
            "{good}"
        );
    }
}

#[test]
fn disk_broker_settings_are_checked() {
    let c = ok(&format!(
        "{UP}broker: {{ kind: disk, disk: {{ dir: ./history, sync: 1s }} }}\n"
    ));
    assert_eq!(c.broker.kind, BrokerKind::Disk);
    assert_eq!(c.broker.disk.dir, std::path::Path::new("./history"));
    assert_eq!(c.broker.disk.sync, DiskSync::Every(Duration::from_secs(1)));
    let e = errs(&format!(
        "{UP}broker:\n  disk: {{ dir: \"\", sync: sometimes }}\n"
    ));
    let got: Vec<_> = e
        .iter()
        .map(|e| (e.path.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("broker.disk.dir", "must not be empty"),
            (
                "broker.disk.sync",
                "\"sometimes\" is not \"always\" or a duration"
            ),
        ]
    );
    assert_eq!(
        one_err(&format!("{UP}broker: {{ disk: {{ sync: 0s }} }}\n")).path,
        "broker.disk.sync"
    );
}

#[test]
fn tenants_topic_and_the_tenant_cap_are_read_and_checked() {
    let c = ok(&format!(
        "{UP}tenants: {{ topic: \"tenant/{{tenant}}/*\" }}\nlimits: {{ max_connections_per_tenant: 2 }}\n"
    ));
    let topic = c.tenants.topic.unwrap();
    assert_eq!(topic.tenant_of("tenant/acme/q"), Some("acme"));
    assert_eq!(c.limits.max_connections_per_tenant, Some(2));
    let d = ok(UP);
    assert_eq!(
        (d.tenants.topic, d.limits.max_connections_per_tenant),
        (None, None)
    );

    let e = errs(&format!(
        "{UP}tenants:\n  topic: \"tenant/{{org}}/*\"\nlimits:\n  max_connections_per_tenant: 0\n"
    ));
    let got: Vec<_> = e
        .iter()
        .map(|e| (e.path.as_str(), e.line, e.column))
        .collect();
    assert_eq!(
        got,
        [
            ("tenants.topic", Some(3), Some(10)),
            ("limits.max_connections_per_tenant", Some(5), Some(31)),
        ]
    );
    assert!(e[0].message.contains("no {tenant} placeholder"), "{}", e[0]);
}

#[test]
fn workers_are_auto_or_a_positive_count() {
    assert_eq!(ok(UP).workers, None);
    assert_eq!(ok(&format!("{UP}workers: auto\n")).workers, None);
    assert_eq!(ok(&format!("{UP}workers: 1\n")).workers, Some(1));
    let e = one_err(&format!("{UP}workers: 0\n"));
    assert_eq!(e.path, "workers");
}

//! The shape of the file: which keys exist where, how each is read, and the checks that
//! involve more than one key.

use std::net::SocketAddr;

use super::types::*;
use super::values::{self as v, one_of};
use super::walk::{Bad, Fields, Got, Walker};
use super::yaml::Node;

const TOP: &[&str] = &[
    "listen",
    "admin_listen",
    "upstream",
    "upstream_timeouts",
    "trusted_proxies",
    "events",
    "publish",
    "auth",
    "limits",
    "broker",
    "tenants",
    "shutdown",
    "log",
    "derive",
    "watch",
    "workers",
];
const EVENTS: &[&str] = &[
    "path",
    "heartbeat",
    "retry",
    "history",
    "subscriber_buffer",
    "slow_consumer",
    "max_topics_per_subscription",
    "cors",
];
const JWT: &[&str] = &[
    "algorithms",
    "secret",
    "public_key_file",
    "cookie",
    "topics_claim",
    "admin_claim",
    "allow",
];
const LIMITS: &[&str] = &[
    "max_connections",
    "max_connections_per_ip",
    "max_connections_per_tenant",
    "connect_rate_per_ip",
    "requests_per_ip",
    "concurrent_requests_per_ip",
    "max_upstream_connections",
];

const SLOW_CONSUMER: &[(&str, SlowConsumer)] = &[
    ("disconnect", SlowConsumer::Disconnect),
    ("drop_oldest", SlowConsumer::DropOldest),
];
const AUTH_MODE: &[(&str, AuthMode)] = &[
    ("none", AuthMode::None),
    ("jwt", AuthMode::Jwt),
    ("upstream", AuthMode::Upstream),
];
const ALGORITHM: &[(&str, JwtAlgorithm)] = &[
    ("HS256", JwtAlgorithm::HS256),
    ("HS384", JwtAlgorithm::HS384),
    ("HS512", JwtAlgorithm::HS512),
    ("RS256", JwtAlgorithm::RS256),
    ("ES256", JwtAlgorithm::ES256),
    ("EdDSA", JwtAlgorithm::EdDSA),
];
const BROKER_KIND: &[(&str, BrokerKind)] = &[
    ("memory", BrokerKind::Memory),
    ("disk", BrokerKind::Disk),
    ("redis", BrokerKind::Redis),
];
const LOG_FORMAT: &[(&str, LogFormat)] =
    &[("pretty", LogFormat::Pretty), ("json", LogFormat::Json)];

/// Reads the whole file. The result is only meaningful when the walker recorded no error
/// (a missing upstream is then a placeholder).
pub(crate) fn config(w: &mut Walker<'_>, root: Option<&Node>) -> Config {
    let top = w.fields(root, "", TOP);
    let upstream = match w.read(&top, "upstream", v::upstream) {
        Got::Value(uri) => uri,
        Got::Absent => {
            w.report(
                "upstream".to_owned(),
                None,
                Bad::new("required key is missing"),
            );
            hyper::Uri::default()
        }
        Got::Invalid => hyper::Uri::default(),
    };
    let d = Config::with_upstream(upstream);
    let listen = w.read(&top, "listen", v::socket_addr).known(d.listen);
    let admin_listen = w
        .read(&top, "admin_listen", v::socket_addr)
        .known(d.admin_listen);
    if let Some((a, b)) = listen.zip(admin_listen).filter(|(a, b)| overlaps(*a, *b)) {
        let key = if top.get("admin_listen").is_some() {
            "admin_listen"
        } else {
            "listen"
        };
        let bad = Bad::new(format!("admin_listen {b} and listen {a} use the same port"))
            .hint("the public and internal listeners need different addresses");
        w.refuse(&top, key, bad);
    }
    let timeouts = w.section(&top, "upstream_timeouts", &["connect", "response"]);
    let upstream_timeouts = UpstreamTimeouts {
        connect: w.get(
            &timeouts,
            "connect",
            d.upstream_timeouts.connect,
            v::positive_duration,
        ),
        response: w.get(
            &timeouts,
            "response",
            d.upstream_timeouts.response,
            v::positive_duration,
        ),
    };
    let shutdown = w.section(&top, "shutdown", &["grace"]);
    let log = w.section(&top, "log", &["format", "level"]);
    Config {
        listen: listen.unwrap_or(d.listen),
        admin_listen: admin_listen.unwrap_or(d.admin_listen),
        upstream_timeouts,
        trusted_proxies: w
            .list(&top, "trusted_proxies", v::cidr)
            .or(d.trusted_proxies),
        events: events(w, &top, d.events),
        publish: publish(w, &top, d.publish),
        auth: auth(w, &top, d.auth),
        limits: limits(w, &top, &d.limits),
        broker: broker(w, &top, d.broker),
        tenants: {
            let f = w.section(&top, "tenants", &["topic"]);
            super::Tenants {
                topic: w.get(&f, "topic", None, super::tenants::tenant_topic),
            }
        },
        shutdown: Shutdown {
            grace: w.get(&shutdown, "grace", d.shutdown.grace, v::duration),
        },
        log: Log {
            format: w.get(&log, "format", d.log.format, one_of(LOG_FORMAT)),
            level: w.get(&log, "level", d.log.level, v::non_empty),
        },
        derive: super::app_events::derive(w, &top),
        watch: super::app_events::watch(w, &top),
        workers: w.get(&top, "workers", d.workers, v::workers),
        upstream: d.upstream,
    }
}

/// Two listeners collide when they share a port (other than 0, which the OS picks) and an
/// address, counting a wildcard address as every address.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn events(w: &mut Walker<'_>, top: &Fields<'_>, d: Events) -> Events {
    let f = w.section(top, "events", EVENTS);
    let history = w.section(&f, "history", &["max_events", "max_bytes", "max_age"]);
    let cors = w.section(&f, "cors", &["allow_origins"]);
    let allow_origins = match w.list(&cors, "allow_origins", v::origin) {
        Got::Value(origins) => {
            if origins.len() > 1 && origins.iter().any(|o| o == "*") {
                let bad = Bad::new("\"*\" must be the only entry when present")
                    .hint("either allow every origin with [\"*\"] or list exact origins");
                w.refuse(&cors, "allow_origins", bad);
            }
            origins
        }
        Got::Absent | Got::Invalid => d.cors.allow_origins,
    };
    Events {
        path: w.get(&f, "path", d.path, v::events_path),
        heartbeat: w.get(&f, "heartbeat", d.heartbeat, v::positive_duration),
        retry: w.get(&f, "retry", d.retry, v::duration),
        history: History {
            max_events: w.get(&history, "max_events", d.history.max_events, v::count(1)),
            max_bytes: w.get(&history, "max_bytes", d.history.max_bytes, v::size),
            max_age: w.get(&history, "max_age", d.history.max_age, v::positive_duration),
        },
        subscriber_buffer: w.get(&f, "subscriber_buffer", d.subscriber_buffer, v::count(1)),
        slow_consumer: w.get(&f, "slow_consumer", d.slow_consumer, one_of(SLOW_CONSUMER)),
        max_topics_per_subscription: w.get(
            &f,
            "max_topics_per_subscription",
            d.max_topics_per_subscription,
            v::count(1),
        ),
        cors: Cors { allow_origins },
    }
}

fn publish(w: &mut Walker<'_>, top: &Fields<'_>, d: Publish) -> Publish {
    let f = w.section(top, "publish", &["token", "max_body", "max_event_bytes"]);
    let max_body = w.read(&f, "max_body", v::size).known(d.max_body);
    let event_set = w.read(&f, "max_event_bytes", v::size);
    let explicit_event = matches!(event_set, Got::Value(_));
    let max_event_bytes = event_set.known(d.max_event_bytes);
    // A default follows an explicit setting: `max_body: 1KiB` alone caps events at 1 KiB.
    // Only two explicit values that contradict each other are an error.
    let max_event_bytes = match (max_body, max_event_bytes) {
        (Some(body), Some(event)) if event > body && !explicit_event => Some(body),
        (Some(body), Some(event)) if event > body => {
            let bad = Bad::new(format!(
                "max_event_bytes ({event} bytes) is more than max_body ({body} bytes)"
            ))
            .hint("an event must fit in a request body");
            w.refuse(&f, "max_event_bytes", bad);
            Some(event)
        }
        (_, event) => event,
    };
    // Left out of the file, the token is SSEGATE_PUBLISH_TOKEN's value: an operator who
    // sets the variable in the container must not get an open webhook.
    let token_default = w.env_default("SSEGATE_PUBLISH_TOKEN").or(d.token);
    Publish {
        token: w.get(&f, "token", token_default, v::optional),
        max_body: max_body.unwrap_or(d.max_body),
        max_event_bytes: max_event_bytes.unwrap_or(d.max_event_bytes),
    }
}

fn auth(w: &mut Walker<'_>, top: &Fields<'_>, d: Auth) -> Auth {
    let f = w.section(top, "auth", &["mode", "jwt", "upstream"]);
    let j = w.section(&f, "jwt", JWT);
    let u = w.section(&f, "upstream", &["path"]);
    let mode = w.read(&f, "mode", one_of(AUTH_MODE));
    let algorithms = match w.list(&j, "algorithms", one_of(ALGORITHM)) {
        Got::Value(algs) if algs.is_empty() => {
            let bad = Bad::new("must name at least one algorithm")
                .hint("expected some of: HS256, HS384, HS512, RS256, ES256, EdDSA");
            w.refuse(&j, "algorithms", bad);
            None
        }
        got => got.known(d.jwt.algorithms.clone()),
    };
    let jwt = Jwt {
        algorithms: algorithms.clone().unwrap_or(d.jwt.algorithms),
        secret: {
            let default = w.env_default("SSEGATE_JWT_SECRET").or(d.jwt.secret);
            w.get(&j, "secret", default, v::optional)
        },
        public_key_file: w.get(
            &j,
            "public_key_file",
            d.jwt.public_key_file,
            v::optional_path,
        ),
        cookie: w.get(&j, "cookie", d.jwt.cookie, v::cookie_name),
        topics_claim: w.get(&j, "topics_claim", d.jwt.topics_claim, v::non_empty),
        admin_claim: w.get(&j, "admin_claim", d.jwt.admin_claim, v::non_empty),
        allow: w.list(&j, "allow", v::topic_template).or(d.jwt.allow),
    };
    if let (Got::Value(AuthMode::Jwt), Some(algs)) = (&mode, &algorithms) {
        let mode_node = f.node("mode");
        let secret_needed = algs.iter().find(|a| a.uses_secret());
        if let Some(alg) = secret_needed.filter(|_| jwt.secret.is_none()) {
            let bad = Bad::new(format!(
                "required when auth.mode is jwt with {}",
                alg.as_str()
            ))
            .hint("for example secret: ${SSEGATE_JWT_SECRET}");
            w.report(j.path_of("secret"), j.node("secret").or(mode_node), bad);
        }
        if let Some(alg) = algs.iter().find(|a| !a.uses_secret()) {
            let at = j.node("public_key_file").or(mode_node);
            match &jwt.public_key_file {
                None => {
                    let bad = Bad::new(format!(
                        "required when auth.mode is jwt with {}",
                        alg.as_str()
                    ))
                    .hint("the path of a PEM public key");
                    w.report(j.path_of("public_key_file"), at, bad);
                }
                Some(path) => match std::fs::metadata(path) {
                    Ok(meta) if meta.is_file() => {}
                    Ok(_) => {
                        let bad = Bad::new(format!("{path:?} is not a file"));
                        w.report(j.path_of("public_key_file"), at, bad);
                    }
                    Err(e) => {
                        let bad = Bad::new(format!("{path:?} cannot be read: {e}"))
                            .hint("relative paths are relative to the working directory");
                        w.report(j.path_of("public_key_file"), at, bad);
                    }
                },
            }
        }
    }
    Auth {
        mode: mode.or(d.mode),
        jwt,
        upstream: AuthUpstream {
            path: w.get(&u, "path", d.upstream.path, v::request_path),
        },
    }
}

fn limits(w: &mut Walker<'_>, top: &Fields<'_>, d: &Limits) -> Limits {
    let f = w.section(top, "limits", LIMITS);
    Limits {
        max_connections: w.get(&f, "max_connections", d.max_connections, v::count(1)),
        max_connections_per_ip: w.get(
            &f,
            "max_connections_per_ip",
            d.max_connections_per_ip,
            v::count(1),
        ),
        max_connections_per_tenant: w.get(
            &f,
            "max_connections_per_tenant",
            d.max_connections_per_tenant,
            v::optional_count(1),
        ),
        connect_rate_per_ip: w.get(&f, "connect_rate_per_ip", d.connect_rate_per_ip, v::rate),
        requests_per_ip: w.get(&f, "requests_per_ip", d.requests_per_ip, v::optional_rate),
        concurrent_requests_per_ip: w.get(
            &f,
            "concurrent_requests_per_ip",
            d.concurrent_requests_per_ip,
            v::count(1),
        ),
        max_upstream_connections: w.get(
            &f,
            "max_upstream_connections",
            d.max_upstream_connections,
            v::count(1),
        ),
    }
}

fn broker(w: &mut Walker<'_>, top: &Fields<'_>, d: Broker) -> Broker {
    let f = w.section(top, "broker", &["kind", "disk", "redis"]);
    let disk = w.section(&f, "disk", &["dir", "sync"]);
    let redis = w.section(&f, "redis", &["url", "stream"]);
    Broker {
        kind: w.get(&f, "kind", d.kind, one_of(BROKER_KIND)),
        disk: Disk {
            dir: w.get(&disk, "dir", d.disk.dir, v::dir),
            sync: w.get(&disk, "sync", d.disk.sync, v::disk_sync),
        },
        redis: Redis {
            url: w.get(&redis, "url", d.redis.url, v::redis_url),
            stream: w.get(&redis, "stream", d.redis.stream, v::non_empty),
        },
    }
}

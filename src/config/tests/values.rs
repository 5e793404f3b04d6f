//! The single-value parsers, good and bad inputs.

use std::num::NonZeroU32;
use std::time::Duration;

use super::super::types::Rate;
use super::super::values as v;
use super::super::walk::Bad;

fn msg<T: std::fmt::Debug>(r: Result<T, Bad>) -> String {
    r.unwrap_err().message
}

#[test]
fn socket_addresses() {
    assert_eq!(v::socket_addr("0.0.0.0:8080").unwrap().port(), 8080);
    assert!(v::socket_addr("[::1]:9000").unwrap().is_ipv6());
    assert_eq!(
        msg(v::socket_addr("localhost:8080")),
        "\"localhost:8080\" is not a socket address"
    );
    assert!(v::socket_addr("8080").is_err());
    assert!(v::socket_addr("1.2.3.4:70000").is_err());
}

#[test]
fn upstream_urls() {
    for good in [
        "http://127.0.0.1:3000",
        "http://app",
        "http://app/",
        "http://[::1]:3000",
    ] {
        assert!(v::upstream(good).is_ok(), "{good}");
    }
    assert_eq!(v::upstream("http://app").unwrap().port_u16(), None); // 80 is implied
    assert_eq!(
        msg(v::upstream("https://app")),
        "\"https://app\" uses https, which is not supported"
    );
    assert_eq!(
        msg(v::upstream("127.0.0.1:3000")),
        "\"127.0.0.1:3000\" is not an http:// URL"
    );
    assert_eq!(
        msg(v::upstream("ftp://app")),
        "\"ftp://app\" is not an http:// URL"
    );
    assert_eq!(
        msg(v::upstream("http://app/api")),
        "\"http://app/api\" has a path or query"
    );
    assert_eq!(
        msg(v::upstream("http://app/?a=1")),
        "\"http://app/?a=1\" has a path or query"
    );
    assert!(msg(v::upstream("http://u:p@app")).contains("credentials"));
    assert!(v::upstream("http://").is_err());
    assert_eq!(msg(v::upstream("not a url")), "\"not a url\" is not a URL");
}

#[test]
fn durations() {
    assert_eq!(v::duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(v::duration("15s").unwrap(), Duration::from_secs(15));
    assert_eq!(v::duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(v::duration("1h 30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(v::duration("0s").unwrap(), Duration::ZERO);
    let bad = v::duration("15").unwrap_err();
    assert_eq!(bad.message, "\"15\" is not a duration");
    assert!(bad.hint.unwrap().contains("need a unit"));
    for bad in ["fast", "-1s", "", "1 fortnight"] {
        assert!(v::duration(bad).is_err(), "{bad}");
    }
    assert_eq!(
        msg(v::positive_duration("0ms")),
        "\"0ms\" must be more than zero"
    );
    assert!(v::positive_duration("1ms").is_ok());
}

#[test]
fn sizes() {
    assert_eq!(v::size("65536").unwrap(), 65536);
    assert_eq!(v::size("64KiB").unwrap(), 65536);
    assert_eq!(v::size("1MiB").unwrap(), 1 << 20);
    assert_eq!(v::size("1 MiB").unwrap(), 1 << 20);
    assert_eq!(v::size("1KB").unwrap(), 1000);
    assert_eq!(msg(v::size("1 megabyte")), "\"1 megabyte\" is not a size");
    for bad in ["", "-1", "lots", "1.5"] {
        assert!(v::size(bad).is_err(), "{bad}");
    }
    assert_eq!(msg(v::size("0")), "\"0\" must be more than zero");
}

#[test]
fn counts() {
    let at_least_one = v::count(1);
    assert_eq!(at_least_one("10").unwrap(), 10);
    assert_eq!(at_least_one(" 7 ").unwrap(), 7);
    assert_eq!(msg(at_least_one("ten")), "\"ten\" is not a whole number");
    assert_eq!(msg(at_least_one("0")), "\"0\" must be at least 1");
    assert_eq!(
        msg(at_least_one("99999999999999999999999")),
        "\"99999999999999999999999\" is too large"
    );
    for bad in ["-1", "1.5", "1e3", "", "10_000"] {
        assert!(at_least_one(bad).is_err(), "{bad}");
    }
}

fn rate(count: u32, per: Duration) -> Rate {
    Rate {
        count: NonZeroU32::new(count).unwrap(),
        per,
    }
}

#[test]
fn rates() {
    let s = Duration::from_secs;
    for (text, want) in [
        ("10/min", rate(10, s(60))),
        ("100/s", rate(100, s(1))),
        ("5/h", rate(5, s(3600))),
        ("2/500ms", rate(2, Duration::from_millis(500))),
        ("10/30s", rate(10, s(30))),
        ("1/sec", rate(1, s(1))),
        ("3/second", rate(3, s(1))),
        ("4/minute", rate(4, s(60))),
        ("4/m", rate(4, s(60))),
        ("6/hour", rate(6, s(3600))),
        ("7/day", rate(7, s(86400))),
        (" 8 / min ", rate(8, s(60))),
    ] {
        assert_eq!(v::rate(text).unwrap(), want, "{text}");
    }
    assert_eq!(
        msg(v::rate("10/fortnight")),
        "\"10/fortnight\" is not a rate"
    );
    for bad in ["10", "x/s", "/s", "10/", "-1/s", "10/min/s", "4294967296/s"] {
        assert!(v::rate(bad).is_err(), "{bad}");
    }
    assert_eq!(msg(v::rate("0/s")), "\"0/s\" must allow at least 1");
    assert_eq!(msg(v::rate("10/0s")), "\"10/0s\" has a zero period");
    assert_eq!(v::optional_rate("").unwrap(), None);
    assert_eq!(v::optional_rate("off").unwrap(), None);
    assert_eq!(v::optional_rate("1/s").unwrap(), Some(rate(1, s(1))));
}

#[test]
fn rate_display_and_interval() {
    for text in ["10/min", "100/s", "5/h", "7/day", "2/500ms", "10/30s"] {
        assert_eq!(v::rate(text).unwrap().to_string(), text);
    }
    assert_eq!(v::rate("1/second").unwrap().to_string(), "1/s");
    assert_eq!(
        v::rate("60/min").unwrap().interval(),
        Duration::from_secs(1)
    );
    assert_eq!(
        v::rate("4/s").unwrap().interval(),
        Duration::from_millis(250)
    );
}

#[test]
fn cidrs() {
    assert_eq!(v::cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
    assert_eq!(v::cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
    assert_eq!(
        v::cidr("192.168.1.7").unwrap().to_string(),
        "192.168.1.7/32"
    );
    assert_eq!(v::cidr("::1").unwrap().to_string(), "::1/128");
    assert_eq!(v::cidr("fd00::/8").unwrap().to_string(), "fd00::/8");
    assert_eq!(
        msg(v::cidr("10.0.0.0/33")),
        "\"10.0.0.0/33\" is not an IP network"
    );
    for bad in ["example.com", "", "10.0.0/8", "10.0.0.0/"] {
        assert!(v::cidr(bad).is_err(), "{bad}");
    }
}

#[test]
fn enums() {
    const COLORS: &[(&str, u8)] = &[("red", 1), ("blue", 2)];
    let parse = v::one_of(COLORS);
    assert_eq!(parse("blue").unwrap(), 2);
    let bad = parse("Blue").unwrap_err();
    assert_eq!(bad.message, "\"Blue\" is not a valid choice");
    assert_eq!(bad.hint.as_deref(), Some("expected one of: red, blue"));
}

#[test]
fn events_paths() {
    for good in ["/events", "/api/sse", "/_ssegatex", "/a-b.c~d"] {
        assert_eq!(v::events_path(good).unwrap(), good);
    }
    let hint = |p: &str| v::events_path(p).unwrap_err().hint.unwrap();
    assert_eq!(
        msg(v::events_path("events")),
        "\"events\" is not a valid path"
    );
    assert_eq!(hint("events"), "it must start with /");
    assert_eq!(hint("/events/"), "it must not end with /");
    assert!(hint("/_ssegate").contains("reserved"));
    assert!(hint("/_ssegate/events").contains("reserved"));
    assert!(hint("/a b").starts_with("' ' is not allowed"));
    for bad in [
        "/", "", "/a b", "/a//b", "/a/../b", "/a?x", "/a#b", "/a%20b", "/é",
    ] {
        assert!(v::events_path(bad).is_err(), "{bad}");
    }
}

#[test]
fn request_paths() {
    assert_eq!(v::request_path("/sse-auth").unwrap(), "/sse-auth");
    assert_eq!(v::request_path("/auth?kind=sse").unwrap(), "/auth?kind=sse");
    assert!(v::request_path("sse-auth").is_err());
    assert!(v::request_path("/a b").is_err());
}

#[test]
fn origins() {
    assert_eq!(v::origin("*").unwrap(), "*");
    assert_eq!(
        v::origin("https://app.example.com").unwrap(),
        "https://app.example.com"
    );
    assert_eq!(
        v::origin("http://localhost:3000").unwrap(),
        "http://localhost:3000"
    );
    assert_eq!(v::origin("http://[::1]:3000").unwrap(), "http://[::1]:3000");
    assert_eq!(
        v::origin("HTTPS://App.Example.com").unwrap(),
        "https://app.example.com"
    );
    assert_eq!(
        msg(v::origin("https://app.example.com/")),
        "\"https://app.example.com/\" is not an origin"
    );
    for bad in [
        "app.example.com",
        "https://",
        "https://a@b",
        "https://x:port",
        "https://x:99999",
        "https://[::1",
        "https://x/p",
        "1x://a",
    ] {
        assert!(v::origin(bad).is_err(), "{bad}");
    }
}

#[test]
fn small_strings() {
    assert!(v::redis_url("redis://127.0.0.1:6379").is_ok());
    assert!(v::redis_url("rediss://u:p@host:6380/0").is_ok());
    assert_eq!(
        msg(v::redis_url("http://x")),
        "\"http://x\" is not a Redis URL"
    );
    assert!(v::redis_url("redis://").is_err());
    assert_eq!(v::cookie_name("").unwrap(), None);
    assert_eq!(
        v::cookie_name("session_id").unwrap().as_deref(),
        Some("session_id")
    );
    assert!(v::cookie_name("a b").is_err());
    assert!(v::cookie_name("a=b").is_err());
    assert_eq!(v::non_empty("  info ").unwrap(), "info");
    assert_eq!(msg(v::non_empty("  ")), "must not be empty");
    assert_eq!(v::optional("").unwrap(), None);
    assert_eq!(v::optional_path(" ").unwrap(), None);
}

#[test]
fn topic_templates() {
    for good in [
        "user/{sub}/*",
        "tenant/{tenant}/questions",
        "*",
        "job/{job_id}",
        "a.b:c@d",
    ] {
        assert!(v::topic_template(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "user/{sub",
        "user/}x",
        "user/{}/x",
        "user/{a b}",
        "user/*/x",
        "a b",
        "/*",
    ] {
        assert!(v::topic_template(bad).is_err(), "{bad}");
    }
}

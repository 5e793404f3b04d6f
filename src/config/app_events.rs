//! The events ssegate publishes for an app that cannot: `derive` (from proxied requests)
//! and `watch` (by polling the app). Templates are parsed
//! here, so a topic that names a parameter the path does not define is an error with its
//! line and column, and the runtime only fills in values.

use super::types::{DeriveData, DeriveRule, PathPart, StatusMatch, TopicPart, WatchRule};
use super::walk::{Bad, Fields, Got, Walker};
use super::yaml::Value;
use std::time::Duration;

const RULE: &[&str] = &["name", "match", "publish"];
const MATCH: &[&str] = &["methods", "path", "status"];
const PUBLISH: &[&str] = &["topic", "event", "data"];
const DATA: &[(&str, DeriveData)] = &[
    ("meta", DeriveData::Meta),
    ("request", DeriveData::Request),
    ("response", DeriveData::Response),
];
const DEFAULT_METHODS: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

/// Reads the `derive` list of the top-level mapping.
pub(super) fn derive(w: &mut Walker<'_>, top: &Fields<'_>) -> Vec<DeriveRule> {
    let mut rules: Vec<DeriveRule> = Vec::new();
    for (path, node) in w.items(top, "derive") {
        let f = w.fields(Some(node), &path, RULE);
        let m = w.section(&f, "match", MATCH);
        let p = w.section(&f, "publish", PUBLISH);
        let Some(name) = rule_name(w, &f, rules.iter().map(|r| r.name.as_str())) else {
            continue;
        };
        let methods = w
            .list(&m, "methods", method)
            .or_else(|| DEFAULT_METHODS.iter().map(|s| (*s).to_owned()).collect());
        let status = w
            .list(&m, "status", status)
            .or_else(|| vec![StatusMatch::Class(2)]);
        let Got::Value(path_parts) = w.read(&m, "path", path_template) else {
            if m.get("path").is_none() {
                w.refuse(&m, "path", Bad::new("required: the path template to match"));
            }
            continue;
        };
        let Got::Value(topic) = w.read(&p, "topic", topic_template) else {
            if p.get("topic").is_none() {
                w.refuse(&p, "topic", Bad::new("required: the topic to publish to"));
            }
            continue;
        };
        for part in &topic {
            if let TopicPart::Param(name) = part {
                let defined = path_parts.iter().any(|pp| match pp {
                    PathPart::Param(n) | PathPart::Rest(n) => n == name,
                    PathPart::Literal(_) => false,
                });
                if !defined {
                    let bad = Bad::new(format!("{{{name}}} is not a parameter of the path"))
                        .hint("use a {name} the match.path defines, or {response.header.NAME}");
                    w.refuse(&p, "topic", bad);
                }
            }
        }
        rules.push(DeriveRule {
            name,
            methods,
            path: path_parts,
            status,
            topic,
            event: w.get(&p, "event", None, event_type),
            data: w.get(&p, "data", DeriveData::Meta, super::values::one_of(DATA)),
        });
    }
    rules
}

const WATCH: &[&str] = &["name", "topic", "url", "every", "event", "headers"];

/// Reads the `watch` list of the top-level mapping.
pub(super) fn watch(w: &mut Walker<'_>, top: &Fields<'_>) -> Vec<WatchRule> {
    let mut rules: Vec<WatchRule> = Vec::new();
    for (path, node) in w.items(top, "watch") {
        let f = w.fields(Some(node), &path, WATCH);
        let Some(name) = rule_name(w, &f, rules.iter().map(|r| r.name.as_str())) else {
            continue;
        };
        let topic = match w.read(&f, "topic", topic_template) {
            Got::Value(t) if t.iter().any(|p| matches!(p, TopicPart::ResponseHeader(_))) => {
                w.refuse(
                    &f,
                    "topic",
                    Bad::new("a watched topic is filled from the topic only"),
                );
                continue;
            }
            Got::Value(t) => t,
            Got::Absent => {
                w.refuse(
                    &f,
                    "topic",
                    Bad::new("required: the topics this rule serves"),
                );
                continue;
            }
            Got::Invalid => continue,
        };
        let url = match w.read(&f, "url", url_template) {
            Got::Value(u) => u,
            Got::Absent => {
                w.refuse(&f, "url", Bad::new("required: the app's URL to poll"));
                continue;
            }
            Got::Invalid => continue,
        };
        let defined = |n: &str| {
            topic
                .iter()
                .any(|t| matches!(t, TopicPart::Param(m) if m == n))
        };
        for part in &url {
            if let TopicPart::Param(n) = part
                && !defined(n)
            {
                let bad = Bad::new(format!("{{{n}}} is not a parameter of the topic"))
                    .hint("the URL is filled from the topic's placeholders");
                w.refuse(&f, "url", bad);
            }
        }
        let headers = headers(w, &f);
        rules.push(WatchRule {
            name,
            topic,
            url,
            every: w.get(
                &f,
                "every",
                Duration::from_secs(2),
                super::values::positive_duration,
            ),
            event: w.get(&f, "event", None, event_type),
            headers,
        });
    }
    rules
}

/// `headers: { Name: value }`: any names, each a valid header name.
fn headers(w: &mut Walker<'_>, f: &Fields<'_>) -> Vec<(String, String)> {
    let Some(node) = f.get("headers") else {
        return Vec::new();
    };
    let path = f.path_of("headers");
    let Value::Map(entries) = &node.value else {
        w.report(
            path,
            Some(node),
            Bad::new(format!(
                "expected a mapping of header names, found {}",
                node.kind()
            )),
        );
        return Vec::new();
    };
    let names: Vec<&str> = entries
        .iter()
        .filter_map(|(k, _)| match &k.value {
            Value::Scalar(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    let fields = w.fields(Some(node), &path, &names);
    let mut out = Vec::new();
    for name in names {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid {
            w.refuse(&fields, name, Bad::not_a(name, "a header name"));
            continue;
        }
        if let Got::Value(v) = w.read(&fields, name, |s| {
            if s.bytes().any(|b| b == b'\r' || b == b'\n') {
                Err(Bad::new("a header value is one line"))
            } else {
                Ok(s.to_owned())
            }
        }) {
            out.push((name.to_owned(), v));
        }
    }
    out
}

/// `/api/jobs/{job}/status`: a path (and query) with `{name}` placeholders.
fn url_template(s: &str) -> Result<Vec<TopicPart>, Bad> {
    if !s.starts_with('/') {
        return Err(Bad::not_a(s, "an app path").hint("it starts with /, like /api/jobs/{job}"));
    }
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TopicPart::Literal(rest[..open].to_owned()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| Bad::not_a(s, "an app path").hint("unclosed {"))?;
        let name = &rest[open + 1..open + close];
        if !placeholder(name) {
            return Err(Bad::not_a(s, "an app path").hint("a placeholder is {name}"));
        }
        parts.push(TopicPart::Param(name.to_owned()));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(TopicPart::Literal(rest.to_owned()));
    }
    let literal_ok = parts.iter().all(|p| match p {
        TopicPart::Literal(l) => l
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:@/?".contains(&b)),
        _ => true,
    });
    if !literal_ok {
        return Err(Bad::not_a(s, "an app path").hint("only characters a URL may contain"));
    }
    Ok(parts)
}

/// A rule's `name`: required (logs and metrics name the rule), and unique in its list.
fn rule_name<'a>(
    w: &mut Walker<'_>,
    f: &Fields<'_>,
    mut taken: impl Iterator<Item = &'a str>,
) -> Option<String> {
    let name = match w.read(f, "name", super::values::non_empty) {
        Got::Value(n) => n,
        Got::Absent => {
            let bad = Bad::new("every rule needs a name (for logs and metrics)");
            w.refuse(f, "name", bad);
            return None;
        }
        Got::Invalid => return None,
    };
    if taken.any(|t| t == name) {
        w.refuse(
            f,
            "name",
            Bad::new(format!("another rule is named {name:?}")),
        );
    }
    Some(name)
}

fn method(s: &str) -> Result<String, Bad> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(s.to_ascii_uppercase())
    } else {
        Err(Bad::not_a(s, "an HTTP method").hint("like POST or DELETE"))
    }
}

fn status(s: &str) -> Result<StatusMatch, Bad> {
    let bad = || Bad::not_a(s, "a status").hint("a code like 201, or a class like 2xx");
    let b = s.as_bytes();
    match b {
        [c @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => Ok(StatusMatch::Class(u16::from(c - b'0'))),
        _ => match s.parse::<u16>() {
            Ok(n) if (100..=599).contains(&n) => Ok(StatusMatch::Code(n)),
            _ => Err(bad()),
        },
    }
}

fn event_type(s: &str) -> Result<Option<String>, Bad> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > 64 || s.chars().any(char::is_whitespace) || s.starts_with("ssegate.") {
        return Err(Bad::not_a(s, "an event type")
            .hint("1 to 64 characters, no spaces; types starting with ssegate. are reserved"));
    }
    Ok(Some(s.to_owned()))
}

/// A placeholder's name: letters, digits, `_`, `-`.
fn placeholder(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `/t/{tenant}/questions/{rest*}`: literal segments, `{name}` segments, and a last
/// `{name*}`.
pub(super) fn path_template(s: &str) -> Result<Vec<PathPart>, Bad> {
    let bad = |why: &str| {
        Bad::not_a(s, "a path template").hint(format!(
            "{why}; like /t/{{tenant}}/questions/{{id}} or /files/{{rest*}}"
        ))
    };
    let Some(rest) = s.strip_prefix('/') else {
        return Err(bad("it starts with /"));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let mut parts = Vec::with_capacity(segments.len());
    let mut names: Vec<&str> = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let part = if let Some(inner) = seg.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            let (name, rest) = match inner.strip_suffix('*') {
                Some(n) => (n, true),
                None => (inner, false),
            };
            if !placeholder(name) {
                return Err(bad("a placeholder is {name} or {name*}"));
            }
            if names.contains(&name) {
                return Err(bad("each placeholder name once"));
            }
            names.push(name);
            if rest && i + 1 != segments.len() {
                return Err(bad("{name*} can only be the last segment"));
            }
            if rest {
                PathPart::Rest(name.to_owned())
            } else {
                PathPart::Param(name.to_owned())
            }
        } else if seg.contains(['{', '}']) {
            return Err(bad("a placeholder fills a whole segment"));
        } else {
            PathPart::Literal((*seg).to_owned())
        };
        parts.push(part);
    }
    Ok(parts)
}

/// `t/{tenant}/questions` or `job/{response.header.x-job-id}`.
pub(super) fn topic_template(s: &str) -> Result<Vec<TopicPart>, Bad> {
    let bad = |why: &str| {
        Bad::not_a(s, "a topic template").hint(format!(
            "{why}; like t/{{tenant}}/questions or job/{{response.header.x-job-id}}"
        ))
    };
    let topic_char = |c: char| c.is_ascii_alphanumeric() || "/_-.:@".contains(c);
    let mut parts = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            Some(i) if rest[i..].starts_with('}') => return Err(bad("unmatched }")),
            Some(i) => {
                let (lit, after) = rest.split_at(i);
                if !lit.is_empty() {
                    parts.push(TopicPart::Literal(lit.to_owned()));
                }
                let close = after.find('}').ok_or_else(|| bad("unclosed {"))?;
                let name = &after[1..close];
                if let Some(header) = name.strip_prefix("response.header.") {
                    let ok = !header.is_empty()
                        && header
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                    if !ok {
                        return Err(bad("a header name is letters, digits and -"));
                    }
                    parts.push(TopicPart::ResponseHeader(header.to_ascii_lowercase()));
                } else if placeholder(name) {
                    parts.push(TopicPart::Param(name.to_owned()));
                } else {
                    return Err(bad("a placeholder is {name} or {response.header.NAME}"));
                }
                rest = &after[close + 1..];
            }
            None => {
                parts.push(TopicPart::Literal(rest.to_owned()));
                rest = "";
            }
        }
    }
    let literal_ok = parts.iter().all(|p| match p {
        TopicPart::Literal(l) => l.chars().all(topic_char),
        _ => true,
    });
    if parts.is_empty() || !literal_ok {
        return Err(bad("topics are made of A-Z a-z 0-9 / _ - . : @"));
    }
    Ok(parts)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn path_templates() {
        use PathPart::*;
        assert_eq!(
            path_template("/t/{tenant}/questions/{rest*}").unwrap(),
            vec![
                Literal("t".into()),
                Param("tenant".into()),
                Literal("questions".into()),
                Rest("rest".into())
            ]
        );
        assert_eq!(path_template("/").unwrap(), vec![Literal(String::new())]);
        for bad in ["t/x", "/a/{r*}/b", "/q-{id}", "/{a}/{a}", "/{}", "/{a b}"] {
            assert!(path_template(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_templates() {
        use TopicPart::*;
        assert_eq!(
            topic_template("t/{tenant}/q").unwrap(),
            vec![
                Literal("t/".into()),
                Param("tenant".into()),
                Literal("/q".into())
            ]
        );
        assert_eq!(
            topic_template("job/{response.header.X-Job-Id}").unwrap(),
            vec![Literal("job/".into()), ResponseHeader("x-job-id".into())]
        );
        for bad in ["", "a b", "t/{", "t/}", "{response.header.}", "{a.b}"] {
            assert!(topic_template(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(status("2xx").unwrap(), StatusMatch::Class(2));
        assert_eq!(status("201").unwrap(), StatusMatch::Code(201));
        assert!(status("6xx").is_err());
        assert!(status("99").is_err());
        assert!(StatusMatch::Class(2).matches(204));
        assert!(!StatusMatch::Class(2).matches(302));
    }
}

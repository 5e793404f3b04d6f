//! Topic names and subscription patterns.

use std::fmt;
use std::sync::Arc;

/// Longest accepted topic, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// Why a string is not a topic or pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty or longer than [`MAX_TOPIC_LEN`].
    #[error("a topic is 1-256 characters long")]
    Length,
    /// A character outside `A-Z a-z 0-9 / _ - . : @`.
    #[error("a topic may only contain A-Z a-z 0-9 / _ - . : @")]
    Character,
    /// A pattern where only an exact topic is allowed.
    #[error("a pattern (ending in /* or *) is not a publishable topic")]
    Pattern,
}

fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.' | b':' | b'@')
}

/// Checks an exact topic: 1–256 characters of `A–Z a–z 0–9 / _ - . : @`.
pub fn validate_topic(t: &str) -> Result<(), TopicError> {
    if t.is_empty() || t.len() > MAX_TOPIC_LEN {
        return Err(TopicError::Length);
    }
    if t == "*" || t.ends_with("/*") {
        return Err(TopicError::Pattern);
    }
    if !t.bytes().all(is_topic_byte) {
        return Err(TopicError::Character);
    }
    Ok(())
}

/// What a subscriber follows: one exact topic, or every topic under a prefix. The name is
/// shared: the hub's index hands a new subscriber the copy its other followers use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// Exactly this topic.
    Exact(Arc<str>),
    /// Every topic starting with this prefix (`tenant/` for `tenant/*`; empty for `*`).
    Prefix(Arc<str>),
}

impl Selector {
    /// Parses a topic or a pattern (`*`, or a topic followed by `/*`).
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        if s == "*" {
            return Ok(Self::Prefix("".into()));
        }
        if let Some(base) = s.strip_suffix("/*") {
            validate_topic(base)?;
            return Ok(Self::Prefix(format!("{base}/").into()));
        }
        validate_topic(s)?;
        Ok(Self::Exact(s.into()))
    }

    /// Whether this selector receives events published to `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(t) => &**t == topic,
            Self::Prefix(p) => topic.len() > p.len() && topic.starts_with(&**p),
        }
    }

    /// Whether everything `other` selects is also selected by `self` (used by auth):
    /// `tenant/*` covers `tenant/acme` and `tenant/acme/*`; an exact topic covers no pattern.
    pub fn covers(&self, other: &Selector) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Exact(_), Self::Prefix(_)) => false,
            (Self::Prefix(_), Self::Exact(t)) => self.matches(t),
            (Self::Prefix(a), Self::Prefix(b)) => b.starts_with(&**a),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(t) => f.write_str(t),
            Self::Prefix(p) if p.is_empty() => f.write_str("*"),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// The prefixes under which pattern subscriptions covering `topic` are indexed: `""` (for
/// `*`) and each prefix ending in `/` that leaves at least one character after it.
pub fn covering_prefixes(topic: &str) -> impl Iterator<Item = &str> {
    std::iter::once("").chain(
        topic
            .match_indices('/')
            .filter(move |(i, _)| i + 1 < topic.len())
            .map(move |(i, _)| &topic[..=i]),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn topics_follow_the_character_rules() {
        for ok in [
            "tenant/acme/questions",
            "job/abc123",
            "user/42",
            "a:b@c.d_e-f",
        ] {
            assert_eq!(validate_topic(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_topic(""), Err(TopicError::Length));
        assert_eq!(validate_topic(&"a".repeat(257)), Err(TopicError::Length));
        assert_eq!(validate_topic("a b"), Err(TopicError::Character));
        assert_eq!(validate_topic("a%2Fb"), Err(TopicError::Character));
        assert_eq!(validate_topic("é"), Err(TopicError::Character));
        assert_eq!(validate_topic("a/*"), Err(TopicError::Pattern));
        assert_eq!(validate_topic("*"), Err(TopicError::Pattern));
    }

    #[test]
    fn pattern_coverage_follows_the_spec() {
        let p = |s| Selector::parse(s).unwrap();
        assert!(p("tenant/*").covers(&p("tenant/acme")));
        assert!(p("tenant/*").covers(&p("tenant/acme/*")));
        assert!(!p("tenant/acme/*").covers(&p("tenant/acme")));
        assert!(!p("tenant/acme/*").covers(&p("tenant/*")));
        assert!(!p("tenant/acme").covers(&p("tenant/acme/*")));
        assert!(p("*").covers(&p("x")));
        assert!(!p("tenant/*").matches("tenant"));
        assert!(!p("tenant/*").matches("tenantx/a"));
        assert_eq!(p("tenant/*").to_string(), "tenant/*");
        assert_eq!(p("*").to_string(), "*");
    }

    #[test]
    fn covering_prefixes_list_every_ancestor() {
        let v: Vec<_> = covering_prefixes("a/b/c").collect();
        assert_eq!(v, ["", "a/", "a/b/"]);
        let v: Vec<_> = covering_prefixes("a/").collect();
        assert_eq!(v, [""]);
    }
}

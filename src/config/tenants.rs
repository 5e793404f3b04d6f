//! The `tenants` section: where a topic's tenant is written in its name.
//!
//! `tenants.topic: "tenant/{tenant}/*"` says that `tenant/acme/questions` belongs to the
//! tenant `acme`, and that `news/today` belongs to none. The pattern is checked at load and
//! is the one place that turns a topic (or a subscription pattern) into its tenant.

use super::walk::Bad;
use std::fmt;

/// The `tenants` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tenants {
    /// Where a topic's tenant is; `None` (the default) means there are no tenants.
    pub topic: Option<TenantTopic>,
}

/// A validated `tenants.topic` pattern: literal text around one `{tenant}` placeholder,
/// optionally ending in `/*` (one or more further segments).
///
/// The tenant is the text the placeholder stands for, within one segment (never a `/`).
///
/// ```
/// use ssegate::config::TenantTopic;
/// let p = TenantTopic::parse("tenant/{tenant}/*").unwrap();
/// assert_eq!(p.tenant_of("tenant/acme/questions"), Some("acme"));
/// assert_eq!(p.tenant_of("tenant/acme"), None);
/// assert_eq!(p.tenant_of("news/today"), None);
/// assert_eq!(p.tenant_of_prefix("tenant/acme/"), Some("acme"));
/// assert_eq!(p.tenant_of_prefix("tenant/"), None, "tenant/* spans every tenant");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantTopic {
    text: String,
    /// Literal text before the placeholder.
    before: String,
    /// Literal text after the placeholder up to the end of its segment.
    in_segment: String,
    /// Literal text from the `/` ending the placeholder's segment (empty if none); without
    /// the final `*` when `open`.
    rest: String,
    /// Ends in `/*`: topics go on after `rest`.
    open: bool,
}

const PLACEHOLDER: &str = "{tenant}";
const HINT: &str = "write one {tenant} placeholder among topic characters (A-Z a-z 0-9 / _ - . : @), like tenant/{tenant}/*";

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/_-.:@".contains(c)
}

impl TenantTopic {
    /// Parses and checks a pattern.
    ///
    /// # Errors
    /// A sentence saying what is wrong, when there is not exactly one `{tenant}`, another
    /// character is not a topic character, or a `*` is anywhere but a final `/*`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let Some((before, after)) = t.split_once(PLACEHOLDER) else {
            return Err(format!("{t:?} has no {PLACEHOLDER} placeholder"));
        };
        if after.contains(PLACEHOLDER) {
            return Err(format!("{t:?} has more than one {PLACEHOLDER} placeholder"));
        }
        let (after, open) = match after.strip_suffix("/*") {
            Some(a) => (format!("{a}/"), true),
            None => (after.to_owned(), false),
        };
        if let Some(c) = before
            .chars()
            .chain(after.chars())
            .find(|c| !is_topic_char(*c))
        {
            let why = match c {
                '*' => "a * may only end the pattern, as /*".to_owned(),
                '{' | '}' => format!("the only placeholder is {PLACEHOLDER}"),
                c => format!("{c:?} is not a topic character"),
            };
            return Err(format!("{t:?} is not a tenant pattern: {why}"));
        }
        if format!("{before}x{after}").contains("//") {
            return Err(format!(
                "{t:?} is not a tenant pattern: it has an empty segment"
            ));
        }
        let split = after.find('/').unwrap_or(after.len());
        Ok(Self {
            text: t.to_owned(),
            before: before.to_owned(),
            in_segment: after[..split].to_owned(),
            rest: after[split..].to_owned(),
            open,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Splits `s` after the literal prefix into (tenant, the rest from the segment's end).
    fn split<'t>(&self, s: &'t str) -> Option<(&'t str, &'t str)> {
        let after = s.strip_prefix(self.before.as_str())?;
        let end = after.find('/').unwrap_or(after.len());
        let tenant = after[..end].strip_suffix(self.in_segment.as_str())?;
        (!tenant.is_empty()).then_some((tenant, &after[end..]))
    }

    /// The tenant of an exact topic, if it fits the pattern.
    pub fn tenant_of<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let (tenant, rest) = self.split(topic)?;
        let fits = if self.open {
            rest.strip_prefix(self.rest.as_str())
                .is_some_and(|more| !more.is_empty())
        } else {
            rest == self.rest
        };
        fits.then_some(tenant)
    }

    /// The tenant of every tenant topic under `prefix` (a subscription to `prefix*`, the
    /// prefix ending in `/`), when they all share one: the placeholder's segment must be
    /// complete within the prefix. `tenant/*` spans every tenant and so has none.
    pub fn tenant_of_prefix<'t>(&self, prefix: &'t str) -> Option<&'t str> {
        let (tenant, rest) = self.split(prefix)?;
        // `rest` runs from the segment's `/` to the prefix's final `/`: some topic under it
        // must still be able to fit the pattern.
        let possible = if rest.is_empty() {
            false
        } else if self.open {
            rest.starts_with(self.rest.as_str()) || self.rest.starts_with(rest)
        } else {
            self.rest.starts_with(rest) && self.rest.len() > rest.len()
        };
        possible.then_some(tenant)
    }
}

impl fmt::Display for TenantTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The value parser for `tenants.topic` (null or empty: no tenants).
pub(super) fn tenant_topic(s: &str) -> Result<Option<TenantTopic>, Bad> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    TenantTopic::parse(s)
        .map(Some)
        .map_err(|e| Bad::new(e).hint(HINT))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_topic_belongs_to_the_tenant_its_name_says() {
        let p = TenantTopic::parse("tenant/{tenant}/*").unwrap();
        assert_eq!(p.tenant_of("tenant/acme/q/1"), Some("acme"));
        assert_eq!(p.tenant_of("tenant/acme/"), None);
        assert_eq!(p.tenant_of("tenant//q"), None);
        assert_eq!(p.tenant_of("tenants/acme/q"), None);
        let exact = TenantTopic::parse("org-{tenant}.app/feed").unwrap();
        assert_eq!(exact.tenant_of("org-acme.app/feed"), Some("acme"));
        assert_eq!(exact.tenant_of("org-acme.app/feed/x"), None);
        assert_eq!(exact.tenant_of("org-.app/feed"), None);
        let bare = TenantTopic::parse("{tenant}").unwrap();
        assert_eq!(bare.tenant_of("acme"), Some("acme"));
        assert_eq!(bare.tenant_of("acme/x"), None);
    }

    #[test]
    fn a_pattern_has_a_tenant_only_when_it_cannot_span_two() {
        let p = TenantTopic::parse("tenant/{tenant}/*").unwrap();
        assert_eq!(p.tenant_of_prefix("tenant/acme/"), Some("acme"));
        assert_eq!(p.tenant_of_prefix("tenant/acme/q/"), Some("acme"));
        assert_eq!(p.tenant_of_prefix("tenant/"), None);
        assert_eq!(p.tenant_of_prefix(""), None);
        let exact = TenantTopic::parse("tenant/{tenant}").unwrap();
        assert_eq!(exact.tenant_of_prefix("tenant/acme/"), None);
        let deep = TenantTopic::parse("t/{tenant}/q/*").unwrap();
        assert_eq!(deep.tenant_of_prefix("t/acme/"), Some("acme"));
        assert_eq!(deep.tenant_of_prefix("t/acme/z/"), None);
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("tenant/*", "no {tenant}"),
            ("{tenant}/{tenant}", "more than one"),
            ("t/{tenant}/*/x", "may only end"),
            ("t/{org}/{tenant}", "only placeholder"),
            ("t/{tenant} x", "not a topic character"),
            ("t/{tenant}//x", "empty segment"),
        ] {
            let e = TenantTopic::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}

//! The machinery of stage two: reading typed values out of the YAML tree with a key path,
//! collecting every error instead of stopping at the first.
//!
//! `${VAR}` expansion happens here, on each scalar as it is read, so an environment variable
//! can only ever supply a value's text, never YAML structure.

use super::ConfigError;
use super::yaml::{Node, Value};

/// Why one value was refused: the message (which quotes the value) and an optional hint.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bad {
    pub message: String,
    pub hint: Option<String>,
}

impl Bad {
    pub(super) fn new(message: impl Into<String>) -> Bad {
        Bad {
            message: message.into(),
            hint: None,
        }
    }

    /// `"<text>" is not <what>`, the usual shape.
    pub(super) fn not_a(text: &str, what: &str) -> Bad {
        Bad::new(format!("{text:?} is not {what}"))
    }

    pub(super) fn hint(mut self, hint: impl Into<String>) -> Bad {
        self.hint = Some(hint.into());
        self
    }
}

/// The outcome of reading one key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Got<T> {
    /// Not written, or written as null: the default applies.
    Absent,
    Value(T),
    /// Written but wrong; the error is already recorded.
    Invalid,
}

impl<T> Got<T> {
    /// The value, or `default` when absent; `None` when invalid (so cross-field checks skip it).
    pub(super) fn known(self, default: T) -> Option<T> {
        match self {
            Got::Value(v) => Some(v),
            Got::Absent => Some(default),
            Got::Invalid => None,
        }
    }

    pub(super) fn or_else(self, default: impl FnOnce() -> T) -> T {
        match self {
            Got::Value(v) => v,
            Got::Absent | Got::Invalid => default(),
        }
    }

    pub(super) fn or(self, default: T) -> T {
        match self {
            Got::Value(v) => v,
            Got::Absent | Got::Invalid => default,
        }
    }
}

/// The entries of one mapping that the schema knows about, with their path.
pub(crate) struct Fields<'n> {
    path: String,
    entries: Vec<(&'n str, &'n Node)>,
}

impl<'n> Fields<'n> {
    /// The value written for `key`, unless absent or null.
    pub(super) fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .filter(|v| v.value != Value::Null)
    }

    /// The node written for `key`, even null: where to point at for a cross-field error.
    pub(super) fn node(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    /// The dotted path of `key` in this mapping.
    pub(super) fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

/// Reads values and collects errors.
pub(crate) struct Walker<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
    pub errors: Vec<ConfigError>,
}

impl<'e> Walker<'e> {
    pub(super) fn new(env: &'e dyn Fn(&str) -> Option<String>) -> Self {
        Walker {
            env,
            errors: Vec::new(),
        }
    }

    /// A non-empty environment variable: the default of a secret the file leaves out.
    pub(super) fn env_default(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.is_empty())
    }

    /// Records an error at `node` (or with no location).
    pub(super) fn report(&mut self, path: String, node: Option<&Node>, bad: Bad) {
        self.errors.push(ConfigError {
            path,
            message: bad.message,
            line: node.map(|n| n.line),
            column: node.map(|n| n.col),
            hint: bad.hint,
        });
    }

    /// Opens a mapping: reports unknown, duplicate and non-text keys, and a non-mapping value.
    pub(super) fn fields<'n>(
        &mut self,
        node: Option<&'n Node>,
        path: &str,
        allowed: &[&str],
    ) -> Fields<'n> {
        let mut fields = Fields {
            path: path.to_owned(),
            entries: Vec::new(),
        };
        let entries = match node.map(|n| (n, &n.value)) {
            None | Some((_, Value::Null)) => return fields,
            Some((_, Value::Map(entries))) => entries,
            Some((n, _)) => {
                let bad = Bad::new(format!("expected a mapping of keys, found {}", n.kind()))
                    .hint(format!("keys here: {}", allowed.join(", ")));
                self.report(path.to_owned(), Some(n), bad);
                return fields;
            }
        };
        for (key, value) in entries {
            let Value::Scalar(name) = &key.value else {
                let bad = Bad::new(format!("a key must be a name, found {}", key.kind()));
                self.report(path.to_owned(), Some(key), bad);
                continue;
            };
            let key_path = fields.path_of(name);
            if !allowed.contains(&name.as_str()) {
                let bad = Bad::new("unknown key")
                    .hint(format!("expected one of: {}", allowed.join(", ")));
                self.report(key_path, Some(key), bad);
            } else if fields.entries.iter().any(|(k, _)| *k == name) {
                let first = first_key_line(entries, name).unwrap_or(key.line);
                let bad = Bad::new("duplicate key")
                    .hint(format!("first set on line {first}; remove one of them"));
                self.report(key_path, Some(key), bad);
            } else {
                fields.entries.push((name.as_str(), value));
            }
        }
        fields
    }

    /// Opens the mapping under `key` of `parent`.
    pub(super) fn section<'n>(
        &mut self,
        parent: &Fields<'n>,
        key: &str,
        allowed: &[&str],
    ) -> Fields<'n> {
        self.fields(parent.node(key), &parent.path_of(key), allowed)
    }

    /// The interpolated text of a scalar; reports lists and mappings. `None` after an error.
    fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Scalar(raw) => match interpolate(raw, self.env) {
                Ok(text) => Some(text),
                Err(bad) => {
                    self.report(path.to_owned(), Some(node), bad);
                    None
                }
            },
            Value::Null => Some(String::new()),
            Value::Map(_) | Value::Seq(_) => {
                let bad = Bad::new(format!("expected a single value, found {}", node.kind()));
                self.report(path.to_owned(), Some(node), bad);
                None
            }
        }
    }

    /// Reads one scalar with `parse`.
    pub(super) fn read<T>(
        &mut self,
        f: &Fields<'_>,
        key: &str,
        parse: impl Fn(&str) -> Result<T, Bad>,
    ) -> Got<T> {
        let Some(node) = f.get(key) else {
            return Got::Absent;
        };
        let path = f.path_of(key);
        let Some(text) = self.text(node, &path) else {
            return Got::Invalid;
        };
        match parse(&text) {
            Ok(v) => Got::Value(v),
            Err(bad) => {
                self.report(path, Some(node), bad);
                Got::Invalid
            }
        }
    }

    /// Reads one scalar with `parse`; the default when absent or invalid.
    pub(super) fn get<T>(
        &mut self,
        f: &Fields<'_>,
        key: &str,
        default: T,
        parse: impl Fn(&str) -> Result<T, Bad>,
    ) -> T {
        self.read(f, key, parse).or(default)
    }

    /// Reads a list: a YAML sequence, or one string of comma-separated items (which is what
    /// `${VAR}` can supply). Every bad item is reported.
    pub(super) fn list<T>(
        &mut self,
        f: &Fields<'_>,
        key: &str,
        parse: impl Fn(&str) -> Result<T, Bad>,
    ) -> Got<Vec<T>> {
        let Some(node) = f.get(key) else {
            return Got::Absent;
        };
        let path = f.path_of(key);
        let before = self.errors.len();
        let mut out = Vec::new();
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    let text = match item.value {
                        Value::Null => {
                            self.report(item_path, Some(item), Bad::new("empty list item"));
                            continue;
                        }
                        _ => self.text(item, &item_path),
                    };
                    match text.map(|t| parse(&t)) {
                        Some(Ok(v)) => out.push(v),
                        Some(Err(bad)) => self.report(item_path, Some(item), bad),
                        None => {}
                    }
                }
            }
            _ => {
                let Some(text) = self.text(node, &path) else {
                    return Got::Invalid;
                };
                let items = text.split(',').map(str::trim).filter(|s| !s.is_empty());
                for (i, item) in items.enumerate() {
                    match parse(item) {
                        Ok(v) => out.push(v),
                        Err(bad) => self.report(format!("{path}[{i}]"), Some(node), bad),
                    }
                }
            }
        }
        if self.errors.len() == before {
            Got::Value(out)
        } else {
            Got::Invalid
        }
    }

    /// The items of the sequence under `key`, each with its path (`key[i]`); reports a value
    /// that is not a sequence.
    pub(super) fn items<'n>(&mut self, f: &Fields<'n>, key: &str) -> Vec<(String, &'n Node)> {
        let Some(node) = f.get(key) else {
            return Vec::new();
        };
        let path = f.path_of(key);
        match &node.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| (format!("{path}[{i}]"), item))
                .collect(),
            _ => {
                let bad = Bad::new(format!("expected a list, found {}", node.kind()));
                self.report(path, Some(node), bad);
                Vec::new()
            }
        }
    }

    /// Records a cross-field error at the value of `key` (or the mapping's path when absent).
    pub(super) fn refuse(&mut self, f: &Fields<'_>, key: &str, bad: Bad) {
        self.report(f.path_of(key), f.node(key), bad);
    }
}

fn first_key_line(entries: &[(Node, Node)], name: &str) -> Option<usize> {
    entries
        .iter()
        .find(|(k, _)| matches!(&k.value, Value::Scalar(s) if s == name))
        .map(|(k, _)| k.line)
}

/// Expands `${VAR}` and `${VAR:-default}` (default when unset or empty); `$${` is a literal `${`.
pub(crate) fn interpolate(raw: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Bad> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(
                    Bad::new(format!("{raw:?} has `${{` without a closing `}}`"))
                        .hint("write $${ for a literal ${"),
                );
            };
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if !is_var_name(name) {
                return Err(
                    Bad::new(format!("{:?} is not an environment variable name", name))
                        .hint("use ${NAME} or ${NAME:-default}; write $${ for a literal ${"),
                );
            }
            match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(Bad::new(format!("environment variable {name} is not set"))
                        .hint(format!("set it, or give a default: ${{{name}:-default}}")));
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

//! Configuration: the YAML file → a validated [`Config`].
//!
//! This module owns reading and checking `ssegate.yaml` and depends on nothing else of ours.
//! It works in two stages, like ripgrep: `yaml.rs` turns the text into a small tree that keeps
//! the line and column of every key and value; the walker then reads typed values out of it
//! (expanding `${VAR}` in each scalar), collecting *every* problem rather than stopping at
//! the first, each with its key path and position:
//!
//! ```text
//! limits.connect_rate_per_ip: "10/fortnight" is not a rate (line 12, column 24); rates look like 10/min, 100/s, 5/h or 2/500ms
//! limits.max_conection: unknown key (line 3, column 3); expected one of: max_connections, …
//! ```
//!
//! ```
//! let env = |name: &str| (name == "TOKEN").then(|| "s3cret".to_owned());
//! let config = ssegate::config::parse(
//!     "upstream: http://127.0.0.1:3000\npublish:\n  token: ${TOKEN}\n",
//!     &env,
//! )
//! .unwrap();
//! assert_eq!(config.publish.token.as_deref(), Some("s3cret"));
//! assert_eq!(config.events.path, "/events"); // everything else is a default
//! ```
//!
//! Scalars are never typed by YAML: every leaf is parsed from its text, so
//! `max_connections: ${MAX:-100}` works like `max_connections: 100`. Environment values are
//! substituted after parsing and so can never add YAML structure.

use std::fmt;
use std::path::Path;

mod app_events;
mod schema;
mod tenants;
mod types;
mod values;
mod walk;
mod yaml;

#[cfg(test)]
mod tests;

pub use tenants::{TenantTopic, Tenants};
pub use types::*;

/// Reads and validates the file at `path`, expanding `${VAR}` from the process environment.
///
/// # Errors
/// Every problem in the file, or a single error (with an empty path) when it cannot be read.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            "",
            format!("{}: {e}", path.display()),
        )])
    })?;
    parse(&text, &|name| std::env::var(name).ok())
}

/// Validates configuration text; `env` supplies the values of `${VAR}`.
///
/// # Errors
/// Every problem found, in file order; a YAML syntax error is reported alone.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let root = yaml::parse(text).map_err(|e| ConfigErrors(vec![e]))?;
    let mut walker = walk::Walker::new(env);
    let config = schema::config(&mut walker, root.as_ref());
    let mut errors = walker.errors;
    if errors.is_empty() {
        return Ok(config);
    }
    // Stable: errors without a position (a missing key) come first, in schema order.
    errors.sort_by_key(|e| (e.line.unwrap_or(0), e.column.unwrap_or(0)));
    Err(ConfigErrors(errors))
}

/// One problem in the configuration.
///
/// Displays as `path: message (line L, column C); hint`, the position being that of the
/// offending value (of the key, for an unknown key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path like `limits.connect_rate_per_ip` or `trusted_proxies[1]`; empty when
    /// the problem is the file itself.
    pub path: String,
    /// What is wrong, e.g. `"10/fortnight" is not a rate`.
    pub message: String,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// 1-based column (in characters), when the problem has a place in the file.
    pub column: Option<usize>,
    /// What would be accepted, e.g. `expected one of: disconnect, drop_oldest`.
    pub hint: Option<String>,
}

impl ConfigError {
    /// An error with no position and no hint.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
            line: None,
            column: None,
            hint: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, " (line {line}, column {column})")?,
            (Some(line), None) => write!(f, " (line {line})")?,
            _ => {}
        }
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one file; never empty when returned by [`load`] or [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

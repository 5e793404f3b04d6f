//! Stage one: YAML text → a small tree that remembers where every node was written.
//!
//! Built from `saphyr-parser` events, so each key and value keeps its line and column for
//! error messages. Nothing is interpreted here: scalars stay text (no numbers, no booleans,
//! no `${VAR}` expansion), apart from recognising YAML's spellings of null.

use saphyr_parser::{Event, Marker, Parser, ScalarStyle};

use super::ConfigError;

/// A YAML node and the place (1-based line and column) where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    pub line: usize,
    pub col: usize,
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// Any scalar, as written (after YAML unquoting).
    Scalar(String),
    /// Entries in file order; keys may repeat (the walker reports duplicates).
    Map(Vec<(Node, Node)>),
    Seq(Vec<Node>),
    /// An empty value, `~` or `null` (unquoted).
    Null,
}

impl Node {
    /// How this node is described in "expected X, found Y" messages.
    pub(super) fn kind(&self) -> &'static str {
        match self.value {
            Value::Scalar(_) => "a single value",
            Value::Map(_) => "a mapping",
            Value::Seq(_) => "a list",
            Value::Null => "nothing",
        }
    }
}

/// A collection being filled while its events arrive.
enum Open {
    Map {
        start: Marker,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
    Seq {
        start: Marker,
        items: Vec<Node>,
    },
}

/// Parses one YAML document. `Ok(None)` for an empty file (or only comments).
pub(crate) fn parse(text: &str) -> Result<Option<Node>, ConfigError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;

    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| {
            // `{ token: ${TOKEN} }` is the classic trap: braces end a plain scalar in flow style.
            let hint = (e.info().contains("flow") && text.contains("${"))
                .then_some("inside { } or [ ], put ${VAR} in quotes: \"${VAR}\"");
            at(e.marker(), format!("invalid YAML: {}", e.info()), hint)
        })?;
        let done = match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(at(
                        &span.start,
                        "a second YAML document is not allowed".to_owned(),
                        Some("the file holds one mapping; remove the extra `---`"),
                    ));
                }
                None
            }
            Event::Alias(_) => {
                return Err(at(
                    &span.start,
                    "YAML aliases (`*name`) are not supported".to_owned(),
                    Some("write the value out in full"),
                ));
            }
            Event::Scalar(text, style, _, _) => {
                let null = style == ScalarStyle::Plain
                    && matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL");
                let value = if null {
                    Value::Null
                } else {
                    Value::Scalar(text.into_owned())
                };
                Some(node(value, &span.start))
            }
            Event::MappingStart(..) => {
                stack.push(Open::Map {
                    start: span.start,
                    entries: Vec::new(),
                    key: None,
                });
                None
            }
            Event::SequenceStart(..) => {
                stack.push(Open::Seq {
                    start: span.start,
                    items: Vec::new(),
                });
                None
            }
            Event::MappingEnd | Event::SequenceEnd => match stack.pop() {
                Some(Open::Map { start, entries, .. }) => Some(node(Value::Map(entries), &start)),
                Some(Open::Seq { start, items }) => Some(node(Value::Seq(items), &start)),
                None => None,
            },
        };
        if let Some(finished) = done {
            match stack.last_mut() {
                Some(Open::Map { entries, key, .. }) => match key.take() {
                    Some(k) => entries.push((k, finished)),
                    None => *key = Some(finished),
                },
                Some(Open::Seq { items, .. }) => items.push(finished),
                None => root = Some(finished),
            }
        }
    }
    Ok(root)
}

fn node(value: Value, mark: &Marker) -> Node {
    Node {
        value,
        line: mark.line(),
        col: mark.col() + 1,
    }
}

fn at(mark: &Marker, message: String, hint: Option<&str>) -> ConfigError {
    ConfigError {
        path: String::new(),
        message,
        line: Some(mark.line()),
        column: Some(mark.col() + 1),
        hint: hint.map(str::to_owned),
    }
}

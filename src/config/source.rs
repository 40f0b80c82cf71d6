//! Where a value stands in the file: the text being parsed, line numbers,
//! the key at an offset, and errors worded `file: line N: key: problem`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use serde_spanned::Spanned;

use super::model::*;

/// Line (1-based) of a byte offset in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The file's keys with where they are, to name the key of an error found
/// by serde (whose messages rarely do).
pub(super) enum Node {
    Leaf,
    Table(Vec<(Spanned<String>, Spanned<Node>)>),
    Array(Vec<Spanned<Node>>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any TOML value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Node::Table(entries))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// The dotted key (`subscription[0].retry.max`) most closely around byte
/// `offset` of `text`; `None` when the text does not parse.
pub(super) fn key_at(text: &str, offset: usize) -> Option<String> {
    // (path, width of the span holding `offset`); the narrowest wins. Every
    // table is searched: a `[a.b]` table may sit outside the span of `[a]`.
    pub(super) fn search(node: &Node, path: &str, offset: usize, best: &mut Option<(String, usize)>) {
        fn consider(best: &mut Option<(String, usize)>, offset: usize, path: String, span: std::ops::Range<usize>) {
            let holds = span.contains(&offset) || (span.is_empty() && span.start == offset);
            if holds && best.as_ref().is_none_or(|(_, w)| span.len() <= *w) {
                *best = Some((path, span.len()));
            }
        }
        match node {
            Node::Leaf => {}
            Node::Table(entries) => {
                for (key, value) in entries {
                    let here = if path.is_empty() {
                        key.get_ref().clone()
                    } else {
                        format!("{path}.{}", key.get_ref())
                    };
                    consider(best, offset, here.clone(), key.span());
                    consider(best, offset, here.clone(), value.span());
                    search(value.get_ref(), &here, offset, best);
                }
            }
            Node::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let here = format!("{path}[{i}]");
                    consider(best, offset, here.clone(), item.span());
                    search(item.get_ref(), &here, offset, best);
                }
            }
        }
    }
    let root: Node = toml::from_str(text).ok()?;
    let mut best = None;
    search(&root, "", offset, &mut best);
    best.map(|(path, _)| path)
}

/// The key written on the line at `offset`, read from the text alone (a
/// file that does not parse as TOML, say a number too large for it):
/// `section.key`, with `subscription[N]` for the N-th `[[subscription]]`.
pub(super) fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    let bare = |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !bare(key) {
        return None;
    }
    let mut section = String::new();
    let mut subscriptions = 0;
    for header in text[..start].lines().map(str::trim).filter(|l| l.starts_with('[')) {
        if header.starts_with("[[subscription]]") {
            section = format!("subscription[{subscriptions}]");
            subscriptions += 1;
        } else {
            section = header.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    Some(if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    })
}

/// The text being parsed: for messages (file, line) and relative paths.
pub(super) struct Source<'a> {
    pub(super) text: &'a str,
    pub(super) path: Option<&'a Path>,
    /// The file as messages name it.
    pub(super) shown: String,
    /// Relative paths are taken from here.
    pub(super) base_dir: PathBuf,
}

impl<'a> Source<'a> {
    pub(super) fn new(text: &'a str, path: Option<&'a Path>) -> Self {
        Source {
            text,
            path,
            shown: path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "<built-in defaults>".to_string()),
            base_dir: path
                .and_then(|p| p.parent())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
        }
    }

    /// An error at `span`, naming the file, its line and `key`.
    pub(super) fn at(&self, span: std::ops::Range<usize>, key: &str, msg: String) -> ConfigError {
        ConfigError(format!(
            "{}: line {}: {key}: {msg}",
            self.shown,
            line_of(self.text, span.start)
        ))
    }

    /// Like [`Source::at`]; without a span (a default caused it) only the key.
    pub(super) fn at_or_key(&self, span: Option<std::ops::Range<usize>>, key: &str, msg: String) -> ConfigError {
        match span {
            Some(span) => self.at(span, key, msg),
            None => ConfigError(format!("{}: {key}: {msg}", self.shown)),
        }
    }

    /// An error the TOML parser or serde found: its message has the line but
    /// rarely the key, so the key is looked up by the error's position.
    pub(super) fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim();
        let Some(span) = e.span() else {
            return ConfigError(format!("{}: {message}", self.shown));
        };
        match key_at(self.text, span.start).or_else(|| key_on_line(self.text, span.start)) {
            Some(key) => self.at(span, &key, message.to_string()),
            None => ConfigError(format!(
                "{}: line {}: {message}",
                self.shown,
                line_of(self.text, span.start)
            )),
        }
    }

    /// A path from the file, relative ones against the file's directory.
    pub(super) fn resolve(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() || self.path.is_none() {
            p
        } else {
            self.base_dir.join(p)
        }
    }
}

/// A table of the file: its name in messages and where it starts, for
/// errors about a key it lacks.
pub(super) struct Table {
    pub(super) name: String,
    pub(super) span: std::ops::Range<usize>,
}

impl Table {
    /// The full name of one of its keys.
    pub(super) fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.name)
    }
}

/// Where a value is in the file, if it is there.
pub(super) fn span_of<T>(value: &Option<Spanned<T>>) -> Option<std::ops::Range<usize>> {
    value.as_ref().map(Spanned::span)
}

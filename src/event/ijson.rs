//! I-JSON (RFC 7493) and nesting depth: one iterative walk over an event's
//! text that refuses what the contract says a payload must not hold, naming
//! the path (`payload.lines[3].price`) and the problem.
//!
//! The contract: "A payload must be I-JSON: numbers within IEEE 754 double
//! range, no duplicate object keys, no lone surrogates." The event is parsed
//! with `RawValue`s, which only skip over values, so `1e400` or `"\ud800"`
//! were stored and forwarded, and a strict receiver then refused the event
//! forever, holding its entity behind it. The whole event is walked once more
//! with serde_json parsing every value (not only `payload`: `attributes` would
//! merge duplicate keys silently, and a duplicate top-level field is as
//! ambiguous).
//!
//! Decided, beyond the three rules: integers beyond ±(2^53 - 1) and
//! decimals with more digits than a double keeps are accepted (RFC 7493 has
//! only a SHOULD NOT for them; they are within the double range, and ids of
//! that size are common); a number too small for a double (`1e-400`) is
//! within range too (it rounds to 0). Noncharacters (U+FFFF) are accepted:
//! the contract does not list them and every JSON parser decodes them.

use super::{ErrorCode, IngestError};

/// One step of a path into the event: an object member or an array index.
enum Step {
    Key(String),
    Index(usize),
}

/// Longest object key a path shows in full: a message must stay readable
/// whatever the producer sent.
const PATH_KEY_MAX: usize = 64;

fn is_plain_key(key: &str) -> bool {
    let mut chars = key.chars();
    key.len() <= PATH_KEY_MAX
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The path as people read it: `payload.lines[3].price`, `payload["a b"]`;
/// the event itself is `event`.
fn path_text(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if is_plain_key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Key(k) => {
                let shown: String = k.chars().take(PATH_KEY_MAX).collect();
                let more = if shown.len() < k.len() { "…" } else { "" };
                let quoted = serde_json::to_string(&shown).unwrap_or_default();
                out.push_str(&format!("[{quoted}{more}]"));
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        out.push_str("event");
    }
    out
}

/// How deep arrays and objects may nest in a payload (the contract's limit;
/// serde_json's own parser stops at 128 levels, and the payload sits one
/// level inside the event).
pub const MAX_PAYLOAD_DEPTH: usize = 128;

/// What the walk found wrong, beyond syntax.
enum Violation {
    /// Not I-JSON: the problem's name.
    IJson(&'static str),
    /// More than [`MAX_PAYLOAD_DEPTH`] levels.
    TooDeep,
}

/// One open array or object of the walk.
struct Frame<'t> {
    /// Keys seen so far (objects only), decoded.
    keys: Option<std::collections::HashSet<std::borrow::Cow<'t, str>>>,
    /// Elements seen so far (arrays only).
    index: usize,
}

/// Whether `token` is a number as JSON writes one:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(token: &[u8]) -> bool {
    let digits = |t: &[u8]| t.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut rest = token.strip_prefix(b"-").unwrap_or(token);
    match rest.first() {
        Some(b'0') => rest = &rest[1..],
        Some(b'1'..=b'9') => rest = &rest[digits(rest)..],
        _ => return false,
    }
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = digits(fraction);
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    if let Some(exponent) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let exponent = exponent
            .strip_prefix(b"+")
            .or_else(|| exponent.strip_prefix(b"-"))
            .unwrap_or(exponent);
        let n = digits(exponent);
        if n == 0 {
            return false;
        }
        rest = &exponent[n..];
    }
    rest.is_empty()
}

/// A JSON text walked byte by byte with an explicit stack, so any depth is
/// checked without recursion (serde_json's visitor gives up at 128 levels
/// and a payload nested deeper went through unchecked). `None` from a step
/// is a syntax error: not the walk's business, the caller reports those.
struct Walker<'t> {
    text: &'t [u8],
    at: usize,
    path: Vec<Step>,
    stack: Vec<Frame<'t>>,
}

impl<'t> Walker<'t> {
    fn skip_space(&mut self) {
        while self.text.get(self.at).is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    /// The string token at `at` (quotes included); `at` moves past it.
    fn string_token(&mut self) -> Option<&'t [u8]> {
        let start = self.at;
        self.at += 1;
        loop {
            match *self.text.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(&self.text[start..self.at]);
                }
                b'\\' => self.at += 2,
                _ => self.at += 1,
            }
        }
    }

    /// Decodes a string token; `Err(true)` for a lone surrogate, `Err(false)`
    /// for broken syntax. Without a `\u` escape no surrogate can be in it.
    fn decode(token: &'t [u8]) -> Result<std::borrow::Cow<'t, str>, bool> {
        if !token.contains(&b'\\') {
            let inner = &token[1..token.len() - 1];
            return std::str::from_utf8(inner)
                .map(std::borrow::Cow::Borrowed)
                .map_err(|_| false);
        }
        serde_json::from_slice::<String>(token)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| {
                // serde_json's wording for a lone surrogate: "lone leading
                // surrogate in hex escape" (also said of a lone trailing one) and
                // "unexpected end of hex escape" (a leading one followed by
                // anything but `\u`), the only places it says either
                // (serde_json 1.0.154, read.rs).
                let message = e.to_string();
                message.contains("surrogate") || message.starts_with("unexpected end of hex escape")
            })
    }

    /// Walks one whole value (and everything in it); `Ok(None)` when the
    /// text is not valid JSON, `Ok(Some(()))` when it is I-JSON.
    fn walk(&mut self) -> Result<Option<()>, Violation> {
        // The event object is level 1, so its payload may reach one more.
        let max_depth = MAX_PAYLOAD_DEPTH + 1;
        loop {
            // A value starts here.
            self.skip_space();
            let Some(&b) = self.text.get(self.at) else {
                return Ok(None);
            };
            match b {
                b'{' | b'[' => {
                    if self.stack.len() == max_depth {
                        return Err(Violation::TooDeep);
                    }
                    self.at += 1;
                    let keys = (b == b'{').then(Default::default);
                    self.stack.push(Frame { keys, index: 0 });
                    self.skip_space();
                    let close = if b == b'{' { b'}' } else { b']' };
                    if self.text.get(self.at) == Some(&close) {
                        self.at += 1;
                        self.stack.pop();
                    } else if !self.open_member()? {
                        return Ok(None);
                    } else {
                        continue;
                    }
                }
                b'"' => {
                    let Some(token) = self.string_token() else {
                        return Ok(None);
                    };
                    match Self::decode(token) {
                        Ok(_) => {}
                        Err(true) => return Err(Violation::IJson("lone surrogate")),
                        Err(false) => return Ok(None),
                    }
                }
                _ => {
                    let start = self.at;
                    while self
                        .text
                        .get(self.at)
                        .is_some_and(|c| !matches!(c, b',' | b']' | b'}' | b':') && !c.is_ascii_whitespace())
                    {
                        self.at += 1;
                    }
                    let token = &self.text[start..self.at];
                    if !matches!(token, b"true" | b"false" | b"null") {
                        // Rust's parser also takes `NaN`, `inf`, `.5`: JSON's
                        // grammar first, so those stay syntax errors.
                        if !is_json_number(token) {
                            return Ok(None);
                        }
                        let number = std::str::from_utf8(token).ok().and_then(|t| t.parse::<f64>().ok());
                        match number {
                            None => return Ok(None),
                            Some(n) if !n.is_finite() => return Err(Violation::IJson("number out of range")),
                            Some(_) => {}
                        }
                    }
                }
            }
            // A value ended: close what it ends, or go to the next member.
            loop {
                if self.stack.is_empty() {
                    return Ok(Some(()));
                }
                self.path.pop();
                self.skip_space();
                let is_object = self.stack.last().is_some_and(|f| f.keys.is_some());
                match self.text.get(self.at) {
                    Some(b',') => {
                        self.at += 1;
                        if let Some(frame) = self.stack.last_mut() {
                            frame.index += 1;
                        }
                        if !self.open_member()? {
                            return Ok(None);
                        }
                        break;
                    }
                    Some(b'}') if is_object => {
                        self.at += 1;
                        self.stack.pop();
                    }
                    Some(b']') if !is_object => {
                        self.at += 1;
                        self.stack.pop();
                    }
                    _ => return Ok(None),
                }
            }
        }
    }

    /// Reads up to the start of the next member of the innermost array or
    /// object (for an object: its key and the colon) and puts it on the path;
    /// `Ok(false)` on broken syntax.
    fn open_member(&mut self) -> Result<bool, Violation> {
        let Some(frame) = self.stack.last_mut() else {
            return Ok(false);
        };
        if frame.keys.is_none() {
            let index = frame.index;
            self.path.push(Step::Index(index));
            return Ok(true);
        }
        self.skip_space();
        if self.text.get(self.at) != Some(&b'"') {
            return Ok(false);
        }
        let Some(token) = self.string_token() else {
            return Ok(false);
        };
        let key = match Self::decode(token) {
            Ok(key) => key,
            Err(true) => return Err(Violation::IJson("key with a lone surrogate")),
            Err(false) => return Ok(false),
        };
        let fresh = self
            .stack
            .last_mut()
            .and_then(|f| f.keys.as_mut())
            .is_some_and(|keys| keys.insert(key.clone()));
        self.path.push(Step::Key(key.into_owned()));
        if !fresh {
            return Err(Violation::IJson("duplicate key"));
        }
        self.skip_space();
        if self.text.get(self.at) != Some(&b':') {
            return Ok(false);
        }
        self.at += 1;
        Ok(true)
    }
}

/// Checks that `text`, already known to be a JSON object, is I-JSON and its
/// payload nested at most [`MAX_PAYLOAD_DEPTH`] levels; the error names the
/// path and the problem. A syntax error the walk meets is not its business
/// (the caller reports those).
pub(super) fn check_ijson(text: &[u8]) -> Result<(), IngestError> {
    let mut walker = Walker {
        text,
        at: 0,
        path: Vec::new(),
        stack: Vec::new(),
    };
    let violation = match walker.walk() {
        Ok(_) => return Ok(()),
        Err(v) => v,
    };
    let field = match walker.path.first() {
        Some(Step::Key(k)) => Some(k.clone()),
        _ => None,
    };
    let message = match violation {
        Violation::IJson(problem) => format!("{}: {problem} (I-JSON, RFC 7493)", path_text(&walker.path)),
        // The path down there is hundreds of `[0]`s: the field says where.
        Violation::TooDeep => format!(
            "{}: nested deeper than {MAX_PAYLOAD_DEPTH} levels of arrays and objects",
            field.as_deref().unwrap_or("event")
        ),
    };
    Err(IngestError {
        code: ErrorCode::InvalidEvent,
        message,
        field,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_judged_by_jsons_grammar_first() {
        for ok in ["0", "-0", "1", "-12", "1.5", "1e5", "1E+5", "1.25e-3", "10"] {
            assert!(is_json_number(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "NaN", "Infinity", "-inf", ".5", "1.", "01", "+1", "1e", "1e+", "-", "", "1.5.5", "0x10",
        ] {
            assert!(!is_json_number(bad.as_bytes()), "{bad}");
        }
    }
}

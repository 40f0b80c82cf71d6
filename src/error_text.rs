//! An error's `source()` chain as the text people read in logs, `status`
//! and `show`: every layer (for diagnosis), or only the innermost cause (the
//! part a person can act on, where the outer layers are a library's wording
//! of "the request failed").

use std::error::Error;

/// The error and each of its causes, `": "`-separated. A cause whose text
/// the text so far already holds is left out: wrappers often repeat it.
pub fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// The innermost cause's text (the error's own when it has none).
pub fn innermost(e: &dyn Error) -> String {
    let mut innermost: &dyn Error = e;
    while let Some(cause) = innermost.source() {
        innermost = cause;
    }
    innermost.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }

    #[test]
    fn the_chain_names_every_layer_once_and_innermost_only_the_last() {
        let refused = Layer("connection refused", None);
        let io = Layer("io error: connection refused", Some(Box::new(refused)));
        let top = Layer("error sending request", Some(Box::new(io)));
        assert_eq!(chain(&top), "error sending request: io error: connection refused");
        assert_eq!(innermost(&top), "connection refused");
        let alone = Layer("timed out", None);
        assert_eq!(chain(&alone), "timed out");
        assert_eq!(innermost(&alone), "timed out");
    }
}

//! The layers of `src/` stay true (ARCHITECTURE.md, "Layers"): this test
//! reads every file of the library, finds the modules it names through
//! `crate::` and `super::` paths (comments, strings and the `#[cfg(test)]`
//! module at a file's end left out), and fails when
//!
//! 1. a module names one in a layer above its own (`outbox` naming
//!    `deliver`, `config` naming `outbox`, ...), or
//! 2. files name each other in a circle (`a.rs` names `b.rs`, which names
//!    `a.rs`, directly or through others).
//!
//! Plain Rust and the standard library only: it parses paths, not Rust, and
//! is strict where it can be (a module it cannot place is a failure).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and its layer, lowest first. A module may name its
/// own parts and modules of lower layers, never one of its own layer or above.
const LAYERS: &[(&str, u32)] = &[
    // The vocabulary: no crate imports but each other's, in this order.
    ("error_text", 0),
    ("shutdown", 0),
    ("signing", 0),
    ("event", 1),
    ("timefmt", 1),
    ("config", 2),
    // The database, and nothing that uses it.
    ("outbox", 3),
    // Parts the features share.
    ("http_server", 4),
    ("http_guard", 4),
    ("notify", 4),
    ("metrics", 4),
    // The features: in, out, and the history sampler.
    ("ingest", 5),
    ("deliver", 5),
    ("history", 5),
    // What reads them back.
    ("status", 6),
    ("receiver", 6),
    ("heartbeat", 7),
    ("fleet", 8),
    ("admin", 8),
    ("reload", 8),
    // Wires them together.
    ("agent", 9),
    // On top.
    ("cli", 10),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/outbox/writer/mod.rs` is
/// `["outbox", "writer"]`, `src/lib.rs` is `[]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("below src/");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The code of a file without comments, string and char literals (each
/// becomes a space) and without its trailing `#[cfg(test)]` module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            }
            b'r' if matches!(b.get(i + 1), Some(b'"') | Some(b'#')) && !ident_before(b, i) => {
                // A raw string: r"..." or r#"..."#.
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= b.len() {
                        break;
                    }
                    if b[j] == b'"' && b[j + 1..].iter().take(hashes).filter(|&&c| c == b'#').count() == hashes {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                i = j;
                out.push(' ');
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push(' ');
            }
            b'\'' => {
                // A char literal ('a', '\n', '\'') or a lifetime ('a).
                let end = if b.get(i + 1) == Some(&b'\\') {
                    b[i + 2..].iter().position(|&c| c == b'\'').map(|p| i + 2 + p)
                } else if b.get(i + 2) == Some(&b'\'') {
                    Some(i + 2)
                } else {
                    None
                };
                match end {
                    Some(e) => {
                        i = e + 1;
                        out.push(' ');
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

fn ident_before(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// The paths a `use` tree or an inline path names, from just after
/// `crate::` or `super::`: `a::b::{c, d::e}` gives `a::b::c` and `a::b::d::e`.
fn paths_after(code: &str, start: usize) -> Vec<Vec<String>> {
    let b = code.as_bytes();
    let mut i = start;
    let mut out = Vec::new();
    tree(b, &mut i, Vec::new(), &mut out);
    out
}

fn skip_space(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

fn ident(b: &[u8], i: &mut usize) -> Option<String> {
    let start = *i;
    while *i < b.len() && (b[*i].is_ascii_alphanumeric() || b[*i] == b'_') {
        *i += 1;
    }
    (*i > start).then(|| String::from_utf8_lossy(&b[start..*i]).into_owned())
}

fn tree(b: &[u8], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        skip_space(b, i);
        if b.get(*i) == Some(&b'{') {
            *i += 1;
            loop {
                skip_space(b, i);
                if b.get(*i) == Some(&b'}') {
                    *i += 1;
                    break;
                }
                tree(b, i, path.clone(), out);
                skip_space(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b'}') => {
                        *i += 1;
                        break;
                    }
                    _ => break,
                }
            }
            return;
        }
        match ident(b, i) {
            Some(name) => path.push(name),
            None => {
                // `*` or the end of the path.
                if b.get(*i) == Some(&b'*') {
                    *i += 1;
                }
                break;
            }
        }
        skip_space(b, i);
        if b.get(*i) == Some(&b':') && b.get(*i + 1) == Some(&b':') {
            *i += 2;
        } else {
            break;
        }
    }
    // `as` renames, `self` names the module itself.
    if path.last().is_some_and(|p| p == "self") {
        path.pop();
    }
    if !path.is_empty() {
        out.push(path);
    }
}

/// The library's files by module path.
struct Tree {
    files: BTreeMap<Vec<String>, PathBuf>,
}

impl Tree {
    fn read() -> Tree {
        let mut all = Vec::new();
        rust_files(&src(), &mut all);
        let files = all
            .into_iter()
            .filter(|f| !f.ends_with("main.rs") || f.parent() != Some(src().as_path()))
            .map(|f| (module_of(&f), f))
            .collect();
        Tree { files }
    }

    /// The file a path names: its longest prefix that is a module.
    fn file_of(&self, path: &[String]) -> Option<&Vec<String>> {
        (1..=path.len())
            .rev()
            .find_map(|n| self.files.get_key_value(&path[..n]).map(|(k, _)| k))
    }

    /// Every module each file names, as module paths of files.
    fn edges(&self) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
        let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (module, file) in &self.files {
            let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let code = code_of(&text);
            let named = edges.entry(module.clone()).or_default();
            for (prefix, base) in [("crate::", Vec::new()), ("super::", parent_of(module))] {
                let mut from = 0;
                while let Some(at) = code[from..].find(prefix) {
                    let start = from + at;
                    from = start + prefix.len();
                    if ident_before(code.as_bytes(), start) {
                        continue;
                    }
                    for path in paths_after(&code, from) {
                        let mut full = base.clone();
                        let mut path = path;
                        // `super::super::x`.
                        while path.first().is_some_and(|p| p == "super") {
                            path.remove(0);
                            full.pop();
                        }
                        full.extend(path);
                        if let Some(target) = self.file_of(&full) {
                            if target != module {
                                named.insert(target.clone());
                            }
                        }
                    }
                }
            }
        }
        edges
    }
}

/// The module `super` means in a file: the parent of its module (a
/// `mod.rs` is its folder's module, so its `super` is the folder's parent).
fn parent_of(module: &[String]) -> Vec<String> {
    let mut parent = module.to_vec();
    parent.pop();
    parent
}

fn layer_of(module: &[String]) -> Option<u32> {
    let top = module.first()?;
    LAYERS.iter().find(|(name, _)| name == top).map(|(_, l)| *l)
}

fn shown(module: &[String]) -> String {
    if module.is_empty() {
        "lib".to_string()
    } else {
        module.join("::")
    }
}

#[test]
fn every_top_level_module_has_a_layer() {
    let tree = Tree::read();
    let unplaced: BTreeSet<String> = tree
        .files
        .keys()
        .filter(|m| !m.is_empty() && layer_of(m).is_none())
        .map(|m| m[0].clone())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules with no layer in tests/layers.rs (add them to LAYERS and to ARCHITECTURE.md): {unplaced:?}"
    );
}

#[test]
fn no_module_names_one_of_its_own_layer_or_above() {
    let tree = Tree::read();
    let mut wrong = Vec::new();
    for (from, targets) in tree.edges() {
        let Some(from_layer) = layer_of(&from) else { continue };
        for to in targets {
            if to.first() == from.first() {
                continue;
            }
            let Some(to_layer) = layer_of(&to) else { continue };
            if to_layer >= from_layer {
                wrong.push(format!(
                    "{} (layer {from_layer}) names {} (layer {to_layer})",
                    shown(&from),
                    shown(&to)
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports up or across the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_files_name_each_other_in_a_circle() {
    let edges = Tree::read().edges();
    // Tarjan's strongly connected components; a component of more than one
    // file is a circle.
    struct State<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        next: usize,
        circles: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let edges = s.edges;
        for w in edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(shown(w));
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.circles.push(component);
            }
        }
    }
    let mut state = State {
        edges: &edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        circles: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    let circles: Vec<String> = state.circles.iter().map(|c| c.join(" <-> ")).collect();
    assert!(
        circles.is_empty(),
        "files that name each other in a circle:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_parser_finds_use_trees_and_skips_comments_and_strings() {
    let code = code_of(
        "use crate::a::{b, c::{d, e}};\n// crate::comment::x\nlet s = \"crate::string\";\nlet r = r#\"crate::raw\"#;\nfn f<'a>(x: &'a str) -> char { 'c' }\nuse super::z as w;\n#[cfg(test)]\nmod tests { use crate::test_only; }\n",
    );
    let mut found = Vec::new();
    for (prefix, label) in [("crate::", "crate"), ("super::", "super")] {
        let mut from = 0;
        while let Some(at) = code[from..].find(prefix) {
            from += at + prefix.len();
            for p in paths_after(&code, from) {
                found.push(format!("{label}::{}", p.join("::")));
            }
        }
    }
    assert_eq!(found, ["crate::a::b", "crate::a::c::d", "crate::a::c::e", "super::z"]);
}

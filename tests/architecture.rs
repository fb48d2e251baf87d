//! The layout docs/architecture.md describes, checked on the source: no
//! module of the library imports one on a floor above it, no import circle,
//! no function over 120 lines, and `main.rs` only parses and dispatches.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floors of docs/architecture.md, top (0) to bottom, by top-level module.
const FLOORS: [(&str, usize); 24] = [
    ("train", 1),
    ("infer", 1),
    ("bench", 1),
    ("bench_pytorch", 1),
    ("summary", 1),
    ("plot", 1),
    ("towers", 2),
    ("replicas", 2),
    ("placement", 2),
    ("limits", 2),
    ("tower", 3),
    ("watch", 4),
    ("device", 4),
    ("link", 4),
    ("reduce", 4),
    ("nodes", 4),
    ("net", 5),
    ("data", 5),
    ("error", 6),
    ("rng", 6),
    ("npy", 6),
    ("output", 6),
    ("progress", 6),
    ("tensorboard", 6),
];

type Module = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments, string contents and test modules.
fn code_of(text: &str) -> String {
    let text = &text[..text.find("#[cfg(test)]").unwrap_or(text.len())];
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                out.push('"');
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        '\n' => out.push('\n'),
                        _ => {}
                    }
                }
                out.push('"');
            }
            _ => out.push(c),
        }
    }
    out
}

/// The library's modules (by path from the crate root) and their files.
fn library() -> BTreeMap<Module, PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Module = rel.iter().map(|p| p.to_string_lossy().into()).collect();
        if parts[0] == "main" || parts[0] == "cli" {
            continue;
        }
        if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
            parts.pop();
        }
        modules.insert(parts, file);
    }
    modules
}

/// The longest prefix of `path` that is a module.
fn resolve(modules: &BTreeMap<Module, PathBuf>, path: &[String]) -> Option<Module> {
    (0..=path.len())
        .rev()
        .map(|k| path[..k].to_vec())
        .find(|m| modules.contains_key(m))
}

/// Which modules each module's code names (`crate::…`, `super::…`, a child's
/// `name::…`), leaving out what a module takes from its own ancestors.
fn imports(modules: &BTreeMap<Module, PathBuf>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut edges = BTreeMap::new();
    for (module, file) in modules {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let is_dir = file.ends_with("mod.rs") || file.ends_with("lib.rs");
        let parent: Module = module[..module.len().saturating_sub(1)].to_vec();
        let mut named = BTreeSet::new();
        let mut words: Vec<String> = code
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| w.contains("::"))
            .map(String::from)
            .collect();
        words.extend(use_paths(&code));
        for word in &words {
            let mut segs: Vec<String> = word
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            let mut base = match segs.first().map(String::as_str) {
                Some("crate") => Vec::new(),
                Some("super") if is_dir => parent.clone(),
                Some("super") => module[..module.len().saturating_sub(1)].to_vec(),
                Some(_) if is_dir => module.clone(),
                _ => continue,
            };
            if matches!(segs[0].as_str(), "crate" | "super") {
                segs.remove(0);
            }
            while segs.first().is_some_and(|s| s == "super") {
                base.pop();
                segs.remove(0);
            }
            base.extend(segs);
            // A submodule using its parent's items (`super::…`) is part of
            // its parent's room, not an arrow of its own.
            if let Some(target) = resolve(modules, &base)
                && !module.starts_with(&target)
            {
                named.insert(target);
            }
        }
        edges.insert(module.clone(), named);
    }
    edges
}

/// Every path a `use` declaration names, its brace groups expanded
/// (`use a::{b, c::{d, e}}` names `a::b`, `a::c::d` and `a::c::e`).
fn use_paths(code: &str) -> Vec<String> {
    fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
        let tree = tree.trim();
        match tree.find('{') {
            None => out.push(format!("{prefix}{tree}")),
            Some(open) => {
                let head = format!("{prefix}{}", &tree[..open]);
                let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
                let (mut depth, mut from) = (0, 0);
                for (i, c) in inner.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            expand(&head, &inner[from..i], out);
                            from = i + 1;
                        }
                        _ => {}
                    }
                }
                expand(&head, &inner[from..], out);
            }
        }
    }
    let mut out = Vec::new();
    for (at, _) in code.match_indices("use ") {
        if at > 0 && code.as_bytes()[at - 1].is_ascii_alphanumeric() {
            continue;
        }
        if let Some(end) = code[at..].find(';') {
            expand("", &code[at + 4..at + end], &mut out);
        }
    }
    out.retain(|p| p.contains("::"));
    out
}

fn floor(module: &Module) -> usize {
    FLOORS
        .iter()
        .find(|(name, _)| module.first().is_some_and(|m| m == name))
        .map_or_else(
            || panic!("{module:?} is on no floor of docs/architecture.md"),
            |f| f.1,
        )
}

fn show(module: &Module) -> String {
    module.join("/")
}

#[test]
fn no_module_imports_one_on_a_floor_above_it() {
    let modules = library();
    let mut up = Vec::new();
    for (from, to) in imports(&modules) {
        for target in to {
            if !from.is_empty() && floor(&target) < floor(&from) {
                up.push(format!("{} -> {}", show(&from), show(&target)));
            }
        }
    }
    assert!(up.is_empty(), "arrows back up: {up:#?}");
}

#[test]
fn no_two_modules_import_each_other_round_any_loop() {
    let modules = library();
    let edges = imports(&modules);
    // A module is on a circle when it can reach itself.
    let mut circles = Vec::new();
    for start in edges.keys() {
        let (mut seen, mut todo) = (BTreeSet::new(), vec![start.clone()]);
        while let Some(m) = todo.pop() {
            for next in &edges[&m] {
                if next == start {
                    circles.push(show(start));
                }
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
    }
    circles.dedup();
    assert!(
        circles.is_empty(),
        "modules on an import circle: {circles:?}"
    );
}

#[test]
fn no_function_in_src_is_over_120_lines_and_main_only_dispatches() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut long = Vec::new();
    for file in &files {
        // rustfmt'd code: a function ends at the first line that closes it
        // at its own indentation.
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let body = line.trim_start();
            let indent = &line[..line.len() - body.len()];
            let is_fn = [
                "fn ",
                "pub fn ",
                "pub(crate) fn ",
                "pub(super) fn ",
                "unsafe fn ",
            ]
            .iter()
            .any(|p| body.starts_with(p));
            if !is_fn || body.ends_with(';') {
                continue;
            }
            let close = format!("{indent}}}");
            let Some(len) = lines[i..].iter().position(|l| *l == close) else {
                continue;
            };
            if len + 1 > 120 {
                let name: String = body[body.find("fn ").unwrap() + 3..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                long.push(format!("{}: fn {name}, {} lines", file.display(), len + 1));
            }
        }
    }
    assert!(long.is_empty(), "functions over 120 lines: {long:#?}");
    let main = std::fs::read_to_string(src.join("main.rs")).unwrap();
    assert!(
        main.lines().count() < 250,
        "main.rs has {} lines",
        main.lines().count()
    );
}

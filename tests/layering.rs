//! The crate's layering (docs/ARCHITECTURE.md, "Layers"), checked on the source: every
//! module of `src/` has a layer, imports go only to lower layers (or within the module's
//! own unit, parent and children), and the module graph has no circle. The data plane
//! (`proxy`) and the control plane (`ops`, `acme`) share a layer, so neither can import
//! the other.
//!
//! What counts as an import: a `use` of a crate path and any `crate::`, `super::` or
//! `self::` path in code (comments and `#[cfg(test)] mod tests` are left out). A module
//! using its own children is containment, not an edge.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Units, longest prefix first wins: (module path, layer). A new module belongs to the
/// unit of its nearest listed ancestor; a new top-level module must be listed here.
const LAYERS: &[(&str, u8)] = &[
    // Leaves: import nothing of the crate.
    ("", 0), // lib.rs: VERSION, hostname
    ("http", 0),
    ("metrics", 0),
    ("input", 0),
    ("notify", 0),
    // Foundations.
    ("pki", 1),
    ("seal", 1), // the cluster key (sealed secrets)
    ("config", 2),
    ("store", 2),
    // Small pure pieces.
    ("alerts", 3),
    ("acme::policy", 3),
    ("acme::challenges", 5), // tokens (also through the cluster) and TLS-ALPN-01 certificates (sni::alpn)
    ("jobs::result", 3),
    ("watch", 3),
    ("cluster", 3), // etcd as the store's source of truth; the store a materialised copy
    // The snapshot's ingredients.
    ("sni", 4),
    ("proxy::handler", 4),
    // The contract between the planes.
    ("snapshot", 5),
    // Data plane and control plane: same layer, so never each other.
    ("proxy", 6),
    ("ops", 6),
    ("acme", 6),
    // Surfaces: the command line's shape (shared with jobs), the admin listener and
    // the job runner, the daemon, the CLI.
    ("cli::args", 7),
    ("cli::action", 8),
    ("testing", 7), // helpers for benches and tests
    ("admin", 9),
    ("jobs", 9),
    ("daemon", 10),
    ("cli", 11),
];

/// The module path of a file under `src/` ("" for lib.rs), or `None` for main.rs.
fn module_of(rel: &Path) -> Option<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    match stem {
        "main" if parts.is_empty() => return None,
        "lib" if parts.is_empty() => {}
        "mod" => {}
        s => parts.push(s.to_owned()),
    }
    Some(parts.join("::"))
}

/// Code without comments and without the trailing `#[cfg(test)] mod tests`.
fn code_of(source: &str) -> String {
    let source = match source.find("#[cfg(test)]\nmod tests") {
        Some(i) => &source[..i],
        None => source,
    };
    source.lines().map(|l| l.split_once("//").map_or(l, |(code, _)| code)).collect::<Vec<_>>().join("\n")
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut depth = 0;
    let mut part = String::new();
    let mut parts = Vec::new();
    for ch in tree.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if ch == ',' && depth == 0 {
            parts.push(std::mem::take(&mut part));
        } else {
            part.push(ch);
        }
    }
    parts.push(part);
    for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        match p.find('{') {
            Some(i) => {
                let mut pre = prefix.to_vec();
                pre.extend(p[..i].split("::").filter(|s| !s.is_empty()).map(str::to_owned));
                expand(&p[i + 1..p.rfind('}').unwrap_or(p.len())], &pre, out);
            }
            None => {
                let mut path = prefix.to_vec();
                let p = p.split(" as ").next().unwrap_or(p);
                path.extend(p.split("::").filter(|s| !s.is_empty()).map(str::to_owned));
                out.push(path);
            }
        }
    }
}

/// Every crate-relative path the code names: `use` trees, then inline paths.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        rest = &rest[i + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = rest.find(';') else { break };
        let tree: String = rest[..end].chars().filter(|c| !c.is_whitespace()).collect();
        if tree.starts_with("crate::") || tree.starts_with("super::") || tree.starts_with("self::") {
            expand(&tree, &[], &mut out);
        }
    }
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':') {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            out.push(code[at..end].split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect());
        }
    }
    out
}

/// The module a path refers to: the longest prefix that is a module.
fn target(from: &str, path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let mut abs: Vec<String> = if from.is_empty() { Vec::new() } else { from.split("::").map(str::to_owned).collect() };
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            abs.clear();
            rest = &rest[1..];
        }
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                abs.pop();
                rest = &rest[1..];
            }
        }
        Some("self") => rest = &rest[1..],
        _ => return None,
    }
    abs.extend(rest.iter().cloned());
    (0..=abs.len()).rev().map(|n| abs[..n].join("::")).find(|m| modules.contains(m))
}

fn is_within(module: &str, ancestor: &str) -> bool {
    ancestor.is_empty() || module == ancestor || module.starts_with(&format!("{ancestor}::"))
}

/// The unit (listed prefix) and layer of a module.
fn unit_of(module: &str) -> Option<(&'static str, u8)> {
    LAYERS.iter().filter(|(u, _)| is_within(module, u)).max_by_key(|(u, _)| u.len()).copied()
}

/// module -> (imported module -> the path that names it).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn graph(files: &[(String, String)]) -> Graph {
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut g = Graph::new();
    for (module, source) in files {
        let edges = g.entry(module.clone()).or_default();
        for path in paths_in(&code_of(source)) {
            let Some(to) = target(module, &path, &modules) else { continue };
            // Using itself or its own children is containment.
            if is_within(&to, module) {
                continue;
            }
            edges.entry(to).or_insert_with(|| path.join("::"));
        }
    }
    g
}

/// Layering violations, one line each.
fn violations(g: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for (from, edges) in g {
        let Some((from_unit, from_layer)) = unit_of(from) else {
            out.push(format!("src module {from:?} has no layer: add it to LAYERS in tests/layering.rs"));
            continue;
        };
        for (to, path) in edges {
            let Some((to_unit, to_layer)) = unit_of(to) else { continue };
            if to_unit != from_unit && to_layer >= from_layer {
                out.push(format!(
                    "{from} (layer {from_layer}) imports {to} (layer {to_layer}) through `{path}`: imports go to lower layers only"
                ));
            }
        }
    }
    out
}

/// A circle in the module graph, if any.
fn circle(g: &Graph) -> Option<Vec<String>> {
    fn visit<'a>(
        m: &'a str,
        g: &'a Graph,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(m, 1);
        stack.push(m);
        for next in g.get(m).into_iter().flat_map(|e| e.keys()) {
            match state.get(next.as_str()) {
                Some(1) => {
                    let i = stack.iter().position(|s| s == next).unwrap_or(0);
                    let mut c: Vec<String> = stack[i..].iter().map(|s| (*s).to_owned()).collect();
                    c.push(next.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(m, 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if !state.contains_key(m.as_str())
            && let Some(c) = visit(m, g, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn source_files() -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs")
                && let Some(m) = module_of(path.strip_prefix(root).unwrap())
            {
                out.push((m, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    out
}

#[test]
fn imports_follow_the_layers_and_form_no_circle() {
    let files = source_files();
    assert!(files.len() > 40, "read {} files from src/", files.len());
    let g = graph(&files);
    let bad = violations(&g);
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
    if let Some(c) = circle(&g) {
        panic!("a circle of imports: {}", c.join(" -> "));
    }
}

/// The check is not vacuous: the bad imports an edit could add are caught.
#[test]
fn a_bad_import_is_caught() {
    let mut files = source_files();
    let add = |files: &mut Vec<(String, String)>, module: &str, line: &str| {
        let f = files.iter_mut().find(|(m, _)| m == module).unwrap();
        f.1 = format!("{line}\n{}", f.1);
    };
    // The data plane reaching into the control plane, a leaf importing anything, the
    // snapshot importing a surface, a `use` group and an inline path.
    for (module, line, expect) in [
        ("proxy", "use crate::ops::views::DaemonStatus;", "proxy (layer 6) imports ops::views"),
        ("proxy::handler::http_proxy", "use crate::{acme::request, http};", "imports acme::request"),
        ("metrics", "fn f() { crate::snapshot::Snapshot::listener; }", "metrics (layer 0) imports snapshot"),
        ("snapshot", "use crate::admin::scrape as s;", "snapshot (layer 5) imports admin::scrape"),
        ("ops::views", "use super::super::acme::renewer;", "ops::views (layer 6) imports acme::renewer"),
    ] {
        let mut f = files.clone();
        add(&mut f, module, line);
        let bad = violations(&graph(&f));
        assert!(bad.iter().any(|b| b.contains(expect)), "{line} in {module} not caught: {bad:?}");
    }
    // A circle within one unit is caught too (no layer rule sees it).
    add(&mut files, "pki::names", "use crate::pki::key::KeyType;");
    add(&mut files, "pki::key", "use crate::pki::names::validate;");
    let c = circle(&graph(&files)).expect("the circle pki::key <-> pki::names");
    assert!(c.contains(&"pki::key".to_owned()) && c.contains(&"pki::names".to_owned()), "{c:?}");
}

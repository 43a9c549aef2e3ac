//! The module graph as the code's own imports draw it. Every top-level module
//! of `src/` sits on a layer and imports only from layers below its own, so
//! there is no cycle between modules and nothing reaches up or sideways; inside
//! a module, its files import one another without a cycle. A new module must be
//! given a layer here, which is the moment to decide where it belongs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first. A module may import from any layer below its own, never
/// from its own or one above.
const LAYERS: &[&[&str]] = &[
    // Domain types and pure cores, and the API's own types.
    &["api", "ipam", "l2", "bfd", "http"],
    // Protocols and the edges that turn the API into domain types; the
    // unit tests' object builders.
    &["election", "netlink", "bgp", "k8s", "testkit"],
    // Components, each on its own.
    &["forwarder", "gateway", "membership", "controller"],
    // What puts components together, and the tools that read them.
    &[
        "handover",
        "control_plane",
        "status",
        "uninstall",
        "migrate",
    ],
    &["speaker"],
    &["main"],
];

/// The layer of a top-level module.
fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// A source file's text without comments, string contents and its
/// `#[cfg(test)]` part: tests may borrow from anywhere, and a comment naming a module is
/// not an import.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
        } else if rest.starts_with("//") {
            rest = rest.find('\n').map_or("", |i| &rest[i..]);
        } else if let Some(r) = rest.strip_prefix("r#\"") {
            // A string is no import, and a `//` inside one is no comment.
            rest = r.find("\"#").map_or("", |i| &r[i + 2..]);
            out.push_str("\"\"");
        } else if rest.starts_with('"') {
            rest = &rest[string_end(rest)..];
            out.push_str("\"\"");
        } else if let Some(r) = rest.strip_prefix("'\"'") {
            rest = r;
            out.push_str("' '");
        } else {
            let c = rest.chars().next().expect("non-empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Where the string literal at the start of `s` ends (after its quote).
fn string_end(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The names that follow `prefix` (`crate::`, `super::`) in `code`,
/// including each member of a `prefix{a, b::c}` group.
fn paths_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            let mut at_start = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if !item.is_empty() {
                            names.insert(std::mem::take(&mut item));
                        }
                        at_start = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && at_start {
                    if c.is_alphanumeric() || c == '_' {
                        item.push(c);
                    } else if !item.is_empty() {
                        names.insert(std::mem::take(&mut item));
                        at_start = false;
                    }
                }
            }
            if !item.is_empty() {
                names.insert(item);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names.remove("self");
    names
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("reading the source tree") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// What is wrong with the imports of the tree at `src`, one line each.
fn violations(src: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    // folder → file of it → the sibling files it imports
    let mut siblings: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).expect("under src");
        let parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        let module = parts[0].clone();
        if module == "lib" {
            continue;
        }
        let Some(own) = layer_of(&module) else {
            problems.push(format!(
                "src/{}: module `{module}` has no layer in tests/layers.rs",
                relative.display()
            ));
            continue;
        };
        let code = code_of(&std::fs::read_to_string(&file).expect("reading a source file"));
        let mut imported = paths_after(&code, "crate::");
        if module == "main" {
            imported.extend(paths_after(&code, "ironlb::"));
        } else if !paths_after(&code, "ironlb_lab::").is_empty() {
            problems.push(format!(
                "src/{}: the library imports the lab crate (`ironlb_lab`), which only the \
                 command line's `ironlb demo` may",
                relative.display()
            ));
        }
        for target in imported.iter().filter(|t| **t != module) {
            match layer_of(target) {
                Some(theirs) if theirs < own => {}
                Some(_) => problems.push(format!(
                    "src/{}: `{module}` imports `{target}`, which is not on a lower layer",
                    relative.display()
                )),
                None => {}
            }
        }
        // A file inside a module: `super::x` and `crate::module::…::x` name
        // its siblings, the other files of its folder.
        let (name, folder) = parts.split_last().expect("a path");
        if !folder.is_empty() && name != "mod" {
            let mut named = paths_after(&code, "super::");
            named.extend(paths_after(
                &code,
                &format!("crate::{}::", folder.join("::")),
            ));
            named.remove(name);
            siblings
                .entry(folder.join("/"))
                .or_default()
                .insert(name.clone(), named);
        }
    }
    for (folder, graph) in &siblings {
        if let Some(cycle) = find_cycle(graph) {
            problems.push(format!(
                "src/{folder}/: its files import one another in a circle: {}",
                cycle.join(" → ")
            ));
        }
    }
    problems
}

/// A cycle among the files of `graph` (edges to names that are not files of
/// it, such as items of `mod.rs`, are ignored), as the files in order with
/// the first repeated at the end.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph[node].iter().filter(|n| graph.contains_key(*n)) {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn imports_only_go_down_and_no_module_is_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = violations(&src);
    assert!(
        problems.is_empty(),
        "the module graph has {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The check itself, on a small tree with each kind of mistake: an import
/// upward, one sideways, a circle of files, a module with no layer, the
/// library reaching for the lab crate; and
/// mentions in comments, strings and tests that are not imports.
#[test]
fn the_check_finds_each_kind_of_mistake_and_nothing_else() {
    let dir = std::env::temp_dir().join(format!("ironlb-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let write = |path: &str, text: &str| {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("ipam/mod.rs", "use crate::speaker::Thing;\n");
    write(
        "gateway/attach.rs",
        "use crate::{api, controller::plan};\n// crate::speaker in a comment\n\
         const S: &str = \"crate::speaker // not a comment\";\n",
    );
    write("gateway/snapshot.rs", "use super::attach::Route;\n");
    write("gateway/watch.rs", "use super::snapshot;\n");
    write(
        "bgp/session.rs",
        "use super::config::Spec;\n#[cfg(test)]\nmod tests { use crate::speaker; }\n",
    );
    write("bgp/config.rs", "use crate::bgp::session::State;\n");
    write("newthing.rs", "pub fn f() {}\n");
    write("status.rs", "use ironlb_lab::Lab;\n");
    write("main.rs", "use ironlb_lab::demo;\n");
    let mut problems = violations(&dir);
    problems.sort();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        problems,
        vec![
            "src/bgp/: its files import one another in a circle: config → session → config",
            "src/gateway/attach.rs: `gateway` imports `controller`, which is not on a lower layer",
            "src/ipam/mod.rs: `ipam` imports `speaker`, which is not on a lower layer",
            "src/newthing.rs: module `newthing` has no layer in tests/layers.rs",
            "src/status.rs: the library imports the lab crate (`ironlb_lab`), which only the \
             command line's `ironlb demo` may",
        ]
    );
}

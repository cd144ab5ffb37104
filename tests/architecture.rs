//! The dependency rule of `src/lib.rs`, kept true by reading every module's source.
//!
//! For each file under `src/` (but `main.rs` and `cli/`, the binary) this collects the
//! crate modules it names (`crate::x`, `crate::{x, y}`, and `super::x` where `super`
//! is the crate root) and fails on any edge outside [`allowed`]; pure steps must also
//! name no I/O crate and read no clock outside their tests. `a_forbidden_edge_fails`
//! shows that the checker catches what it is meant to.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The leaves: shared vocabulary, configuration and metrics; they import no step.
const LEAVES: [&str; 5] = ["config", "entry", "keyhash", "metrics", "table"];
/// The steps of the flow, in order.
const STEPS: [&str; 6] = ["read", "decode", "map", "batch", "write", "ack"];
/// Steps without I/O and without a clock.
const PURE: [&str; 3] = ["decode", "map", "batch"];
/// What pure steps must not name outside their tests: I/O crates and clocks.
const IMPURE: [&str; 9] = [
    "sqlx::",
    "redis::",
    "tokio::",
    "tokio_util::",
    "backon::",
    "std::fs",
    "std::net",
    "Instant::now",
    "SystemTime::now",
];

/// The modules `module` may import (besides itself), as the rule in `lib.rs` says.
fn allowed(module: &str) -> BTreeSet<&'static str> {
    let leaves: BTreeSet<&str> = LEAVES.into_iter().collect();
    let with = |extra: &[&'static str]| {
        leaves
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect()
    };
    match module {
        "entry" | "keyhash" | "table" => BTreeSet::new(),
        // config may use the grammars of the vocabulary leaves; metrics names streams
        // and tables.
        "config" | "metrics" => ["entry", "table"].into_iter().collect(),
        "decode" => with(&[]),
        "map" => with(&["decode"]),
        "batch" => with(&["decode", "map"]),
        // The source side: the Redis layer, the reader, the acknowledger. `ack` takes
        // `write::Committed` (checked item by item in `ack_takes_only_committed`).
        "redis" => with(&[]),
        "read" => with(&["redis"]),
        "ack" => with(&["redis", "write"]),
        // The sink never names the source side.
        "write" => with(&["map", "batch"]),
        "demo" => with(&["redis"]),
        // Only the pipeline and the ops commands name more than two steps.
        "pipeline" => with(&["redis", "read", "decode", "map", "batch", "write", "ack"]),
        "ops" => with(&[
            "redis", "read", "decode", "map", "batch", "write", "ack", "pipeline",
        ]),
        _ => BTreeSet::new(),
    }
}

/// Source text without comments (line comments, doc comments) and without what follows
/// `#[cfg(test)]` (unit tests may use a clock or the file system).
fn code(text: &str, strip_tests: bool) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if strip_tests && trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line.split(" //").next().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The crate modules named in `text`. `root_super`: `super::` means the crate root
/// (a file directly under `src/` or a `mod.rs` one level down).
fn named_modules(text: &str, root_super: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut prefixes = vec!["crate::"];
    if root_super {
        prefixes.push("super::");
    }
    for prefix in prefixes {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `redsink::crate::` cannot occur, but `xcrate::` can
            }
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name = item.trim().split("::").next().unwrap_or("").trim();
                    if !name.is_empty() {
                        out.insert(name.to_string());
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// The rule's violations in one file of `module`.
fn violations(module: &str, file: &str, text: &str, root_super: bool) -> Vec<String> {
    let mut out = Vec::new();
    let all = code(text, false);
    let allow = allowed(module);
    let modules: BTreeSet<&str> = LEAVES
        .iter()
        .chain(STEPS.iter())
        .chain(["redis", "pipeline", "ops", "demo", "cli"].iter())
        .copied()
        .collect();
    let named: BTreeSet<String> = named_modules(&all, root_super)
        .into_iter()
        .filter(|m| m != module && modules.contains(m.as_str()))
        .collect();
    for m in &named {
        if !allow.contains(m.as_str()) {
            out.push(format!("{file}: module `{module}` must not import `{m}`"));
        }
    }
    // The steps it names besides itself (`write` names map and batch: two).
    let steps = named.iter().filter(|m| STEPS.contains(&m.as_str())).count();
    if steps > 2 && module != "pipeline" && module != "ops" {
        out.push(format!(
            "{file}: module `{module}` names {steps} steps: only the pipeline and ops may name more than two"
        ));
    }
    if module == "ack" {
        for line in all.lines().filter(|l| l.contains("crate::write")) {
            let items = line.split("crate::write").nth(1).unwrap_or("");
            if !items.trim_start_matches("::").starts_with("Committed") {
                out.push(format!(
                    "{file}: `ack` may take only `write::Committed` from the sink: {}",
                    line.trim()
                ));
            }
        }
    }
    if PURE.contains(&module) && !file.ends_with("tests.rs") {
        let code = code(text, true);
        for word in IMPURE {
            if code.contains(word) {
                out.push(format!(
                    "{file}: pure step `{module}` names `{word}` (no I/O and no clock in decode, map, batch)"
                ));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}"));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_dependency_rule_holds() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for path in &files {
        let rel = path.strip_prefix(&src).expect("under src");
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let module = parts[0].trim_end_matches(".rs").to_string();
        if matches!(module.as_str(), "main" | "lib" | "cli") {
            continue;
        }
        let root_super = parts.len() == 1 || (parts.len() == 2 && parts[1] == "mod.rs");
        let text = std::fs::read_to_string(path).expect("readable source");
        problems.extend(violations(
            &module,
            &rel.display().to_string(),
            &text,
            root_super,
        ));
        *seen.entry(module).or_default() += 1;
    }
    for module in seen.keys() {
        assert!(
            LEAVES.contains(&module.as_str())
                || STEPS.contains(&module.as_str())
                || ["redis", "pipeline", "ops", "demo"].contains(&module.as_str()),
            "src/{module} is not in the layout of lib.rs: add it there and to this test's rule"
        );
    }
    assert!(
        seen.contains_key("pipeline") && seen.contains_key("decode"),
        "found {seen:?}"
    );
    assert!(
        problems.is_empty(),
        "the dependency rule is broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn a_forbidden_edge_fails() {
    let bad = [
        ("decode", "use crate::write::Writer;\n"),
        ("map", "use crate::{decode::Op, read::Reader};\n"),
        ("write", "use crate::redis::Control;\n"),
        ("read", "fn f() { crate::write::migrate(); }\n"),
        ("ack", "use crate::write::{Committed, Writer};\n"),
        ("config", "use crate::map::Mapping;\n"),
        ("batch", "fn now() { let _ = std::time::Instant::now(); }\n"),
        ("decode", "use sqlx::PgPool;\n"),
        ("metrics", "use crate::pipeline::Stats;\n"),
        (
            "demo",
            "use crate::{read::Reader, map::Mapping, write::Writer};\n",
        ),
    ];
    for (module, text) in bad {
        let found = violations(module, "example.rs", text, false);
        assert!(
            !found.is_empty(),
            "{module}: `{}` passed the rule",
            text.trim()
        );
    }
    let top = violations("entry", "entry.rs", "use super::read::Reader;\n", true);
    assert!(!top.is_empty(), "super:: at the crate root is an edge too");
    let fine = [
        (
            "ack",
            "use crate::write::Committed;\nuse crate::redis::Control;\n",
        ),
        (
            "map",
            "use crate::decode::Op;\nuse crate::table::TableName;\n",
        ),
        (
            "batch",
            "#[cfg(test)]\nmod tests { fn t() { let _ = std::time::Instant::now(); } }\n",
        ),
        (
            "decode",
            "// a comment naming crate::write is not an import\n",
        ),
    ];
    for (module, text) in fine {
        let found = violations(module, "example.rs", text, false);
        assert!(found.is_empty(), "{module}: {found:?}");
    }
}

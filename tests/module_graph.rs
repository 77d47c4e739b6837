//! The module graph stays the one docs/architecture.md draws. Every `crate::…` and `super::…`
//! path in each module's non-test code (inline paths too, not only `use` lines) is an edge; an
//! edge that the "Dependency table" of docs/architecture.md does not allow fails this test. The
//! table is the source of truth: change the table and the code together.
//!
//! Test code is exempt: files named `tests.rs` and inline `#[cfg(test)] mod … { … }` blocks.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Table = BTreeMap<String, BTreeSet<String>>;

/// Reads the table under `## Dependency table`: rows of `| `module` | `a`, `b` |` (`—` = none).
fn read_table(markdown: &str) -> Table {
    let section =
        markdown.split("## Dependency table").nth(1).expect("docs/architecture.md has a `## Dependency table`");
    let mut table = Table::new();
    for line in section.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() < 2 || cells[0].starts_with("---") || cells[0] == "module" {
            continue;
        }
        let names = |cell: &str| -> Vec<String> {
            cell.split(',')
                .map(|n| n.trim().trim_matches('`').to_owned())
                .filter(|n| !n.is_empty() && n != "—")
                .collect()
        };
        let allowed: BTreeSet<String> = names(cells[1]).into_iter().collect();
        for module in names(cells[0]) {
            table.insert(module, allowed.clone());
        }
    }
    assert!(!table.is_empty(), "the dependency table is empty");
    table
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("readable source dir").flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file relative to `src`: `authn/jwt/verify.rs` → [authn, jwt, verify];
/// `authn/mod.rs` → [authn].
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The source without inline `#[cfg(test)] mod x { … }` blocks (brace-matched).
fn without_test_blocks(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            let next = lines.peek().map(|l| l.trim().to_owned()).unwrap_or_default();
            if next.starts_with("mod ") && next.ends_with('{') {
                let mut depth = 0i32;
                for l in lines.by_ref() {
                    depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
                    if depth <= 0 {
                        break;
                    }
                }
                continue;
            }
        }
        // Comments name modules without depending on them.
        let code = line.split("//").next().unwrap_or("");
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Top-level crate modules a piece of code refers to, from a file at `path`.
fn referenced_modules(code: &str, path: &[String]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ident_at = |i: usize| -> (String, usize) {
        let mut j = i;
        while j < bytes.len() && is_ident(bytes[j]) {
            j += 1;
        }
        (code[i..j].to_owned(), j)
    };
    // `crate::x`, `crate::{x, y::z}`.
    let mut i = 0;
    while let Some(pos) = code[i..].find("crate::") {
        let start = i + pos;
        let preceded = start > 0 && (is_ident(bytes[start - 1]) || bytes[start - 1] == b'$');
        let mut j = start + "crate::".len();
        if !preceded {
            if bytes.get(j) == Some(&b'{') {
                let end = code[j..].find('}').map_or(code.len(), |e| j + e);
                for item in code[j + 1..end].split(',') {
                    let name = item.trim().split("::").next().unwrap_or("").trim();
                    if !name.is_empty() {
                        found.insert(name.to_owned());
                    }
                }
                j = end;
            } else {
                let (name, end) = ident_at(j);
                if !name.is_empty() {
                    found.insert(name);
                }
                j = end;
            }
        }
        i = j.max(start + 1);
    }
    // `super::…` that climbs to the crate root, then names a module.
    let mut i = 0;
    while let Some(pos) = code[i..].find("super::") {
        let start = i + pos;
        if start > 0 && is_ident(bytes[start - 1]) {
            i = start + 1;
            continue;
        }
        let mut j = start;
        let mut ups = 0;
        while code[j..].starts_with("super::") {
            ups += 1;
            j += "super::".len();
        }
        if ups >= path.len() {
            let (name, end) = ident_at(j);
            if !name.is_empty() {
                found.insert(name);
            }
            j = end;
        }
        i = j.max(start + 1);
    }
    found
}

/// Edges of `src` that the table does not allow, as `module -> target (file)`.
fn violations(src: &Path, table: &Table) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut bad = Vec::new();
    for file in files {
        let path = module_path(src, &file);
        let Some(top) = path.first() else { continue }; // lib.rs, main.rs
        if path.len() == 1 && matches!(top.as_str(), "lib" | "main") {
            continue;
        }
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source file");
        let allowed = table.get(top);
        for target in referenced_modules(&without_test_blocks(&text), &path) {
            if &target == top {
                continue;
            }
            let ok = allowed.is_some_and(|a| a.contains(&target) || a.contains("*"));
            if !ok {
                bad.push(format!("{top} -> {target} ({})", file.display()));
            }
        }
    }
    bad
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_code_has_only_the_edges_the_architecture_doc_allows() {
    let doc = std::fs::read_to_string(repo().join("docs/architecture.md")).expect("docs/architecture.md");
    let table = read_table(&doc);
    let src = repo().join("src");
    // Every module of the crate has a row: a new module must be placed in the graph.
    let mut modules = BTreeSet::new();
    for e in std::fs::read_dir(&src).expect("src").flatten() {
        let name = e.file_name().to_string_lossy().trim_end_matches(".rs").to_owned();
        if !matches!(name.as_str(), "lib" | "main") {
            modules.insert(name);
        }
    }
    let missing: Vec<_> = modules.iter().filter(|m| !table.contains_key(*m)).collect();
    assert!(missing.is_empty(), "modules without a row in the dependency table: {missing:?}");
    let bad = violations(&src, &table);
    assert!(bad.is_empty(), "edges the dependency table does not allow:\n{}", bad.join("\n"));
}

#[test]
fn a_forbidden_edge_is_found_in_use_lines_inline_paths_and_super_paths() {
    let fixture = repo().join("tests/fixtures/module_graph/src");
    let table = read_table(
        "## Dependency table\n\n| module | may import |\n|---|---|\n| `config` | — |\n| `authn` | `config` |\n",
    );
    let bad = violations(&fixture, &table);
    let edges: BTreeSet<&str> = bad.iter().map(|b| b.split(" (").next().unwrap_or("")).collect();
    assert_eq!(
        edges,
        BTreeSet::from(["config -> authn", "config -> server", "authn -> policy", "authn -> request"]),
        "{bad:#?}"
    );
}

#[test]
fn paths_are_resolved_from_the_file_they_are_in() {
    let at = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(referenced_modules("use super::x;", &at(&["authn", "jwt"])), BTreeSet::new());
    assert_eq!(
        referenced_modules("use super::super::config::X;", &at(&["authn", "jwt"])),
        BTreeSet::from(["config".into()])
    );
    assert_eq!(referenced_modules("let a = crate::{b::C, d};", &at(&["x"])), BTreeSet::from(["b".into(), "d".into()]));
    assert_eq!(referenced_modules("my_crate::x; $crate::y", &at(&["x"])), BTreeSet::new());
    assert!(
        without_test_blocks("fn a() {}\n#[cfg(test)]\nmod tests {\n  use crate::z;\n}\n").find("crate::z").is_none()
    );
}

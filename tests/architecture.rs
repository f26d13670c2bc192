//! The house's floors: `main → commands → ui → engine → stages → data, report → outcome →
//! backend → nn → manifest`, with the leaves `atomic`, `content`, `ids` and `fmt` below
//! everything. No module imports one above it, and no two modules import each other
//! (top-level folders, and the files inside one folder). Read from the source: every
//! `crate::<module>` path and every `super::<sibling>` path. Below the engine nothing
//! prints: the engine and the stages send events to a watcher, and the command line (or
//! the dashboard) decides what to show.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floor of each top-level module: a module may import only modules on lower floors
/// (and, for `data` and `report`, not each other).
fn floor(m: &str) -> Option<u32> {
    Some(match m {
        "atomic" | "content" | "ids" | "fmt" => 0,
        "manifest" => 1,
        "nn" => 2,
        "backend" => 3,
        "outcome" => 4,
        "data" | "report" => 5,
        "stages" => 6,
        "engine" => 7,
        "ui" => 8,
        "commands" => 9,
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The identifiers following `prefix` in `text` (`crate::engine::store` -> `engine`).
fn after(text: &str, prefix: &str) -> BTreeSet<String> {
    text.match_indices(prefix)
        .filter(|(i, _)| {
            // Not part of a longer path (`super::super::x` is handled as its own case).
            *i == 0 || !text[..*i].ends_with("::")
        })
        .map(|(i, _)| {
            text[i + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Source with line comments removed (doc comments mention paths freely).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn imports_flow_one_way_down_the_floors() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "main" || top == "lib" {
            continue;
        }
        let text = code(f);
        for m in after(&text, "crate::") {
            if m == top {
                continue;
            }
            let (Some(a), Some(b)) = (floor(&top), floor(&m)) else {
                bad.push(format!(
                    "{}: unknown module `{m}` or `{top}`",
                    rel.display()
                ));
                continue;
            };
            if b >= a {
                bad.push(format!(
                    "{} ({top}, floor {a}) imports {m} (floor {b})",
                    rel.display()
                ));
            }
            edges
                .entry((top.clone(), m))
                .or_default()
                .push(rel.display().to_string());
        }
    }
    for ((a, b), files) in &edges {
        if edges.contains_key(&(b.clone(), a.clone())) {
            bad.push(format!(
                "{a} and {b} import each other ({})",
                files.join(", ")
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "imports against the floors:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_two_files_of_one_folder_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // (folder, file stem) -> siblings it names through `super::`.
    let mut uses: BTreeMap<(PathBuf, String), BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        // A `mod.rs` is its folder's parent; its siblings are one level up.
        let dir = if stem == "mod" {
            f.parent().unwrap().parent().unwrap().to_path_buf()
        } else {
            f.parent().unwrap().to_path_buf()
        };
        let me = if stem == "mod" {
            f.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        } else {
            stem
        };
        let text = code(f);
        let mut names = after(&text, "super::");
        // `use super::{a, b}`.
        for (i, _) in text.match_indices("super::{") {
            let rest = &text[i + "super::{".len()..];
            let group = &rest[..rest.find('}').unwrap_or(0)];
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        }
        names.remove(&me);
        uses.insert((dir, me), names);
    }
    let mut bad = Vec::new();
    for ((dir, a), names) in &uses {
        for b in names {
            if uses
                .get(&(dir.clone(), b.clone()))
                .is_some_and(|n| n.contains(a))
                && a < b
            {
                bad.push(format!("{}: {a} and {b} import each other", dir.display()));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The top-level module of a source file (`engine` for `src/engine/store.rs`).
fn top_module(src: &Path, f: &Path) -> String {
    f.strip_prefix(src)
        .unwrap()
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

/// Whether the module in `f` is compiled only for tests (`#[cfg(test)]` or
/// `#[cfg(all(test, ...))]` on its `mod` line in the file that declares it).
fn test_only(f: &Path) -> bool {
    let stem = f.file_stem().unwrap().to_string_lossy();
    let dir = f.parent().unwrap();
    let parents = [dir.join("mod.rs"), dir.with_extension("rs")];
    parents.iter().filter(|p| p.is_file() && *p != f).any(|p| {
        let text = std::fs::read_to_string(p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        lines.windows(2).any(|w| {
            let decl = w[1].trim();
            (decl == format!("mod {stem};") || decl == format!("pub mod {stem};"))
                && w[0].trim().starts_with("#[cfg(")
                && w[0].contains("test")
        })
    })
}

#[test]
fn nothing_below_the_engine_prints() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let engine = floor("engine").unwrap();
    // What writes to the terminal: the print macros, the standard streams, a progress bar
    // drawn on stderr.
    let printing = [
        "println!",
        "eprintln!",
        "print!(",
        "eprint!(",
        "std::io::stdout(",
        "std::io::stderr(",
        "ProgressDrawTarget::stderr",
        "dbg!(",
    ];
    let mut bad = Vec::new();
    for f in &files {
        let top = top_module(&src, f);
        if floor(&top).is_none_or(|fl| fl >= engine) || test_only(f) {
            continue;
        }
        // Tests inside a module may print what they measured.
        let text = code(f);
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        for p in printing {
            for (i, _) in text.match_indices(p) {
                let line = text[..i].lines().count();
                bad.push(format!(
                    "{}:{line} ({top}) uses {p}",
                    f.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "printing below the engine:\n{}",
        bad.join("\n")
    );
}

#[test]
fn report_knows_nothing_of_the_engine_and_writes_nothing() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/report");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut bad = Vec::new();
    for f in &files {
        let text = code(f);
        for needle in [
            "crate::engine",
            "crate::stages",
            "fs::write",
            "File::create",
            "OpenOptions",
            "create_dir",
            "write_atomic",
            "write_json_atomic",
            "remove_file",
            "remove_dir",
        ] {
            if text.contains(needle) {
                bad.push(format!("{}: {needle}", f.display()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "report/ reaches past the values it is given:\n{}",
        bad.join("\n")
    );
}

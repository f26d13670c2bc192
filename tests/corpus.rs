//! The broken-manifest corpus (`tests/corpus/broken/`, written by
//! `tests/corpus/generate.py`): every file fails `pipe run --dry-run` and `pipe graph` with
//! an error located at file:line:col, and none panics.

mod common;

use common::Project;

/// Whether `text` holds `<stem>.toml:<line>:<col>`.
fn located(text: &str, stem: &str) -> bool {
    let needle = format!("{stem}.toml:");
    text.match_indices(&needle).any(|(i, _)| {
        let rest = &text[i + needle.len()..];
        let mut parts = rest.splitn(3, ':');
        let line = parts.next().unwrap_or("");
        let col: String = parts
            .next()
            .unwrap_or("")
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        !line.is_empty() && line.chars().all(|c| c.is_ascii_digit()) && !col.is_empty()
    })
}

#[test]
fn every_broken_manifest_fails_with_a_located_error_and_no_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/broken");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 150,
        "the corpus holds {} manifests",
        files.len()
    );
    let p = Project::new();
    let mut bad = Vec::new();
    for f in &files {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        let target = p.path().join("pipelines").join(format!("{stem}.toml"));
        std::fs::copy(f, &target).unwrap();
        for args in [vec!["run", &stem, "--dry-run"], vec!["graph", &stem]] {
            let out = p.cmd(&args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success()
                || out.status.code() == Some(101)
                || err.contains("panicked")
                || !located(&err, &stem)
            {
                bad.push(format!(
                    "{stem} ({}): {}",
                    args[0],
                    err.lines().next().unwrap_or("")
                ));
            }
        }
        std::fs::remove_file(&target).unwrap();
    }
    assert!(bad.is_empty(), "{} cases:\n{}", bad.len(), bad.join("\n"));
    assert!(!p.cache().exists(), "checking manifests wrote to the cache");
}

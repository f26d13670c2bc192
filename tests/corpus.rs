//! The broken-manifest corpus (`tests/corpus/broken/`, written by
//! `tests/corpus/generate.py`): every file fails `pipe run --dry-run` and `pipe graph`,
//! none panics, and each error names the line:col and says the phrase that the generator
//! wrote beside the case (`<case>.expect`).

mod common;

use common::Project;

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
        let expect = std::fs::read_to_string(f.with_extension("expect"))
            .unwrap_or_else(|_| panic!("{stem}.expect is missing: run tests/corpus/generate.py"));
        let mut lines = expect.lines();
        let (at, phrase) = (lines.next().unwrap(), lines.next().unwrap());
        let want = format!("{stem}.toml:{at}: ");
        for args in [vec!["run", &stem, "--dry-run"], vec!["graph", &stem]] {
            let out = p.cmd(&args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err.lines().next().unwrap_or("");
            if out.status.success()
                || out.status.code() == Some(101)
                || err.contains("panicked")
                || !first.contains(&want)
                || !first.contains(phrase)
            {
                bad.push(format!(
                    "{stem} ({}): expected {want}...{phrase}..., got: {first}",
                    args[0]
                ));
            }
        }
        std::fs::remove_file(&target).unwrap();
    }
    assert!(bad.is_empty(), "{} cases:\n{}", bad.len(), bad.join("\n"));
    assert!(!p.cache().exists(), "checking manifests wrote to the cache");
}

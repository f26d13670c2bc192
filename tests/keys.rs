//! The same manifests give the same keys: every stage key of the demo and of the six
//! chapter manifests is pinned (tests/fixtures/keys.txt, recorded before the redesign of
//! issue 14), so a store written by an earlier pipe stays valid.
//!
//! Keys of stages that read other stages are computed with fixed stand-in input hashes
//! (`in:<input stage>`), and an ingest's dataset fingerprint with a fixed stand-in: what
//! is pinned is everything a key covers besides its inputs (kind, version, the effective
//! configuration, the network's structure). The demo's ingest and split also run for real,
//! pinning their keys and the content hashes of what they write.
//!
//! To re-record after a deliberate key change (a stage version bump):
//! `PIPE_RECORD_KEYS=1 cargo test --test keys`.

mod common;

use std::fmt::Write;
use std::path::Path;

use common::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> std::path::PathBuf {
    repo().join("tests/fixtures/keys.txt")
}

/// `manifest stage key` for every stage of every shipped pipeline.
fn computed() -> String {
    let mut out = String::new();
    // The sweeps (manifests with a `[sweep]` table) came after the keys were pinned.
    let mut files: Vec<_> = std::fs::read_dir(repo().join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| !std::fs::read_to_string(p).unwrap().contains("\n[sweep"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        8,
        "the demo, the six chapter manifests and the modern recipe"
    );
    for f in files {
        let mut p = pipe::manifest::load(&f, &["device=cpu".to_string()], repo())
            .unwrap_or_else(|e| panic!("{e}"));
        pipe::engine::resolve_devices(&mut p);
        for name in p.topo_order() {
            let s = &p.stages[&name];
            let inputs: Vec<String> = s.inputs.iter().map(|i| format!("in:{i}")).collect();
            let key = pipe::engine::stage_key(&p, &name, &inputs, Some("fingerprint")).unwrap();
            writeln!(out, "{} {name} {key}", p.name).unwrap();
        }
    }
    out
}

#[test]
fn shipped_manifests_keep_their_keys() {
    let now = computed();
    if std::env::var_os("PIPE_RECORD_KEYS").is_some() {
        std::fs::write(fixture(), &now).unwrap();
        return;
    }
    // Compared as sets of lines: the order stages are listed in is not part of a key.
    let pinned = std::fs::read_to_string(fixture()).expect("tests/fixtures/keys.txt");
    let mut pinned: Vec<&str> = pinned.lines().collect();
    let mut now: Vec<&str> = now.lines().collect();
    pinned.sort();
    now.sort();
    assert_eq!(
        now, pinned,
        "stage keys changed: existing stores would not be reused"
    );
}

#[test]
fn demo_data_stages_keep_their_keys_and_outputs() {
    let p = demo_project();
    let r = p.run_json("demo", &["--until", "split", "--set", "device=cpu"]);
    let mut now = String::new();
    for stage in ["ingest", "split"] {
        assert_eq!(state_of(&r, stage), "ran");
        writeln!(
            now,
            "demo-run {stage} {} {}",
            field(&r, stage, "key"),
            field(&r, stage, "output")
        )
        .unwrap();
    }
    let path = repo().join("tests/fixtures/demo-run.txt");
    if std::env::var_os("PIPE_RECORD_KEYS").is_some() {
        std::fs::write(&path, &now).unwrap();
        return;
    }
    let pinned = std::fs::read_to_string(path).expect("tests/fixtures/demo-run.txt");
    assert_eq!(now, pinned, "the demo's data stages changed key or output");
}

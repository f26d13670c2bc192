//! One place decides what must run: `status`, `run --dry-run` and `run` read the same
//! decision walk, so on the same pipeline and store they report the same keys, states and
//! reasons — fresh, after an edit, with a damaged artifact, with the dataset missing, and
//! for a sweep (also as the local executor plans it).

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

/// Generated data, a train -> drop chain and an evaluation.
fn pipeline(drop_lr: &str) -> String {
    Generated::new("d").drop(drop_lr, 1).evaluate().text()
}

/// (stage, key, state, reasons) of each stage, from `status --json` or `run --json`.
fn decided(v: &Value) -> Vec<(String, Value, String, Value)> {
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["key"].clone(),
                s["state"].as_str().unwrap().to_string(),
                s["reasons"].clone(),
            )
        })
        .collect()
}

/// `status` and `run --dry-run` of `name`, which must agree stage by stage; returns them.
fn look(p: &Project, name: &str) -> Vec<(String, Value, String, Value)> {
    let status = decided(&p.ok_json(&["status", name, "--json"]));
    let dry = decided(&p.run_json(name, &["--dry-run"]));
    assert_eq!(status, dry, "status and --dry-run disagree");
    status
}

/// `run --json` after `look` decided `before`: the stages decided stale with a key run
/// under that key, for the reasons decided (a re-run that made the same bytes may add
/// that it did); those whose key waited for an input run or, when the input came out
/// byte-identical (early cutoff), are found cached; the stages decided cached stay cached
/// with the same key. Returns the run's stages.
fn run_as_decided(
    p: &Project,
    name: &str,
    before: &[(String, Value, String, Value)],
) -> Vec<(String, Value, String, Value)> {
    let ran = decided(&p.run_json(name, &[]));
    assert_eq!(ran.len(), before.len());
    for ((stage, key, state, reasons), (s2, k2, st2, r2)) in before.iter().zip(&ran) {
        assert_eq!(stage, s2);
        match state.as_str() {
            "cached" => assert_eq!((st2.as_str(), k2), ("cached", key), "{stage}"),
            "stale" if key.is_null() => {
                assert!(st2 == "ran" || st2 == "cached", "{stage}: {st2}");
            }
            "stale" => {
                assert_eq!(st2, "ran", "{stage} was decided stale");
                assert_eq!(k2, key, "{stage} ran under another key than decided");
                let mut r2 = r2.as_array().unwrap().clone();
                r2.retain(|r| !r.as_str().unwrap().starts_with("output unchanged"));
                assert_eq!(&Value::Array(r2), reasons, "{stage}'s reasons");
            }
            other => panic!("{stage}: a run decided {other}"),
        }
    }
    ran
}

#[test]
fn status_dry_run_and_run_decide_alike_fresh_edited_and_damaged() {
    let p = Project::with("d.toml", &pipeline("0.001"));
    // Fresh: the first stage never ran; what reads it waits for its output.
    let fresh = look(&p, "d");
    assert_eq!(fresh[0].2, "stale");
    assert_eq!(
        fresh[0].3,
        serde_json::json!(["never ran in this pipeline"])
    );
    assert_eq!(fresh[1].3, serde_json::json!(["input ingest changed"]));
    assert!(fresh[1].1.is_null(), "hdf5's key cannot be known yet");
    run_as_decided(&p, "d", &fresh);
    let done = look(&p, "d");
    assert!(done.iter().all(|s| s.2 == "cached"), "{done:?}");

    // Edited: only the drop's lr; the drop and the evaluation are stale, for that reason.
    p.manifest("d.toml", &pipeline("0.002"));
    let edited = look(&p, "d");
    let stale: Vec<&str> = edited
        .iter()
        .filter(|s| s.2 == "stale")
        .map(|s| s.0.as_str())
        .collect();
    assert_eq!(stale, ["drop", "evaluate"]);
    assert_eq!(
        edited[3].3,
        serde_json::json!(["config changed: lr 0.001 -> 0.002"])
    );
    assert_eq!(edited[4].3, serde_json::json!(["input drop changed"]));
    run_as_decided(&p, "d", &edited);

    // Damaged: a byte of the hdf5 artifact flipped.
    let dir = p.artifact(&p.ok_json(&["status", "d", "--json"]), "hdf5");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|f| f.extension().is_some_and(|x| x == "h5"))
        .unwrap();
    tamper(&file, |b| {
        let at = b.len() / 2;
        b[at] ^= 0xff;
    });
    let damaged = look(&p, "d");
    assert_eq!(damaged[1].2, "stale");
    let why = damaged[1].3[0].as_str().unwrap();
    assert!(why.starts_with("its artifact is damaged"), "{why}");
    // Looking moved nothing aside: the run finds the damage itself, rebuilds the same
    // bytes, and everything after stays cached (early cutoff).
    assert!(dir.is_dir());
    let rebuilt = run_as_decided(&p, "d", &damaged);
    let states: Vec<&str> = rebuilt.iter().map(|s| s.2.as_str()).collect();
    assert_eq!(states, ["cached", "ran", "cached", "cached", "cached"]);
    let after = look(&p, "d");
    assert!(after.iter().all(|s| s.2 == "cached"), "{after:?}");
}

#[test]
fn a_missing_dataset_waits_alike_in_status_and_dry_run_and_fails_a_run() {
    let p = Project::new();
    let root = p.path().join("data/tiny");
    p.manifest("exp.toml", &tiny_manifest(&root, 2));
    let waiting = look(&p, "exp");
    assert!(waiting.iter().all(|s| s.2 == "waiting"), "{waiting:?}");
    assert_eq!(
        waiting[1].3,
        serde_json::json!(["input ingest waits for its dataset"])
    );
    let err = p.fails(&["run", "exp"]);
    assert!(err.contains("cannot read its dataset folder"), "{err}");
    tiny_imagenet(&root, 2, 8, 2);
    let fresh = look(&p, "exp");
    run_as_decided(&p, "exp", &fresh);
}

#[test]
fn a_sweep_is_decided_alike_by_status_dry_run_and_the_local_executor() {
    let p = Project::with("d.toml", &pipeline("0.001"));
    p.manifest(
        "s.toml",
        "extends = \"d.toml\"\nname = \"s\"\n\n[sweep.grid]\n\"drop.lr\" = [1e-3, 2e-3]\n",
    );
    p.ok(&["run", "d", "--until", "train"]);
    let status = p.ok_json(&["status", "s", "--json"]);
    let dry = p.ok_json(&["run", "s", "--dry-run", "--json"]);
    assert_eq!(status["stages"], dry["stages"]);
    // What the tree says is not cached is what the local executor would run, each
    // shared stage once: (point, stage) for every point a stale stage belongs to.
    let mut tree: BTreeSet<(String, String)> = BTreeSet::new();
    for s in status["stages"].as_array().unwrap() {
        if s["outcome"]["state"] != "cached" {
            let stage = s["outcome"]["name"].as_str().unwrap().to_string();
            let first = s["points"][0].as_str().unwrap();
            tree.insert((format!("s@{first}"), stage));
        }
    }
    let out = p.ok(&["run", "s", "-j", "2", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stderr);
    let planned: BTreeSet<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_suffix(" would run"))
        .filter_map(|l| l.rsplit_once(':'))
        .map(|(pt, st)| (pt.to_string(), st.to_string()))
        .collect();
    assert_eq!(tree, planned, "{text}");
    assert_eq!(planned.len(), 4, "each point's drop and evaluation: {text}");
}

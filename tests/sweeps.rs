//! Sweeps (`[sweep]`): one manifest, many points; what points share runs once; a failing
//! point leaves the others; successive halving over training segments decides the same
//! way every time. On real data (scikit-learn's 8x8 handwritten digits, written as an image
//! folder by tests/data/digits.py) and on generated data. Manifest mistakes in `[sweep]`
//! are cases of the corpus (tests/corpus).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

/// A digits pipeline: image folder -> split -> hdf5 -> a small convnet, an lr drop, an
/// evaluation; `sweep` appended.
fn digits_manifest(root: &Path, sweep: &str) -> String {
    fill(
        include_str!("manifests/sweeps_digits.toml"),
        &[("root", &root.display()), ("sweep", &sweep)],
    )
}

/// (point id, its stages as `(name, state)`) from a `pipe run SWEEP --json`.
fn point_states(run: &serde_json::Value) -> Vec<(String, Vec<(String, String)>)> {
    run["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), stage_states(&p[2])))
        .collect()
}

/// How many times each stage ran over the whole sweep.
fn runs(run: &serde_json::Value) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (_, stages) in point_states(run) {
        for (name, state) in stages {
            *out.entry(name).or_insert(0) += usize::from(state == "ran");
        }
    }
    out
}

#[test]
fn a_three_point_lr_sweep_on_the_digits_runs_each_data_stage_once() {
    let p = Project::new();
    let root = p.path().join("data/digits");
    digits(&root, 600);
    p.manifest(
        "dg.toml",
        &digits_manifest(&root, "[sweep.grid]\n\"train.lr\" = [1e-2, 2e-2, 5e-3]\n"),
    );
    let run = p.ok_json(&["run", "dg", "--json"]);
    let ids: Vec<String> = point_states(&run).into_iter().map(|p| p.0).collect();
    assert_eq!(ids, ["lr=1e-2", "lr=2e-2", "lr=5e-3"]);
    let r = runs(&run);
    assert_eq!(r["ingest"], 1, "{r:?}");
    assert_eq!(r["split"], 1, "{r:?}");
    assert_eq!(r["hdf5"], 1, "{r:?}");
    assert_eq!(r["train"], 3, "{r:?}");
    assert_eq!(r["evaluate"], 3, "{r:?}");
    // Real digits are learnt: every point is far above chance (10 %) on the held-out test
    // split.
    let out = p.cmd(&["show", "dg", "--json"]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3);
    for row in rows.as_array().unwrap() {
        let rank1 = row["evals"][0]["ranks"]["1"].as_f64().unwrap();
        assert!(rank1 > 0.7, "{row}");
        assert_eq!(row["swept"][0][0], "lr");
    }
    // A second run runs nothing; a point is addressed by its id.
    let again = p.ok_json(&["run", "dg", "--json"]);
    assert!(runs(&again).values().all(|n| *n == 0), "{:?}", runs(&again));
    let one = p.run_json("dg@lr=5e-3", &[]);
    assert!(states(&one).iter().all(|(_, s)| s == "cached"));
    // `show` has the swept key as its only varying setting, and marks the best point.
    let out = p
        .cmd(&["show", "dg"])
        .env("COLUMNS", "300")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table
        .lines()
        .find(|l| l.starts_with("pipeline"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(header.split_whitespace().nth(1) == Some("lr"), "{table}");
    assert_eq!(
        table.matches(" * ").count() + table.matches(" *\n").count(),
        1,
        "{table}"
    );
}

/// Generated data, a train -> drop chain and an evaluation; `sweep` appended.
fn generated(sweep: &str) -> String {
    Generated::new("g")
        .checkpoints()
        .drop("0.001", 1)
        .evaluate()
        .text()
        + sweep
}

#[test]
fn a_sweep_over_the_last_lr_shares_the_first_training_segment() {
    let p = Project::with(
        "g.toml",
        &generated("\n[sweep.grid]\n\"drop.lr\" = [1e-3, 5e-4, 1e-4]\n"),
    );
    // The dry run's tree says what is shared before anything runs.
    let out = p.ok(&["run", "g", "--dry-run"]);
    let tree = String::from_utf8_lossy(&out.stdout);
    let shared = tree
        .split("per point:")
        .next()
        .unwrap_or_else(|| panic!("{tree}"));
    for stage in ["ingest", "hdf5", "train"] {
        assert!(shared.contains(stage), "{tree}");
    }
    assert!(!shared.contains("drop "), "{tree}");
    let run = p.ok_json(&["run", "g", "--json"]);
    let r = runs(&run);
    assert_eq!((r["train"], r["drop"], r["evaluate"]), (1, 3, 3), "{r:?}");
}

#[test]
fn a_failing_point_leaves_the_others_finished_and_fails_the_run() {
    let p = Project::with(
        "g.toml",
        &generated("\n[sweep.zip]\n\"evaluate.split\" = [\"val\", \"nope\", \"train\"]\n"),
    );
    let out = p.cmd(&["run", "g"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 of 3 points failed: g@split=nope"), "{err}");
    assert!(err.contains("no split `nope`"), "{err}");
    // The others finished.
    for ok in ["g@split=val", "g@split=train"] {
        let r = p.run_json(ok, &[]);
        assert!(states(&r).iter().all(|(_, s)| s == "cached"), "{ok}: {r}");
    }
    // Running again runs only what failed (and fails the same way).
    let out = p.cmd(&["run", "g"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("running (").count(), 1, "{err}");
    assert!(err.contains("1 of 3 points failed"), "{err}");
}

#[test]
fn under_local_workers_a_point_that_cannot_be_planned_fails_alone_naming_itself() {
    let (p, root) = Project::with_tiny_imagenet("tiny", 3, 4, 2);
    p.manifest(
        "g.toml",
        &(tiny_manifest(&root, 1).replace("name = \"exp\"", "name = \"g\"")
            + &format!(
                "\n[sweep.grid]\n\"ingest.root\" = [{:?}, {:?}]\n",
                root.display().to_string(),
                p.path().join("missing").display().to_string()
            )),
    );
    let out = p.cmd(&["run", "g", "-j", "2"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 of 2 points failed: g@root="), "{err}");
    assert!(err.contains("missing"), "{err}");
    // The other point ran whole.
    let listed = p.ok_json(&["status", "g", "--json"]);
    let text = listed.to_string();
    assert!(text.contains("cached"), "{text}");
    let ok = format!("g@root={}", root.display().to_string().replace('/', "%2F"));
    let out = p.cmd(&["status", &ok]).output().unwrap();
    let st = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        st.matches("cached").count(),
        3,
        "{st}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn until_and_force_under_halving_do_what_they_say_once() {
    let text = generated(
        "\n[sweep.grid]\n\"train.lr\" = [1e-2, 2e-2, 5e-2]\n\n[sweep.halving]\nrungs = [\"train\", \"drop\"]\nmetric = \"val.loss\"\neta = 3\n",
    );
    let p = Project::with("g.toml", &text);
    // A dry run under -j shows the tree, as without it; nothing is taken as pruned.
    let out = p.ok(&["run", "g", "-j", "2", "--dry-run"]);
    let tree =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(tree.contains("per point:"), "{tree}");
    assert!(!tree.contains("pruned"), "{tree}");
    assert!(!p.cache().join("sweeps/g.json").exists());
    // --until stops every point there: no training, no decision.
    let out = p.ok(&["run", "g", "--until", "hdf5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("train: epoch"), "{err}");
    assert!(!p.cache().join("sweeps/g.json").exists());
    // A typo is refused before anything trains.
    let err = p.fails(&["run", "g", "--until", "trian"]);
    assert!(err.contains("trian"), "{err}");
    assert!(!err.contains("train: epoch"), "{err}");
    p.ok(&["run", "g"]);
    // The best is the point halving kept (by its metric and goal), not a pruned one whose
    // loss comes from a shorter training.
    let json = p.ok_json(&["show", "g", "--json"]);
    let best: Vec<&serde_json::Value> = json
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["best"] == true)
        .collect();
    assert_eq!(best.len(), 1, "{json}");
    assert!(best[0]["note"].is_null(), "{json}");
    // --force train: each point's training once (3), not again in a later rung.
    let out = p.ok(&["run", "g", "--force", "train"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("train: epochs 1..").count(), 3, "{err}");
    // --force of a stage every point shares: once in the sweep.
    let out = p.ok(&["run", "g", "--force", "hdf5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("hdf5") && l.contains(" ran "))
            .count(),
        1,
        "{err}"
    );
}

#[test]
fn halving_decisions_that_cannot_be_recorded_leave_the_points_finished() {
    let p = Project::with(
        "g.toml",
        &generated(
            "\n[sweep.grid]\n\"train.lr\" = [1e-2, 2e-2, 5e-2]\n\n[sweep.halving]\nrungs = [\"train\", \"drop\"]\nmetric = \"val.loss\"\neta = 3\n",
        ),
    );
    // Where the record goes, a folder: writing it fails (as on a full disk).
    std::fs::create_dir_all(p.cache().join("sweeps/g.json/x")).unwrap();
    for (n, jobs) in [None, Some("2")].into_iter().enumerate() {
        let mut args = vec!["run", "g", "--json"];
        if let Some(j) = jobs {
            args.extend(["-j", j]);
        }
        let out = p.ok(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("the halving decisions of `g` were not recorded"),
            "{err}"
        );
        let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let states: Vec<&str> = run["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pt| pt[1]["state"].as_str().unwrap())
            .collect();
        assert_eq!(states.iter().filter(|s| **s == "done").count(), 1, "{run}");
        assert_eq!(
            states.iter().filter(|s| **s == "pruned").count(),
            2,
            "{run}"
        );
        // The journal holds each point as it finished, not as failed.
        let journal = p.ok_json(&["runs", "--json"]);
        let records = journal.as_array().unwrap();
        assert_eq!(records.len(), 3 * (n + 1), "{journal}");
        assert!(records.iter().all(|r| r["state"] == "done"), "{journal}");
    }
}

#[test]
fn a_promotion_job_over_a_manifest_changed_since_decides_nothing() {
    let p = Project::with(
        "g.toml",
        &generated(
            "\n[sweep.grid]\n\"train.lr\" = [1e-2, 2e-2]\n\n[sweep.halving]\nrungs = [\"train\", \"drop\"]\n",
        ),
    );
    // What a promotion job submitted over another version of the manifest says it
    // decided over: not what the manifest says now.
    let e = p.fails(&["sweep-promote", "g", "--rung", "0", "--about", "0123abcd"]);
    assert!(
        e.contains(
            "g.toml (or a file it extends or includes) changed since sweep `g` was submitted"
        ),
        "{e}"
    );
    assert!(e.contains("decides nothing and submits nothing"), "{e}");
    assert!(!p.cache().join("sweeps/g.json").exists());
    assert!(!e.contains("train: epoch"), "{e}");
}

/// Nine points of the digits, three rungs: train -> drop1 -> drop2.
fn halving_manifest(root: &Path) -> String {
    digits_manifest(
        root,
        r#"[stages.drop2]
kind = "lr-drop"
from = "drop"
lr = 0.0001
epochs = 1

[sweep.grid]
"train.lr" = [1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 3e-2, 5e-2, 1e-1, 2e-1]

[sweep.halving]
rungs = ["train", "drop", "drop2"]
metric = "val.loss"
eta = 3
"#,
    )
    .replace("input = \"drop\"\nsplit", "input = \"drop2\"\nsplit")
}

/// The last epoch's val loss of a point's stage, read from the store.
fn val_loss(p: &Project, point: &str, stage: &str) -> f64 {
    let status = p.ok_json(&["status", point, "--json"]);
    let h: serde_json::Value = read_json(&p.artifact(&status, stage).join("history.json"));
    h.as_array().unwrap().last().unwrap()["val_loss"]
        .as_f64()
        .unwrap()
}

#[test]
fn halving_nine_points_keeps_three_then_one_the_same_way_every_time() {
    let p = Project::new();
    let root = p.path().join("data/digits");
    digits(&root, 500);
    p.manifest("dg.toml", &halving_manifest(&root));
    let run = p.ok_json(&["run", "dg", "--json"]);
    let rungs = run["decisions"]["rungs"].as_array().unwrap().clone();
    assert_eq!(rungs.len(), 2, "{run}");
    let kept = |r: &serde_json::Value| -> Vec<String> {
        r["kept"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(kept(&rungs[0]).len(), 3);
    assert_eq!(kept(&rungs[1]).len(), 1);
    let r = runs(&run);
    assert_eq!(
        (r["train"], r["drop"], r["drop2"], r["evaluate"]),
        (9, 3, 1, 1),
        "{r:?}"
    );
    // By hand from the recorded metrics: the 3 lowest val losses after train (ties to the
    // earlier point), then the lowest of those after drop.
    let ids: Vec<String> = point_states(&run).into_iter().map(|p| p.0).collect();
    let mut after_train: Vec<(f64, usize, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (val_loss(&p, &format!("dg@{id}"), "train"), i, id.clone()))
        .collect();
    after_train.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let three: Vec<String> = after_train.iter().take(3).map(|x| x.2.clone()).collect();
    assert_eq!(kept(&rungs[0]), three);
    let mut after_drop: Vec<(f64, usize, String)> = three
        .iter()
        .map(|id| {
            let i = ids.iter().position(|x| x == id).unwrap();
            (val_loss(&p, &format!("dg@{id}"), "drop"), i, id.clone())
        })
        .collect();
    after_drop.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    assert_eq!(kept(&rungs[1]), vec![after_drop[0].2.clone()]);
    // Again: the same decisions, nothing re-run.
    let again = p.ok_json(&["run", "dg", "--json"]);
    assert_eq!(again["decisions"], run["decisions"]);
    assert!(runs(&again).values().all(|n| *n == 0), "{:?}", runs(&again));
    // status shows them, and the pruned points.
    let out = p.ok(&["status", "dg"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("halving after `train`"), "{text}");
    assert_eq!(text.matches("[pruned after train]").count(), 6, "{text}");
    // A pruned point continues from its cached train when named: no retraining.
    let pruned = after_train[8].2.clone();
    let one = p.ok_json(&["run", "dg", "--only", &pruned, "--json"]);
    let r = runs(&one);
    assert_eq!((r["train"], r["drop"], r["drop2"]), (0, 1, 1), "{r:?}");
}

#[test]
fn a_sweep_killed_mid_way_finishes_the_same_when_run_again() {
    let p = Project::with(
        "g.toml",
        &generated("\n[sweep.grid]\n\"train.lr\" = [1e-2, 2e-2]\n"),
    );
    // Killed in the second point's training, after its first epoch's checkpoint.
    kill_at_fault(&p, &["run", "g"], "train:epoch1");
    let out = p.ok(&["run", "g", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("resuming from its checkpoint at epoch 1"),
        "{err}"
    );
    let resumed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let clean = Project::with(
        "g.toml",
        &generated("\n[sweep.grid]\n\"train.lr\" = [1e-2, 2e-2]\n"),
    );
    let straight = clean.ok_json(&["run", "g", "--json"]);
    let outputs = |r: &serde_json::Value| -> Vec<String> {
        r["points"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| {
                p[2].as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["output"].as_str().unwrap_or("").to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert_eq!(outputs(&resumed), outputs(&straight));
}

#[test]
fn only_selects_points_by_value() {
    let p = Project::with(
        "g.toml",
        &generated(
            "\n[sweep.grid]\n\"train.lr\" = [1e-3, 1e-2, 5e-3]\n\"train.batch_size\" = [8, 16]\n",
        ),
    );
    let run = p.ok_json(&["run", "g", "--only", "lr<1e-2,batch_size=16", "--json"]);
    let ids: Vec<String> = point_states(&run).into_iter().map(|p| p.0).collect();
    assert_eq!(ids, ["lr=1e-3,batch_size=16", "lr=5e-3,batch_size=16"]);
    let err = p.fails(&["run", "g", "--only", "momentum=0.9"]);
    assert!(err.contains("`momentum` is not a swept key"), "{err}");
    let err = p.fails(&["run", "g", "--only", "lr>1"]);
    assert!(err.contains("selects no point"), "{err}");
}

#[test]
fn local_workers_run_a_sweep_with_each_shared_stage_once_and_halve_it() {
    let p = Project::with(
        "g.toml",
        &generated("\n[sweep.grid]\n\"train.lr\" = [1e-2, 2e-2, 5e-2]\n\n[sweep.halving]\nrungs = [\"train\", \"drop\"]\nmetric = \"val.loss\"\neta = 3\n"),
    );
    let out = p.ok(&["run", "g", "-j", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    // Shared stages start once (the data), each point's training once.
    assert_eq!(err.matches(":ingest started").count(), 1, "{err}");
    assert_eq!(err.matches(":hdf5 started").count(), 1, "{err}");
    assert_eq!(err.matches(":train started").count(), 3, "{err}");
    assert!(err.contains("halving after `train`"), "{err}");
    let d: serde_json::Value = read_json(&p.cache().join("sweeps/g.json"));
    let kept = d["rungs"][0]["kept"].as_array().unwrap();
    assert_eq!(kept.len(), 1, "{d}");
    // The survivor is done; in-process, the same decision.
    let survivor = format!("g@{}", kept[0].as_str().unwrap());
    let r = p.run_json(&survivor, &[]);
    assert!(states(&r).iter().all(|(_, s)| s == "cached"), "{r}");
    let again = p.ok_json(&["run", "g", "--json"]);
    assert_eq!(again["decisions"], d);
}

#[test]
fn local_workers_find_their_point_in_a_project_whose_path_holds_an_at_sign() {
    // A CI workspace such as `job@2/`: a worker is handed `<manifest path>@<point id>`.
    let p = Project {
        dir: tempfile::Builder::new().prefix("ws@2-").tempdir().unwrap(),
    };
    std::fs::create_dir_all(p.path().join("pipelines")).unwrap();
    p.manifest(
        "g.toml",
        &generated("\n[sweep.grid]\n\"train.lr\" = [1e-2, 2e-2]\n"),
    );
    let r = p.ok_json(&["run", "g", "-j", "2", "--json"]);
    let points = point_states(&r);
    assert_eq!(points.len(), 2, "{r}");
    for (id, states) in &points {
        assert!(
            states.iter().all(|(_, s)| s == "ran" || s == "cached"),
            "{id}: {states:?}"
        );
    }
    // Each point by name, in-process: all cached.
    for id in ["lr=1e-2", "lr=2e-2"] {
        let again = p.run_json(&format!("g@{id}"), &[]);
        assert!(states(&again).iter().all(|(_, s)| s == "cached"), "{again}");
    }
}

#[test]
fn gc_keeps_every_point_of_a_sweep_and_an_interrupted_points_checkpoints() {
    let p = Project::with(
        "g.toml",
        &generated("\n[sweep.grid]\n\"train.lr\" = [1e-2, 2e-2]\n"),
    );
    p.ok(&["run", "g", "--only", "lr=1e-2"]);
    // The second point is killed in its training, after its first epoch's checkpoint.
    kill_at_fault(&p, &["run", "g", "--only", "lr=2e-2"], "train:epoch1");
    // `--all` drops the runs of pipelines whose manifest is gone; a sweep's points are
    // pipelines of a manifest that is there.
    let gc = p.ok(&["gc", "--all"]);
    let said =
        String::from_utf8_lossy(&gc.stdout).to_string() + &String::from_utf8_lossy(&gc.stderr);
    assert!(
        said.contains("removed 0 artifacts, 0 keys, 0 scratch folders"),
        "{said}"
    );
    assert!(!said.contains("removed state"), "{said}");
    let out = p.ok(&["run", "g", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("resuming from its checkpoint at epoch 1"),
        "{err}"
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let states = point_states(&run);
    assert!(
        states[0].1.iter().all(|(_, s)| s == "cached"),
        "the finished point stays cached: {states:?}"
    );
    // The point whose manifest value is gone is what `--all` removes.
    p.manifest(
        "g.toml",
        &generated("\n[sweep.grid]\n\"train.lr\" = [1e-2]\n"),
    );
    let gc = p.ok(&["gc", "--all"]);
    let said =
        String::from_utf8_lossy(&gc.stdout).to_string() + &String::from_utf8_lossy(&gc.stderr);
    assert!(said.contains("removed state g@lr=2e-2 "), "{said}");
    assert!(!said.contains("g@lr=1e-2"), "{said}");
}

#[test]
fn a_point_whose_id_is_longer_than_a_file_name_runs_and_stays_cached() {
    let p = Project::new();
    let long = "x".repeat(300);
    p.manifest(
        "g.toml",
        &generated(&format!(
            "\n[sweep.grid]\n\"description\" = [\"{long}\", \"short\"]\n"
        )),
    );
    let run = p.ok_json(&["run", "g", "--json"]);
    assert_eq!(point_states(&run).len(), 2);
    let again = p.ok_json(&["run", "g", "--json"]);
    for (id, stages) in point_states(&again) {
        assert!(
            stages.iter().all(|(_, s)| s == "cached"),
            "{id}: {stages:?}"
        );
    }
    let status = p.ok(&["status", &format!("g@description={long}")]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("cached"));
}

/// A point whose name is too long for a state file keeps what its recorded runs made
/// under `gc --all`: the journal's runs are matched to the manifests by the same name the
/// state files use. (Before, they were taken for runs of a manifest gone, and the earlier
/// run's artifacts removed.)
#[test]
fn gc_all_keeps_the_recorded_runs_of_a_point_with_a_long_name() {
    let p = Project::new();
    let long = "y".repeat(300);
    let sweep = format!("\n[sweep.grid]\n\"description\" = [\"{long}\"]\n");
    p.manifest("g.toml", &generated(&sweep));
    p.ok(&["run", "g"]);
    p.manifest("g.toml", &generated(&sweep).replace("0.001", "0.002"));
    p.ok(&["run", "g"]);
    let gc = p.ok(&["gc", "--all"]);
    let said = String::from_utf8_lossy(&gc.stdout);
    assert!(said.contains("removed 0 artifacts, 0 keys"), "{said}");
}

#[test]
fn a_name_that_would_leave_the_stores_folder_or_pick_a_point_is_refused() {
    let p = Project::new();
    for (name, phrase) in [
        ("../../evil", "must not hold `/`"),
        ("a@b", "must not hold `@`"),
        (".hidden", "must not start with `.`"),
    ] {
        let text = generated("").replacen("name = \"g\"", &format!("name = {name:?}"), 1);
        p.manifest("g.toml", &text);
        let err = p.fails(&["status", "pipelines/g.toml"]);
        assert!(err.contains("g.toml:1:8") && err.contains(phrase), "{err}");
    }
    let text = generated("").replacen(
        "name = \"g\"",
        "name = \"g\"\naliases = [\"ok\", \"x/y\"]",
        1,
    );
    p.manifest("g.toml", &text);
    let err = p.fails(&["status", "g"]);
    assert!(
        err.contains("g.toml:2:18") && err.contains("an alias"),
        "{err}"
    );
    assert!(!p.cache().join("../../evil.json").exists());
}

#[test]
fn a_set_of_a_swept_key_is_refused_not_silently_overridden() {
    let p = Project::with(
        "g.toml",
        &generated("\n[sweep.grid]\n\"train.lr\" = [1e-2, 2e-2]\n"),
    );
    let err = p.fails(&["run", "g", "--set", "train.lr=1e-3", "--dry-run"]);
    assert!(
        err.contains("--set:1:1") && err.contains("`train.lr` is swept"),
        "{err}"
    );
    // Any other key may be set for every point.
    let out = p.ok(&["run", "g", "--set", "train.epochs=1", "--dry-run"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 points"));
}

#[test]
fn show_of_a_sweep_as_csv_keeps_names_clean_and_marks_the_best_in_a_column() {
    let p = Project::with(
        "g.toml",
        &generated("\n[sweep.grid]\n\"train.lr\" = [1e-2, 2e-2]\n"),
    );
    p.ok(&["run", "g"]);
    let out = p.ok(&["show", "g", "--csv"]);
    let mut r = csv::Reader::from_reader(&out.stdout[..]);
    let headers: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(&headers[..3], ["pipeline", "best", "lr"], "{headers:?}");
    let rows: Vec<Vec<String>> = r
        .records()
        .map(|x| x.unwrap().iter().map(str::to_string).collect())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][0], "g@lr=1e-2");
    assert_eq!(rows[1][0], "g@lr=2e-2");
    assert_eq!(rows.iter().filter(|r| r[1] == "*").count(), 1, "{rows:?}");
    // The JSON marks the same point.
    let json = p.ok_json(&["show", "g", "--json"]);
    let best = json
        .as_array()
        .unwrap()
        .iter()
        .position(|r| r["best"] == true);
    let marked = rows.iter().position(|r| r[1] == "*");
    assert_eq!(best, marked);
}

#[test]
fn show_marks_each_sweeps_own_best_and_no_plain_pipeline() {
    let p = Project::with(
        "g.toml",
        &generated("\n[sweep.grid]\n\"train.lr\" = [1e-2, 2e-2]\n"),
    );
    p.manifest(
        "h.toml",
        &generated("\n[sweep.grid]\n\"train.lr\" = [5e-3, 3e-2]\n")
            .replace("name = \"g\"", "name = \"h\""),
    );
    p.manifest("plain.toml", &Generated::new("plain").evaluate().text());
    p.ok(&["run", "g"]);
    p.ok(&["run", "h"]);
    p.ok(&["run", "plain"]);
    let json = p.ok_json(&["show", "--json"]);
    let rows = json.as_array().unwrap();
    let best = |prefix: &str| -> Vec<String> {
        rows.iter()
            .filter(|r| r["pipeline"].as_str().unwrap().starts_with(prefix) && r["best"] == true)
            .map(|r| r["pipeline"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(best("g@").len(), 1, "{json}");
    assert_eq!(best("h@").len(), 1, "{json}");
    assert!(best("plain").is_empty(), "{json}");
    // Each best is its sweep's top point by the default metric, rank-1.
    for prefix in ["g@", "h@"] {
        let mine: Vec<&serde_json::Value> = rows
            .iter()
            .filter(|r| r["pipeline"].as_str().unwrap().starts_with(prefix))
            .collect();
        let rank = |r: &serde_json::Value| r["evals"][0]["ranks"]["1"].as_f64().unwrap();
        let top = mine.iter().map(|r| rank(r)).fold(f64::MIN, f64::max);
        let marked = mine.iter().find(|r| r["best"] == true).unwrap();
        assert_eq!(rank(marked), top, "{prefix}: {json}");
    }
}

/// The halving decisions a run recorded (`sweeps/<sweep>.json`) are sealed over what they
/// say and the points they were made over. Edited, damaged or about another set of points,
/// they are not trusted: `status` works them out again from the results in the store (with
/// a warning when the file was damaged), so no finished point is shown pruned by an edit.
#[test]
fn halving_decisions_edited_damaged_or_stale_are_worked_out_again() {
    let grid = |lrs: &str| {
        generated(&format!(
            "\n[sweep.grid]\n\"train.lr\" = [{lrs}]\n\n[sweep.halving]\nrungs = [\"train\", \"drop\"]\nmetric = \"val.loss\"\neta = 3\n"
        ))
    };
    let p = Project::with("g.toml", &grid("1e-2, 2e-2, 5e-2"));
    let run = p.ok_json(&["run", "g", "--json"]);
    let kept = run["decisions"]["rungs"][0]["kept"][0]
        .as_str()
        .unwrap()
        .to_string();
    let file = p.cache().join("sweeps/g.json");
    let status = |p: &Project| {
        let out = p.ok(&["status", "g"]);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (text, _) = status(&p);
    let best_line = |text: &str, id: &str| {
        text.lines()
            .filter(|l| l.contains(id))
            .any(|l| l.contains("pruned"))
    };
    assert!(!best_line(&text, &kept), "{text}");
    // Edited: the kept point swapped for another.
    let mut d: serde_json::Value = read_json(&file);
    let other = d["rungs"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[0].as_str().unwrap().to_string())
        .find(|id| *id != kept)
        .unwrap();
    d["rungs"][0]["kept"] = serde_json::json!([other]);
    std::fs::write(&file, serde_json::to_vec(&d).unwrap()).unwrap();
    let (text, err) = status(&p);
    assert!(err.contains("its seal does not match"), "{err}");
    assert!(
        !best_line(&text, &kept),
        "the edit pruned the best point:\n{text}"
    );
    assert_eq!(text.matches("[pruned after train]").count(), 2, "{text}");
    // Damaged: garbage, then empty.
    for junk in [&b"{\"rungs\": [tru"[..], b""] {
        std::fs::write(&file, junk).unwrap();
        let (text, err) = status(&p);
        assert!(
            err.contains("g.json") && err.contains("worked out again"),
            "{err}"
        );
        assert_eq!(text.matches("[pruned after train]").count(), 2, "{text}");
    }
    // Stale: a point taken out of the grid. The decisions are about the two left.
    p.ok(&["run", "g"]);
    p.manifest("g.toml", &grid("1e-2, 2e-2"));
    let (text, _) = status(&p);
    assert_eq!(text.matches("[pruned after train]").count(), 1, "{text}");
    assert!(!text.contains("5e-2"), "{text}");
    // Stale: the goal turned round since the run. The best point by loss is the one
    // pruned now, as a run would decide.
    p.manifest("g.toml", &grid("1e-2, 2e-2, 5e-2"));
    p.ok(&["run", "g"]);
    let (text, _) = status(&p);
    assert!(!best_line(&text, &kept), "{text}");
    p.manifest(
        "g.toml",
        &grid("1e-2, 2e-2, 5e-2").replace("eta = 3\n", "eta = 3\ngoal = \"max\"\n"),
    );
    let (text, _) = status(&p);
    assert!(
        best_line(&text, &kept),
        "the old decision was shown:\n{text}"
    );
    assert_eq!(text.matches("[pruned after train]").count(), 2, "{text}");
}

#[test]
fn j2_splits_the_cores_between_workers_and_makes_the_same_artifacts_as_one_process() {
    let text =
        generated("\n[sweep.grid]\n\"train.lr\" = [1e-2, 2e-2]\n\"train.batch_size\" = [4, 8]\n");
    let outputs = |run: &serde_json::Value| -> BTreeMap<String, Vec<(String, String)>> {
        run["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let stages = p[2]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        let out = s["output"].as_str().unwrap_or("").to_string();
                        (s["name"].as_str().unwrap().to_string(), out)
                    })
                    .collect();
                (p[0].as_str().unwrap().to_string(), stages)
            })
            .collect()
    };
    let one = Project::with("g.toml", &text);
    let sequential = one.ok_json(&["run", "g", "--json"]);
    let two = Project::with("g.toml", &text);
    let out = two.ok(&["run", "g", "-j", "2"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    // Each worker's thread pool is its share of the cores, and says so: the data stages
    // run alone, with every core; the four trainings two at a time, with half each.
    let cores = std::thread::available_parallelism().unwrap().get();
    let each = (cores / 2).max(1);
    let threads = |n: usize| format!("{n} thread{}", if n == 1 { "" } else { "s" });
    for line in said.lines().filter(|l| l.contains(" started (")) {
        if line.contains(":ingest ") || line.contains(":hdf5 ") {
            assert!(line.contains(&format!("({},", threads(cores))), "{said}");
        }
    }
    assert!(
        said.lines()
            .filter(|l| l.contains(":train ") && l.contains(&format!("({},", threads(each))))
            .count()
            >= 2,
        "{said}"
    );
    let parallel = two.ok_json(&["run", "g", "--json"]);
    let (a, b) = (outputs(&sequential), outputs(&parallel));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "the same artifacts, bit for bit, under -j 2");
    for (point, stages) in &b {
        for (stage, out) in stages {
            assert_eq!(out.len(), 64, "{point}:{stage} has no artifact");
        }
    }
    // Each training the workers ran records the threads it had.
    for (point, stages) in &b {
        let started = said
            .lines()
            .find(|l| l.contains(&format!("g@{point}:train started (")))
            .unwrap_or_else(|| panic!("{point}: {said}"));
        let n: usize = started
            .split("started (")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{started}"));
        let train = &stages.iter().find(|s| s.0 == "train").unwrap().1;
        let timings: serde_json::Value = read_json(
            &two.cache()
                .join("artifacts")
                .join(train)
                .join("timings.json"),
        );
        let device = timings[0]["device"].as_str().unwrap();
        assert!(
            device.starts_with(&format!("cpu ({n} threads")),
            "{device}: {started}"
        );
    }
}

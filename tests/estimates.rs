//! Time estimates: after one run of the demo, a dry run with twice the epochs estimates
//! the real run within 30 % (alone in its test binary, so nothing else competes for the
//! CPU while it times).

mod common;

use common::Project;

#[test]
fn a_dry_run_with_doubled_epochs_estimates_the_real_run_within_30_percent() {
    let p = Project::new();
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/demo.toml"))
        .unwrap();
    p.manifest("demo.toml", &demo);
    // Before any run: nothing to estimate from, and it says so.
    let out = p.ok(&["run", "demo", "--dry-run"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no estimate yet"));
    p.run_json("demo", &[]);
    let log = std::fs::read_to_string(p.cache().join("timings.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 6, "one timing per stage run:\n{log}");

    let epochs = "--set=train.epochs=12"; // the demo trains 6
    let dry = p.run_json("demo", &["--dry-run", epochs]);
    let est: Vec<(String, Option<f64>)> = dry["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] != "cached")
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["estimate"].as_f64(),
            )
        })
        .collect();
    let names: Vec<&str> = est.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["train", "drop", "evaluate"]);
    assert!(est.iter().all(|e| e.1.is_some()), "{est:?}");
    let estimated: f64 = est.iter().filter_map(|e| e.1).sum();

    let real = p.run_json("demo", &[epochs]);
    let actual: f64 = real["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "ran")
        .map(|s| s["seconds"].as_f64().unwrap())
        .sum();
    let err = (estimated - actual).abs() / actual;
    assert!(
        err <= 0.30,
        "estimated {estimated:.2}s, took {actual:.2}s ({:.0} % off)",
        100.0 * err
    );
    // `status` shows the same estimate for what is stale.
    let out = p.ok(&["status", "demo", "--set", "train.epochs=24"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("[est. "), "{text}");
    assert!(
        text.contains("estimated time to bring it up to date"),
        "{text}"
    );
}

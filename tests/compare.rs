//! `pipe show` and `pipe diff` on small pipelines trained here: the table's numbers are
//! the artifacts' own, and `diff` lists exactly the keys and layers that differ.

mod common;

use common::{field, fill, read_json, stage, string_pairs, Project};
use serde_json::Value;

/// A small experiment; `extra_block` adds a named conv block, `c2` sets its filters.
fn experiment(name: &str, lr: f64, c2: usize, extra_block: bool) -> String {
    let extra = if extra_block {
        r#"{ name = "c3", cbr = [16] },"#
    } else {
        ""
    };
    fill(
        include_str!("manifests/compare_experiment.toml"),
        &[
            ("name", &name),
            ("lr", &lr),
            ("c2", &c2),
            ("extra", &extra),
            ("drop", &(lr / 10.0)),
        ],
    )
}

#[test]
fn show_reports_the_artifacts_own_numbers() {
    let p = Project::with("a.toml", &experiment("a", 0.05, 8, false));
    p.manifest("b.toml", &experiment("b", 0.01, 8, false));
    let ra = p.run_json("a", &[]);
    let rb = p.run_json("b", &[]);
    let rows = p.ok_json(&["show", "--json"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, run) in rows.iter().zip([&ra, &rb]) {
        let name = row["pipeline"].as_str().unwrap();
        // Segments: train then drop, each with its own history's last epoch.
        let segs = row["segments"].as_array().unwrap();
        assert_eq!(segs.len(), 2, "{name}");
        for seg in segs {
            let stage = seg["stage"].as_str().unwrap();
            let hist = read_json::<Value>(&p.artifact(run, stage).join("history.json"));
            let last = hist.as_array().unwrap().last().unwrap();
            for k in ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"] {
                assert_eq!(seg["last"][k], last[k], "{name}.{stage}.{k}");
            }
        }
        assert_eq!(segs[0]["epochs"], 2);
        assert_eq!(segs[1]["epochs"], 1);
        assert_eq!(segs[0]["optimizer"], "sgd");
        // Ranks: the evaluate artifact's metrics.json.
        let m = read_json::<Value>(&p.artifact(run, "test").join("metrics.json"));
        let ev = &row["evals"][0];
        assert_eq!(ev["ranks"]["1"], m["rank"]["rank-1"], "{name}");
        assert_eq!(ev["ranks"]["2"], m["rank"]["rank-2"], "{name}");
        // Size: what `pipe graph` counts; time: the key records' seconds.
        let g = p.ok_json(&["graph", name, "--json"]);
        let params = g[0]["trainable"].as_u64().unwrap() + g[0]["non_trainable"].as_u64().unwrap();
        assert_eq!(row["params"].as_u64(), Some(params));
        assert_eq!(row["macs"], g[0]["macs"]);
        let secs: f64 = ["train", "drop"]
            .iter()
            .map(|s| {
                let key = field(run, s, "key");
                read_json::<Value>(&p.cache().join("keys").join(format!("{key}.json")))["seconds"]
                    .as_f64()
                    .unwrap()
            })
            .sum();
        assert!((row["train_seconds"].as_f64().unwrap() - secs).abs() < 1e-9);
        assert_eq!(row["device"], "cpu");
        assert_eq!(row["backend"], "native");
        assert!(row["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "cached"));
    }
    // The table: equal columns go to the header; the rest, one row per pipeline.
    let out = p.cmd(&["show"]).env("COLUMNS", "200").output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.starts_with("same for all: network: net | "),
        "{table}"
    );
    assert!(table.contains("state: cached"), "{table}");
    let a_line = table.lines().find(|l| l.starts_with("a ")).unwrap();
    assert!(a_line.contains("sgd 5e-2 x2 -> 5e-3 x1"), "{table}");
    let loss = rows[0]["segments"][1]["last"]["val_loss"].as_f64().unwrap();
    assert!(a_line.contains(&format!("{loss:.4}")), "{a_line}");
    // Narrow terminals: every line fits.
    let out = p.cmd(&["show"]).env("COLUMNS", "70").output().unwrap();
    let narrow = String::from_utf8_lossy(&out.stdout).into_owned();
    for l in narrow.lines() {
        assert!(
            l.chars().count() <= 70,
            "{l:?} ({} chars)",
            l.chars().count()
        );
    }
    // CSV: a header and one line per pipeline, every column.
    let out = p.ok(&["show", "--csv"]);
    let csv = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("pipeline,network,schedule,"), "{csv}");
    assert!(lines[0].contains("test.rank1") && lines[0].contains("test.rank2"));
    // Sorting: best first; an unknown metric lists the known ones.
    let by_loss = p.ok_json(&["show", "--json", "--sort", "val.loss"]);
    let l: Vec<f64> = by_loss
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["segments"][1]["last"]["val_loss"].as_f64().unwrap())
        .collect();
    assert!(l[0] <= l[1], "{l:?}");
    let by_acc = p.ok_json(&["show", "--json", "--sort", "test.rank1"]);
    let r: Vec<f64> = by_acc
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["evals"][0]["ranks"]["1"].as_f64().unwrap())
        .collect();
    assert!(r[0] >= r[1], "{r:?}");
    let err = p.fails(&["show", "--sort", "accuracy"]);
    assert!(
        err.contains("no metric `accuracy`") && err.contains("val.acc"),
        "{err}"
    );
    // A changed manifest: its stale stages and why.
    p.manifest("b.toml", &experiment("b", 0.02, 8, false));
    let rows = p.ok_json(&["show", "b", "--json"]);
    let train = stage(&rows[0], "train");
    assert_eq!(train["state"], "stale");
    assert!(train["reasons"]
        .to_string()
        .contains("config changed: lr 0.01 -> 0.02"));
    assert!(
        rows[0]["segments"][0]["last"].is_null(),
        "no results for what would re-run"
    );
}

#[test]
fn diff_lists_exactly_the_keys_and_layers_that_differ() {
    let p = Project::with("a.toml", &experiment("a", 0.05, 8, false));
    p.manifest("b.toml", &experiment("b", 0.01, 8, false));
    p.manifest("c.toml", &experiment("c", 0.05, 12, true));
    let ra = p.run_json("a", &[]);
    let rb = p.run_json("b", &[]);

    // a vs b: the learning rates, nothing in the network; metrics side by side.
    let d = p.ok_json(&["diff", "a", "b", "--json"]);
    let keys: Vec<&str> = d["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[0].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["stages.drop.lr", "stages.train.lr"]);
    assert_eq!(d["config"][1][1], "0.05");
    assert_eq!(d["config"][1][2], "0.01");
    assert!(d["networks"].as_array().unwrap().is_empty());
    let metric = |name: &str| {
        d["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m[0] == name)
            .unwrap_or_else(|| panic!("{name} in {}", d["metrics"]))
            .clone()
    };
    let ma = read_json::<Value>(&p.artifact(&ra, "test").join("metrics.json"));
    let mb = read_json::<Value>(&p.artifact(&rb, "test").join("metrics.json"));
    assert_eq!(metric("test.rank1")[1], ma["rank"]["rank-1"]);
    assert_eq!(metric("test.rank1")[2], mb["rank"]["rank-1"]);

    // a vs c: no config key (same name of network), one block added, c2 wider.
    let d = p.ok_json(&["diff", "a", "c", "--json"]);
    let keys: Vec<&str> = d["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[0].as_str().unwrap())
        .collect();
    assert!(keys.is_empty(), "{keys:?}");
    let net = &d["networks"][0];
    assert_eq!(net["stage"], "train");
    let layers = string_pairs(&net["layers"], "change", "layer");
    let added: Vec<&str> = layers
        .iter()
        .filter(|l| l.0 == "added")
        .map(|l| l.1.as_str())
        .collect();
    assert_eq!(added, ["c3"], "{layers:?}");
    assert!(layers.iter().all(|l| l.0 != "removed"), "{layers:?}");
    let changed: Vec<&str> = layers
        .iter()
        .filter(|l| l.0 == "changed")
        .map(|l| l.1.as_str())
        .collect();
    // c2's conv has 12 filters (its batch norm and relu follow the new width), and the
    // layers after it take the wider input; c1 and the first pool are untouched.
    assert!(
        changed.iter().any(|l| l.starts_with("c2/conv2d")),
        "{changed:?}"
    );
    assert!(changed.iter().all(|l| !l.starts_with("c1/")), "{changed:?}");
    let conv = net["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"].as_str().unwrap().starts_with("c2/conv2d"))
        .unwrap();
    assert!(
        conv["detail"].as_str().unwrap().contains("filters 8 -> 12"),
        "{conv}"
    );
    // 3x3x3... c2 conv: (3*3*8 + 1) * (12 - 8) more parameters.
    assert_eq!(conv["params"], (3 * 3 * 8 + 1) * 4);
    let total: i64 = net["params"][1].as_i64().unwrap() - net["params"][0].as_i64().unwrap();
    let summed: i64 = net["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["params"].as_i64().unwrap())
        .sum();
    assert_eq!(total, summed, "the per-layer deltas add up to the total");
    let text = String::from_utf8_lossy(&p.ok(&["diff", "a", "c"]).stdout).into_owned();
    assert!(
        text.contains("+ c3") && text.contains("block of 3 layers"),
        "{text}"
    );

    // One pipeline against its last run: only the edited key.
    p.manifest(
        "a.toml",
        &experiment("a", 0.05, 8, false).replace("epochs = 2", "epochs = 3"),
    );
    let d = p.ok_json(&["diff", "a", "--json"]);
    let keys: Vec<&str> = d["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[0].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["stages.train.epochs"], "{}", d["config"]);
    assert_eq!(d["config"][0][1], "2");
    assert_eq!(d["config"][0][2], "3");
    assert!(d["a"].as_str().unwrap().ends_with("(last run)"));
    assert!(d["networks"].as_array().unwrap().is_empty());
    // A pipeline that never ran has no last run to compare with.
    let err = p.fails(&["diff", "c"]);
    assert!(err.contains("no recorded run"), "{err}");
}

/// A training stage with its network on one side only is named, not passed over as "the
/// same": `diff` compares the training stages of either side.
#[test]
fn diff_names_a_network_only_one_side_trains() {
    let extra = "\n[stages.wide]\nkind = \"train\"\ninput = \"hdf5\"\nnetwork = \"net\"\nepochs = 1\nbatch_size = 16\noptimizer = \"sgd\"\nlr = 0.01\n";
    let p = Project::with("a.toml", &experiment("a", 0.05, 8, false));
    p.manifest("b.toml", &(experiment("b", 0.05, 8, false) + extra));
    let d = p.ok_json(&["diff", "a", "b", "--json"]);
    assert_eq!(
        d["networks_one_side"],
        serde_json::json!([["wide", null, "net"]]),
        "{d}"
    );
    let text = String::from_utf8(p.ok(&["diff", "a", "b"]).stdout).unwrap();
    assert!(
        text.contains("network of `wide`: only in b (b): net"),
        "{text}"
    );
    assert!(!text.contains("networks: the same"), "{text}");
    let d = p.ok_json(&["diff", "b", "a", "--json"]);
    assert_eq!(
        d["networks_one_side"],
        serde_json::json!([["wide", "net", null]])
    );
}

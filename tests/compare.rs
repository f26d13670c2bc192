//! `pipe show` and `pipe diff` on small pipelines trained here: the table's numbers are
//! the artifacts' own, and `diff` lists exactly the keys and layers that differ.

mod common;

use common::Project;
use serde_json::Value;

/// A small experiment; `extra_block` adds a named conv block, `c2` sets its filters.
fn experiment(name: &str, lr: f64, c2: usize, extra_block: bool) -> String {
    format!(
        r#"name = "{name}"
seed = 3

[stages.ingest]
kind = "ingest"
format = "synthetic"
classes = 4
train_per_class = 20
val_per_class = 8
image_size = [20, 20]

[stages.split]
kind = "split"
input = "ingest"
test_per_class = 8

[stages.hdf5]
kind = "hdf5"
input = "split"
size = [16, 16]

[blocks.cbr]
params = ["k"]
layers = [
  {{ conv2d = {{ filters = "$k", kernel = 3 }} }},
  {{ batchnorm = {{}} }},
  {{ relu = {{}} }},
]

[networks.net]
input = [16, 16, 3]
classes = 4
layers = [
  {{ name = "c1", cbr = [8] }},
  {{ maxpool = {{ size = 2 }} }},
  {{ name = "c2", cbr = [{c2}] }},
  {extra}
  {{ global_avgpool = {{}} }},
  {{ dense = "$classes" }},
  {{ softmax = {{}} }},
]

[stages.train]
kind = "train"
input = "hdf5"
network = "net"
epochs = 2
batch_size = 16
optimizer = "sgd"
lr = {lr}
device = "cpu"

[stages.drop]
kind = "lr-drop"
from = "train"
lr = {drop}
epochs = 1

[stages.test]
kind = "evaluate"
input = "drop"
split = "test"
top_k = [1, 2]
device = "cpu"
"#,
        drop = lr / 10.0,
        extra = if extra_block {
            r#"{ name = "c3", cbr = [16] },"#
        } else {
            ""
        }
    )
}

fn json(p: &Project, args: &[&str]) -> Value {
    let out = p.ok(args);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", String::from_utf8_lossy(&out.stdout)))
}

fn artifact(p: &Project, run: &Value, stage: &str) -> std::path::PathBuf {
    let out = common::field(run, stage, "output");
    p.cache().join("artifacts").join(out)
}

fn read(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn show_reports_the_artifacts_own_numbers() {
    let p = Project::new();
    p.manifest("a.toml", &experiment("a", 0.05, 8, false));
    p.manifest("b.toml", &experiment("b", 0.01, 8, false));
    let ra = p.run_json("a", &[]);
    let rb = p.run_json("b", &[]);
    let rows = json(&p, &["show", "--json"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, run) in rows.iter().zip([&ra, &rb]) {
        let name = row["pipeline"].as_str().unwrap();
        // Segments: train then drop, each with its own history's last epoch.
        let segs = row["segments"].as_array().unwrap();
        assert_eq!(segs.len(), 2, "{name}");
        for seg in segs {
            let stage = seg["stage"].as_str().unwrap();
            let hist = read(&artifact(&p, run, stage).join("history.json"));
            let last = hist.as_array().unwrap().last().unwrap();
            for k in ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"] {
                assert_eq!(seg["last"][k], last[k], "{name}.{stage}.{k}");
            }
        }
        assert_eq!(segs[0]["epochs"], 2);
        assert_eq!(segs[1]["epochs"], 1);
        assert_eq!(segs[0]["optimizer"], "sgd");
        // Ranks: the evaluate artifact's metrics.json.
        let m = read(&artifact(&p, run, "test").join("metrics.json"));
        let ev = &row["evals"][0];
        assert_eq!(ev["ranks"]["1"], m["rank"]["rank-1"], "{name}");
        assert_eq!(ev["ranks"]["2"], m["rank"]["rank-2"], "{name}");
        // Size: what `pipe graph` counts; time: the key records' seconds.
        let g = json(&p, &["graph", name, "--json"]);
        let params = g[0]["trainable"].as_u64().unwrap() + g[0]["non_trainable"].as_u64().unwrap();
        assert_eq!(row["params"].as_u64(), Some(params));
        assert_eq!(row["macs"], g[0]["macs"]);
        let secs: f64 = ["train", "drop"]
            .iter()
            .map(|s| {
                let key = common::field(run, s, "key");
                read(&p.cache().join("keys").join(format!("{key}.json")))["seconds"]
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
    let by_loss = json(&p, &["show", "--json", "--sort", "val.loss"]);
    let l: Vec<f64> = by_loss
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["segments"][1]["last"]["val_loss"].as_f64().unwrap())
        .collect();
    assert!(l[0] <= l[1], "{l:?}");
    let by_acc = json(&p, &["show", "--json", "--sort", "test.rank1"]);
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
    let rows = json(&p, &["show", "b", "--json"]);
    let st = &rows[0]["stages"];
    let train = st
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "train")
        .unwrap();
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
    let p = Project::new();
    p.manifest("a.toml", &experiment("a", 0.05, 8, false));
    p.manifest("b.toml", &experiment("b", 0.01, 8, false));
    p.manifest("c.toml", &experiment("c", 0.05, 12, true));
    let ra = p.run_json("a", &[]);
    let rb = p.run_json("b", &[]);

    // a vs b: the learning rates, nothing in the network; metrics side by side.
    let d = json(&p, &["diff", "a", "b", "--json"]);
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
    let ma = read(&artifact(&p, &ra, "test").join("metrics.json"));
    let mb = read(&artifact(&p, &rb, "test").join("metrics.json"));
    assert_eq!(metric("test.rank1")[1], ma["rank"]["rank-1"]);
    assert_eq!(metric("test.rank1")[2], mb["rank"]["rank-1"]);

    // a vs c: no config key (same name of network), one block added, c2 wider.
    let d = json(&p, &["diff", "a", "c", "--json"]);
    let keys: Vec<&str> = d["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[0].as_str().unwrap())
        .collect();
    assert!(keys.is_empty(), "{keys:?}");
    let net = &d["networks"][0];
    assert_eq!(net["stage"], "train");
    let layers: Vec<(String, String)> = net["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["change"].as_str().unwrap().to_string(),
                l["layer"].as_str().unwrap().to_string(),
            )
        })
        .collect();
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
    let d = json(&p, &["diff", "a", "--json"]);
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

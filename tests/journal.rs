//! The run journal: every `pipe run` leaves a record (`runs/<id>.json` in the store) that
//! `pipe runs` lists, `diff`/`predict`/`run --from` name (`exp~1`), tags and notes
//! annotate, `verify` checks, `gc --keep-runs` keeps, and `--tensorboard` exports.

mod common;

use std::process::Stdio;

use common::{epochs_trained, kill_at_fault, Generated, Project};
use serde_json::Value;

fn exp() -> Generated {
    Generated::new("exp").evaluate()
}

/// `pipe runs [args] --json`, parsed: newest first.
fn runs(p: &Project, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["runs"];
    a.extend_from_slice(args);
    a.push("--json");
    p.ok_json(&a).as_array().unwrap().clone()
}

fn stage_field<'a>(rec: &'a Value, stage: &str, field: &str) -> &'a Value {
    &rec["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stage)
        .unwrap_or_else(|| panic!("no stage {stage} in {rec}"))[field]
}

#[test]
fn a_run_with_set_is_recorded_with_its_overrides_config_metrics_and_changes() {
    let p = Project::with("exp.toml", &exp().text());
    p.ok(&["run", "exp"]);
    p.ok(&["run", "exp", "--set", "train.lr=0.005"]);
    let all = runs(&p, &[]);
    assert_eq!(all.len(), 2, "{all:?}");
    let (last, first) = (&all[0], &all[1]);
    assert_eq!(last["pipeline"], "exp");
    assert_eq!(last["state"], "done");
    assert_eq!(last["sets"], serde_json::json!(["train.lr=0.005"]));
    assert_eq!(last["config"]["stages.train.lr"], "0.005");
    assert_eq!(first["config"]["stages.train.lr"], "0.01");
    assert_eq!(last["previous"], first["id"]);
    assert_eq!(
        last["changes"],
        serde_json::json!(["train.lr 0.01 -> 0.005"])
    );
    // Stages: the data cached, the training ran again; metrics read from what it made.
    assert_eq!(stage_field(last, "hdf5", "state"), "cached");
    assert_eq!(stage_field(last, "train", "state"), "ran");
    assert_ne!(
        stage_field(last, "train", "output"),
        stage_field(first, "train", "output")
    );
    for r in [first, last] {
        let acc = r["metrics"]["val.acc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{r}");
        assert!(r["metrics"]["evaluate.rank1"].as_f64().is_some(), "{r}");
        assert!(r["metrics"]["train.val_loss"].as_f64().is_some(), "{r}");
        assert!(r["ended"].as_str().is_some() && r["seconds"].as_f64().is_some());
        assert_eq!(r["host"]["cores"].as_u64().unwrap() as usize, num_cpus());
        assert_eq!(r["backend"], "native");
        assert_eq!(r["executor"], "in-process");
    }
    // The ids sort by time and name the record files.
    let id = last["id"].as_str().unwrap();
    assert!(p.cache().join("runs").join(format!("{id}.json")).is_file());
    assert!(id > first["id"].as_str().unwrap() || id[..15] == first["id"].as_str().unwrap()[..15]);
    // The table says what changed; --where filters on config keys and metrics.
    let table = String::from_utf8(p.ok(&["runs", "exp"]).stdout).unwrap();
    assert!(table.contains("train.lr 0.01 -> 0.005"), "{table}");
    assert!(table.contains("(first run)"), "{table}");
    assert_eq!(runs(&p, &["--where", "lr<0.01"]).len(), 1);
    assert_eq!(
        runs(&p, &["--where", "train.lr=0.01"])[0]["id"],
        first["id"]
    );
    assert_eq!(runs(&p, &["--where", "val.acc>=0"]).len(), 2);
    assert_eq!(runs(&p, &["--where", "val.acc>1.5"]).len(), 0);
    assert_eq!(runs(&p, &["--limit", "1"])[0]["id"], last["id"]);
    assert_eq!(runs(&p, &["--since", "1h"]).len(), 2);
    assert_eq!(runs(&p, &["--since", "2999-01-01"]).len(), 0);
    assert_eq!(runs(&p, &["other"]).len(), 0);
    assert_eq!(runs(&p, &["--limit", "0"]).len(), 0);
    let e = p.fails(&["runs", "--since", "yesterday"]);
    assert!(e.contains("--since `yesterday`"), "{e}");
    // A span too long for a date, a last letter of more than one byte, a negative span:
    // each an error naming the value, never a panic.
    for bad in ["999999999999w", "3é", "-3d"] {
        let e = p.fails(&["runs", &format!("--since={bad}")]);
        assert!(e.contains(&format!("--since `{bad}`")), "{bad}: {e}");
        assert!(!e.contains("panicked"), "{bad}: {e}");
    }
    let e = p.fails(&["runs", "--where", "lr"]);
    assert!(e.contains("error: --where `lr`: expected KEY=VALUE"), "{e}");
    // CSV: a header and one row per run, the lr column holding each run's value.
    let csv = String::from_utf8(p.ok(&["runs", "--csv"]).stdout).unwrap();
    let mut rdr = csv::Reader::from_reader(csv.as_bytes());
    let head = rdr.headers().unwrap().clone();
    let col = head.iter().position(|h| h == "stages.train.lr").unwrap();
    let lrs: Vec<String> = rdr.records().map(|r| r.unwrap()[col].to_string()).collect();
    assert_eq!(lrs, ["0.005", "0.01"]);
    // Tags and notes sit beside the record; the record itself is not changed.
    let rec_path = p.cache().join("runs").join(format!("{id}.json"));
    let before = std::fs::read(&rec_path).unwrap();
    p.ok(&["tag", "exp~0", "baseline"]);
    // The shortest prefix past the time that names this run alone: two runs in one
    // second may share the first hex digits of their random part.
    let other = first["id"].as_str().unwrap();
    let common = id
        .bytes()
        .zip(other.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let prefix = &id[..(common + 1).max(17)];
    p.ok(&["note", &format!("exp@{prefix}"), "lower lr: same accuracy"]);
    assert_eq!(std::fs::read(&rec_path).unwrap(), before);
    // A note torn by a crash mid-append does not take the next one with it.
    let notes = p.cache().join("runs").join(format!("{id}.notes.jsonl"));
    let mut torn = std::fs::read(&notes).unwrap();
    torn.extend_from_slice(b"{\"kind\": \"note\", \"te");
    std::fs::write(&notes, torn).unwrap();
    p.ok(&["note", id, "after the crash"]);
    let tagged = runs(&p, &["--where", "tag=baseline"]);
    assert_eq!(tagged.len(), 1);
    assert_eq!(tagged[0]["id"], last["id"]);
    // The untagged run has no tag `baseline`.
    let others = runs(&p, &["--where", "tag!=baseline"]);
    assert_eq!(others.len(), 1);
    assert_eq!(others[0]["id"], first["id"]);
    assert_eq!(runs(&p, &["--where", "tag!=other"]).len(), 2);
    let any = runs(&p, &["--where", "tag!="]);
    assert_eq!(any.len(), 1);
    assert_eq!(any[0]["id"], last["id"]);
    assert_eq!(
        tagged[0]["notes"],
        serde_json::json!(["lower lr: same accuracy", "after the crash"])
    );
    let e = p.fails(&["tag", "exp~5", "x"]);
    assert!(e.contains("exp~5") && e.contains("2 recorded run"), "{e}");
    let e = p.fails(&["tag", "nothing", "x"]);
    assert!(e.contains("names no run"), "{e}");
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().unwrap().get()
}

#[test]
fn after_an_edit_the_previous_run_stays_and_diff_names_the_change_and_from_reruns_it() {
    let p = Project::with("exp.toml", &exp().text());
    let first = p.run_json("exp", &[]);
    let keys =
        |r: &Value| -> Vec<(String, String)> { common::string_pairs(&r["stages"], "name", "key") };
    p.manifest("exp.toml", &exp().text().replace("lr = 0.01", "lr = 0.02"));
    p.ok(&["run", "exp"]);
    let all = runs(&p, &["exp"]);
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[1]["config"]["stages.train.lr"], "0.01",
        "the old run is kept as it ran"
    );
    // The recorded manifest text is the old one.
    let d = String::from_utf8(p.ok(&["diff", "exp~1", "exp"]).stdout).unwrap();
    assert!(d.contains("stages.train.lr"), "{d}");
    assert!(d.contains("0.01") && d.contains("0.02"), "{d}");
    let dj = p.ok_json(&["diff", "exp~1", "exp~0", "--json"]);
    let text = dj.to_string();
    assert!(text.contains("stages.train.lr"), "{dj}");
    // `show` shows a recorded run as it ran, beside the pipeline as it stands.
    let rows = p.ok_json(&["show", "exp~1", "exp", "--json"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let old = rows
        .iter()
        .find(|r| r["pipeline"].as_str().unwrap().starts_with("exp@"))
        .unwrap();
    assert_eq!(old["segments"][0]["lr"], 0.01, "{old}");
    assert_eq!(
        old["segments"][0]["last"]["val_acc"].as_f64(),
        all[1]["metrics"]["val.acc"].as_f64()
    );
    assert_eq!(
        old["evals"][0]["ranks"]["1"].as_f64(),
        all[1]["metrics"]["rank1"].as_f64()
    );
    let now = rows.iter().find(|r| r["pipeline"] == "exp").unwrap();
    assert_eq!(now["segments"][0]["lr"], 0.02);
    // `run --from` re-runs the old configuration from its recorded text: every key is
    // the original run's, and everything is cached.
    let again = p.ok_json(&["run", "--from", "exp~1", "--json"]);
    assert_eq!(keys(&again), keys(&first));
    for s in again["stages"].as_array().unwrap() {
        assert_eq!(s["state"], "cached", "{s}");
    }
    let newest = &runs(&p, &["exp"])[0];
    assert_eq!(newest["config"]["stages.train.lr"], "0.01");
    assert_eq!(
        newest["changes"],
        serde_json::json!(["train.lr 0.02 -> 0.01"])
    );
    // It works with the manifest gone, too.
    std::fs::remove_file(p.path().join("pipelines/exp.toml")).unwrap();
    let again = p.ok_json(&["run", "--from", "exp~2", "--json"]);
    assert_eq!(keys(&again), keys(&first));
    // predict and export take a past run's model.
    let img = p.path().join("x.png");
    image::RgbImage::from_pixel(16, 16, image::Rgb([200, 10, 10]))
        .save(&img)
        .unwrap();
    let out = p.ok(&["predict", "exp~0", img.to_str().unwrap(), "--json"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"class\""));
    p.ok(&[
        "export",
        "exp~0:train",
        "-o",
        p.path().join("m.onnx").to_str().unwrap(),
    ]);
    assert!(p.path().join("m.onnx").metadata().unwrap().len() > 100);
}

#[test]
fn a_killed_run_is_interrupted_and_concurrent_runs_leave_a_record_each() {
    let p = Project::with(
        "t.toml",
        &Generated::new("t").epochs(3).checkpoints().text(),
    );
    p.manifest("u.toml", &Generated::new("u").epochs(1).text());
    kill_at_fault(&p, &["run", "t"], "train:epoch2");
    let r = &runs(&p, &[])[0];
    assert_eq!(r["state"], "interrupted", "{r}");
    assert_eq!(stage_field(r, "train", "state"), "interrupted", "{r}");
    assert_eq!(stage_field(r, "hdf5", "state"), "ran", "{r}");
    assert!(r["ended"].is_null());
    let table = String::from_utf8(p.ok(&["runs"]).stdout).unwrap();
    assert!(table.contains("interrupted"), "{table}");
    // Two at once: two records, both done (the store lock serialises the work).
    let spawn = |name: &str| {
        p.cmd(&["run", name])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("t"), spawn("u"));
    for c in [a, b] {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let all = runs(&p, &[]);
    assert_eq!(all.len(), 3, "{all:?}");
    let mut ids: Vec<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    for r in &all[..2] {
        assert_eq!(r["state"], "done", "{r}");
    }
    // The resumed training of t says so in its record: it ran, from its checkpoint.
    let t = all
        .iter()
        .find(|r| r["pipeline"] == "t" && r["state"] == "done")
        .unwrap();
    assert_eq!(stage_field(t, "train", "state"), "ran");
}

/// A run with `--set`, killed mid-training: the manifest as it is resolves to another key,
/// but `pipe gc` keeps the killed stage's checkpoints for its recorded run, and
/// `run --from` that run resumes where it stopped. Once the run is past `--keep-runs`,
/// they go. (Before, plain `gc` removed them: the training started over.)
#[test]
fn gc_keeps_a_killed_set_runs_checkpoints_and_run_from_resumes_it() {
    let p = Project::with(
        "t.toml",
        &Generated::new("t").epochs(3).checkpoints().text(),
    );
    kill_at_fault(&p, &["run", "t", "--set", "train.lr=0.02"], "train:epoch2");
    let scratch_dirs = |p: &Project| {
        std::fs::read_dir(p.cache().join("scratch"))
            .unwrap()
            .count()
    };
    assert_eq!(scratch_dirs(&p), 1);
    let out = p.ok(&["gc"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0 scratch folders"), "{text}");
    assert_eq!(scratch_dirs(&p), 1);
    let out = p.ok(&["run", "--from", "t~0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("resuming from its checkpoint at epoch 2"),
        "{err}"
    );
    assert_eq!(epochs_trained(&err, "train"), [3], "{err}");
    // Killed again; with no run kept, its checkpoints are removed.
    kill_at_fault(&p, &["run", "t", "--set", "train.lr=0.03"], "train:epoch2");
    let out = p.ok(&["gc", "--keep-runs", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0 scratch folders"), "{text}");
    let out = p.ok(&["gc", "--keep-runs", "0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 scratch folders"), "{text}");
}

/// The same under `-j`: the parent, killed with its worker, never wrote the keys of the
/// stages it had not finished; gc resolves them from the record and keeps the training's
/// checkpoints, and `run --from` resumes.
#[test]
fn gc_keeps_the_checkpoints_of_a_killed_parallel_run() {
    use std::os::unix::process::CommandExt;
    let p = Project::with(
        "t.toml",
        &Generated::new("t").epochs(3).checkpoints().text(),
    );
    // The worker's output goes to its log, not here: its second checkpoint's hash file
    // (written before the fault point) says it got there.
    let mut child = p
        .cmd(&["run", "t", "-j", "1", "--set", "train.lr=0.02"])
        .env("PIPE_FAULT", "train:epoch2")
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reached = || {
        std::fs::read_dir(p.cache().join("scratch"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| {
                d.path()
                    .join("checkpoints/epoch_2.safetensors.blake3")
                    .exists()
            })
    };
    let t0 = std::time::Instant::now();
    while !reached() {
        assert!(
            t0.elapsed().as_secs() < 300,
            "the worker never reached epoch 2"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let group = format!("-{}", child.id());
    let killed = std::process::Command::new("kill")
        .args(["-KILL", "--", &group])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap();
    let r = &runs(&p, &[])[0];
    assert_eq!(r["state"], "interrupted", "{r}");
    let out = p.ok(&["gc"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0 scratch folders"), "{text}");
    let out = p.ok(&["run", "--from", "t~0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("resuming from its checkpoint at epoch 2"),
        "{err}"
    );
}

/// A run record whose trained stage names its artifact but no valid key (damaged, edited
/// by hand, pulled from elsewhere): `export` of that run is an error naming the stage, not
/// a panic.
#[test]
fn a_record_whose_stage_has_an_output_but_no_key_is_an_error() {
    let p = Project::with("exp.toml", &exp().text());
    p.ok(&["run", "exp"]);
    let id = runs(&p, &[])[0]["id"].as_str().unwrap().to_string();
    let path = p.cache().join("runs").join(format!("{id}.json"));
    let mut rec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for s in rec["stages"].as_array_mut().unwrap() {
        if s["name"] == "train" {
            s["key"] = Value::Null;
        }
    }
    std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
    let onnx = p.path().join("m.onnx");
    let e = p.fails(&["export", "exp~0:train", "-o", onnx.to_str().unwrap()]);
    assert!(
        e.contains("stage `train`") && e.contains("no valid stage key"),
        "{e}"
    );
    assert!(!onnx.exists());
}

#[test]
fn a_damaged_record_is_skipped_with_a_warning_and_verify_names_it() {
    let p = Project::with("exp.toml", &exp().text());
    p.ok(&["run", "exp"]);
    p.ok(&["run", "exp", "--set", "train.epochs=1"]);
    let all = runs(&p, &[]);
    let id = all[1]["id"].as_str().unwrap().to_string();
    let path = p.cache().join("runs").join(format!("{id}.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    let out = p.ok(&["runs", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{id}.json")) && err.contains("damaged"),
        "{err}"
    );
    let v = p.cmd(&["verify"]).output().unwrap();
    assert!(!v.status.success());
    let said = String::from_utf8_lossy(&v.stdout).to_string() + &String::from_utf8_lossy(&v.stderr);
    assert!(said.contains(&format!("{id}.json")), "{said}");
    // exp~1 now names the older sound run: none (the damaged one is skipped).
    let e = p.fails(&["diff", "exp~1", "exp"]);
    assert!(
        e.contains("1 recorded run") && e.contains("1 damaged record"),
        "{e}"
    );
    // The newest record damaged: `exp~0` could be it, so no older run is taken in its place.
    let newest = all[0]["id"].as_str().unwrap().to_string();
    let newest_path = p.cache().join("runs").join(format!("{newest}.json"));
    let newest_text = std::fs::read(&newest_path).unwrap();
    std::fs::write(&path, &text).unwrap();
    std::fs::write(&newest_path, b"{\"format\": 1, \"id\"").unwrap();
    let e = p.fails(&["tag", "exp~0", "x"]);
    assert!(
        e.contains(&format!("{newest}.json")) && e.contains("damaged") && e.contains(&id),
        "{e}"
    );
    // By its id, the older run is named all the same.
    p.ok(&["tag", &id, "x"]);
    // A FIFO and a link to a device where records are: each skipped, named, at once.
    std::fs::write(&newest_path, &newest_text).unwrap();
    let runs_dir = p.cache().join("runs");
    let fifo = runs_dir.join("20260101-000000-aaaa.json");
    common::mkfifo(&fifo);
    std::os::unix::fs::symlink("/dev/zero", runs_dir.join("20260101-000000-bbbb.json")).unwrap();
    let out = p.ok(&["runs", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("20260101-000000-aaaa.json") && err.contains("20260101-000000-bbbb.json"),
        "{err}"
    );
    std::fs::remove_file(&fifo).unwrap();
    std::fs::remove_file(runs_dir.join("20260101-000000-bbbb.json")).unwrap();
    // A record whose manifest texts were damaged: verify says so.
    std::fs::write(&path, text).unwrap();
    let src = all[0]["sources"].as_str().unwrap();
    let src_path = p.cache().join("runs/sources").join(format!("{src}.json"));
    std::fs::write(&src_path, b"{}").unwrap();
    let v = p.cmd(&["verify"]).output().unwrap();
    assert!(!v.status.success());
    let said = String::from_utf8_lossy(&v.stdout).to_string();
    assert!(
        said.contains("manifest texts") && said.contains("damaged"),
        "{said}"
    );
}

#[test]
fn gc_keeps_the_last_runs_and_marks_older_records_collected() {
    let p = Project::with("exp.toml", &exp().text());
    p.ok(&["run", "exp"]);
    let old_train = stage_field(&runs(&p, &[])[0], "train", "output")
        .as_str()
        .unwrap()
        .to_string();
    p.manifest("exp.toml", &exp().text().replace("lr = 0.01", "lr = 0.02"));
    p.ok(&["run", "exp"]);
    let artifact = p.cache().join("artifacts").join(&old_train);
    // The default keeps the last 5 runs' artifacts: the old training stays.
    p.ok(&["gc"]);
    assert!(artifact.is_dir());
    // Keeping one run: the old one's training goes; its record stays, marked.
    p.ok(&["gc", "--keep-runs", "1"]);
    assert!(!artifact.exists());
    let all = runs(&p, &[]);
    assert_eq!(all.len(), 2);
    assert!(
        all[1]["collected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "train"),
        "{}",
        all[1]
    );
    assert!(all[0].get("collected").is_none(), "{}", all[0]);
}

#[test]
fn tensorboard_files_read_back_with_tensorboards_own_reader() {
    let p = Project::with("exp.toml", &exp().epochs(3).text());
    p.ok(&["run", "exp"]);
    p.ok(&["run", "exp", "--set", "train.lr=0.02"]);
    let tb = p.path().join("tb");
    p.ok(&["runs", "exp", "--tensorboard", tb.to_str().unwrap()]);
    let all = runs(&p, &[]);
    // The expected values, from the records and the artifacts' histories.
    let mut expect = serde_json::Map::new();
    for r in &all {
        let out = stage_field(r, "train", "output").as_str().unwrap();
        let hist: Value =
            common::read_json(&p.cache().join("artifacts").join(out).join("history.json"));
        let timings: Value =
            common::read_json(&p.cache().join("artifacts").join(out).join("timings.json"));
        let seconds: Vec<f64> = timings
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["seconds"].as_f64().unwrap())
            .collect();
        assert!(
            seconds.len() == 3 && seconds.iter().all(|s| *s > 0.0),
            "{timings}"
        );
        expect.insert(
            format!("exp.{}", r["id"].as_str().unwrap()),
            serde_json::json!({"history": hist, "seconds": seconds, "rank1": r["metrics"]["rank1"], "lr": r["config"]["stages.train.lr"]}),
        );
    }
    let script = r#"
import json, os, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
root, expect = sys.argv[1], json.loads(sys.argv[2])
assert sorted(os.listdir(root)) == sorted(expect), (os.listdir(root), list(expect))
for run, want in expect.items():
    ea = EventAccumulator(os.path.join(root, run), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()["scalars"]
    for t in ["loss", "accuracy", "val_loss", "val_accuracy", "lr", "final/rank1"]:
        assert t in tags, (t, tags)
    hist = want["history"]
    loss = ea.Scalars("loss")
    assert [s.step for s in loss] == [h["epoch"] for h in hist], loss
    for s, h in zip(loss, hist):
        assert abs(s.value - h["train_loss"]) <= 1e-6 * max(1.0, abs(h["train_loss"])), (s, h)
    for s, h in zip(ea.Scalars("val_accuracy"), hist):
        assert abs(s.value - h["val_acc"]) < 1e-6, (s, h)
    for s, h in zip(ea.Scalars("lr"), hist):
        assert abs(s.value - h["lr"]) < 1e-9 + 1e-6 * h["lr"], (s, h)
    assert abs(ea.Scalars("final/rank1")[0].value - want["rank1"]) < 1e-6
    content = ea.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert abs(hp["train.lr"].number_value - float(want["lr"])) < 1e-12, hp
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
    assert end.session_end_info.status == 1, end
    # Wall times: the run's start plus the training seconds up to each epoch's end.
    t0, total = start.session_start_info.start_time_secs, 0.0
    for s, secs in zip(loss, want["seconds"]):
        total += secs
        assert abs(s.wall_time - (t0 + total)) < 1e-3, (s.wall_time, t0, total)
print("ok", len(expect))
"#;
    let py = common::python();
    let out = std::process::Command::new(&py)
        .args([
            "-c",
            script,
            tb.to_str().unwrap(),
            &Value::Object(expect).to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 2");
}

#[test]
fn the_dashboard_shows_a_set_run_live_and_a_past_run_after_an_edit() {
    let p = Project::with("exp.toml", &exp().epochs(3).checkpoints().text());
    p.ok(&["run", "exp"]);
    // A run with --set, stalled in its second epoch: the journal shows it running, with
    // its override, and its curve so far (read from its scratch).
    let (mut child, _err, _) = common::spawn_to_fault(
        p.cmd(&["run", "exp", "--set", "train.lr=0.03"]),
        "train:epoch2",
    );
    let (ui, _) = common::Ui::start(&p, &[]);
    let all = ui.json("/api/journal");
    let live = &all.as_array().unwrap()[0];
    assert_eq!(live["state"], "running", "{live}");
    assert_eq!(live["sets"], serde_json::json!(["train.lr=0.03"]));
    let id = live["id"].as_str().unwrap();
    let one = ui.json(&format!("/api/journal/{id}"));
    // The fault point is reached after epoch 2 is written.
    assert_eq!(one["epochs"].as_array().unwrap().len(), 2, "{one}");
    assert_eq!(one["epochs"][0]["lr"], 0.03);
    let (status, page) = ui.get(&format!("/journal/{id}"));
    assert_eq!(status, 200);
    assert!(
        page.contains("train.lr=0.03") && page.contains("running"),
        "{page}"
    );
    let (status, page) = ui.get("/journal");
    assert_eq!(status, 200);
    assert!(page.contains(id), "{page}");
    child.kill().unwrap();
    child.wait().unwrap();
    // After an edit, the first run's page still shows its curves and metrics as they were.
    p.manifest("exp.toml", &exp().epochs(2).text());
    let first = all.as_array().unwrap()[1]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let past = ui.json(&format!("/api/journal/{first}"));
    assert_eq!(past["epochs"].as_array().unwrap().len(), 3);
    assert_eq!(past["record"]["config"]["stages.train.epochs"], "3");
    let after = ui.json("/api/journal");
    let killed = after
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap();
    assert_eq!(killed["state"], "interrupted");
    let (status, _) = ui.get("/journal/..%2f..%2fetc");
    assert_eq!(status, 404);
    let (status, _) = ui.get("/journal/20990101-000000-0000");
    assert_eq!(status, 404);
    // A record that is there and does not read: said so, naming its file; not "no run".
    let path = p.cache().join("runs").join(format!("{first}.json"));
    std::fs::write(&path, b"{\"id\": ").unwrap();
    let (status, page) = ui.get(&format!("/journal/{first}"));
    assert_eq!(status, 500, "{page}");
    assert!(
        page.contains("damaged") && page.contains(&format!("{first}.json")),
        "{page}"
    );
}

#[test]
fn a_halved_sweep_leaves_one_record_per_point_with_its_fate() {
    let text = Generated::new("hv").drop("0.001", 1).evaluate().text()
        + "\n[sweep.grid]\n\"train.lr\" = [0.01, 0.02, 0.05]\n\n[sweep.halving]\nrungs = [\"train\", \"drop\"]\nmetric = \"val.loss\"\neta = 3\n";
    let p = Project::with("hv.toml", &text);
    p.ok(&["run", "hv"]);
    let all = runs(&p, &["hv"]);
    assert_eq!(all.len(), 3, "one record per point: {all:?}");
    let pruned: Vec<&Value> = all
        .iter()
        .filter(|r| r["remark"].as_str().is_some())
        .collect();
    assert_eq!(pruned.len(), 2, "{all:?}");
    for r in &pruned {
        assert_eq!(r["remark"], "pruned after train");
        assert_eq!(stage_field(r, "drop", "state"), "skipped", "{r}");
    }
    let kept = all.iter().find(|r| r["remark"].is_null()).unwrap();
    assert_eq!(stage_field(kept, "evaluate", "state"), "ran", "{kept}");
    assert!(kept["metrics"]["rank1"].as_f64().is_some());
    for r in &all {
        assert_eq!(r["sweep"], "hv");
        assert_eq!(r["state"], "done");
        assert!(r["pipeline"].as_str().unwrap().starts_with("hv@"));
    }
    // A point is a run reference's pipeline too.
    let name = kept["pipeline"].as_str().unwrap();
    let again = runs(&p, &[name]);
    assert_eq!(again.len(), 1);
}

#[test]
fn run_from_after_its_dataset_changed_names_the_stages_that_differ_from_the_run() {
    let (p, root) = Project::with_tiny_imagenet("tiny", 3, 6, 2);
    p.manifest("exp.toml", &common::tiny_manifest(&root, 2));
    p.ok(&["run", "exp"]);
    let id = runs(&p, &["exp"])[0]["id"].as_str().unwrap().to_string();
    // Nothing changed: no warning, and every stage is cached.
    let out = p.ok(&["run", "--from", &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("warning"), "{err}");
    assert!(err.contains("nothing to do"), "{err}");
    // One image rewritten: the run's keys cannot be had again, and it says which stages
    // run on today's inputs before it runs them.
    let images = root.join("train/n00001000/images");
    std::fs::copy(
        images.join("n00001000_1.JPEG"),
        images.join("n00001000_0.JPEG"),
    )
    .unwrap();
    let out = p.ok(&["run", "--from", &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    let warning = err
        .lines()
        .find(|l| l.starts_with("warning: ingest"))
        .unwrap_or_else(|| panic!("no warning:\n{err}"));
    assert!(
        warning.starts_with(&format!(
            "warning: ingest: what it reads changed since run {id}"
        )) && warning.contains("the stages after it"),
        "{warning}"
    );
    assert!(
        err.find("warning: ingest").unwrap() < err.find("ingest       running").unwrap(),
        "{err}"
    );
}

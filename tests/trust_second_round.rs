//! Issue 15, the store's second round of trust: ways to lose data, to publish a result
//! under a key that does not vouch for it, or to hang — each pinned by a test on data it
//! builds. (Manifest mistakes refused early are cases of the corpus, tests/corpus.)

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Data stages and a short training, on generated images.
const DATA: &str = r#"name = "t"
seed = 3

[stages.ingest]
format = "synthetic"
classes = 3
train_per_class = 12
val_per_class = 4
image_size = [16, 16]

[stages.split]
input = "ingest"
test_per_class = 2

[stages.hdf5]
input = "split"

[networks.tiny]
input = [16, 16, 3]
classes = 3
layers = [
  { conv2d = { filters = 4, kernel = 3 } },
  { relu = {} },
  { global_avgpool = {} },
  { dense = "$classes" },
  { softmax = {} },
]

[stages.train]
input = "hdf5"
network = "tiny"
epochs = 4
batch_size = 8
lr = 0.01
checkpoint_every = 1
"#;

fn artifacts(cache: &Path) -> BTreeSet<String> {
    std::fs::read_dir(cache.join("artifacts"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `pipe` run in folder `dir` (not a project), with `args`.
fn pipe_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(args)
        .current_dir(dir)
        .env_remove("PIPE_CACHE")
        .env_remove("PIPE_FAULT")
        .output()
        .unwrap()
}

/// The artifact names a `gc` listing mentions (`removed artifact 1a2b3c4d5e6f ...`).
fn listed(stdout: &str) -> BTreeSet<String> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l
                .strip_prefix("removed artifact ")
                .or_else(|| l.strip_prefix("would remove artifact "))?;
            Some(rest.split_whitespace().next()?.to_string())
        })
        .collect()
}

#[test]
fn gc_from_another_folder_keeps_what_the_stores_projects_use() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    p.run_json("t", &["--until", "hdf5"]);
    let all = artifacts(&p.cache());
    assert_eq!(all.len(), 3);
    let cache = p.cache().display().to_string();
    let elsewhere = tempfile::tempdir().unwrap();

    // From a folder with no pipelines/ (what used to wipe the store): nothing goes.
    let out = pipe_in(elsewhere.path(), &["gc", "--cache", &cache]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed 0 artifacts"), "{text}");
    assert!(
        text.contains(&p.path().join("pipelines").display().to_string()),
        "{text}"
    );
    assert_eq!(artifacts(&p.cache()), all);

    // A superseded run's split and hdf5 are what gc removes; the dry run lists the same.
    p.manifest(
        "t.toml",
        &DATA.replace("test_per_class = 2", "test_per_class = 1"),
    );
    p.run_json("t", &["--until", "hdf5"]);
    assert_eq!(artifacts(&p.cache()).len(), 5);
    let dry = pipe_in(elsewhere.path(), &["gc", "--cache", &cache, "--dry-run"]);
    assert!(dry.status.success());
    let dry_list = listed(&String::from_utf8_lossy(&dry.stdout));
    assert_eq!(
        dry_list.len(),
        2,
        "{}",
        String::from_utf8_lossy(&dry.stdout)
    );
    assert_eq!(artifacts(&p.cache()).len(), 5, "a dry run removes nothing");
    let real = pipe_in(elsewhere.path(), &["gc", "--cache", &cache]);
    assert!(real.status.success());
    assert_eq!(listed(&String::from_utf8_lossy(&real.stdout)), dry_list);
    let left = artifacts(&p.cache());
    assert_eq!(left.len(), 3);
    assert!(dry_list
        .iter()
        .all(|short| !left.iter().any(|a| a.starts_with(short))));
    let r = p.run_json("t", &["--until", "hdf5"]);
    for stage in ["ingest", "split", "hdf5"] {
        assert_eq!(state_of(&r, stage), "cached");
    }
}

#[test]
fn gc_refuses_when_it_cannot_find_the_stores_manifests() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    p.run_json("t", &["--until", "split"]);
    let elsewhere = tempfile::tempdir().unwrap();
    // A copy of the store somewhere else, with no record of its project.
    let copy = elsewhere.path().join("store");
    let status = Command::new("cp")
        .args([
            "-a",
            &p.cache().display().to_string(),
            &copy.display().to_string(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_file(copy.join("projects.json")).unwrap();
    let before = artifacts(&copy);
    let out = pipe_in(
        elsewhere.path(),
        &["gc", "--cache", &copy.display().to_string()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gc refuses"), "{err}");
    assert!(err.contains("records no project"), "{err}");
    assert!(err.contains("--pipelines"), "{err}");
    assert_eq!(artifacts(&copy), before);
    // Told where the manifests are, it cleans (and keeps what they use).
    let pipelines = p.path().join("pipelines").display().to_string();
    let out = pipe_in(
        elsewhere.path(),
        &[
            "gc",
            "--cache",
            &copy.display().to_string(),
            "--pipelines",
            &pipelines,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(artifacts(&copy), before);

    // A recorded manifest folder that is gone: refused, naming it.
    let moved = p.path().join("pipelines-moved");
    std::fs::rename(p.path().join("pipelines"), &moved).unwrap();
    let out = pipe_in(
        elsewhere.path(),
        &["gc", "--cache", &p.cache().display().to_string()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&p.path().join("pipelines").display().to_string()),
        "{err}"
    );
    assert!(err.contains("which is gone"), "{err}");
    std::fs::rename(&moved, p.path().join("pipelines")).unwrap();
}

#[test]
fn gc_counts_every_project_that_shares_a_store_and_pipelines_adds_to_them() {
    // Two projects run against one store; the second one's manifests move.
    let shared = tempfile::tempdir().unwrap();
    let store = shared.path().join("store").display().to_string();
    let a = Project::new();
    a.manifest("t.toml", DATA);
    a.ok(&["run", "t", "--until", "hdf5", "--cache", &store]);
    let b = Project::new();
    b.manifest(
        "u.toml",
        &DATA
            .replace("name = \"t\"", "name = \"u\"")
            .replace("test_per_class = 2", "test_per_class = 1"),
    );
    b.ok(&["run", "u", "--until", "hdf5", "--cache", &store]);
    let cache = shared.path().join("store");
    assert_eq!(artifacts(&cache).len(), 5);
    // From a's folder, gc counts b's manifests too: nothing goes.
    let out = a.ok(&["gc", "--cache", &store]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 0 artifacts"));
    assert_eq!(artifacts(&cache).len(), 5);
    // b's manifests move: refused; told where they are now, gc counts them and a's.
    let moved = b.path().join("moved/pipelines");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(b.path().join("pipelines"), &moved).unwrap();
    let err = a.fails(&["gc", "--cache", &store]);
    assert!(err.contains("which is gone"), "{err}");
    let out = a.ok(&[
        "gc",
        "--cache",
        &store,
        "--all",
        "--pipelines",
        &moved.display().to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed 0 artifacts"), "{text}");
    assert_eq!(artifacts(&cache).len(), 5);
}

#[test]
fn a_recorded_run_whose_manifest_is_gone_is_kept_unless_all() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    p.manifest(
        "other.toml",
        &DATA
            .replace("name = \"t\"", "name = \"other\"")
            .replace("test_per_class = 2", "test_per_class = 1"),
    );
    p.run_json("t", &["--until", "hdf5"]);
    p.run_json("other", &["--until", "hdf5"]);
    assert_eq!(artifacts(&p.cache()).len(), 5);
    std::fs::remove_file(p.path().join("pipelines/other.toml")).unwrap();
    let out = p.ok(&["gc"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 0 artifacts"));
    assert_eq!(artifacts(&p.cache()).len(), 5, "other's last run is kept");
    let out = p.ok(&["gc", "--all"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed 2 artifacts"), "{text}");
    assert!(text.contains("removed state other"), "{text}");
    assert!(!p.cache().join("state/other.json").exists());
    assert_eq!(artifacts(&p.cache()).len(), 3);
}

#[test]
fn gc_counts_and_removes_a_scratch_folder_no_stage_wants() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    p.run_json("t", &["--until", "hdf5"]);
    // What a run killed while publishing leaves, for a key nothing resolves to.
    let orphan = p.cache().join("scratch").join("0".repeat(64));
    std::fs::create_dir_all(orphan.join("publishing-4242")).unwrap();
    std::fs::write(orphan.join("publishing-4242/half.csv"), "path,label\n").unwrap();
    let out = p.ok(&["gc", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("would remove scratch 000000000000"), "{text}");
    assert!(text.contains("1 scratch folders"), "{text}");
    assert!(orphan.exists());
    let out = p.ok(&["gc"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 scratch folders"));
    assert!(!orphan.exists());
}

/// Run `pipe` with a fault point: wait until it stalls there, do `meanwhile`, then let it
/// go on (it stalls for `secs`) and return its output.
fn stall_at(
    p: &Project,
    args: &[&str],
    fault: &str,
    secs: u64,
    meanwhile: impl FnOnce(),
) -> (bool, String) {
    let mut child = p
        .cmd(args)
        .env("PIPE_FAULT", fault)
        .env("PIPE_FAULT_SECS", secs.to_string())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("the run never reached {fault}:\n{text}");
        }
        text.push_str(&line);
        if line.contains(&format!("PIPE_FAULT reached: {fault}")) {
            break;
        }
    }
    meanwhile();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    text.push_str(&rest);
    (child.wait().unwrap().success(), text)
}

#[test]
fn an_image_changed_while_hdf5_reads_it_fails_the_stage_and_publishes_nothing() {
    let p = Project::new();
    let root = p.path().join("data/tiny");
    tiny_imagenet(&root, 3, 8, 2);
    p.manifest("exp.toml", &tiny_manifest(&root, 2));
    // Replace one image with another of the class (a real, decodable JPEG) after ingest
    // fingerprinted the tree, before hdf5 reads it.
    let dir = root.join("train");
    let class = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut imgs: Vec<PathBuf> = std::fs::read_dir(class.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    imgs.sort();
    let (a, b) = (imgs[0].clone(), imgs[1].clone());
    let (ok, err) = stall_at(&p, &["run", "exp"], "hdf5:start", 2, || {
        std::fs::copy(&b, &a).unwrap();
    });
    assert!(!ok, "{err}");
    assert!(
        err.contains("changed after its dataset was fingerprinted"),
        "{err}"
    );
    assert!(err.contains(&a.display().to_string()), "{err}");
    // Nothing published for hdf5: no key, no artifact but ingest's and split's.
    assert_eq!(artifacts(&p.cache()).len(), 2);
    let status = p.ok(&["status", "exp"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("dataset folder contents changed"), "{text}");
    // The next run takes the dataset as it is now, and verify finds the store sound.
    let r = p.run_json("exp", &[]);
    assert_eq!(state_of(&r, "ingest"), "ran");
    assert_eq!(state_of(&r, "hdf5"), "ran");
    assert!(p.ok(&["verify"]).status.success());
    // A fresh store over the same data gives the same keys and outputs.
    let fresh = Project::new();
    fresh.manifest("exp.toml", &tiny_manifest(&root, 2));
    let f = fresh.run_json("exp", &[]);
    for stage in ["ingest", "split", "hdf5"] {
        assert_eq!(field(&r, stage, "key"), field(&f, stage, "key"));
        assert_eq!(field(&r, stage, "output"), field(&f, stage, "output"));
    }
}

/// The key of a stage from a dry run.
fn key_of(p: &Project, pipeline: &str, stage: &str, extra: &[&str]) -> String {
    let mut args = vec!["--dry-run"];
    args.extend_from_slice(extra);
    let r = p.run_json(pipeline, &args);
    let k = field(&r, stage, "key");
    assert!(!k.is_empty(), "no key for {stage}: {r}");
    k
}

/// The epochs a run's stderr says it trained (`train: epoch   3/4 ...`).
fn epochs_trained(stderr: &str, stage: &str) -> Vec<usize> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{stage}: epoch ")))
        .filter_map(|l| l.trim_start().split('/').next()?.parse().ok())
        .collect()
}

#[test]
fn a_checkpoint_this_key_did_not_write_is_not_resumed_from() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    // Another run (another lr: another key) leaves valid checkpoints.
    let other = p.run_json("t", &["--set", "train.lr=0.05"]);
    let foreign = p
        .cache()
        .join("artifacts")
        .join(field(&other, "train", "output"))
        .join("checkpoints/epoch_2.safetensors");
    // Put one into this key's scratch, as a copy or a shared scratch path would.
    let key = key_of(&p, "t", "train", &[]);
    let scratch = p.cache().join("scratch").join(&key).join("checkpoints");
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::copy(&foreign, scratch.join("epoch_2.safetensors")).unwrap();
    let status = p.ok(&["status", "t"]);
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("resumes from its checkpoint"),
        "status must not promise to resume from a foreign checkpoint"
    );
    let out = p.ok(&["run", "t", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not resuming from"), "{err}");
    assert!(err.contains("it belongs to stage key"), "{err}");
    assert!(!err.contains("resuming from its checkpoint"), "{err}");
    assert_eq!(epochs_trained(&err, "train"), [1, 2, 3, 4], "{err}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // What is published is what a clean store makes.
    let clean = Project::new();
    clean.manifest("t.toml", DATA);
    let c = clean.run_json("t", &[]);
    assert_eq!(field(&r, "train", "output"), field(&c, "train", "output"));
}

#[test]
fn a_damaged_or_garbage_checkpoint_does_not_block_the_stage() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    // Kill the training right after epoch 3's checkpoint.
    let mut child = p
        .cmd(&["run", "t"])
        .env("PIPE_FAULT", "train:epoch3")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        if line.unwrap().contains("PIPE_FAULT reached: train:epoch3") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let scratch: PathBuf = std::fs::read_dir(p.cache().join("scratch"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| d.join("checkpoints/epoch_3.safetensors").is_file())
        .expect("the killed run's scratch");
    // Truncate epoch 3 and turn epoch 2 into garbage: the run falls back to epoch 1.
    let e3 = scratch.join("checkpoints/epoch_3.safetensors");
    let len = std::fs::metadata(&e3).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&e3)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e2 = scratch.join("checkpoints/epoch_2.safetensors");
    std::fs::write(&e2, b"not a checkpoint at all").unwrap();
    let out = p.ok(&["run", "t", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("not resuming from {}", e3.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!("not resuming from {}", e2.display())),
        "{err}"
    );
    assert!(
        err.contains("resuming from its checkpoint at epoch 1"),
        "{err}"
    );
    assert_eq!(epochs_trained(&err, "train"), [2, 3, 4], "{err}");
    // And it ends where an uninterrupted run ends.
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let clean = Project::new();
    clean.manifest("t.toml", DATA);
    let c = clean.run_json("t", &[]);
    assert_eq!(field(&r, "train", "output"), field(&c, "train", "output"));
}

#[test]
fn a_key_record_that_points_at_the_wrong_artifact_is_dropped_and_rebuilt() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    let first = p.run_json("t", &["--until", "hdf5"]);
    // Rewrite split's key record to point at hdf5's artifact.
    let rec_path = p
        .cache()
        .join("keys")
        .join(format!("{}.json", field(&first, "split", "key")));
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    rec["output"] = serde_json::Value::String(field(&first, "hdf5", "output"));
    std::fs::write(&rec_path, serde_json::to_vec(&rec).unwrap()).unwrap();
    // status sees it,
    let out = p.ok(&["status", "t"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("points at the wrong artifact"), "{text}");
    // verify reports it and drops the record,
    let out = p.cmd(&["verify"]).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("WRONG") && text.contains("(split)"), "{text}");
    assert!(!rec_path.exists());
    // and the next run rebuilds split, byte-identical, after which all is sound.
    let r = p.run_json("t", &["--until", "hdf5"]);
    assert_eq!(state_of(&r, "split"), "ran");
    assert_eq!(
        field(&r, "split", "output"),
        field(&first, "split", "output")
    );
    assert_eq!(state_of(&r, "hdf5"), "cached");
    assert!(p.ok(&["verify"]).status.success());

    // A run meets one too (no verify first): it warns, drops it and re-runs.
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    rec["output"] = serde_json::Value::String(field(&first, "ingest", "output"));
    std::fs::write(&rec_path, serde_json::to_vec(&rec).unwrap()).unwrap();
    let out = p.ok(&["run", "t", "--until", "hdf5", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key record points at the wrong artifact"),
        "{err}"
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state_of(&r, "split"), "ran");
    assert_eq!(
        field(&r, "split", "output"),
        field(&first, "split", "output")
    );
}

/// Run `pipe` in project `p`, failing the test if it takes longer than a minute (a hang).
fn bounded(p: &Project, args: &[&str]) -> std::process::Output {
    let mut child = p
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("pipe {args:?} hung on a special file");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn special_files_in_a_dataset_are_refused_by_name_or_skipped_never_read() {
    let p = Project::new();
    let root = p.path().join("data/tiny");
    tiny_imagenet(&root, 3, 8, 2);
    let dir = root.join("train");
    let class = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let fifo = class.join("images/fifo_0.JPEG");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    let dev = class.join("images/zero_0.JPEG");
    std::os::unix::fs::symlink("/dev/zero", &dev).unwrap();
    p.manifest("exp.toml", &tiny_manifest(&root, 2));
    // status and a dry run finish.
    assert!(bounded(&p, &["status", "exp"]).status.success());
    assert!(bounded(&p, &["run", "exp", "--dry-run"]).status.success());
    // A run refuses the first one it meets, by name.
    let out = bounded(&p, &["run", "exp"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a regular file"), "{err}");
    assert!(
        err.contains(&fifo.display().to_string()) || err.contains(&dev.display().to_string()),
        "{err}"
    );
    // With `skip`, both are left out and counted.
    let text = tiny_manifest(&root, 2) + "on_bad_image = \"skip\"\n";
    p.manifest("exp.toml", &text);
    let out = bounded(&p, &["run", "exp", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let summary = r["stages"][2]["summary"].as_str().unwrap().to_string();
    assert!(
        summary.contains("2 undecodable images skipped"),
        "{summary}"
    );
    let skipped = std::fs::read_to_string(
        p.cache()
            .join("artifacts")
            .join(field(&r, "hdf5", "output"))
            .join("skipped.txt"),
    )
    .unwrap();
    assert!(
        skipped.contains("fifo_0.JPEG") && skipped.contains("zero_0.JPEG"),
        "{skipped}"
    );
}

#[test]
fn a_resume_from_a_fifo_is_refused_not_read() {
    let p = Project::new();
    let fifo = p.path().join("ckpt.safetensors");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let text = DATA.to_string()
        + "\n[stages.more]\nkind = \"resume\"\nfrom = \"ckpt.safetensors\"\ninput = \"hdf5\"\nlr = 0.001\nepochs = 1\n";
    p.manifest("t.toml", &text);
    let out = bounded(&p, &["status", "t"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a regular file") && err.contains("a FIFO"),
        "{err}"
    );
}

#[test]
fn classes_known_from_an_ingested_index_are_checked_by_a_dry_run() {
    let p = Project::new();
    let root = p.path().join("data/tiny");
    tiny_imagenet(&root, 3, 8, 2);
    let net = r#"
[networks.n]
input = [16, 16, 3]
classes = 4
layers = [
  { conv2d = { filters = 4, kernel = 3 } },
  { global_avgpool = {} },
  { dense = "$classes" },
  { softmax = {} },
]

[stages.train]
input = "hdf5"
network = "n"
epochs = 1
lr = 0.01
"#;
    p.manifest("exp.toml", &(tiny_manifest(&root, 2) + net));
    // Before ingest ran, the class count is not known: the dry run plans.
    assert!(p.ok(&["run", "exp", "--dry-run"]).status.success());
    p.run_json("exp", &["--until", "ingest"]);
    // Now it is: a dry run names the network's `classes`.
    let err = p.fails(&["run", "exp", "--dry-run"]);
    assert!(
        err.contains("exp.toml:")
            && err.contains("network `n` outputs 4 classes, but stage `train` trains on 3"),
        "{err}"
    );
    assert!(err.contains("networks.n.classes"), "{err}");
}

#[test]
fn a_fifo_in_place_of_an_artifact_file_is_damage_not_a_hang() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    let r = p.run_json("t", &["--until", "split"]);
    let dir = p
        .cache()
        .join("artifacts")
        .join(field(&r, "split", "output"));
    let f = dir.join("classes.csv");
    let mut perms = std::fs::metadata(&dir).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&dir, perms).unwrap();
    std::fs::remove_file(&f).unwrap();
    assert!(Command::new("mkfifo").arg(&f).status().unwrap().success());
    let out = bounded(&p, &["status", "t"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not a regular file any more"), "{text}");
    let out = bounded(&p, &["verify"]);
    assert!(!out.status.success());
    let r = bounded(&p, &["run", "t", "--until", "split", "--json"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn an_artifact_from_before_seals_keeps_its_key_when_another_key_makes_the_same_bytes() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    let a = p.run_json("t", &["--until", "hdf5"]);
    // As published before seals existed.
    std::fs::remove_file(
        p.cache()
            .join("sealed")
            .join(format!("{}.json", field(&a, "hdf5", "output"))),
    )
    .unwrap();
    // Another key (another setting that changes no byte) publishes the same artifact.
    let b = p.run_json(
        "t",
        &["--until", "hdf5", "--set", "hdf5.on_bad_image=\"skip\""],
    );
    assert_eq!(state_of(&b, "hdf5"), "ran");
    assert_eq!(field(&a, "hdf5", "output"), field(&b, "hdf5", "output"));
    assert_ne!(field(&a, "hdf5", "key"), field(&b, "hdf5", "key"));
    // The first key still vouches for it: cached, and verify agrees.
    let again = p.run_json("t", &["--until", "hdf5"]);
    assert_eq!(state_of(&again, "hdf5"), "cached");
    assert!(p.ok(&["verify"]).status.success());
}

#[test]
fn an_image_removed_after_the_fingerprint_fails_the_stage_even_with_skip() {
    let p = Project::new();
    let root = p.path().join("data/tiny");
    tiny_imagenet(&root, 3, 8, 2);
    p.manifest(
        "exp.toml",
        &(tiny_manifest(&root, 2) + "on_bad_image = \"skip\"\n"),
    );
    let class = std::fs::read_dir(root.join("train"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let img = std::fs::read_dir(class.join("images"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let (ok, err) = stall_at(&p, &["run", "exp"], "hdf5:start", 2, || {
        std::fs::remove_file(&img).unwrap();
    });
    assert!(!ok, "{err}");
    assert!(
        err.contains("was removed after its dataset was fingerprinted"),
        "{err}"
    );
    assert_eq!(artifacts(&p.cache()).len(), 2, "nothing published for hdf5");
}

#[test]
fn status_lists_every_stage_when_a_dataset_goes_missing_from_a_used_store() {
    let p = Project::new();
    let root = p.path().join("data/tiny");
    tiny_imagenet(&root, 2, 8, 2);
    p.manifest("exp.toml", &tiny_manifest(&root, 2));
    p.run_json("exp", &[]);
    std::fs::rename(&root, p.path().join("data/elsewhere")).unwrap();
    let out = p.ok(&["status", "exp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("does not exist"), "{text}");
    assert_eq!(text.matches("waiting").count(), 3, "{text}");
    let out = p
        .cmd(&["show", "exp"])
        .env("COLUMNS", "400")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ingest waiting: dataset folder"), "{text}");
}

#[test]
fn gc_lists_names_that_are_not_ascii_without_panicking() {
    let p = Project::new();
    let name = "éxpériénces-à-réessayer";
    p.manifest(
        "x.toml",
        &DATA.replace("name = \"t\"", &format!("name = \"{name}\"")),
    );
    p.run_json(name, &["--until", "ingest"]);
    std::fs::remove_file(p.path().join("pipelines/x.toml")).unwrap();
    p.manifest("t.toml", DATA);
    let out = p.ok(&["gc", "--all", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("would remove state éxpériénces"), "{text}");
}

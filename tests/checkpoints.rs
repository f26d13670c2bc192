//! Checkpoints and resuming: a resume stage from a checkpoint file, what `status` says
//! after a training is killed (and that gc keeps its checkpoints while the manifest wants
//! them), and that a run resumes only from a checkpoint its own key wrote and that loads:
//! a foreign, truncated or garbage one, or one whose layers had other names, is passed
//! over, and the result is what an uninterrupted run makes.

mod common;

use std::path::PathBuf;

use common::*;

#[test]
fn evaluate_after_a_resume_from_a_checkpoint_file_runs() {
    let p = Project::with("t.toml", &pipeline_t());
    let r = p.run_json("t", &[]);
    let ckpt = p
        .artifact(&r, "train")
        .join("checkpoints/epoch_1.safetensors");
    std::fs::copy(&ckpt, p.path().join("epoch_1.safetensors")).unwrap();
    let text = pipeline_t()
        + "\n[stages.more]\nkind = \"resume\"\nfrom = \"epoch_1.safetensors\"\ninput = \"hdf5\"\nlr = 0.001\nepochs = 1\n"
        + "\n[stages.evaluate]\ninput = \"more\"\nsplit = \"val\"\ntop_k = [1, 2]\n";
    p.manifest("t.toml", &text);
    for cmd in [
        &["status", "t"][..],
        &["dag", "t"],
        &["graph", "t"],
        &["run", "t", "--dry-run"],
    ] {
        let out = p.cmd(cmd).output().unwrap();
        assert_success(&out, &format!("{cmd:?}"));
    }
    let r = p.run_json("t", &[]);
    assert_eq!(state_of(&r, "evaluate"), "ran");
    assert!(field(&r, "evaluate", "summary").contains("rank-1"));
}

/// Rewrite one metadata entry of a safetensors file (its header re-serialised).
fn set_metadata(path: &std::path::Path, key: &str, value: &str) {
    tamper(path, |b| {
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
        header["__metadata__"][key] = value.into();
        let h = serde_json::to_vec(&header).unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        out.extend_from_slice(&b[8 + n..]);
        *b = out;
    });
}

/// A checkpoint file given to a `resume` stage whose plan or history metadata does not
/// parse: the error names the file and the entry, never a bare JSON message.
#[test]
fn a_resume_file_whose_metadata_does_not_parse_is_named() {
    let p = Project::with("t.toml", &pipeline_t());
    let r = p.run_json("t", &[]);
    let ckpt = p
        .artifact(&r, "train")
        .join("checkpoints/epoch_1.safetensors");
    let file = p.path().join("epoch_1.safetensors");
    let text = pipeline_t()
        + "\n[stages.more]\nkind = \"resume\"\nfrom = \"epoch_1.safetensors\"\ninput = \"hdf5\"\nlr = 0.001\nepochs = 1\n";
    p.manifest("t.toml", &text);
    for (key, says) in [
        ("plan", "its training plan (metadata `plan`) does not parse"),
        (
            "history",
            "its training history (metadata `history`) does not parse",
        ),
        ("epoch", "names no epoch in its metadata (`epoch`)"),
    ] {
        std::fs::copy(&ckpt, &file).unwrap();
        set_metadata(&file, key, "{not json");
        let e = p.fails(&["run", "t"]);
        assert!(
            e.contains("epoch_1.safetensors") && e.contains(says),
            "{key}: {e}"
        );
    }
    // Sound again: it runs.
    std::fs::copy(&ckpt, &file).unwrap();
    p.ok(&["run", "t"]);
}

/// The checkpoint file a `resume` stage starts from is replaced while the run is on its
/// way to that stage: the stage's key holds the old bytes' hash, so it refuses to train
/// from the new ones (which would be published under the old key) and names the file.
#[test]
fn a_resume_file_changed_during_the_run_is_refused() {
    let src = Project::with("t.toml", &pipeline_t());
    let r = src.run_json("t", &[]);
    let ckpts = src.artifact(&r, "train").join("checkpoints");
    let p = Project::new();
    let file = p.path().join("from.safetensors");
    std::fs::copy(ckpts.join("epoch_1.safetensors"), &file).unwrap();
    p.manifest(
        "t.toml",
        &(pipeline_t()
            + "\n[stages.more]\nkind = \"resume\"\nfrom = \"from.safetensors\"\ninput = \"hdf5\"\nlr = 0.001\nepochs = 1\n"),
    );
    let hold = Hold::new();
    let mut cmd = p.cmd(&["run", "t", "--until", "more"]);
    hold.on(cmd.stdout(std::process::Stdio::null()));
    let (mut child, mut stderr, _) = spawn_to_fault(cmd, "hdf5:start");
    std::fs::copy(ckpts.join("epoch_2.safetensors"), &file).unwrap();
    hold.release();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
    assert!(!child.wait().unwrap().success(), "{err}");
    assert!(
        err.contains("from.safetensors changed after the manifest was read"),
        "{err}"
    );
    // Run again: its key now holds the new bytes' hash, and it trains from them.
    p.ok(&["run", "t", "--until", "more"]);
}

#[test]
fn status_after_a_kill_says_where_training_resumes_and_gc_counts_scratch() {
    let p = Project::with("t.toml", &pipeline_t().replace("epochs = 2", "epochs = 3"));
    kill_at_fault(&p, &["run", "t"], "train:epoch2");
    let out = p.ok(&["status", "t"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("interrupted") && text.contains("epoch 2"),
        "{text}"
    );
    // While the manifest still wants that training, gc keeps its checkpoints.
    p.ok(&["gc"]);
    let out = p.ok(&["status", "t"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("resumes from its checkpoint at epoch 2"),
        "{text}"
    );
    // Another learning rate: the interrupted run's scratch is kept while its run is among
    // the last `--keep-runs` (`run --from t~0` resumes it); past them, gc frees its bytes.
    p.manifest("t.toml", &pipeline_t().replace("lr = 0.01", "lr = 0.02"));
    let out = p.ok(&["gc"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0 scratch folders"), "{text}");
    let out = p.ok(&["gc", "--keep-runs", "0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 1 scratch folders") && !text.contains(" 0 B in all"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(p.cache().join("scratch"))
            .unwrap()
            .count(),
        0
    );
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

#[test]
fn a_checkpoint_this_key_did_not_write_is_not_resumed_from() {
    let p = Project::with("t.toml", &pipeline_t_with_split());
    // Another run (another lr: another key) leaves valid checkpoints.
    let other = p.run_json("t", &["--set", "train.lr=0.05"]);
    let foreign = p
        .artifact(&other, "train")
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
    let clean = Project::with("t.toml", &pipeline_t_with_split());
    let c = clean.run_json("t", &[]);
    assert_eq!(field(&r, "train", "output"), field(&c, "train", "output"));
}

#[test]
fn a_checkpoint_of_layers_since_renamed_is_not_resumed_from() {
    // Two layers of one shape; their names then swap. The stage key covers the
    // structure, not the names, so the killed run's checkpoints are this key's; but their
    // tensors go by name and would load each layer's weights into the other.
    let net = |first: &str, second: &str| {
        pipeline_t_with_split().replace("lr = 0.01\n", "lr = 0.0001\n").replace(
            "  { global_avgpool = {} },\n",
            &format!(
                "  {{ global_avgpool = {{}} }},\n  {{ dense = 4, name = \"{first}\" }},\n  {{ dense = 4, name = \"{second}\" }},\n"
            ),
        )
    };
    let p = Project::with("t.toml", &net("a", "b"));
    kill_at_fault(&p, &["run", "t"], "train:epoch2");
    let before = key_of(&p, "t", "train", &[]);
    let reasons = |p: &Project| {
        let v = p.ok_json(&["status", "t", "--json"]);
        stage(&v, "train")["reasons"].to_string()
    };
    assert!(reasons(&p).contains("at epoch 2"), "{}", reasons(&p));
    p.manifest("t.toml", &net("b", "a"));
    assert_eq!(
        key_of(&p, "t", "train", &[]),
        before,
        "names are not in the key"
    );
    // `status` promises no resume that the run would refuse.
    assert!(!reasons(&p).contains("epoch"), "{}", reasons(&p));
    let out = p.ok(&["run", "t", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not resuming from"), "{err}");
    assert!(
        err.contains("layers were named otherwise when it was written"),
        "{err}"
    );
    assert!(err.contains("`a` then, `b` now"), "{err}");
    assert_eq!(epochs_trained(&err, "train"), [1, 2, 3, 4], "{err}");
    // What is published is what a clean store makes of the renamed network.
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let clean = Project::with("t.toml", &net("b", "a"));
    let c = clean.run_json("t", &[]);
    assert_eq!(field(&r, "train", "output"), field(&c, "train", "output"));
}

#[test]
fn a_damaged_or_garbage_checkpoint_does_not_block_the_stage() {
    let p = Project::with("t.toml", &pipeline_t_with_split());
    let scratch = killed_after_epoch_3(&p);
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
    let clean = Project::with("t.toml", &pipeline_t_with_split());
    let c = clean.run_json("t", &[]);
    assert_eq!(field(&r, "train", "output"), field(&c, "train", "output"));
}

/// A checkpoint whose bytes were flipped on disk, its size kept (what a bad disk or a
/// stray write leaves): its recorded BLAKE3 no longer matches, so the run does not resume
/// from it; nor from one whose hash was never recorded (killed between the two writes),
/// which `status` does not promise either. The run resumes from the epoch before both and
/// ends where an uninterrupted run ends: the same artifact, under the same key.
#[test]
fn a_bit_flipped_checkpoint_is_refused_by_its_hash() {
    let p = Project::with("t.toml", &pipeline_t_with_split());
    let scratch = killed_after_epoch_3(&p);
    let resumes_at = |p: &Project| {
        let v = p.ok_json(&["status", "t", "--json"]);
        stage(&v, "train")["reasons"][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(resumes_at(&p).contains("at epoch 3"), "{}", resumes_at(&p));
    let e3 = scratch.join("checkpoints/epoch_3.safetensors");
    std::fs::remove_file(scratch.join("checkpoints/epoch_3.safetensors.blake3")).unwrap();
    assert!(resumes_at(&p).contains("at epoch 2"), "{}", resumes_at(&p));
    // Flip the exponent bits of float values near the end of epoch 2 (tensor data, not
    // the header): the file still loads, with wrong weights.
    let e2 = scratch.join("checkpoints/epoch_2.safetensors");
    let len = std::fs::metadata(&e2).unwrap().len();
    tamper(&e2, |b| {
        let n = b.len();
        for i in (n - 64..n).step_by(4) {
            b[i + 3] ^= 0x40;
        }
    });
    assert_eq!(std::fs::metadata(&e2).unwrap().len(), len);
    let out = p.ok(&["run", "t", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("not resuming from {}", e3.display()))
            && err.contains("no hash was recorded for it"),
        "{err}"
    );
    assert!(
        err.contains(&format!("not resuming from {}", e2.display()))
            && err.contains("its bytes are not the ones written"),
        "{err}"
    );
    assert!(
        err.contains("resuming from its checkpoint at epoch 1"),
        "{err}"
    );
    assert_eq!(epochs_trained(&err, "train"), [2, 3, 4], "{err}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The published record keeps the timing of every epoch, the one trained before the
    // interruption too.
    let timings: serde_json::Value = serde_json::from_slice(
        &std::fs::read(p.artifact(&r, "train").join("timings.json")).unwrap(),
    )
    .unwrap();
    let timed: Vec<u64> = timings
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["images_per_sec"].as_f64().unwrap() > 0.0)
        .map(|t| t["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(timed, [1, 2, 3, 4], "{timings}");
    let clean = Project::with("t.toml", &pipeline_t_with_split());
    let c = clean.run_json("t", &[]);
    assert_eq!(field(&r, "train", "output"), field(&c, "train", "output"));
    assert_eq!(field(&r, "train", "key"), field(&c, "train", "key"));
}

/// A checkpoint below the newest one damaged in place (bits flipped, its size kept): the
/// checkpoints of a segment are published with its model, so the run does not resume from
/// above it (which would publish it, sealed): it trains again from below it, and the
/// model it publishes, checkpoints included, is the one an uninterrupted run publishes.
#[test]
fn an_older_damaged_checkpoint_is_not_published_under_the_models_seal() {
    let p = Project::with("t.toml", &pipeline_t_with_split());
    let scratch = killed_after_epoch_3(&p);
    let e1 = scratch.join("checkpoints/epoch_1.safetensors");
    tamper(&e1, |b| {
        let n = b.len();
        for i in (n - 64..n).step_by(4) {
            b[i + 3] ^= 0x40;
        }
    });
    let out = p.ok(&["run", "t", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("not resuming from {}", e1.display()))
            && err.contains("its bytes are not the ones written"),
        "{err}"
    );
    assert!(
        !err.contains("resuming from its checkpoint at epoch"),
        "{err}"
    );
    assert_eq!(epochs_trained(&err, "train"), [1, 2, 3, 4], "{err}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let clean = Project::with("t.toml", &pipeline_t_with_split());
    let c = clean.run_json("t", &[]);
    assert_eq!(field(&r, "train", "output"), field(&c, "train", "output"));
    p.ok(&["verify"]);
}

/// Kill `pipe run t` right after epoch 3's checkpoint; the killed run's scratch folder.
fn killed_after_epoch_3(p: &Project) -> PathBuf {
    kill_at_fault(p, &["run", "t"], "train:epoch3");
    std::fs::read_dir(p.cache().join("scratch"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| d.join("checkpoints/epoch_3.safetensors").is_file())
        .expect("the killed run's scratch")
}

//! Training stages end to end: resume after SIGKILL, lr-drop edits, resume trimming,
//! checkpoints, evaluation metrics.

mod common;

use common::*;
use pipe::data::checkpoint;
use pipe::stages::evaluate::rank_k;

/// Generated data (4 classes), a network of two convs with batch norm, max pooling and
/// dropout, a training with SGD, a poly schedule, augmentation and checkpoints, an lr drop
/// and an evaluation.
const PIPELINE: &str = include_str!("manifests/training.toml");

fn tensors(path: &std::path::Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let (st, _) = checkpoint::load(path).unwrap();
    st.tensors.into_iter().map(|(k, t)| (k, t.data)).collect()
}

/// `[stages.again]`: one more epoch at lr 0.01, resumed from `from` (`stage@epoch`).
fn resume_from(from: &str) -> String {
    format!("\n[stages.again]\nkind = \"resume\"\nfrom = \"{from}\"\nlr = 0.01\nepochs = 1\n")
}

#[test]
fn training_pipeline_runs_and_reports() {
    let p = Project::with("t.toml", PIPELINE);
    let r = p.run_json("t", &[]);
    for s in ["ingest", "hdf5", "train", "drop", "evaluate"] {
        assert_eq!(state_of(&r, s), "ran", "{s}");
    }
    let train = p.artifact(&r, "train");
    for f in [
        "model.safetensors",
        "state.safetensors",
        "history.json",
        "history.png",
        "plan.json",
        "mean.safetensors",
    ] {
        assert!(train.join(f).is_file(), "{f}");
    }
    for e in 1..=4 {
        assert!(train
            .join(format!("checkpoints/epoch_{e}.safetensors"))
            .is_file());
    }
    // The plot is a real PNG with something drawn on it.
    let png = image::open(train.join("history.png")).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), (900, 600));
    assert!(png.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 5_000);
    // The weights file holds no optimizer state; the state file does.
    let w = tensors(&train.join("model.safetensors"));
    let s = tensors(&train.join("state.safetensors"));
    assert!(w.keys().all(|k| !k.starts_with("opt/")));
    assert!(s.contains_key("opt/conv2d_1/kernel/m"));
    assert_eq!(w["conv2d_1/kernel"], s["conv2d_1/kernel"]);
    // History continues across the lr drop, with the drop's lr.
    let drop = p.artifact(&r, "drop");
    let h: Vec<serde_json::Value> = read_json(&drop.join("history.json"));
    let epochs: Vec<u64> = h.iter().map(|r| r["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(h[5]["stage"], "drop");
    assert_eq!(h[5]["lr"], 0.005);
    // poly decay: lr0 * (1 - e/E), e from 0.
    assert!((h[1]["lr"].as_f64().unwrap() - 0.05 * 0.75).abs() < 1e-12);
    // Evaluation wrote its metrics.
    let ev = p.artifact(&r, "evaluate");
    let m: serde_json::Value = read_json(&ev.join("metrics.json"));
    assert_eq!(m["images"], 32);
    let r1 = m["rank"]["rank-1"].as_f64().unwrap();
    let r2 = m["rank"]["rank-2"].as_f64().unwrap();
    assert!(r2 >= r1);
    assert!(r1 > 0.5, "well above chance (0.25): {r1}");
    let confusion = std::fs::read_to_string(ev.join("confusion.csv")).unwrap();
    let total: usize = confusion
        .lines()
        .skip(1)
        .flat_map(|l| {
            l.split(',')
                .skip(1)
                .map(|v| v.parse::<usize>().unwrap())
                .collect::<Vec<_>>()
        })
        .sum();
    assert_eq!(total, 32);
}

#[test]
fn editing_the_last_lr_drop_reruns_only_it_and_evaluate() {
    let p = Project::with("t.toml", PIPELINE);
    let first = p.run_json("t", &[]);
    p.manifest("t.toml", &PIPELINE.replace("lr = 0.005", "lr = 0.001"));
    let r = p.run_json("t", &[]);
    assert_eq!(state_of(&r, "ingest"), "cached");
    assert_eq!(state_of(&r, "hdf5"), "cached");
    assert_eq!(state_of(&r, "train"), "cached");
    assert_eq!(field(&first, "train", "key"), field(&r, "train", "key"));
    assert_eq!(state_of(&r, "drop"), "ran");
    assert_eq!(state_of(&r, "evaluate"), "ran");
    let out = p.ok(&["status", "t"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .matches("cached")
            .count()
            == 5
    );
}

#[test]
fn resume_at_an_epoch_trims_the_history() {
    let p = Project::new();
    let text = PIPELINE.to_string() + &resume_from("train@2");
    p.manifest("t.toml", &text);
    let r = p.run_json("t", &["--until", "again"]);
    assert_eq!(state_of(&r, "again"), "ran");
    let dir = p.artifact(&r, "again");
    let h: Vec<serde_json::Value> = read_json(&dir.join("history.json"));
    let stages: Vec<&str> = h.iter().map(|r| r["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, vec!["train", "train", "again"]);
    assert_eq!(h[2]["epoch"], 3);
    // Its checkpoints are its own epochs only.
    assert!(dir.join("checkpoints/epoch_3.safetensors").is_file());
    assert!(!dir.join("checkpoints/epoch_2.safetensors").exists());

    let bad = PIPELINE.to_string() + &resume_from("train@9");
    p.manifest("t.toml", &bad);
    // Caught when the manifest loads, at `from`: train runs 4 epochs.
    let err = p.fails(&["run", "t", "--until", "again", "--dry-run"]);
    assert!(
        err.contains("t.toml:")
            && err.contains("trains epochs 1..4, so it has no checkpoint at epoch 9"),
        "{err}"
    );
}

#[test]
fn a_killed_training_run_resumes_and_ends_bit_identical() {
    let p = Project::with("t.toml", PIPELINE);
    // SIGKILL after epoch 2's checkpoint.
    kill_at_fault(&p, &["run", "t", "--until", "train"], "train:epoch2");
    let out = p
        .cmd(&["run", "t", "--until", "train", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("train: resuming from its checkpoint at epoch 2"),
        "{err}"
    );
    let resumed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let clean = Project::with("t.toml", PIPELINE);
    let straight = clean.run_json("t", &["--until", "train"]);
    let a = tensors(&p.artifact(&resumed, "train").join("state.safetensors"));
    let b = tensors(&clean.artifact(&straight, "train").join("state.safetensors"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(
            v == &b[k],
            "{k} differs between resumed and uninterrupted training"
        );
    }
    // The history too, to the last bit (floats read back from a checkpoint round-trip).
    let ha = std::fs::read(p.artifact(&resumed, "train").join("history.json")).unwrap();
    let hb = std::fs::read(clean.artifact(&straight, "train").join("history.json")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ha),
        String::from_utf8_lossy(&hb),
        "history.json of the resumed run"
    );
    assert_eq!(
        field(&resumed, "train", "output"),
        field(&straight, "train", "output"),
        "the resumed artifact is byte-identical"
    );
    // The scratch folder is gone once the stage is published.
    assert_eq!(
        std::fs::read_dir(p.cache().join("scratch"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn checkpoint_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = pipe::backend::State {
        step: 17,
        ..Default::default()
    };
    st.tensors.insert(
        "a/kernel".into(),
        pipe::backend::NamedTensor {
            shape: vec![2, 3],
            data: vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE, 0.0, 7.0],
        },
    );
    st.tensors.insert(
        "opt/a/kernel/m".into(),
        pipe::backend::NamedTensor {
            shape: vec![1],
            data: vec![0.125],
        },
    );
    let mut meta = std::collections::HashMap::new();
    meta.insert("epoch".to_string(), "5".to_string());
    let path = dir.path().join("c.safetensors");
    checkpoint::save(&path, &st, meta, |_| true).unwrap();
    let (back, m) = checkpoint::load(&path).unwrap();
    assert_eq!(back, st);
    assert_eq!(m["epoch"], "5");
    checkpoint::save(&path, &st, Default::default(), |k| !k.starts_with("opt/")).unwrap();
    let (w, _) = checkpoint::load(&path).unwrap();
    assert_eq!(w.tensors.keys().collect::<Vec<_>>(), vec!["a/kernel"]);
}

#[test]
fn rank_k_on_a_hand_made_prediction_table() {
    // 4 examples, 6 classes.
    #[rustfmt::skip]
    let probs = [
        0.05, 0.10, 0.50, 0.15, 0.12, 0.08, // label 2: rank 1
        0.30, 0.25, 0.20, 0.15, 0.06, 0.04, // label 3: rank 4
        0.02, 0.03, 0.05, 0.10, 0.20, 0.60, // label 0: rank 6
        0.10, 0.40, 0.05, 0.05, 0.30, 0.10, // label 4: rank 2
    ];
    let labels = [2, 3, 0, 4];
    assert_eq!(rank_k(&probs, &labels, 6, 1), 0.25);
    assert_eq!(rank_k(&probs, &labels, 6, 2), 0.5);
    assert_eq!(rank_k(&probs, &labels, 6, 3), 0.5);
    assert_eq!(rank_k(&probs, &labels, 6, 4), 0.75);
    assert_eq!(rank_k(&probs, &labels, 6, 5), 0.75);
    assert_eq!(rank_k(&probs, &labels, 6, 6), 1.0);
    // A tie with the label gives no credit at k = 1.
    assert_eq!(rank_k(&[0.5, 0.5], &[1], 2, 1), 0.0);
    // What cannot be compared gets no credit: a NaN at the label, or beside it.
    let nan = f32::NAN;
    assert_eq!(rank_k(&[nan, nan, nan], &[0], 3, 2), 0.0);
    assert_eq!(rank_k(&[0.1, nan, 0.9], &[2], 3, 1), 0.0);
    assert_eq!(rank_k(&[0.1, nan, 0.9], &[2], 3, 2), 1.0);
}

#[test]
fn training_errors_are_clear() {
    let p = Project::with(
        "t.toml",
        &PIPELINE.replace("network = \"tiny\"", "network = \"tinny\""),
    );
    let err = p.fails(&["run", "t"]);
    assert!(err.contains("no network `tinny`"), "{err}");
    assert!(err.contains("did you mean `tiny`?"), "{err}");
    p.manifest(
        "t.toml",
        &PIPELINE.replace("classes = 4\nlayers", "classes = 5\nlayers"),
    );
    // Known from the manifest (a generated dataset of 4 classes): refused before anything
    // runs, at the network's `classes`.
    let err = p.fails(&["run", "t", "--dry-run"]);
    assert!(
        err.contains(
            "t.toml:16:1: network `tiny` outputs 5 classes, but stage `train` trains on 4"
        ),
        "{err}"
    );
    p.manifest(
        "t.toml",
        &PIPELINE.replace("from = \"train\"", "from = \"hdf5\""),
    );
    let err = p.fails(&["run", "t"]);
    assert!(
        err.contains(
            "needs a model from a train, lr-drop or resume stage, but `hdf5` is an hdf5 stage"
        ),
        "{err}"
    );
}

fn seed_project() -> Project {
    let p = Project::new();
    let src = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines"));
    for sub in ["", "base", "networks"] {
        std::fs::create_dir_all(p.path().join("pipelines").join(sub)).unwrap();
        for e in std::fs::read_dir(src.join(sub)).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "toml") {
                std::fs::copy(
                    &path,
                    p.path()
                        .join("pipelines")
                        .join(sub)
                        .join(path.file_name().unwrap()),
                )
                .unwrap();
            }
        }
    }
    p
}

#[test]
fn the_chapters_tiny_imagenet_exp3_runs_on_a_small_tree() {
    let p = seed_project();
    common::tiny_imagenet_sized(&p.path().join("data/tiny"), 3, 6, 2, 64);
    let sets = [
        "ingest.root=data/tiny",
        "split.test_per_class=2",
        "networks.deeper_googlenet.classes=3",
        "train.epochs=1",
        "train.batch_size=6",
        "drop1.epochs=1",
        "drop2.epochs=1",
        "val.top_k=[1,2]",
        "test.top_k=[1,2]",
    ];
    let mut args = vec![];
    for s in &sets {
        args.push("--set");
        args.push(s);
    }
    let r = p.run_json("exp3", &args);
    assert_eq!(r["pipeline"], "tiny_imagenet_exp3");
    for s in [
        "ingest", "split", "hdf5", "train", "drop1", "drop2", "val", "test",
    ] {
        assert_eq!(state_of(&r, s), "ran", "{s}");
    }
    let drop2 = p.artifact(&r, "drop2");
    let h: Vec<serde_json::Value> = read_json(&drop2.join("history.json"));
    let lrs: Vec<f64> = h.iter().map(|r| r["lr"].as_f64().unwrap()).collect();
    assert_eq!(lrs, vec![1e-3, 1e-4, 1e-5]);
    // exp3's L2 2e-4 reached the network that was trained.
    let plan: serde_json::Value = read_json(&drop2.join("plan.json"));
    let l2s: Vec<f64> = plan["graph"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["op"]["op"] == "conv2d")
        .map(|n| n["op"]["l2"].as_f64().unwrap())
        .collect();
    assert_eq!(l2s.len(), 3 + 7 * 6);
    assert!(l2s.iter().all(|&l| l == 2e-4));
    // exp1..3 share their data stages: exp1's HDF5 is exp3's.
    let r1 = p.run_json(
        "exp1",
        &[
            "--until",
            "hdf5",
            "--set",
            "ingest.root=data/tiny",
            "--set",
            "split.test_per_class=2",
        ],
    );
    assert_eq!(state_of(&r1, "hdf5"), "cached");
}

#[test]
fn the_chapters_cifar10_exp3_runs_on_small_batches() {
    let p = seed_project();
    pipe::data::synthetic::write_cifar10(&p.path().join("data/cifar-10-batches-bin"), 12, 5)
        .unwrap();
    let r = p.run_json(
        "cifar10_minigooglenet_exp3",
        &["--set", "train.epochs=1", "--set", "train.batch_size=20"],
    );
    assert_eq!(state_of(&r, "train"), "ran");
    assert_eq!(state_of(&r, "evaluate"), "ran");
    assert!(
        field(&r, "evaluate", "summary").starts_with("test (12 images): rank-1"),
        "{r}"
    );
    let plan: serde_json::Value = read_json(&p.artifact(&r, "train").join("plan.json"));
    assert_eq!(plan["mean"], "pixel");
    assert_eq!(plan["val_split"], "test");
    assert_eq!(plan["optimizer"]["kind"], "sgd");
}

#[test]
fn resume_from_a_checkpoint_file_equals_resume_from_the_stage() {
    let p = Project::new();
    let text = PIPELINE.to_string() + &resume_from("train@2");
    p.manifest("t.toml", &text);
    let r = p.run_json("t", &["--until", "again"]);
    let ckpt = p
        .artifact(&r, "train")
        .join("checkpoints/epoch_2.safetensors");
    std::fs::create_dir_all(p.path().join("saved")).unwrap();
    std::fs::copy(&ckpt, p.path().join("saved/epoch_2.safetensors")).unwrap();
    let text2 = text.clone()
        + "\n[stages.fromfile]\nkind = \"resume\"\nfrom = \"saved/epoch_2.safetensors\"\ninput = \"hdf5\"\nlr = 0.01\nepochs = 1\n";
    p.manifest("t.toml", &text2);
    let r2 = p.run_json("t", &["--until", "fromfile"]);
    assert_eq!(state_of(&r2, "fromfile"), "ran");
    let a = tensors(&p.artifact(&r, "again").join("state.safetensors"));
    let b = tensors(&p.artifact(&r2, "fromfile").join("state.safetensors"));
    for (k, v) in &a {
        assert!(
            v == &b[k],
            "{k} differs between resume from the stage and from its file"
        );
    }
    let h: Vec<serde_json::Value> = read_json(&p.artifact(&r2, "fromfile").join("history.json"));
    assert_eq!(h.len(), 3);
    assert_eq!(h[2]["stage"], "fromfile");
    // The file's content is in the key: a different checkpoint re-runs the stage.
    let other = p
        .artifact(&r, "train")
        .join("checkpoints/epoch_3.safetensors");
    std::fs::copy(&other, p.path().join("saved/epoch_2.safetensors")).unwrap();
    let r3 = p.run_json("t", &["--until", "fromfile"]);
    assert_eq!(state_of(&r3, "fromfile"), "ran");
    // A file that is not there is a manifest error at `from`.
    p.manifest("t.toml", &text2.replace("saved/epoch_2", "saved/nope"));
    let err = p.fails(&["run", "t"]);
    assert!(
        err.contains("t.toml:") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn a_byte_identical_retrain_cuts_off_early() {
    // Timings live in timings.json, outside the artifact's hash; checkpoints are written
    // with sorted headers: forcing the training stage again reproduces its artifact, so the
    // stages after it stay cached.
    let p = Project::with("t.toml", PIPELINE);
    let first = p.run_json("t", &[]);
    let out = p.ok(&["run", "t", "--force", "train", "--json"]);
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // `--force` really trains: every epoch, from the first.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(epochs_trained(&err, "train"), [1, 2, 3, 4], "{err}");
    assert_eq!(state_of(&again, "train"), "ran");
    assert!(stage(&again, "train")["seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(
        stage(&again, "train")["reasons"],
        serde_json::json!([
            "forced with --force",
            "output unchanged: later stages stay cached"
        ])
    );
    assert_eq!(
        field(&first, "train", "output"),
        field(&again, "train", "output")
    );
    assert_eq!(state_of(&again, "drop"), "cached");
    assert_eq!(state_of(&again, "evaluate"), "cached");
    let timings = p.artifact(&again, "train").join("timings.json");
    let t: serde_json::Value = read_json(&timings);
    assert_eq!(t.as_array().unwrap().len(), 4, "one timing per epoch");
    assert!(t[0]["images_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_forced_stage_starts_over_instead_of_resuming_its_interrupted_run() {
    let p = Project::with("t.toml", PIPELINE);
    kill_at_fault(&p, &["run", "t", "--until", "train"], "train:epoch2");
    // Without --force the next run would resume at epoch 2; forced, it trains all four.
    let status = p.ok(&["status", "t"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("resumes from its checkpoint at epoch 2")
    );
    let out = p.ok(&["run", "t", "--until", "train", "--force", "train"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("resuming from its checkpoint"), "{err}");
    assert_eq!(epochs_trained(&err, "train"), [1, 2, 3, 4], "{err}");
}

#[test]
fn a_dfdx_trained_stage_continues_on_native_and_the_backend_is_in_the_key() {
    let p = Project::with(
        "t.toml",
        &PIPELINE.replace(
            "[stages.train]\ninput = \"hdf5\"",
            "[stages.train]\nbackend = \"dfdx\"\ninput = \"hdf5\"",
        ),
    );
    let r = p.run_json("t", &[]);
    assert_eq!(state_of(&r, "evaluate"), "ran");
    let plan =
        |stage: &str| -> serde_json::Value { read_json(&p.artifact(&r, stage).join("plan.json")) };
    assert_eq!(plan("train")["backend"], "dfdx");
    assert_eq!(plan("drop")["backend"], "native");
    // The drop continued from dfdx's final state: its history carries on from epoch 4.
    let h: serde_json::Value = read_json(&p.artifact(&r, "drop").join("history.json"));
    assert_eq!(h.as_array().unwrap().len(), 6);
    // Switching the training backend changes its key (and so everything after it).
    p.manifest("t.toml", PIPELINE);
    let native = p.run_json("t", &[]);
    assert_ne!(field(&r, "train", "key"), field(&native, "train", "key"));
    assert_eq!(state_of(&native, "train"), "ran");
}

/// The training plot is drawn with whatever font a machine has, so its pixels differ from
/// machine to machine: it is a record of the artifact, not its content. The same training
/// with the font found and with it hidden gives different plots and the same artifact.
#[test]
fn the_training_plot_is_a_record_so_the_font_changes_no_hash() {
    let text = Generated::new("f").text();
    let with = Project::with("f.toml", &text);
    let a = with.run_json("f", &[]);
    let without = Project::with("f.toml", &text);
    let out = without
        .cmd(&["run", "f", "--json"])
        .env("PIPE_PLOT_FONT", "none")
        .output()
        .unwrap();
    assert_success(&out, "run with the font hidden");
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plot = |p: &Project, r: &serde_json::Value| {
        std::fs::read(p.artifact(r, "train").join("history.png")).unwrap()
    };
    assert_ne!(plot(&with, &a), plot(&without, &b), "the font was not used");
    assert_eq!(field(&a, "train", "output"), field(&b, "train", "output"));
    assert_eq!(field(&a, "train", "key"), field(&b, "train", "key"));
}

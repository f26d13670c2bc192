//! Issue 9, "trust the store": inputs that used to panic or slip through, each pinned by a
//! test that failed before its fix.

mod common;

use common::*;

const DATA: &str = r#"name = "t"
seed = 3

[stages.ingest]
format = "synthetic"
classes = 3
train_per_class = 12
val_per_class = 4
image_size = [16, 16]

[stages.hdf5]
input = "ingest"

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
epochs = 2
batch_size = 8
lr = 0.01
checkpoint_every = 1
"#;

#[test]
fn evaluate_after_a_resume_from_a_checkpoint_file_runs() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    let r = p.run_json("t", &[]);
    let ckpt = p
        .cache()
        .join("artifacts")
        .join(field(&r, "train", "output"))
        .join("checkpoints/epoch_1.safetensors");
    std::fs::copy(&ckpt, p.path().join("epoch_1.safetensors")).unwrap();
    let text = DATA.to_string()
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
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r = p.run_json("t", &[]);
    assert_eq!(state_of(&r, "evaluate"), "ran");
    assert!(field(&r, "evaluate", "summary").contains("rank-1"));
}

#[test]
fn a_network_input_that_disagrees_with_the_hdf5_size_is_a_manifest_error() {
    let p = Project::new();
    let text = DATA
        .replace(
            "[stages.hdf5]\ninput = \"ingest\"",
            "[stages.hdf5]\ninput = \"ingest\"\nsize = [16, 16]",
        )
        .replace("input = [16, 16, 3]", "input = [32, 32, 3]");
    p.manifest("t.toml", &text);
    for cmd in [
        &["run", "t", "--dry-run"][..],
        &["status", "t"],
        &["graph", "t"],
    ] {
        let err = p.fails(cmd);
        assert!(err.contains("t.toml:"), "{cmd:?}: {err}");
        assert!(
            err.contains("networks.tiny.input") && err.contains("stages.hdf5.size"),
            "{err}"
        );
    }
    // One channel against RGB data.
    p.manifest(
        "t.toml",
        &DATA
            .replace(
                "[stages.hdf5]\ninput = \"ingest\"",
                "[stages.hdf5]\ninput = \"ingest\"\nsize = [16, 16]",
            )
            .replace("input = [16, 16, 3]", "input = [16, 16, 1]"),
    );
    assert!(p.fails(&["run", "t", "--dry-run"]).contains("16x16x1"));
}

#[test]
fn without_a_fixed_size_the_train_stage_checks_the_input_before_training() {
    let p = Project::new();
    p.manifest(
        "t.toml",
        &DATA.replace("input = [16, 16, 3]", "input = [24, 24, 3]"),
    );
    let err = p.fails(&["run", "t"]);
    assert!(
        err.contains("takes 24x24x3 images") && err.contains("16x16x3"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    for args in [
        &["dag", "t"][..],
        &["status", "t"],
        &["graph", "t"],
        &["run", "t", "--json"],
    ] {
        let mut child = p
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader went away, like `| head -c 0`
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {err}");
    }
}

#[test]
fn absurd_image_sizes_are_refused_with_the_limit() {
    let p = Project::new();
    p.manifest(
        "t.toml",
        &DATA.replace("image_size = [16, 16]", "image_size = [100000, 100000]"),
    );
    let err = p.fails(&["run", "t", "--dry-run"]);
    assert!(err.contains("t.toml:") && err.contains("4096"), "{err}");
    p.manifest(
        "t.toml",
        &DATA.replace(
            "[stages.hdf5]\ninput = \"ingest\"",
            "[stages.hdf5]\ninput = \"ingest\"\nsize = [50000, 16]",
        ),
    );
    let err = p.fails(&["run", "t", "--dry-run"]);
    assert!(err.contains("`size`") && err.contains("4096"), "{err}");
}

/// An image-folder dataset of real JPEGs: `root/<class>/<i>.jpg`.
fn image_folder(root: &std::path::Path, classes: &[&str], per_class: usize) {
    for (k, c) in classes.iter().enumerate() {
        std::fs::create_dir_all(root.join(c)).unwrap();
        for i in 0..per_class {
            let img = image::RgbImage::from_fn(16, 16, |x, y| {
                image::Rgb([(x * 16) as u8, (y * 16) as u8, (k * 80 + i) as u8])
            });
            img.save(root.join(c).join(format!("{i}.jpg"))).unwrap();
        }
    }
}

fn folder_pipeline(extra_hdf5: &str) -> String {
    DATA.replace(
        "format = \"synthetic\"\nclasses = 3\ntrain_per_class = 12\nval_per_class = 4\nimage_size = [16, 16]",
        "format = \"image-folder\"\nroot = \"data\"",
    )
    .replace(
        "[stages.hdf5]\ninput = \"ingest\"",
        &format!("[stages.split]\ninput = \"ingest\"\nto_split = \"val\"\ntest_per_class = 2\n\n[stages.hdf5]\ninput = \"split\"{extra_hdf5}"),
    )
}

#[test]
fn an_empty_class_folder_is_an_error_naming_it_even_after_a_cached_run() {
    let p = Project::new();
    image_folder(&p.path().join("data"), &["cat", "dog", "owl"], 6);
    p.manifest("t.toml", &folder_pipeline(""));
    let r = p.run_json("t", &["--until", "ingest"]);
    assert_eq!(state_of(&r, "ingest"), "ran");
    // A new, empty class folder changes the fingerprint: ingest runs again and refuses it.
    std::fs::create_dir_all(p.path().join("data/emu")).unwrap();
    let err = p.fails(&["run", "t", "--until", "ingest"]);
    assert!(
        err.contains("emu") && err.contains("holds no images"),
        "{err}"
    );
}

#[test]
fn a_tiny_imagenet_class_without_training_images_or_without_val_is_an_error() {
    let p = Project::new();
    let root = p.path().join("tiny");
    tiny_imagenet(&root, 3, 4, 2);
    let text = tiny_manifest(&root, 1);
    p.manifest("t.toml", &text);
    p.ok(&["run", "t", "--until", "ingest"]);
    let wnid = std::fs::read_to_string(root.join("wnids.txt")).unwrap();
    let first = wnid.lines().next().unwrap().to_string();
    let imgs = root.join("train").join(&first).join("images");
    for e in std::fs::read_dir(&imgs).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let err = p.fails(&["run", "t", "--until", "ingest"]);
    assert!(
        err.contains(&first) && err.contains("no training images"),
        "{err}"
    );
    // Restore, then lose val/.
    tiny_imagenet(&root, 3, 4, 2);
    std::fs::remove_dir_all(root.join("val")).unwrap();
    let err = p.fails(&["run", "t", "--until", "ingest"]);
    assert!(
        err.contains("val_annotations.txt") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn training_on_a_split_whose_images_were_all_skipped_is_an_error() {
    let p = Project::new();
    image_folder(&p.path().join("data"), &["cat", "dog"], 6);
    // Every file of `dog` is garbage, and the hdf5 stage skips undecodable images.
    for i in 0..6 {
        std::fs::write(p.path().join(format!("data/dog/{i}.jpg")), b"not a jpeg").unwrap();
    }
    for i in 0..6 {
        std::fs::write(
            p.path().join(format!("data/cat/{i}.jpg")),
            b"not a jpeg either",
        )
        .unwrap();
    }
    p.manifest(
        "t.toml",
        &folder_pipeline("\non_bad_image = \"skip\"").replace("classes = 3", "classes = 2"),
    );
    let err = p.fails(&["run", "t"]);
    assert!(
        err.contains("holds no images") || err.contains("no images"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_truncated_jpeg_is_undecodable() {
    let dir = tempfile::tempdir().unwrap();
    let img = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 99]));
    let full = dir.path().join("full.jpg");
    img.save(&full).unwrap();
    assert!(pipe::data::decode::decode_file(&full).is_ok());
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.path().join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = format!("{:#}", pipe::data::decode::decode_file(&cut).unwrap_err());
    assert!(
        err.contains("cut.jpg") && err.contains("truncated"),
        "{err}"
    );
    assert!(pipe::data::decode::jpeg_is_complete(&bytes));
    assert!(!pipe::data::decode::jpeg_is_complete(
        &bytes[..bytes.len() - 2]
    ));
}

fn artifact_of(p: &Project, r: &serde_json::Value, stage: &str) -> std::path::PathBuf {
    p.cache().join("artifacts").join(field(r, stage, "output"))
}

/// Overwrite a published file as a careless user would (chmod, then write).
fn tamper(path: &std::path::Path, f: impl FnOnce(&mut Vec<u8>)) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn published_artifacts_are_read_only() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new();
    p.manifest("t.toml", DATA);
    let r = p.run_json("t", &["--until", "hdf5"]);
    let dir = artifact_of(&p, &r, "hdf5");
    let mode = |q: &std::path::Path| std::fs::metadata(q).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o555);
    assert_eq!(mode(&dir.join("train.h5")), 0o444);
}

#[test]
fn a_damaged_artifact_is_rebuilt_with_a_warning_naming_the_file() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    let first = p.run_json("t", &[]);
    // Flip bytes in the middle of train.h5.
    let h5 = artifact_of(&p, &first, "hdf5").join("train.h5");
    tamper(&h5, |b| {
        let mid = b.len() / 2;
        b[mid] ^= 0xFF;
        b[mid + 1] ^= 0xFF;
    });
    // status reports it (and writes nothing), then run rebuilds hdf5 and, since hdf5
    // reproduces the same bytes, everything after it stays cached.
    let out = p.ok(&["status", "t"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("train.h5") && text.contains("damaged"),
        "{text}"
    );
    let out = p.cmd(&["run", "t", "--json"]).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning") && err.contains("train.h5"), "{err}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state_of(&r, "hdf5"), "ran");
    assert_eq!(field(&r, "hdf5", "output"), field(&first, "hdf5", "output"));
    assert_eq!(state_of(&r, "train"), "cached");
    // The rebuilt artifact is sound again.
    assert!(p.ok(&["verify", "t"]).status.success());
}

#[test]
fn truncated_files_deleted_checkpoints_and_edited_indexes_are_caught() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    let first = p.run_json("t", &[]);
    let train = artifact_of(&p, &first, "train");
    tamper(&train.join("state.safetensors"), |b| {
        b.truncate(b.len() / 2)
    });
    let r = p.run_json("t", &["--force", "train"]);
    assert_eq!(state_of(&r, "train"), "ran");
    // Deleted checkpoints/.
    let train = artifact_of(&p, &r, "train");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&train, std::fs::Permissions::from_mode(0o755)).unwrap();
        let ck = train.join("checkpoints");
        std::fs::set_permissions(&ck, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::remove_dir_all(&ck).unwrap();
    }
    let r = p.run_json("t", &[]);
    assert_eq!(
        state_of(&r, "train"),
        "ran",
        "a train artifact without checkpoints is damaged"
    );
    // An edited index of the ingest stage.
    let csv = artifact_of(&p, &r, "ingest").join("train.csv");
    tamper(&csv, |b| b.extend_from_slice(b"extra,row\n"));
    let r = p.run_json("t", &[]);
    assert_eq!(state_of(&r, "ingest"), "ran");
}

#[test]
fn verify_rehashes_everything_and_gc_drops_the_damage() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    let first = p.run_json("t", &["--until", "hdf5"]);
    assert!(p.ok(&["verify"]).status.success());
    // Same size, mtime put back: only a full re-hash sees it.
    let h5 = artifact_of(&p, &first, "hdf5").join("val.h5");
    let mtime = std::fs::metadata(&h5).unwrap().modified().unwrap();
    tamper(&h5, |b| {
        let last = b.len() - 100;
        b[last] ^= 1;
    });
    std::fs::File::options()
        .write(true)
        .open(&h5)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let out = p.cmd(&["verify", "t"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("damaged"), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("DAMAGED") && text.contains("val.h5"),
        "{text}"
    );
    // Moved aside: verify is clean again, the next run rebuilds hdf5, gc frees the bytes.
    assert!(p.ok(&["verify"]).status.success());
    let r = p.run_json("t", &["--until", "hdf5"]);
    assert_eq!(state_of(&r, "hdf5"), "ran");
    let out = p.ok(&["gc"]);
    let gc = String::from_utf8_lossy(&out.stdout);
    assert!(gc.contains("removed damaged artifact"), "{gc}");
    assert!(!gc.contains(" 0 B in all"), "{gc}");
    assert_eq!(
        std::fs::read_dir(p.cache().join("damaged"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn bad_values_are_refused_before_the_run_at_their_line() {
    let drop = "\n[stages.drop]\nkind = \"lr-drop\"\nfrom = \"train\"\nlr = 0.001\nepochs = 1\n";
    let eval = "\n[stages.evaluate]\ninput = \"train\"\nsplit = \"val\"\ntop_k = [1, 5]\n";
    let cases: Vec<(String, &str)> = vec![
        (DATA.replace("lr = 0.01", "lr = nan"), "must be finite"),
        (DATA.replace("lr = 0.01", "lr = inf"), "must be finite"),
        (
            DATA.replace("lr = 0.01", "lr = 0.01\nmomentum = 1.0"),
            "`momentum` = 1 must be in [0, 1)",
        ),
        (
            DATA.replace("lr = 0.01", "lr = 0.01\nmomentum = -0.5"),
            "`momentum`",
        ),
        (
            DATA.replace("lr = 0.01", "lr = 0.01\naugment = { width_shift = 1.5 }"),
            "augment.width_shift",
        ),
        (
            DATA.replace("lr = 0.01", "lr = 0.01\naugment = { zoom = -0.1 }"),
            "augment.zoom",
        ),
        (
            DATA.replace("lr = 0.01", "lr = 0.01\naugment = { rotation = 270 }"),
            "augment.rotation",
        ),
        (
            DATA.replace("lr = 0.01", "lr = 0.01\naugment = { shear = 200 }"),
            "augment.shear",
        ),
        (
            DATA.replace("lr = 0.01", "lr = 0.01\nschedule = \"poly\"\npower = -1"),
            "`power`",
        ),
        (
            DATA.to_string() + eval,
            "rank-5, but the network has 3 classes",
        ),
        (
            DATA.replace("name = \"t\"", "name = \"\""),
            "`name` must not be empty",
        ),
        (
            DATA.replace("[stages.train]", "[stages.\"\"]"),
            "must be 1 to 100 characters",
        ),
        (
            DATA.replace("[stages.train]", &format!("[stages.{}]", "x".repeat(101))),
            "1 to 100 characters",
        ),
        (
            DATA.replace("[stages.train]", "[stages.\"tr\\u0007in\"]"),
            "control characters",
        ),
        (
            DATA.replace(
                "layers = [\n  { conv2d = { filters = 4, kernel = 3 } },\n  { relu = {} },\n  { global_avgpool = {} },\n  { dense = \"$classes\" },\n  { softmax = {} },\n]",
                "layers = []",
            ),
            "network `tiny` has an empty `layers` list",
        ),
        (
            DATA.replace(
                "[networks.tiny]",
                "[blocks.b]\nparams = [\"k\", \"k\"]\nlayers = [{ relu = {} }]\n\n[networks.tiny]",
            ),
            "listed twice",
        ),
        (
            DATA.replace(
                "[networks.tiny]",
                "[blocks.b]\nlayers = []\n\n[networks.tiny]",
            ),
            "empty `layers`",
        ),
        (
            DATA.to_string() + &drop.replace("lr = 0.001", "lr = 0.001\nmomentum = 2.0"),
            "`momentum` = 2",
        ),
        (
            DATA.to_string() + &drop.replace("epochs = 1", "epochs = 0"),
            "`epochs` must be > 0",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = Project::new();
        p.manifest("t.toml", text);
        for cmd in [
            &["run", "t", "--dry-run"][..],
            &["status", "t"],
            &["graph", "t"],
        ] {
            let err = p.fails(cmd);
            assert!(
                err.contains("t.toml:") && err.contains(want) && !err.contains("panicked"),
                "case {i} ({want}), {cmd:?}: {err}"
            );
        }
    }
    // --set gets the same check.
    let p = Project::new();
    p.manifest("t.toml", DATA);
    let err = p.fails(&["run", "t", "--dry-run", "--set", "train.lr=nan"]);
    assert!(err.contains("must be finite"), "{err}");
}

#[test]
fn status_writes_nothing() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    p.ok(&["status", "t"]);
    p.ok(&["run", "t", "--dry-run"]);
    assert!(!p.cache().exists(), "status or a dry run created the cache");
    p.run_json("t", &["--until", "hdf5"]);
    let listing = |root: &std::path::Path| {
        let mut v = Vec::new();
        fn walk(d: &std::path::Path, v: &mut Vec<(String, std::time::SystemTime)>) {
            for e in std::fs::read_dir(d).unwrap() {
                let e = e.unwrap();
                let md = e.metadata().unwrap();
                v.push((e.path().display().to_string(), md.modified().unwrap()));
                if md.is_dir() {
                    walk(&e.path(), v);
                }
            }
        }
        walk(root, &mut v);
        v.sort();
        v
    };
    let before = listing(&p.cache());
    p.ok(&["status", "t"]);
    p.ok(&["verify"]);
    assert_eq!(listing(&p.cache()), before);
}

#[test]
fn status_after_a_kill_says_where_training_resumes_and_gc_counts_scratch() {
    use std::io::{BufRead, BufReader};
    let p = Project::new();
    p.manifest("t.toml", &DATA.replace("epochs = 2", "epochs = 3"));
    let mut child = p
        .cmd(&["run", "t"])
        .env("PIPE_FAULT", "train:epoch2")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        if line.unwrap().contains("PIPE_FAULT reached") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
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
    // Another learning rate: the interrupted run's scratch is garbage; gc frees its bytes.
    p.manifest("t.toml", &DATA.replace("lr = 0.01", "lr = 0.02"));
    let out = p.ok(&["gc"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("freed 0 B"), "{text}");
    assert_eq!(
        std::fs::read_dir(p.cache().join("scratch"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn located_messages_for_utf8_include_and_one_key_each() {
    let p = Project::new();
    let mut bytes = DATA.as_bytes().to_vec();
    let at = DATA.find("seed").unwrap(); // line 2
    bytes.insert(at, 0xFF);
    std::fs::write(p.path().join("pipelines/t.toml"), &bytes).unwrap();
    let err = p.fails(&["run", "t", "--dry-run"]);
    assert!(err.contains("t.toml:2:1") && err.contains("UTF-8"), "{err}");
    p.manifest("t.toml", &format!("include = [\"nope.toml\"]\n{DATA}"));
    let err = p.fails(&["run", "t", "--dry-run"]);
    assert!(
        err.contains("`include` names a file") && !err.contains("extends"),
        "{err}"
    );
    p.manifest(
        "t.toml",
        &DATA.replace(
            "classes = 3\ntrain_per_class",
            "classes = 0\ntrain_per_class",
        ),
    );
    let err = p.fails(&["run", "t", "--dry-run"]);
    assert!(
        err.contains("`classes` must be > 0") && !err.contains(" and "),
        "{err}"
    );
}

#[test]
fn dag_dot_escapes_stage_names() {
    let p = Project::new();
    p.manifest(
        "t.toml",
        &DATA.replace("[stages.train]", "[stages.'tr\"ai\\n']\nkind = \"train\""),
    );
    let out = p.ok(&["dag", "t", "--dot"]);
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(dot.contains(r#""tr\"ai\\n""#), "{dot}");
}

#[test]
fn the_manifest_keeps_auto_and_the_engine_settles_device_and_backend() {
    let p = Project::new();
    let path = p.manifest(
        "t.toml",
        &DATA.replace("[stages.train]", "[stages.train]\ndevice = \"auto\""),
    );
    let mut pl = pipe::manifest::load(&path, &[], p.path()).unwrap();
    let pipe::manifest::StageConfig::Train(t) = &pl.stages["train"].config else {
        panic!("train is a train stage")
    };
    assert_eq!(t.device, Some(pipe::manifest::DeviceSetting::Auto));
    assert_eq!(t.backend, None);
    pipe::engine::resolve_devices(&mut pl);
    let pipe::manifest::StageConfig::Train(t) = &pl.stages["train"].config else {
        panic!("train is a train stage")
    };
    // Auto is the GPU when this build can open one (then dfdx), else the CPU (then native).
    let (dev, backend) = if pipe::backend::cuda_available() {
        (
            pipe::manifest::DeviceSetting::Cuda,
            pipe::manifest::BackendKind::Dfdx,
        )
    } else {
        (
            pipe::manifest::DeviceSetting::Cpu,
            pipe::manifest::BackendKind::Native,
        )
    };
    assert_eq!(t.device, Some(dev));
    assert_eq!(t.backend, Some(backend));
}

#[test]
fn atomic_writes_replace_whole_files_and_leave_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("sub/state.json");
    pipe::atomic::write_json_atomic(&f, &serde_json::json!({"a": 1})).unwrap();
    pipe::atomic::write_atomic(&f, b"second").unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"second");
    let names: Vec<String> = std::fs::read_dir(dir.path().join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["state.json"]);
}

#[test]
fn forcing_the_next_stage_does_not_carry_damage_forward() {
    let p = Project::new();
    p.manifest("t.toml", DATA);
    let first = p.run_json("t", &[]);
    let h5 = artifact_of(&p, &first, "hdf5").join("train.h5");
    tamper(&h5, |b| b.truncate(b.len() - 10));
    let r = p.run_json("t", &["--force", "train"]);
    assert_eq!(
        state_of(&r, "hdf5"),
        "ran",
        "the damaged input is rebuilt first"
    );
    assert_eq!(state_of(&r, "train"), "ran");
    // Rebuilt hdf5 is byte-identical, so the forced training reproduces its artifact.
    assert_eq!(
        field(&r, "train", "output"),
        field(&first, "train", "output")
    );
}

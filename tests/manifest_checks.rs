//! What is checked of a manifest before anything runs, by `run --dry-run`, `status` and
//! `graph` alike, at the value's line: numbers out of range, sizes over the limit, a
//! network whose input or classes disagree with its data (also once an ingested index
//! tells the classes), bad UTF-8, a missing include; where the value is only known later,
//! the train stage checks it before training. Also: `auto` device and backend stay in the
//! manifest and the engine settles them, and the commands that print a pipeline escape
//! stage names in dot and end quietly when their reader goes away.

mod common;

use common::*;

#[test]
fn a_network_input_that_disagrees_with_the_hdf5_size_is_a_manifest_error() {
    let p = Project::new();
    let text = pipeline_t()
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
        &pipeline_t()
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
    let p = Project::with(
        "t.toml",
        &pipeline_t().replace("input = [16, 16, 3]", "input = [24, 24, 3]"),
    );
    let err = p.fails(&["run", "t"]);
    assert!(
        err.contains("takes 24x24x3 images") && err.contains("16x16x3"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn absurd_image_sizes_are_refused_with_the_limit() {
    let p = Project::with(
        "t.toml",
        &pipeline_t().replace("image_size = [16, 16]", "image_size = [100000, 100000]"),
    );
    let err = p.fails(&["run", "t", "--dry-run"]);
    assert!(err.contains("t.toml:") && err.contains("4096"), "{err}");
    p.manifest(
        "t.toml",
        &pipeline_t().replace(
            "[stages.hdf5]\ninput = \"ingest\"",
            "[stages.hdf5]\ninput = \"ingest\"\nsize = [50000, 16]",
        ),
    );
    let err = p.fails(&["run", "t", "--dry-run"]);
    assert!(err.contains("`size`") && err.contains("4096"), "{err}");
}

#[test]
fn bad_values_are_refused_before_the_run_at_their_line() {
    let drop = "\n[stages.drop]\nkind = \"lr-drop\"\nfrom = \"train\"\nlr = 0.001\nepochs = 1\n";
    let eval = "\n[stages.evaluate]\ninput = \"train\"\nsplit = \"val\"\ntop_k = [1, 5]\n";
    let t = pipeline_t();
    // `line` added to the training, after its `lr`.
    let train = |line: &str| t.replace("lr = 0.01", &format!("lr = 0.01\n{line}"));
    let cases: Vec<(String, &str)> = vec![
        (t.replace("lr = 0.01", "lr = nan"), "must be finite"),
        (t.replace("lr = 0.01", "lr = inf"), "must be finite"),
        (train("momentum = 1.0"), "`momentum` = 1 must be in [0, 1)"),
        (train("momentum = -0.5"), "`momentum`"),
        (train("augment = { width_shift = 1.5 }"), "augment.width_shift"),
        (train("augment = { zoom = -0.1 }"), "augment.zoom"),
        (train("augment = { rotation = 270 }"), "augment.rotation"),
        (train("augment = { shear = 200 }"), "augment.shear"),
        (train("schedule = \"poly\"\npower = -1"), "`power`"),
        (t.clone() + eval, "rank-5, but the network has 3 classes"),
        (
            t.replace("name = \"t\"", "name = \"\""),
            "`name` must not be empty",
        ),
        (
            t.replace("[stages.train]", "[stages.\"\"]"),
            "must be 1 to 100 characters",
        ),
        (
            t.replace("[stages.train]", &format!("[stages.{}]", "x".repeat(101))),
            "1 to 100 characters",
        ),
        (
            t.replace("[stages.train]", "[stages.\"tr\\u0007in\"]"),
            "control characters",
        ),
        (
            t.replace(
                "layers = [\n  { conv2d = { filters = 4, kernel = 3 } },\n  { relu = {} },\n  { global_avgpool = {} },\n  { dense = \"$classes\" },\n  { softmax = {} },\n]",
                "layers = []",
            ),
            "network `tiny` has an empty `layers` list",
        ),
        (
            t.replace(
                "[networks.tiny]",
                "[blocks.b]\nparams = [\"k\", \"k\"]\nlayers = [{ relu = {} }]\n\n[networks.tiny]",
            ),
            "listed twice",
        ),
        (
            t.replace(
                "[networks.tiny]",
                "[blocks.b]\nlayers = []\n\n[networks.tiny]",
            ),
            "empty `layers`",
        ),
        (
            t.clone() + &drop.replace("lr = 0.001", "lr = 0.001\nmomentum = 2.0"),
            "`momentum` = 2",
        ),
        (
            t.clone() + &drop.replace("epochs = 1", "epochs = 0"),
            "`epochs` must be > 0",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = Project::with("t.toml", text);
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
    let p = Project::with("t.toml", &pipeline_t());
    let err = p.fails(&["run", "t", "--dry-run", "--set", "train.lr=nan"]);
    assert!(err.contains("must be finite"), "{err}");
}

#[test]
fn located_messages_for_utf8_include_and_one_key_each() {
    let p = Project::new();
    let mut bytes = pipeline_t().into_bytes();
    let at = pipeline_t().find("seed").unwrap(); // line 2
    bytes.insert(at, 0xFF);
    std::fs::write(p.path().join("pipelines/t.toml"), &bytes).unwrap();
    let err = p.fails(&["run", "t", "--dry-run"]);
    assert!(err.contains("t.toml:2:1") && err.contains("UTF-8"), "{err}");
    p.manifest(
        "t.toml",
        &format!("include = [\"nope.toml\"]\n{}", pipeline_t()),
    );
    let err = p.fails(&["run", "t", "--dry-run"]);
    assert!(
        err.contains("`include` names a file") && !err.contains("extends"),
        "{err}"
    );
    p.manifest(
        "t.toml",
        &pipeline_t().replace(
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
fn classes_known_from_an_ingested_index_are_checked_by_a_dry_run() {
    let (p, root) = Project::with_tiny_imagenet("data/tiny", 3, 8, 2);
    let net = include_str!("manifests/four_class_network.toml");
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
fn the_manifest_keeps_auto_and_the_engine_settles_device_and_backend() {
    let p = Project::new();
    let path = p.manifest(
        "t.toml",
        &pipeline_t().replace("[stages.train]", "[stages.train]\ndevice = \"auto\""),
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
fn dag_dot_escapes_stage_names() {
    let p = Project::with(
        "t.toml",
        &pipeline_t().replace("[stages.train]", "[stages.'tr\"ai\\n']\nkind = \"train\""),
    );
    let out = p.ok(&["dag", "t", "--dot"]);
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(dot.contains(r#""tr\"ai\\n""#), "{dot}");
}

#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    let p = Project::with("t.toml", &pipeline_t());
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

/// An `extends` chain 5,000 files deep is refused at the 33rd file with a clear error, by
/// `run` and `status` alike (it overflowed the stack before).
#[test]
fn an_extends_chain_thousands_deep_is_refused_not_a_stack_overflow() {
    let p = Project::new();
    p.manifest("f0.toml", &pipeline_t());
    for i in 1..5000 {
        p.manifest(
            &format!("f{i}.toml"),
            &format!("extends = \"f{}.toml\"\nname = \"f{i}\"\n", i - 1),
        );
    }
    for cmd in [&["run", "f4999", "--dry-run"][..], &["status", "f4999"]] {
        let out = p.cmd(cmd).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
        assert!(
            err.contains("`extends` chains more than 32 files deep"),
            "{cmd:?}: {err}"
        );
    }
}

/// Files that each include the next one twice, 30 deep (within the depth limit): 2^30
/// reads. The load stops after 256 files with an error naming `include`, at once.
#[test]
fn includes_that_fan_out_are_refused_after_256_files() {
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("pipelines/base")).unwrap();
    p.manifest("base/l30.toml", "[stages]\n");
    for i in 1..30 {
        p.manifest(
            &format!("base/l{i}.toml"),
            &format!("include = [\"l{0}.toml\", \"l{0}.toml\"]\n", i + 1),
        );
    }
    p.manifest(
        "t.toml",
        &pipeline_t().replacen(
            "name = \"t\"",
            "include = [\"base/l1.toml\"]\nname = \"t\"",
            1,
        ),
    );
    let t0 = std::time::Instant::now();
    let e = p.fails(&["status", "t"]);
    assert!(
        e.contains("`include`: loading this manifest reads more than 256 files"),
        "{e}"
    );
    // Not a timing assertion of speed, a bound on 2^30 reads: it would not end at all.
    assert!(t0.elapsed().as_secs() < 60);
}

/// A training estimated to need more memory than there is (or than `--max-memory`
/// allows) is refused by a dry run and a run before anything is allocated, saying the
/// estimate; the store gets no training artifact.
#[test]
fn a_training_too_large_for_memory_is_refused_before_it_allocates() {
    let huge = Generated::new("h").text().replace(
        "{ dense = \"$classes\" }",
        "{ dense = 1000000000 },\n  { dense = \"$classes\" }",
    );
    let p = Project::with("h.toml", &huge);
    for args in [&["run", "h", "--dry-run"][..], &["run", "h"]] {
        let err = p.fails(args);
        assert!(
            err.contains(
                "stage `train`: training network `tiny` at batch_size 8 needs an estimated"
            ) && err.contains("GiB")
                && err.contains("lower `stages.train.batch_size`"),
            "{args:?}: {err}"
        );
    }
    assert!(
        !std::fs::read_dir(p.cache().join("artifacts"))
            .unwrap()
            .any(|e| e.unwrap().path().join("plan.json").exists()),
        "a training artifact was published"
    );
    // The same check with a limit given: the small network fits 1 GiB, not 1 KiB.
    let q = Project::with("t.toml", &Generated::new("t").text());
    q.ok(&["run", "t", "--dry-run", "--max-memory", "1G"]);
    let err = q.fails(&["run", "t", "--dry-run", "--max-memory", "1K"]);
    assert!(
        err.contains("more than the 1.0 KiB --max-memory allows"),
        "{err}"
    );
    let err = q.fails(&["run", "t", "--max-memory", "lots"]);
    assert!(err.contains("`lots` is not a size"), "{err}");
}

/// The train key of `t` in a dry run with `sets` (its data built first, so the key is
/// known).
fn train_key(p: &Project, sets: &[&str]) -> String {
    p.ok(&["run", "t", "--until", "hdf5"]);
    let mut args = vec!["--dry-run"];
    for s in sets {
        args.extend_from_slice(&["--set", s]);
    }
    let r = p.run_json("t", &args);
    let k = field(&r, "train", "key");
    assert_eq!(k.len(), 64, "{r}");
    k
}

/// A key the stage's optimizer or schedule does not read (Adam's betas under SGD, a
/// `power` without `poly`, `steps` without `step`, `cosine`'s or `onecycle`'s keys under
/// another schedule) stays out of its key: a base file's
/// setting under a derived manifest, or a sweep over the optimizer, trains once per real
/// difference. One it reads changes the key.
#[test]
fn a_key_no_stage_reads_stays_out_of_its_key() {
    let p = Project::with("t.toml", &pipeline_t());
    let plain = train_key(&p, &[]);
    for unread in [
        "train.power=3.0",
        "train.beta2=0.5",
        "train.epsilon=1e-3",
        "train.steps=[[1, 0.001]]",
        "train.warmup_epochs=1",
        "train.min_lr=1e-4",
        "train.warmup_start_factor=0.5",
        "train.max_lr=0.1",
        "train.pct_start=0.5",
        "train.div_factor=10",
        "train.final_div_factor=100",
        "train.cycle_momentum=false",
        "train.base_momentum=0.8",
        "train.max_momentum=0.9",
    ] {
        assert_eq!(train_key(&p, &[unread]), plain, "{unread}");
    }
    assert_ne!(train_key(&p, &["train.momentum=0.5"]), plain);
    let poly = train_key(&p, &["train.schedule=\"poly\""]);
    assert_ne!(poly, plain);
    assert_ne!(
        train_key(&p, &["train.schedule=\"poly\"", "train.power=3.0"]),
        poly
    );
    // Each schedule's own keys change its key.
    let cosine = train_key(&p, &["train.schedule=\"cosine\""]);
    assert_ne!(cosine, plain);
    assert_ne!(
        train_key(&p, &["train.schedule=\"cosine\"", "train.warmup_epochs=1"]),
        cosine
    );
    assert_eq!(
        train_key(&p, &["train.schedule=\"cosine\"", "train.pct_start=0.5"]),
        cosine
    );
    let onecycle = train_key(&p, &["train.schedule=\"onecycle\""]);
    assert_ne!(
        train_key(&p, &["train.schedule=\"onecycle\"", "train.pct_start=0.5"]),
        onecycle
    );
    assert_eq!(
        train_key(&p, &["train.schedule=\"onecycle\"", "train.min_lr=1e-4"]),
        onecycle
    );
    let adam = train_key(&p, &["train.optimizer=\"adam\""]);
    assert_eq!(
        train_key(&p, &["train.optimizer=\"adam\"", "train.momentum=0.5"]),
        adam
    );
    assert_ne!(
        train_key(&p, &["train.optimizer=\"adam\"", "train.beta2=0.9"]),
        adam
    );
}

/// A network parameter may name the op a layer calls (`{ "$act" = {} }`): it is used,
/// and a sweep over it trains each value.
#[test]
fn a_network_parameter_naming_an_op_is_used() {
    let text = pipeline_t().replace(
        "classes = 3\nlayers = [",
        "classes = 3\nparams = { act = \"relu\" }\nlayers = [",
    );
    let text = text.replacen("  { relu = {} },\n", "  { \"$act\" = {} },\n", 1);
    assert!(
        text.contains("\"$act\"") && text.contains("params = { act"),
        "{text}"
    );
    let p = Project::with("t.toml", &text);
    let relu = train_key(&p, &[]);
    assert_ne!(train_key(&p, &["networks.tiny.params.act=\"elu\""]), relu);
    let e = p.fails(&["status", "t", "--set", "networks.tiny.params.actt=\"elu\""]);
    assert!(
        e.contains("parameter `actt` of network `tiny` is named by no layer")
            && e.contains("did you mean `act`?"),
        "{e}"
    );
}

//! Every bad-manifest case gives one clear error with file:line:col and the key path.

mod common;

use std::path::Path;

use common::Project;
use pipe::manifest::{self, ManifestError};

const GOOD: &str = r#"name = "exp"
seed = 42

[stages.ingest]
kind = "ingest"
format = "synthetic"

[stages.split]
kind = "split"
input = "ingest"
test_per_class = 5

[stages.hdf5]
kind = "hdf5"
input = "split"
"#;

fn load_err(p: &Project, file: &str, text: &str) -> ManifestError {
    let path = p.manifest(file, text);
    manifest::load(&path, &[], p.path()).expect_err("manifest should be rejected")
}

/// 1-based (line, col) of the first occurrence of `needle` in `text`.
fn pos(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in text"));
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

fn assert_at(e: &ManifestError, file: &str, text: &str, needle: &str) {
    let (l, c) = pos(text, needle);
    let loc = e.location().expect("error has a location");
    assert!(
        loc.ends_with(&format!("{file}:{l}:{c}")),
        "expected {file}:{l}:{c}, got {loc}\n{e}"
    );
}

#[test]
fn good_manifest_loads() {
    let p = Project::new();
    let path = p.manifest("exp.toml", GOOD);
    let m = manifest::load(&path, &[], p.path()).unwrap();
    assert_eq!(m.topo_order(), vec!["ingest", "split", "hdf5"]);
    assert_eq!(m.seed, 42);
}

#[test]
fn unknown_key_says_did_you_mean() {
    let p = Project::new();
    let text = GOOD.replace("test_per_class = 5", "tset_per_class = 5");
    let e = load_err(&p, "exp.toml", &text);
    assert!(e.message.contains("unknown key `tset_per_class`"), "{e}");
    assert_eq!(e.key_path.as_deref(), Some("stages.split.tset_per_class"));
    assert_eq!(e.help.as_deref(), Some("did you mean `test_per_class`?"));
    assert_at(&e, "exp.toml", &text, "tset_per_class");
    // The rendered form shows the line and a caret.
    let shown = e.to_string();
    assert!(shown.contains("| tset_per_class = 5"), "{shown}");
    assert!(shown.contains("^^^^^^^^^^^^^^"), "{shown}");

    let text = GOOD.replace("seed = 42", "sed = 42");
    let e = load_err(&p, "exp.toml", &text);
    assert_eq!(e.help.as_deref(), Some("did you mean `seed`?"));
    assert_at(&e, "exp.toml", &text, "sed = 42");
}

#[test]
fn wrong_type_points_at_the_value() {
    let p = Project::new();
    let text = GOOD.replace("test_per_class = 5", "test_per_class = \"five\"");
    let e = load_err(&p, "exp.toml", &text);
    assert!(e.message.contains("wrong type"), "{e}");
    assert!(e.message.contains("string \"five\""), "{e}");
    assert_eq!(e.key_path.as_deref(), Some("stages.split.test_per_class"));
    assert_at(&e, "exp.toml", &text, "\"five\"");

    let text = GOOD.replace("input = \"split\"", "input = \"split\"\nsize = [64, \"x\"]");
    let e = load_err(&p, "exp.toml", &text);
    assert_eq!(e.key_path.as_deref(), Some("stages.hdf5.size[1]"));
    assert_at(&e, "exp.toml", &text, "\"x\"");

    let text = GOOD.replace("format = \"synthetic\"", "format = \"tiny_imagenet\"");
    let e = load_err(&p, "exp.toml", &text);
    assert!(
        e.help
            .as_deref()
            .unwrap()
            .contains("did you mean `tiny-imagenet`?"),
        "{e}"
    );
    assert_at(&e, "exp.toml", &text, "\"tiny_imagenet\"");
}

#[test]
fn missing_required_key_names_the_stage() {
    let p = Project::new();
    let text = GOOD.replace("format = \"synthetic\"\n", "");
    let e = load_err(&p, "exp.toml", &text);
    assert!(e.message.contains("missing required key `format`"), "{e}");
    assert_eq!(e.key_path.as_deref(), Some("stages.ingest"));
    assert_at(&e, "exp.toml", &text, "[stages.ingest]");

    let text = GOOD.replace("format = \"synthetic\"", "format = \"cifar10\"");
    let e = load_err(&p, "exp.toml", &text);
    assert!(e.message.contains("missing required key `root`"), "{e}");
    assert!(
        e.help.as_deref().unwrap().contains("--set ingest.root=DIR"),
        "{e}"
    );
}

#[test]
fn reference_to_a_missing_stage() {
    let p = Project::new();
    let text = GOOD.replace("input = \"split\"", "input = \"splt\"");
    let e = load_err(&p, "exp.toml", &text);
    assert!(
        e.message.contains("reads `splt`, which is not a stage"),
        "{e}"
    );
    assert_eq!(e.help.as_deref(), Some("did you mean `split`?"));
    assert_at(&e, "exp.toml", &text, "\"splt\"");
}

#[test]
fn a_cycle_is_reported_with_its_path() {
    let p = Project::new();
    let text = GOOD.replace(
        "[stages.split]\nkind = \"split\"\ninput = \"ingest\"",
        "[stages.split]\nkind = \"split\"\ninput = \"again\"",
    ) + "\n[stages.again]\nkind = \"split\"\ninput = \"split\"\ntest_per_class = 1\n";
    let e = load_err(&p, "exp.toml", &text);
    assert!(e.message.contains("cycle"), "{e}");
    assert!(
        e.message.contains("split -> again -> split")
            || e.message.contains("again -> split -> again"),
        "{e}"
    );
    assert!(e.location().unwrap().contains("exp.toml:"), "{e}");
}

#[test]
fn an_extends_loop_is_reported() {
    let p = Project::with("a.toml", "extends = \"b.toml\"\n");
    let b = "extends = \"a.toml\"\n";
    p.manifest("b.toml", b);
    let e = manifest::load(&p.path().join("pipelines/a.toml"), &[], p.path()).unwrap_err();
    assert!(
        e.message
            .contains("`extends` loop: a.toml -> b.toml -> a.toml"),
        "{e}"
    );
    assert_at(&e, "b.toml", b, "\"a.toml\"");

    let e = load_err(&p, "c.toml", "extends = \"missing.toml\"\n");
    assert!(e.message.contains("does not exist: missing.toml"), "{e}");
}

#[test]
fn unknown_stage_kind_and_bad_toml() {
    let p = Project::new();
    let text = GOOD.replace("kind = \"hdf5\"", "kind = \"hfd5\"");
    let e = load_err(&p, "exp.toml", &text);
    assert!(e.message.contains("unknown stage kind `hfd5`"), "{e}");
    assert_eq!(e.help.as_deref(), Some("did you mean `hdf5`?"));
    assert_at(&e, "exp.toml", &text, "\"hfd5\"");

    let text = GOOD.replace("seed = 42", "seed = = 42");
    let e = load_err(&p, "exp.toml", &text);
    assert!(e.message.contains("invalid TOML"), "{e}");
    assert!(e.location().unwrap().contains("exp.toml:2:"), "{e}");
}

#[test]
fn set_errors_point_at_the_command_line() {
    let p = Project::new();
    let path = p.manifest("exp.toml", GOOD);
    let e = manifest::load(&path, &["split.tset_per_class=3".into()], p.path()).unwrap_err();
    assert!(e.message.contains("unknown key `tset_per_class`"), "{e}");
    assert!(e.location().unwrap().starts_with("--set:1:"), "{e}");
    let e = manifest::load(&path, &["split.test_per_class=many".into()], p.path()).unwrap_err();
    assert!(e.message.contains("wrong type"), "{e}");
    assert_eq!(e.location().unwrap(), "--set:1:22");
    let ok = manifest::load(&path, &["split.test_per_class=9".into()], p.path()).unwrap();
    match &ok.stages["split"].config {
        manifest::StageConfig::Split(c) => assert_eq!(c.test_per_class, Some(9)),
        _ => unreachable!(),
    }
}

#[test]
fn the_cli_prints_the_location_and_fails_cleanly() {
    let p = Project::new();
    let text = GOOD.replace("test_per_class = 5", "tset_per_class = 5");
    p.manifest("exp.toml", &text);
    let err = p.fails(&["run", "exp"]);
    let (l, c) = pos(&text, "tset_per_class");
    assert!(
        err.contains(&format!("exp.toml:{l}:{c}: unknown key `tset_per_class`")),
        "{err}"
    );
    assert!(err.contains("did you mean `test_per_class`?"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let err = p.fails(&["run", "nope"]);
    assert!(err.contains("no pipeline `nope`"), "{err}");
    assert!(
        !Path::new(&p.cache().join("keys")).exists()
            || std::fs::read_dir(p.cache().join("keys")).unwrap().count() == 0
    );
}

#[test]
fn random_sweep_points_are_distinct_or_the_space_is_named_too_small() {
    let p = Project::new();
    // 4 values, 4 samples: a repeat is drawn again, so all 4 come out, each once.
    let four = format!(
        "{GOOD}\n[sweep.random]\nsamples = 4\nseed = 7\n\"split.test_per_class\" = {{ int_uniform = [1, 4] }}\n"
    );
    let path = p.manifest("four.toml", &four);
    let manifest::Loaded::Sweep(s) = manifest::load_any(&path, &[], p.path()).unwrap() else {
        panic!("a sweep");
    };
    let mut ids: Vec<String> = s.points.iter().map(|pt| pt.id.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "test_per_class=1",
            "test_per_class=2",
            "test_per_class=3",
            "test_per_class=4"
        ]
    );
    // 5 samples from 4 values cannot all differ: refused, naming the key.
    let five = four.replace("samples = 4", "samples = 5");
    let e = load_err(&p, "five.toml", &five);
    let text = e.to_string();
    assert!(
        text.contains("cannot draw 5 distinct points") && text.contains("sweep.random.samples"),
        "{text}"
    );
}

/// The training recipes' keys: out of range, written with the wrong schedule or
/// optimizer, or asked of an engine that does not have them — each refused at its key.
#[test]
fn recipe_keys_are_checked_where_they_are_written() {
    let p = Project::new();
    let base = common::Generated::new("r").drop("0.001", 1).text();
    let train = "lr = 0.01\n";
    assert!(base.contains(train));
    let cases: &[(&str, &str, &str)] = &[
        (
            "warmup_epochs = -1\n",
            "warmup_epochs",
            "`warmup_epochs` = -1 must be in [0, epochs)",
        ),
        (
            "label_smoothing = 1.0\n",
            "label_smoothing",
            "must be in [0, 1)",
        ),
        (
            "weight_decay = 1e-4\n",
            "weight_decay",
            "set `decoupled_weight_decay = true`",
        ),
        (
            "optimizer = \"adam\"\nweight_decay = 1e-4\n",
            "weight_decay",
            "use optimizer = \"adamw\"",
        ),
        (
            "optimizer = \"adamw\"\ndecoupled_weight_decay = true\n",
            "decoupled_weight_decay",
            "always decouples",
        ),
        (
            "mixup = { alpha = 0.0 }\n",
            "alpha",
            "`mixup.alpha` = 0 must be > 0",
        ),
        (
            "ema = { decay = 1.0 }\n",
            "decay",
            "`ema.decay` = 1 must be in (0, 1)",
        ),
        (
            "augment = { cutout = { size = 1 } }\n",
            "augment",
            "`augment.cutout.size` = 1 must be >= 2",
        ),
        (
            "schedule = \"onecycle\"\npct_start = 1.5\n",
            "pct_start",
            "must be in (0, 1)",
        ),
        (
            "schedule = \"cosine\"\nmin_lr = 0.5\n",
            "min_lr",
            "must be in [0, lr)",
        ),
        (
            "backend = \"dfdx\"\nema = { decay = 0.99 }\n",
            "ema",
            "the dfdx backend does not have it",
        ),
        (
            "backend = \"dfdx\"\noptimizer = \"adamw\"\n",
            "optimizer",
            "optimizer = \"adamw\" is trained by the native backend; the dfdx backend",
        ),
        (
            "backend = \"dfdx\"\nlabel_smoothing = 0.1\n",
            "label_smoothing",
            "the dfdx backend does not have it",
        ),
    ];
    for (lines, needle, says) in cases {
        let text = base.replacen(train, &format!("{train}{lines}"), 1);
        let e = load_err(&p, "r.toml", &text);
        let msg = e.to_string();
        assert!(msg.contains(says), "{lines}: {msg}");
        // The key's own line (the first occurrence after the training's lr).
        let at = text.find(train).unwrap();
        let (l, c) = pos(&text[at..], needle);
        let (l0, _) = pos(&text, train);
        let loc = e.location().expect("a location");
        assert!(
            loc.ends_with(&format!("r.toml:{}:{c}", l0 + l - 1)),
            "{lines}: expected line {} col {c}, got {loc}\n{msg}",
            l0 + l - 1
        );
    }
    // A continuing stage: its own schedule over its epochs, never `step`.
    let text = base.replace(
        "lr = 0.001\nepochs = 1\n",
        "lr = 0.001\nepochs = 1\nschedule = \"step\"\n",
    );
    let e = load_err(&p, "r.toml", &text);
    assert!(e.to_string().contains("not \"step\""), "{e}");
    assert_at(&e, "r.toml", &text, "schedule = \"step\"");
}

/// What only the data decides is refused when the stage runs, naming the key: a warmup
/// or a one-cycle phase that gets no steps.
#[test]
fn schedules_that_leave_no_steps_fail_naming_the_key() {
    // 36 images in batches of 8: 5 steps an epoch, 10 in 2 epochs.
    for (lines, says) in [
        (
            "schedule = \"cosine\"\nwarmup_epochs = 1.95\n",
            "`warmup_epochs` = 1.95 is 10 steps",
        ),
        (
            "schedule = \"onecycle\"\npct_start = 0.1\n",
            "`pct_start` = 0.1 of 10 steps",
        ),
    ] {
        let text = common::Generated::new("r").text().replacen(
            "lr = 0.01\n",
            &format!("lr = 0.01\n{lines}"),
            1,
        );
        let p = Project::with("r.toml", &text);
        let err = p.fails(&["run", "r"]);
        assert!(err.contains(says) && err.contains("stage `train`"), "{err}");
    }
}

#[test]
fn a_continued_training_that_would_checkpoint_every_zero_epochs_is_refused_by_key() {
    // Trained first, it panicked (a remainder by zero) after its first epoch.
    let text = common::Generated::new("c").drop("1e-3", 2).text() + "checkpoint_every = 0\n";
    let p = Project::with("c.toml", &text);
    let err = p.fails(&["run", "c"]);
    assert!(
        err.contains("`checkpoint_every` must be > 0") && err.contains("c.toml:"),
        "{err}"
    );
    assert!(err.contains("stages.drop.checkpoint_every"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_split_name_that_is_no_plain_file_name_is_refused_by_key() {
    // `classes` would have been overwritten by the class list (its images lost), "" was
    // written as `.csv` (never read), and `../x` outside the artifact.
    let p = Project::new();
    for bad in ["classes", "", "../x", "a.b", "val/x"] {
        let text = GOOD.replace(
            "test_per_class = 5\n",
            &format!("test_per_class = 5\nto_split = {bad:?}\n"),
        );
        let e = load_err(&p, "exp.toml", &text);
        assert!(e.message.contains("is not a split name"), "{bad}: {e}");
        assert_at(&e, "exp.toml", &text, "to_split");
    }
    let text = GOOD.replace(
        "test_per_class = 5\n",
        "test_per_class = 5\nto_split = \"holdout-2\"\n",
    );
    let path = p.manifest("ok.toml", &text);
    manifest::load(&path, &[], p.path()).expect("a plain split name loads");
}

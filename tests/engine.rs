//! The engine's caching contract, end to end through the `pipe` binary.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

fn setup(classes: usize, per_class: usize) -> (Project, std::path::PathBuf) {
    let (p, root) = Project::with_tiny_imagenet("data/tiny", classes, per_class, 4);
    p.manifest("exp.toml", &tiny_manifest(&root, 5));
    (p, root)
}

#[test]
fn second_run_runs_nothing() {
    let (p, _) = setup(4, 20);
    let first = p.run_json("exp", &[]);
    assert_eq!(
        states(&first),
        vec![
            ("ingest".into(), "ran".into()),
            ("split".into(), "ran".into()),
            ("hdf5".into(), "ran".into())
        ]
    );
    let second = p.run_json("exp", &[]);
    assert!(states(&second).iter().all(|(_, s)| s == "cached"));
    for stage in ["ingest", "split", "hdf5"] {
        assert_eq!(field(&first, stage, "key"), field(&second, stage, "key"));
        assert_eq!(
            field(&first, stage, "output"),
            field(&second, stage, "output")
        );
    }
    // The human form says so too.
    let out = p.ok(&["run", "exp"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing to do: all 3 stages cached"), "{err}");
}

#[test]
fn editing_one_stage_reruns_it_and_its_dependents_only() {
    let (p, root) = setup(4, 20);
    p.run_json("exp", &[]);
    let text = tiny_manifest(&root, 5).replace("test_per_class = 5", "test_per_class = 6");
    p.manifest("exp.toml", &text);
    let r = p.run_json("exp", &[]);
    assert_eq!(state_of(&r, "ingest"), "cached");
    assert_eq!(state_of(&r, "split"), "ran");
    assert_eq!(state_of(&r, "hdf5"), "ran");

    // Editing only the last stage leaves the earlier ones cached.
    let text = text.replace("input = \"split\"\n", "input = \"split\"\nchunk = 16\n");
    p.manifest("exp.toml", &text);
    let r = p.run_json("exp", &[]);
    assert_eq!(state_of(&r, "ingest"), "cached");
    assert_eq!(state_of(&r, "split"), "cached");
    assert_eq!(state_of(&r, "hdf5"), "ran");
}

#[test]
fn reformatting_and_reordering_the_toml_changes_no_key() {
    let (p, root) = setup(3, 12);
    let first = p.run_json("exp", &[]);
    // Same meaning: stages and keys reordered, comments, inline tables, explicit defaults.
    let text = format!(
        r#"# reordered, with comments
seed = 42   # the same seed
name = "exp"

[stages.hdf5]
input = "split"
chunk = 64            # the default, written out
on_bad_image = "error"
kind = "hdf5"

[stages]
split = {{ test_per_class = 5, input = "ingest", kind = "split", seed = 42 }}

[stages.ingest]
root = "{}"
format = "tiny-imagenet"
kind = "ingest"
"#,
        root.display()
    );
    p.manifest("exp.toml", &text);
    let second = p.run_json("exp", &[]);
    for stage in ["ingest", "split", "hdf5"] {
        assert_eq!(state_of(&second, stage), "cached", "{stage}");
        assert_eq!(field(&first, stage, "key"), field(&second, stage, "key"));
    }
}

#[test]
fn early_cutoff_keeps_later_stages_cached() {
    let (p, root) = setup(4, 20);
    let first = p.run_json("exp", &[]);
    // 5 of 20 per class either way: a different config with byte-identical output.
    let text = tiny_manifest(&root, 5).replace("test_per_class = 5", "test_fraction = 0.25");
    p.manifest("exp.toml", &text);
    let r = p.run_json("exp", &[]);
    assert_eq!(state_of(&r, "split"), "ran");
    assert_ne!(field(&first, "split", "key"), field(&r, "split", "key"));
    assert_eq!(
        field(&first, "split", "output"),
        field(&r, "split", "output")
    );
    assert_eq!(state_of(&r, "hdf5"), "cached");
    assert_eq!(field(&first, "hdf5", "key"), field(&r, "hdf5", "key"));
}

#[test]
fn status_explains_what_changed() {
    let (p, root) = setup(3, 12);
    p.run_json("exp", &[]);
    let out = p.ok(&["status", "exp"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert_eq!(s.matches("cached").count(), 3, "{s}");

    let text = tiny_manifest(&root, 5).replace("seed = 42", "seed = 7");
    p.manifest("exp.toml", &text);
    let out = p.ok(&["status", "exp"]);
    let s = String::from_utf8_lossy(&out.stdout);
    let line = |stage: &str| {
        s.lines()
            .find(|l| l.trim_start().starts_with(stage))
            .unwrap_or_else(|| panic!("no line for {stage} in:\n{s}"))
            .to_string()
    };
    assert!(line("ingest").contains("cached"), "{s}");
    assert!(line("split").contains("stale"), "{s}");
    assert!(
        line("split").contains("config changed: seed 42 -> 7"),
        "{s}"
    );
    assert!(line("hdf5").contains("input split changed"), "{s}");

    let out = p.ok(&["status", "exp", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let split = &v["stages"][1];
    assert_eq!(split["name"], "split");
    assert_eq!(split["state"], "stale");
    assert_eq!(split["reasons"][0], "config changed: seed 42 -> 7");

    // A changed image in the dataset is found by content.
    p.run_json("exp", &[]);
    let img = root.join("train/n00001007/images/n00001007_3.JPEG");
    let other = std::fs::read(root.join("train/n00001007/images/n00001007_4.JPEG")).unwrap();
    std::fs::write(&img, other).unwrap();
    let out = p.ok(&["status", "exp"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("dataset folder contents changed"), "{s}");
    let r = p.run_json("exp", &[]);
    assert_eq!(state_of(&r, "ingest"), "ran");
    assert_eq!(state_of(&r, "hdf5"), "ran");
}

#[test]
fn touching_files_without_changing_them_reruns_nothing() {
    let (p, root) = setup(3, 10);
    p.run_json("exp", &[]);
    let f = root.join("wnids.txt");
    let text = std::fs::read(&f).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&f, text).unwrap(); // new mtime, same content
    let r = p.run_json("exp", &[]);
    assert!(states(&r).iter().all(|(_, s)| s == "cached"), "{r}");
}

#[test]
fn sigkill_during_hdf5_leaves_a_store_the_next_run_repairs() {
    let (p, root) = setup(4, 40);
    kill_at_fault(&p, &["run", "exp"], "hdf5"); // SIGKILL in the middle of hdf5

    // The half-written HDF5 file exists only in the stage key's scratch folder (its
    // `publishing-<pid>` work folder), and no key points at it.
    let work = || -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for k in std::fs::read_dir(p.cache().join("scratch")).unwrap() {
            for e in std::fs::read_dir(k.unwrap().path()).unwrap() {
                let e = e.unwrap().path();
                if e.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("publishing-")
                {
                    out.push(e);
                }
            }
        }
        out
    };
    let left = work();
    assert_eq!(
        left.len(),
        1,
        "the killed stage's work folder is left: {left:?}"
    );
    assert!(
        std::fs::read_dir(&left[0]).unwrap().count() > 0,
        "it holds the half-written output"
    );
    let out = p.ok(&["status", "exp", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stages"][2]["state"], "stale");

    let r = p.run_json("exp", &[]);
    assert_eq!(state_of(&r, "ingest"), "cached");
    assert_eq!(state_of(&r, "split"), "cached");
    assert_eq!(state_of(&r, "hdf5"), "ran");
    assert!(work().is_empty(), "the next run cleared it");

    // Identical to a run that was never interrupted.
    let clean = Project::with("exp.toml", &tiny_manifest(&root, 5));
    let c = clean.run_json("exp", &[]);
    assert_eq!(field(&r, "hdf5", "output"), field(&c, "hdf5", "output"));
    let h5 = p.artifact(&r, "hdf5").join("train.h5");
    let data = pipe::data::h5::read_split(&h5).unwrap();
    assert_eq!(data.shape, [4 * 35, 16, 16, 3]);
}

#[test]
fn two_concurrent_runs_share_one_store_safely() {
    let (p, _) = setup(4, 30);
    // The first holds the lock inside hdf5 until the second has said it waits for it;
    // the second must then find everything cached.
    let hold = Hold::new();
    let mut first = p.cmd(&["run", "exp", "--json"]);
    hold.on(first.stdout(Stdio::piped()));
    // Its stderr stays open (`_stderr`) until the end.
    let (first, _stderr, _) = spawn_to_fault(first, "hdf5");
    let mut second = p
        .cmd(&["run", "exp", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut second_err = std::io::BufReader::new(second.stderr.take().unwrap());
    let waited = read_until(&mut second_err, "waiting for the cache lock");
    assert!(
        waited.contains("pipe run exp"),
        "second run should say whom it waits for: {waited}"
    );
    // The first goes on only now: the second cannot have taken the lock before.
    hold.release();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut second_err, &mut rest).unwrap();
    let second = second.wait_with_output().unwrap();
    assert!(second.status.success(), "{waited}{rest}");
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success());
    let r1: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r2: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(state_of(&r1, "hdf5"), "ran");
    assert!(states(&r2).iter().all(|(_, s)| s == "cached"), "{r2}");
    assert_eq!(field(&r1, "hdf5", "output"), field(&r2, "hdf5", "output"));
}

#[test]
fn until_and_force_and_dry_run() {
    let (p, _) = setup(3, 10);
    // A dry run decides as `status` does: what would run is stale, with its reasons.
    let r = p.run_json("exp", &["--dry-run"]);
    assert_eq!(state_of(&r, "ingest"), "stale");
    assert_eq!(state_of(&r, "split"), "stale");
    assert_eq!(r["stages"][1]["reasons"][0], "input ingest changed");
    assert!(
        !p.cache().join("keys").exists()
            || std::fs::read_dir(p.cache().join("keys")).unwrap().count() == 0
    );

    let r = p.run_json("exp", &["--until", "split"]);
    assert_eq!(state_of(&r, "split"), "ran");
    assert_eq!(state_of(&r, "hdf5"), "skipped");

    let r = p.run_json("exp", &["--force", "ingest"]);
    assert_eq!(state_of(&r, "ingest"), "ran");
    assert_eq!(state_of(&r, "split"), "cached"); // identical ingest output: cut off
    assert_eq!(state_of(&r, "hdf5"), "ran");

    let err = p.fails(&["run", "exp", "--force", "hdf55"]);
    assert!(err.contains("no stage `hdf55`"), "{err}");
}

#[test]
fn gc_removes_only_unreferenced_artifacts() {
    let (p, root) = setup(3, 10);
    let first = p.run_json("exp", &[]);
    let text = tiny_manifest(&root, 5).replace("test_per_class = 5", "test_per_class = 4");
    p.manifest("exp.toml", &text);
    let second = p.run_json("exp", &[]);
    let arts = |p: &Project| {
        std::fs::read_dir(p.cache().join("artifacts"))
            .unwrap()
            .count()
    };
    assert_eq!(arts(&p), 5); // ingest + 2 splits + 2 hdf5
                             // The journal's last runs keep what they made (the default keeps 5 per pipeline).
    let out = p.ok(&["gc"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 0 artifacts"));
    let out = p.ok(&["gc", "--keep-runs", "1"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("removed 2 artifacts"), "{s}");
    assert_eq!(arts(&p), 3);
    assert!(!p.artifact(&first, "hdf5").exists());
    assert!(p.artifact(&second, "hdf5").exists());
    let r = p.run_json("exp", &[]);
    assert!(states(&r).iter().all(|(_, s)| s == "cached"));
}

#[test]
fn cache_location_follows_flag_then_env() {
    let (p, _) = setup(2, 8);
    let alt = p.path().join("elsewhere");
    let out = p
        .cmd(&["run", "exp", "--json", "--cache", alt.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(alt.join("artifacts").is_dir());
    assert!(!p.cache().exists());
    let env_cache = p.path().join("from-env");
    let out = p
        .cmd(&["run", "exp", "--json"])
        .env("PIPE_CACHE", &env_cache)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(env_cache.join("artifacts").is_dir());
}

#[test]
fn set_overrides_any_key_and_extends_inherits() {
    let (p, root) = Project::with_tiny_imagenet("data/tiny", 3, 10, 2);
    p.manifest("base.toml", &tiny_manifest(&p.path().join("nowhere"), 5));
    p.manifest(
        "child.toml",
        "extends = \"base.toml\"\nname = \"child\"\naliases = [\"c1\"]\n\n[stages.split]\ntest_per_class = 3\n",
    );
    let set = format!("ingest.root={}", root.display());
    let r = p.run_json("c1", &["--set", &set]);
    assert_eq!(r["pipeline"], "child");
    let split_out = p.artifact(&r, "split").join("test.csv");
    let rows = pipe::data::index::read_index(&split_out).unwrap();
    assert_eq!(
        rows.len(),
        9,
        "3 classes x test_per_class = 3 from the child"
    );
    // A top-level key by --set.
    let r2 = p.run_json("child", &["--set", &set, "--set", "seed=9"]);
    assert_eq!(state_of(&r2, "split"), "ran");
}

#[test]
fn status_and_dry_run_before_the_dataset_exists_list_every_stage() {
    let p = Project::new();
    let root = p.path().join("data/tiny-imagenet-200");
    p.manifest("exp.toml", &tiny_manifest(&root, 5));
    // `status` lists every stage: the ingest waits for its folder and names the key to
    // set; what reads it waits too.
    let out = p.ok(&["status", "exp"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = |stage: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(stage))
            .unwrap_or_else(|| panic!("no {stage} line in:\n{text}"))
            .to_string()
    };
    assert!(line("ingest").contains("waiting"), "{text}");
    assert!(
        line("ingest").contains(&format!(
            "dataset folder {} does not exist: point `ingest.root` at it (`--set ingest.root=DIR`)",
            root.display()
        )),
        "{text}"
    );
    assert!(
        line("split").contains("input ingest waits for its dataset"),
        "{text}"
    );
    assert!(
        line("hdf5").contains("input split waits for its dataset"),
        "{text}"
    );
    // A dry run says the same, as JSON too.
    let dry = p.run_json("exp", &["--dry-run"]);
    assert_eq!(
        states(&dry),
        [
            ("ingest".to_string(), "waiting".to_string()),
            ("split".to_string(), "waiting".to_string()),
            ("hdf5".to_string(), "waiting".to_string())
        ]
    );
    assert!(!p.cache().exists(), "looking wrote to the store");
    // Only a real run fails, on the missing folder.
    let err = p.fails(&["run", "exp"]);
    assert!(err.contains("cannot read its dataset folder"), "{err}");
    assert!(err.contains(&root.display().to_string()), "{err}");
    // Once the dataset is there, status sees it.
    tiny_imagenet(&root, 2, 10, 2);
    let out = p.ok(&["status", "exp"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("waiting"), "{text}");
    assert!(text.contains("never ran in this pipeline"), "{text}");
}

//! `pipe gc` over a store that projects share: run from any folder, it keeps what the
//! manifests of every project recorded in the store use (and a recorded run whose
//! manifest is gone, unless `--all`), removes the rest and scratch folders no stage
//! wants, lists the same in a dry run, and refuses when it cannot find a project's
//! manifests (`--pipelines` says where they are).

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;

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
    let p = Project::with("t.toml", &pipeline_t_with_split());
    p.run_json("t", &["--until", "hdf5"]);
    let all = artifact_names(&p.cache());
    assert_eq!(all.len(), 3);
    let cache = p.cache().display().to_string();
    let elsewhere = tempfile::tempdir().unwrap();

    // From a folder with no pipelines/ (what used to wipe the store): nothing goes.
    let out = pipe_in(elsewhere.path(), &["gc", "--cache", &cache]);
    assert_success(&out, "gc from another folder");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed 0 artifacts"), "{text}");
    assert!(
        text.contains(&p.path().join("pipelines").display().to_string()),
        "{text}"
    );
    assert_eq!(artifact_names(&p.cache()), all);

    // A superseded run's split and hdf5 are what gc removes once no kept journal run
    // (`--keep-runs 0`: none) holds them; the dry run lists the same.
    p.manifest(
        "t.toml",
        &pipeline_t_with_split().replace("test_per_class = 2", "test_per_class = 1"),
    );
    p.run_json("t", &["--until", "hdf5"]);
    assert_eq!(artifact_names(&p.cache()).len(), 5);
    let dry = pipe_in(
        elsewhere.path(),
        &["gc", "--cache", &cache, "--dry-run", "--keep-runs", "0"],
    );
    assert!(dry.status.success());
    let dry_list = listed(&String::from_utf8_lossy(&dry.stdout));
    assert_eq!(
        dry_list.len(),
        2,
        "{}",
        String::from_utf8_lossy(&dry.stdout)
    );
    assert_eq!(
        artifact_names(&p.cache()).len(),
        5,
        "a dry run removes nothing"
    );
    let real = pipe_in(
        elsewhere.path(),
        &["gc", "--cache", &cache, "--keep-runs", "0"],
    );
    assert!(real.status.success());
    assert_eq!(listed(&String::from_utf8_lossy(&real.stdout)), dry_list);
    let left = artifact_names(&p.cache());
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
    let p = Project::with("t.toml", &pipeline_t_with_split());
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
    let before = artifact_names(&copy);
    let out = pipe_in(
        elsewhere.path(),
        &["gc", "--cache", &copy.display().to_string()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gc refuses"), "{err}");
    assert!(err.contains("records no project"), "{err}");
    assert!(err.contains("--pipelines"), "{err}");
    assert_eq!(artifact_names(&copy), before);
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
    assert_success(&out, "gc --pipelines");
    assert_eq!(artifact_names(&copy), before);

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
    let a = Project::with("t.toml", &pipeline_t_with_split());
    a.ok(&["run", "t", "--until", "hdf5", "--cache", &store]);
    let b = Project::with(
        "u.toml",
        &pipeline_t_with_split()
            .replace("name = \"t\"", "name = \"u\"")
            .replace("test_per_class = 2", "test_per_class = 1"),
    );
    b.ok(&["run", "u", "--until", "hdf5", "--cache", &store]);
    let cache = shared.path().join("store");
    assert_eq!(artifact_names(&cache).len(), 5);
    // From a's folder, gc counts b's manifests too: nothing goes.
    let out = a.ok(&["gc", "--cache", &store]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 0 artifacts"));
    assert_eq!(artifact_names(&cache).len(), 5);
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
    assert_eq!(artifact_names(&cache).len(), 5);
}

#[test]
fn a_recorded_run_whose_manifest_is_gone_is_kept_unless_all() {
    let p = Project::with("t.toml", &pipeline_t_with_split());
    p.manifest(
        "other.toml",
        &pipeline_t_with_split()
            .replace("name = \"t\"", "name = \"other\"")
            .replace("test_per_class = 2", "test_per_class = 1"),
    );
    p.run_json("t", &["--until", "hdf5"]);
    p.run_json("other", &["--until", "hdf5"]);
    assert_eq!(artifact_names(&p.cache()).len(), 5);
    std::fs::remove_file(p.path().join("pipelines/other.toml")).unwrap();
    let out = p.ok(&["gc"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 0 artifacts"));
    assert_eq!(
        artifact_names(&p.cache()).len(),
        5,
        "other's last run is kept"
    );
    let out = p.ok(&["gc", "--all"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed 2 artifacts"), "{text}");
    assert!(text.contains("removed state other"), "{text}");
    assert!(!p.cache().join("state/other.json").exists());
    assert_eq!(artifact_names(&p.cache()).len(), 3);
}

#[test]
fn gc_all_drops_nothing_while_a_manifest_cannot_be_read() {
    // `other`'s manifest lives elsewhere, linked into pipelines/ under another file name;
    // the link then leads nowhere (a share not mounted), then the file is half edited.
    let p = Project::with("t.toml", &pipeline_t_with_split());
    let shared = p.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(
        shared.join("exp.toml"),
        pipeline_t_with_split()
            .replace("name = \"t\"", "name = \"other\"")
            .replace("test_per_class = 2", "test_per_class = 1"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../shared/exp.toml", p.path().join("pipelines/exp.toml")).unwrap();
    // An editor's lock file (Emacs: `.#t.toml`, a link to nothing) is not a manifest.
    std::os::unix::fs::symlink("root@host.1234:1", p.path().join("pipelines/.#t.toml")).unwrap();
    p.run_json("t", &["--until", "hdf5"]);
    p.run_json("other", &["--until", "hdf5"]);
    assert_eq!(artifact_names(&p.cache()).len(), 5);
    std::fs::rename(&shared, p.path().join("shared.off")).unwrap();
    let err = p.fails(&["gc", "--all"]);
    assert!(err.contains("gc --all refuses"), "{err}");
    assert!(err.contains("pipelines/exp.toml"), "{err}");
    assert_eq!(artifact_names(&p.cache()).len(), 5, "nothing removed");
    assert!(p.cache().join("state/other.json").exists());
    // Plain gc keeps the recorded runs, and says which manifest it could not read.
    let out = p.ok(&["gc"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("removed 0 artifacts"), "{text}");
    assert!(text.contains("exp.toml"), "{text}");
    // Not TOML (a file half edited): the same.
    std::fs::rename(p.path().join("shared.off"), &shared).unwrap();
    std::fs::write(shared.join("exp.toml"), "name = \"other\n[stages").unwrap();
    let err = p.fails(&["gc", "--all"]);
    assert!(err.contains("gc --all refuses"), "{err}");
    assert_eq!(artifact_names(&p.cache()).len(), 5);
    // Once the manifest is gone for good, `--all` drops its runs (the lock file is no
    // manifest and stops nothing).
    std::fs::remove_file(p.path().join("pipelines/exp.toml")).unwrap();
    let out = p.ok(&["gc", "--all"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 2 artifacts"));
    let out = p.ok(&["show"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(".#t.toml"));
}

#[test]
fn gc_counts_and_removes_a_scratch_folder_no_stage_wants() {
    let p = Project::with("t.toml", &pipeline_t_with_split());
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

#[test]
fn gc_lists_names_that_are_not_ascii_without_panicking() {
    let p = Project::new();
    let name = "éxpériénces-à-réessayer";
    p.manifest(
        "x.toml",
        &pipeline_t_with_split().replace("name = \"t\"", &format!("name = \"{name}\"")),
    );
    p.run_json(name, &["--until", "ingest"]);
    std::fs::remove_file(p.path().join("pipelines/x.toml")).unwrap();
    p.manifest("t.toml", &pipeline_t_with_split());
    let out = p.ok(&["gc", "--all", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("would remove state éxpériénces"), "{text}");
}

/// `gc` from another folder while `pipe run -j 1` trains (its worker held at an epoch
/// until gc has said it waits): gc waits for the run's workers, the run publishes
/// everything and exits 0, and every key record of the run points at an artifact that is
/// there and sound. (Before, gc removed the training's artifact between its publication
/// and its key record.)
#[test]
fn gc_beside_a_parallel_run_waits_and_deletes_nothing_it_publishes() {
    let p = Project::with("k.toml", &Generated::new("k").epochs(6).evaluate().text());
    let cache = p.cache().display().to_string();
    let elsewhere = tempfile::tempdir().unwrap();
    let hold = Hold::new();
    let mut run = p.cmd(&["run", "k", "-j", "1"]);
    let mut run = hold
        .on(&mut run)
        .env("PIPE_FAULT", "train:epoch3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let began = std::time::Instant::now();
    // The data stages published (the store exists): the training is under way, and held.
    while artifact_names(&p.cache()).len() < 2 {
        assert!(
            began.elapsed() < std::time::Duration::from_secs(60),
            "the data stages did not publish"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut gc = pipe_command(elsewhere.path(), &["gc", "--cache", &cache])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut gc_said = std::io::BufReader::new(gc.stderr.take().unwrap());
    read_until(&mut gc_said, "waiting for the cache lock");
    assert!(
        run.try_wait().unwrap().is_none(),
        "the run ended while held"
    );
    hold.release();
    let status = run.wait().unwrap();
    assert!(gc.wait().unwrap().success(), "gc beside the run failed");
    assert!(status.success(), "the run failed beside gc");
    // Everything the run made is there: status finds every stage cached, and verify
    // finds every artifact and key record sound.
    let v = p.ok_json(&["status", "k", "--json"]);
    assert!(
        stage_states(&v["stages"])
            .iter()
            .all(|(_, s)| s == "cached"),
        "{v}"
    );
    p.ok(&["verify"]);
    // And a gc after the run removes nothing of it.
    let out = pipe_in(elsewhere.path(), &["gc", "--cache", &cache]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed 0 artifacts"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A manifest copied under another file name keeps its `name`: two pipelines under one
/// name would share one last run, one journal and what gc keeps for it. Every command
/// that loads either refuses, naming both files, and gc says so.
#[test]
fn two_manifests_under_one_name_are_refused_naming_both() {
    let p = Project::with("t.toml", &pipeline_t_with_split());
    p.run_json("t", &["--until", "hdf5"]);
    p.manifest(
        "t_v2.toml",
        &pipeline_t_with_split().replace("test_per_class = 2", "test_per_class = 1"),
    );
    for args in [
        &["run", "t_v2", "--until", "hdf5"][..],
        &["run", "t"],
        &["show", "t"],
        &["status", "t_v2"],
    ] {
        let err = p.fails(args);
        assert!(err.contains("its pipeline is named `t`"), "{args:?}: {err}");
        assert!(
            err.contains("t.toml") && err.contains("t_v2.toml"),
            "{args:?}: {err}"
        );
    }
    // By a bare file name from inside pipelines/ too.
    let out = pipe_in(
        &p.path().join("pipelines"),
        &["run", "t_v2.toml", "--until", "hdf5"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is named `t`"),
        "{err}"
    );
    // A listing names both, once each.
    let out = p.cmd(&["show"]).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        text.matches("its pipeline is named `t`").count(),
        2,
        "{text}"
    );
    // A job of a run already decided (a -j worker, a Slurm job) is not failed by a copy
    // made while it waited: the submitter checked.
    let out = p.ok(&["run-stage", "t", "hdf5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("is named"), "{err}");
    // Nothing ran under the shared name: the store still holds the first run's three.
    assert_eq!(artifact_names(&p.cache()).len(), 3);
    let out = p.ok(&["gc", "--dry-run"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("are both named `t`"), "{text}");
    // A manifest with no `name` goes by its file's stem: `t.toml` without one and
    // `u.toml` named `t` collide as well.
    p.manifest(
        "t_v2.toml",
        &pipeline_t_with_split().replace("name = \"t\"", "name = \"t_v2\""),
    );
    let r = p.run_json("t_v2", &["--until", "hdf5"]);
    assert_eq!(state_of(&r, "hdf5"), "cached", "{r}");
    p.manifest(
        "t.toml",
        &pipeline_t_with_split().replace("name = \"t\"\n", ""),
    );
    p.manifest("u.toml", &pipeline_t_with_split());
    let err = p.fails(&["run", "u", "--until", "hdf5"]);
    assert!(
        err.contains("u.toml: its pipeline is named `t`, as"),
        "{err}"
    );
}

//! The store vouches for what it serves: published artifacts are read-only; a damaged,
//! truncated or edited file, deleted checkpoints, a key record that points at the wrong
//! artifact are found (by `status`, `verify`, which re-hashes everything, or a run),
//! reported by name, rebuilt and never carried forward, and gc frees what was moved aside;
//! an artifact published before seals keeps its key; `status` writes nothing, nor does
//! `verify` on a store as published (after a copy it brings seals' times up to date);
//! files are replaced atomically.

mod common;

use std::path::Path;

use common::*;

#[test]
fn published_artifacts_are_read_only() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::with("t.toml", &pipeline_t());
    let r = p.run_json("t", &["--until", "hdf5"]);
    let dir = p.artifact(&r, "hdf5");
    let mode = |q: &Path| std::fs::metadata(q).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o555);
    assert_eq!(mode(&dir.join("train.h5")), 0o444);
}

#[test]
fn a_damaged_artifact_is_rebuilt_with_a_warning_naming_the_file() {
    let p = Project::with("t.toml", &pipeline_t());
    let first = p.run_json("t", &[]);
    // Flip bytes in the middle of train.h5.
    let h5 = p.artifact(&first, "hdf5").join("train.h5");
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
    let p = Project::with("t.toml", &pipeline_t());
    let first = p.run_json("t", &[]);
    let train = p.artifact(&first, "train");
    tamper(&train.join("state.safetensors"), |b| {
        b.truncate(b.len() / 2)
    });
    let r = p.run_json("t", &["--force", "train"]);
    assert_eq!(state_of(&r, "train"), "ran");
    // Deleted checkpoints/.
    let train = p.artifact(&r, "train");
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
    let csv = p.artifact(&r, "ingest").join("train.csv");
    tamper(&csv, |b| b.extend_from_slice(b"extra,row\n"));
    let r = p.run_json("t", &[]);
    assert_eq!(state_of(&r, "ingest"), "ran");
}

#[test]
fn verify_rehashes_everything_and_gc_drops_the_damage() {
    let p = Project::with("t.toml", &pipeline_t());
    let first = p.run_json("t", &["--until", "hdf5"]);
    assert!(p.ok(&["verify"]).status.success());
    // Same size, mtime put back: only a full re-hash sees it.
    let h5 = p.artifact(&first, "hdf5").join("val.h5");
    let mtime = std::fs::metadata(&h5).unwrap().modified().unwrap();
    tamper(&h5, |b| {
        let last = b.len() - 100;
        b[last] ^= 1;
    });
    set_mtime(&h5, mtime);
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
    assert_eq!(damaged_count(&p), 0);
}

#[test]
fn forcing_the_next_stage_does_not_carry_damage_forward() {
    let p = Project::with("t.toml", &pipeline_t());
    let first = p.run_json("t", &[]);
    let h5 = p.artifact(&first, "hdf5").join("train.h5");
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

/// Rewrite the key record at `path` to point at the artifact `output`.
fn point_record_at(path: &Path, output: String) {
    let mut rec: serde_json::Value = read_json(path);
    rec["output"] = serde_json::Value::String(output);
    std::fs::write(path, serde_json::to_vec(&rec).unwrap()).unwrap();
}

#[test]
fn a_key_record_that_points_at_the_wrong_artifact_is_dropped_and_rebuilt() {
    let p = Project::with("t.toml", &pipeline_t_with_split());
    let first = p.run_json("t", &["--until", "hdf5"]);
    // Rewrite split's key record to point at hdf5's artifact.
    let rec_path = p
        .cache()
        .join("keys")
        .join(format!("{}.json", field(&first, "split", "key")));
    point_record_at(&rec_path, field(&first, "hdf5", "output"));
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
    point_record_at(&rec_path, field(&first, "ingest", "output"));
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

#[test]
fn an_artifact_from_before_seals_keeps_its_key_when_another_key_makes_the_same_bytes() {
    let p = Project::with("t.toml", &pipeline_t_with_split());
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
fn status_writes_nothing() {
    let p = Project::with("t.toml", &pipeline_t());
    p.ok(&["status", "t"]);
    p.ok(&["run", "t", "--dry-run"]);
    assert!(!p.cache().exists(), "status or a dry run created the cache");
    p.run_json("t", &["--until", "hdf5"]);
    let before = listing(&p.cache());
    p.ok(&["status", "t"]);
    p.ok(&["verify"]);
    assert_eq!(listing(&p.cache()), before);
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

/// Damage to a model file that the stat check cannot see (its seal given the file's times
/// after the damage, as a write to the disk under the file system would leave them):
/// `predict` and `export` re-hash the files they read and refuse, naming `pipe verify`,
/// printing no probability and writing no file; the dashboard answers 409 for the damaged
/// file and still serves the sound ones.
#[test]
fn a_model_damaged_in_place_is_refused_by_predict_export_and_the_dashboard() {
    let p = Project::with("t.toml", &pipeline_t());
    let r = p.run_json("t", &[]);
    let images = p.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    image::RgbImage::from_pixel(16, 16, image::Rgb([120, 30, 200]))
        .save(images.join("a.png"))
        .unwrap();
    let ok = p.ok(&["predict", "t", images.to_str().unwrap()]);
    assert!(!ok.stdout.is_empty());
    let model = p.artifact(&r, "train");
    let state = model.join("state.safetensors");
    tamper_keeping_time(&state, |b| {
        let n = b.len();
        for i in (n - 32..n).step_by(4) {
            b[i + 3] ^= 0x7f;
        }
    });
    {
        use std::os::unix::fs::MetadataExt;
        let seal = p
            .cache()
            .join("sealed")
            .join(format!("{}.json", field(&r, "train", "output")));
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&seal).unwrap()).unwrap();
        let md = std::fs::metadata(&state).unwrap();
        let entry = v["files"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|f| f["path"] == "state.safetensors")
            .unwrap();
        entry["mtime_ns"] = (md.mtime() * 1_000_000_000 + md.mtime_nsec()).into();
        entry["ctime_ns"] = (md.ctime() * 1_000_000_000 + md.ctime_nsec()).into();
        std::fs::write(&seal, serde_json::to_vec(&v).unwrap()).unwrap();
    }
    let out = p
        .cmd(&["predict", "t", images.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "{err}");
    assert!(
        err.contains("the model of stage `train`")
            && err.contains("state.safetensors: content changed since it was published")
            && err.contains("pipe verify"),
        "{err}"
    );
    let onnx = p.path().join("m.onnx");
    let err = p.fails(&["export", "t", "-o", onnx.to_str().unwrap()]);
    assert!(err.contains("pipe verify"), "{err}");
    assert!(!onnx.exists(), "export wrote a file from a damaged model");
    let (ui, _) = Ui::start(&p, &[]);
    let hash = field(&r, "train", "output");
    let (status, body) = ui.get(&format!("/files/{hash}/state.safetensors"));
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("content changed since it was published"),
        "{body}"
    );
    assert_eq!(ui.get(&format!("/files/{hash}/plan.json")).0, 200);
}

/// A small filesystem (tmpfs, mounted here) that fills up while a run writes its store:
/// the error says the disk is full, which stage, and which file it was writing, and
/// nothing is recorded as done. At each fill level (where the store fills up differs):
/// never a bare "No space left on device".
#[test]
fn a_full_disk_names_the_stage_the_file_and_the_store() {
    struct Mounted(std::path::PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let p = Project::with("t.toml", &pipeline_t());
    for size in ["64K", "200K", "600K"] {
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(
            st.success(),
            "this test mounts a small tmpfs to fill it (it needs root, as the test command's bootstrap does)"
        );
        let _m = Mounted(dir.path().to_path_buf());
        let store = dir.path().join("store");
        let err = p.fails(&["--cache", store.to_str().unwrap(), "run", "t"]);
        let first = err.lines().find(|l| l.starts_with("error:")).unwrap_or("");
        assert!(
            first.contains("the disk is full") && first.contains(&store.display().to_string()),
            "{size}: {err}"
        );
        assert!(err.contains("stage `"), "{size}: {err}");
        assert!(
            err.contains("cannot write")
                || err.contains("cannot copy")
                || err.contains("cannot create"),
            "{size}: {err}"
        );
    }
}

/// Damage with the file's mtime put back (`touch -d`, `cp -p` over it): its ctime moved,
/// so a run finds it without `pipe verify`, names the file and builds the stage again.
#[test]
fn damage_with_its_mtime_put_back_is_found_by_a_run() {
    let p = Project::with("t.toml", &pipeline_t());
    let first = p.run_json("t", &[]);
    let h5 = p.artifact(&first, "hdf5").join("train.h5");
    let mtime = std::fs::metadata(&h5).unwrap().modified().unwrap();
    tamper_keeping_time(&h5, |b| {
        let mid = b.len() / 2;
        b[mid] ^= 0xFF;
    });
    assert_eq!(std::fs::metadata(&h5).unwrap().modified().unwrap(), mtime);
    let out = p.cmd(&["run", "t", "--json"]).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("train.h5") && err.contains("content changed since it was published"),
        "{err}"
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state_of(&r, "hdf5"), "ran");
    assert_eq!(field(&r, "hdf5", "output"), field(&first, "hdf5", "output"));
    assert_eq!(state_of(&r, "train"), "cached");
}

/// A store copied with `cp -a` (its times kept, every ctime new): `status` finds it sound
/// and writes nothing; the first run re-hashes what it uses, finds it sound and brings
/// the seals' times up to date; the run after it has nothing to re-hash and leaves every
/// seal as it is. `verify` on a fresh copy brings every seal up to date as well.
#[test]
fn a_store_copied_with_its_times_is_sound_and_its_seals_catch_up_once() {
    use std::os::unix::fs::MetadataExt;
    let p = Project::with("t.toml", &pipeline_t());
    let first = p.run_json("t", &[]);
    let copy = p.path().join("copy");
    // The store copied with its times kept (every ctime new), in place of any copy before.
    let copy_store = || {
        let _ = std::fs::remove_dir_all(&copy);
        assert!(std::process::Command::new("cp")
            .arg("-a")
            .arg(p.cache())
            .arg(&copy)
            .status()
            .unwrap()
            .success());
    };
    copy_store();
    // Older than a clock tick when the run looks (a ctime within one is not trusted: 100
    // ms, or 3 s where the file system keeps whole seconds).
    let md = std::fs::metadata(copy.join("keys")).unwrap();
    let tick = if md.ctime_nsec() == 0 { 3_300 } else { 300 };
    std::thread::sleep(std::time::Duration::from_millis(tick));
    let seals = || -> std::collections::BTreeMap<String, (u64, Vec<u8>)> {
        std::fs::read_dir(copy.join("sealed"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                let ino = std::fs::metadata(&p).unwrap().ino();
                (p.display().to_string(), (ino, std::fs::read(&p).unwrap()))
            })
            .collect()
    };
    let c = copy.to_str().unwrap();
    let before = seals();
    let out = p.ok(&["status", "t", "--cache", c]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("damaged"));
    assert_eq!(seals(), before, "status wrote a seal");

    let out = p.ok(&["run", "t", "--json", "--cache", c]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        stage_states(&r["stages"])
            .iter()
            .all(|(_, s)| s == "cached"),
        "{r}"
    );
    let after = seals();
    assert_ne!(after, before, "no seal was brought up to date");
    // The seal of train.h5 now holds the copy's own times.
    let hash = field(&first, "hdf5", "output");
    let seal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join(format!("sealed/{hash}.json"))).unwrap())
            .unwrap();
    let h5 = std::fs::metadata(copy.join(format!("artifacts/{hash}/train.h5"))).unwrap();
    let entry = seal["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "train.h5")
        .unwrap();
    assert_eq!(
        entry["ctime_ns"].as_i64().unwrap(),
        h5.ctime() * 1_000_000_000 + h5.ctime_nsec()
    );
    p.ok(&["run", "t", "--cache", c]);
    assert_eq!(
        seals(),
        after,
        "the second run brought a seal up to date again"
    );
    assert!(p.ok(&["verify", "--cache", c]).status.success());
    assert_eq!(seals(), after, "verify wrote to up-to-date seals");

    // Another copy, brought up to date by `verify` (what one runs after copying a store):
    // it says so, and a run after it has nothing left to bring up to date.
    copy_store();
    std::thread::sleep(std::time::Duration::from_millis(tick));
    let before = seals();
    let out = p.ok(&["verify", "--cache", c]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("their seals were brought up to date"),
        "{said}"
    );
    let verified = seals();
    assert_ne!(verified, before, "verify brought no seal up to date");
    p.ok(&["run", "t", "--cache", c]);
    assert_eq!(
        seals(),
        verified,
        "a run after verify brought a seal up to date"
    );
}

/// `--force` re-runs a stage without looking at its artifact; when it makes the same
/// bytes, the damaged copy in the store is checked, moved aside and replaced, never kept
/// in place of the sound new one. `verify` then finds the store sound.
#[test]
fn a_forced_stage_that_makes_the_same_bytes_replaces_a_damaged_copy() {
    let p = Project::with("t.toml", &pipeline_t());
    let first = p.run_json("t", &[]);
    let h5 = p.artifact(&first, "hdf5").join("train.h5");
    tamper(&h5, |b| {
        let mid = b.len() / 2;
        b[mid] ^= 0xFF;
    });
    let r = p.run_json("t", &["--force", "hdf5"]);
    assert_eq!(state_of(&r, "hdf5"), "ran");
    assert_eq!(field(&r, "hdf5", "output"), field(&first, "hdf5", "output"));
    let v = p.cmd(&["verify"]).output().unwrap();
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    // The damaged copy was moved aside, not deleted.
    assert_eq!(damaged_count(&p), 1);
}

/// A key record edited to name a folder outside the store as its artifact (`"../x"`, an
/// absolute path): refused as a record (its hash field is no hash), so the run builds the
/// stage again and nothing outside the store is read, made writable or moved.
#[test]
fn a_key_record_naming_a_folder_outside_the_store_is_refused() {
    let p = Project::with("t.toml", &pipeline_t());
    let first = p.run_json("t", &[]);
    let key = field(&first, "ingest", "key");
    let outside = p.path().join("photos");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("classes.csv"), "mine\n").unwrap();
    let rec_path = p.cache().join("keys").join(format!("{key}.json"));
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    for bad in [
        outside.to_str().unwrap().to_string(),
        "../../photos".to_string(),
    ] {
        rec["output"] = bad.clone().into();
        std::fs::write(&rec_path, serde_json::to_vec(&rec).unwrap()).unwrap();
        let r = p.run_json("t", &[]);
        assert_eq!(state_of(&r, "ingest"), "ran", "{bad}");
        assert_eq!(
            field(&r, "ingest", "output"),
            field(&first, "ingest", "output")
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("classes.csv")).unwrap(),
            "mine\n",
            "{bad}"
        );
    }
    assert_eq!(damaged_count(&p), 0);
}

/// `pipe verify` finds an artifact damaged; before it sets it aside, a run rebuilds it
/// (same bytes, sound again). Under the lock verify checks it again and leaves the sound
/// one in place: the run after finds everything cached.
#[test]
fn verify_leaves_alone_what_a_run_rebuilt_after_its_scan() {
    let p = Project::with("t.toml", &pipeline_t());
    let first = p.run_json("t", &[]);
    let h5 = p.artifact(&first, "hdf5").join("train.h5");
    tamper(&h5, |b| {
        let mid = b.len() / 2;
        b[mid] ^= 0xFF;
    });
    let hold = Hold::new();
    let mut cmd = p.cmd(&["verify"]);
    hold.on(cmd.stdout(std::process::Stdio::null()));
    let (mut verify, mut stderr, _) = spawn_to_fault(cmd, "verify:set-aside");
    let r = p.run_json("t", &[]);
    assert_eq!(state_of(&r, "hdf5"), "ran");
    hold.release();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
    assert!(!verify.wait().unwrap().success(), "it found damage: {err}");
    assert!(
        err.contains("0 were moved aside")
            && err.contains("1 artifacts and 0 records were mended by a run meanwhile"),
        "{err}"
    );
    let again = p.run_json("t", &[]);
    for s in ["ingest", "hdf5", "train"] {
        assert_eq!(state_of(&again, s), "cached", "{s}: {err}");
    }
    p.ok(&["verify"]);
}

/// How many folders the store holds moved aside as damaged.
fn damaged_count(p: &Project) -> usize {
    std::fs::read_dir(p.cache().join("damaged")).map_or(0, |d| d.count())
}

//! Special files are never read as data: FIFOs and device files in a dataset are refused
//! by name (or skipped and counted with `on_bad_image = "skip"`), a resume from a FIFO is
//! refused, and a FIFO in place of an artifact's file is damage. A manifest that is a
//! FIFO, a device link or a link to nothing is named as such by `run` and `show`. No
//! command hangs on one.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

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
    let (p, root) = Project::with_tiny_imagenet("data/tiny", 3, 8, 2);
    let class = first_entry(&root.join("train"));
    let fifo = class.join("images/fifo_0.JPEG");
    mkfifo(&fifo);
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
    assert_success(&out, "pipe run exp --json");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let summary = r["stages"][2]["summary"].as_str().unwrap().to_string();
    assert!(
        summary.contains("2 undecodable images skipped"),
        "{summary}"
    );
    let skipped = std::fs::read_to_string(p.artifact(&r, "hdf5").join("skipped.txt")).unwrap();
    assert!(
        skipped.contains("fifo_0.JPEG") && skipped.contains("zero_0.JPEG"),
        "{skipped}"
    );
}

#[test]
fn a_resume_from_a_fifo_is_refused_not_read() {
    let p = Project::new();
    let fifo = p.path().join("ckpt.safetensors");
    mkfifo(&fifo);
    let text = pipeline_t_with_split()
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
fn a_fifo_in_place_of_an_artifact_file_is_damage_not_a_hang() {
    let p = Project::with("t.toml", &pipeline_t_with_split());
    let r = p.run_json("t", &["--until", "split"]);
    let dir = p.artifact(&r, "split");
    let f = dir.join("classes.csv");
    let mut perms = std::fs::metadata(&dir).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&dir, perms).unwrap();
    std::fs::remove_file(&f).unwrap();
    mkfifo(&f);
    let out = bounded(&p, &["status", "t"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not a regular file any more"), "{text}");
    let out = bounded(&p, &["verify"]);
    assert!(!out.status.success());
    let r = bounded(&p, &["run", "t", "--until", "split", "--json"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

/// A CIFAR-10 batch that is a FIFO, or a link to `/dev/zero`, is refused by what it is,
/// naming the file, and never read (it used to be called "not found").
#[test]
fn a_cifar_batch_that_is_a_fifo_or_a_device_link_is_refused_by_what_it_is() {
    for (what, said) in [("fifo", "is a FIFO"), ("zero", "is a character device")] {
        let p = Project::new();
        let root = p.path().join("cifar");
        pipe::data::synthetic::write_cifar10(&root, 10, 3).unwrap();
        let batch = root.join("data_batch_3.bin");
        std::fs::remove_file(&batch).unwrap();
        match what {
            "fifo" => mkfifo(&batch),
            _ => std::os::unix::fs::symlink("/dev/zero", &batch).unwrap(),
        }
        p.manifest(
            "c.toml",
            &format!(
                "[stages.ingest]\nformat = \"cifar10\"\nroot = \"{}\"\n",
                root.display()
            ),
        );
        let out = bounded(&p, &["run", "c"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains(&batch.display().to_string()) && err.contains(said),
            "{what}: {err}"
        );
        assert!(!err.contains("not found"), "{what}: {err}");
    }
}

#[test]
fn a_manifest_that_is_a_fifo_a_device_or_a_link_to_nothing_is_named_never_read() {
    let p = Project::with("t.toml", &pipeline_t_with_split());
    let dir = p.path().join("pipelines");
    mkfifo(&dir.join("fifo.toml"));
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.toml")).unwrap();
    std::os::unix::fs::symlink("gone.toml", dir.join("nowhere.toml")).unwrap();
    for (name, what) in [
        ("fifo", "a FIFO"),
        ("zero", "a device"),
        ("nowhere", "a link that leads to no file (gone.toml)"),
    ] {
        let out = bounded(&p, &["run", name]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{name}.toml: {what}, not a manifest file")),
            "{err}"
        );
    }
    // `show` lists the one that loads and says why each other is not shown.
    let out = bounded(&p, &["show"]);
    assert_success(&out, "pipe show");
    assert!(String::from_utf8_lossy(&out.stdout).contains("t "));
    let err = String::from_utf8_lossy(&out.stderr);
    for name in ["fifo", "zero", "nowhere"] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("note: not shown:") && l.contains(&format!("{name}.toml"))),
            "{err}"
        );
    }
    // `extends` of a FIFO is refused by name too.
    p.manifest("e.toml", "extends = \"fifo.toml\"\nname = \"e\"\n");
    let out = bounded(&p, &["status", "e"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
    // With no manifest that loads, `show` fails and says why each did not.
    std::fs::remove_file(dir.join("t.toml")).unwrap();
    std::fs::remove_file(dir.join("e.toml")).unwrap();
    let out = bounded(&p, &["show"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("none of its manifests loaded"), "{err}");
    assert!(err.contains("fifo.toml: a FIFO"), "{err}");
}

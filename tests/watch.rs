//! `pipe watch`: a run trusts its last fingerprint of a dataset folder only while the
//! watcher has seen nothing happen there, and sees every change the stat walk sees.

mod common;

use std::fs;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pipe::engine::fingerprint::{fingerprint_tree, fingerprint_walk};
use pipe::engine::fswatch::{ask, socket_path, Answer};
use pipe::engine::store::Store;

/// `pipe watch` serving a store, stopped when dropped.
struct Watcher(Child);

impl Watcher {
    /// Start one in `dir` (with `--cache store` when given) and wait for its socket.
    fn start(dir: &Path, store: &Path, cache_flag: bool) -> Watcher {
        let mut args = vec!["watch"];
        let s = store.to_str().unwrap();
        if cache_flag {
            args.extend(["--cache", s]);
        }
        let child = pipe_command(dir, &args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let w = Watcher(child);
        let sock = socket_path(store);
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no watcher on {sock:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fingerprint a run takes now must be what a walk reading every file gives; and
/// whether it was taken on the watcher's word.
fn vouched(store: &Store, root: &Path, what: &str) -> bool {
    let fp = fingerprint_tree(store, root, false).unwrap();
    let fresh = fingerprint_walk(store, root, true).unwrap();
    assert_eq!(fp.hash, fresh.hash, "{what}: the fingerprint missed it");
    assert_eq!(fp.count, fresh.count, "{what}");
    fp.vouched
}

/// Held by each test here for its whole length, so that no process starts while another
/// test writes a file. A child started (forked) while a file is open holds the open file
/// until it runs its program; the file's close event (`IN_CLOSE_WRITE`) then comes when
/// the child lets go of it, after the run that followed the write asked for its token, and
/// the next run walks once more. That costs a run a walk, and no wrong answer, but the
/// test counts walks.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A change to make to the folder, and what it is.
type Change<'a> = (&'a str, Box<dyn Fn() + 'a>);

#[test]
fn a_watched_folder_is_vouched_for_until_anything_in_it_changes() {
    let _alone = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let root = tmp.path().join("data");
    for (class, n) in [("a", 20), ("b", 20)] {
        let dir = root.join(class);
        fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            fs::write(dir.join(format!("{i:03}.jpg")), format!("{class}-{i:03}")).unwrap();
        }
    }
    // Files outside the folder that reach into it: a link's target, another hard link.
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("target.jpg"), "target").unwrap();
    fs::write(outside.join("twin.jpg"), "twin-1").unwrap();
    fs::hard_link(outside.join("twin.jpg"), root.join("a/twin.jpg")).unwrap();
    std::os::unix::fs::symlink(outside.join("target.jpg"), root.join("b/link.jpg")).unwrap();
    // A folder reached through a link (`current`, retargeted on a release) in a folder of
    // its own, and a file deep in folders of their own.
    let releases = tmp.path().join("releases");
    for v in ["v1", "v2"] {
        fs::create_dir_all(releases.join(v).join("train")).unwrap();
        fs::write(releases.join(v).join("train/x.jpg"), v).unwrap();
    }
    std::os::unix::fs::symlink("v1", releases.join("current")).unwrap();
    std::os::unix::fs::symlink(releases.join("current/train"), root.join("train")).unwrap();
    let far = tmp.path().join("far");
    fs::create_dir_all(far.join("deep/a")).unwrap();
    fs::write(far.join("deep/a/far.jpg"), "far-1").unwrap();
    std::os::unix::fs::symlink(far.join("deep/a/far.jpg"), root.join("a/far.jpg")).unwrap();
    // A link to a device (`/dev` is devtmpfs, which says it is tmpfs): counts by its kind,
    // and does not keep the folder from being vouched for.
    std::os::unix::fs::symlink("/dev/null", root.join("b/null")).unwrap();

    // No watcher: every run walks.
    assert_eq!(ask(store.root(), &root), Answer::NoWatcher);
    assert!(!vouched(&store, &root, "no watcher"));
    assert!(!vouched(&store, &root, "no watcher, again"));

    let w = Watcher::start(tmp.path(), store.root(), true);
    match ask(store.root(), &root.canonicalize().unwrap()) {
        Answer::Token(_) => {}
        other => panic!("the watcher does not vouch for the test's folder: {other:?}"),
    }
    assert!(!vouched(&store, &root, "first with the watcher"));
    assert!(vouched(&store, &root, "nothing changed"));
    assert!(vouched(&store, &root, "nothing changed, again"));

    let same_size = root.join("a/007.jpg");
    let t0 = fs::metadata(&same_size).unwrap().modified().unwrap();
    let changes: Vec<Change> = vec![
        (
            "same size, same second",
            Box::new(|| {
                fs::write(&same_size, "a-0X7").unwrap();
                set_mtime(&same_size, t0 + Duration::from_micros(1));
            }),
        ),
        (
            "a file added",
            Box::new(|| fs::write(root.join("b/new.jpg"), "new").unwrap()),
        ),
        (
            "a file removed",
            Box::new(|| fs::remove_file(root.join("b/003.jpg")).unwrap()),
        ),
        (
            "an empty folder",
            Box::new(|| fs::create_dir(root.join("c")).unwrap()),
        ),
        (
            "a file in the new folder",
            Box::new(|| fs::write(root.join("c/000.jpg"), "c").unwrap()),
        ),
        (
            "a file renamed",
            Box::new(|| fs::rename(root.join("a/001.jpg"), root.join("a/101.jpg")).unwrap()),
        ),
        (
            "a symbolic link added",
            Box::new(|| {
                std::os::unix::fs::symlink(outside.join("twin.jpg"), root.join("a/link2.jpg"))
                    .unwrap()
            }),
        ),
        (
            "a link's target changed outside the folder",
            Box::new(|| fs::write(outside.join("target.jpg"), "TARGET").unwrap()),
        ),
        (
            "a hard link's twin changed outside the folder",
            Box::new(|| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(outside.join("twin.jpg"))
                    .unwrap()
                    .write_all_at(b"twin-2", 0)
                    .unwrap()
            }),
        ),
        (
            "a file in a linked folder",
            Box::new(|| fs::write(releases.join("v1/train/y.jpg"), "y").unwrap()),
        ),
        (
            "a link on the way to a linked folder retargeted",
            Box::new(|| {
                std::os::unix::fs::symlink("v2", releases.join("current.new")).unwrap();
                fs::rename(releases.join("current.new"), releases.join("current")).unwrap();
            }),
        ),
        (
            "a folder above a link's target renamed, and another made in its place",
            Box::new(|| {
                fs::rename(far.join("deep"), far.join("deep-old")).unwrap();
                fs::create_dir_all(far.join("deep/a")).unwrap();
                fs::write(far.join("deep/a/far.jpg"), "far-2").unwrap();
            }),
        ),
        (
            "a link's target replaced by a file renamed over it (the old file kept by another name)",
            Box::new(|| {
                fs::hard_link(outside.join("target.jpg"), outside.join("target-old.jpg")).unwrap();
                fs::write(outside.join("target.new"), "T2").unwrap();
                fs::rename(outside.join("target.new"), outside.join("target.jpg")).unwrap();
            }),
        ),
        (
            "the file that replaced a link's target then changed in place",
            Box::new(|| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(outside.join("target.jpg"))
                    .unwrap()
                    .write_all_at(b"T3", 0)
                    .unwrap()
            }),
        ),
        (
            "only the time",
            Box::new(|| set_mtime(&root.join("b/010.jpg"), t0 - Duration::from_secs(60))),
        ),
        (
            "the folder replaced by another of the same name",
            Box::new(|| {
                fs::rename(&root, tmp.path().join("data-old")).unwrap();
                fs::create_dir_all(root.join("a")).unwrap();
                fs::write(root.join("a/000.jpg"), "other").unwrap();
            }),
        ),
    ];
    for (what, change) in &changes {
        change();
        assert!(!vouched(&store, &root, what), "{what}: vouched for");
        assert!(
            vouched(&store, &root, what),
            "{what}: not vouched for after"
        );
    }

    // A link whose target is not there yet: the walk fails on it; the target made outside
    // the folder, and then changed in place, are each seen.
    std::os::unix::fs::symlink(outside.join("later.jpg"), root.join("a/later.jpg")).unwrap();
    assert!(fingerprint_tree(&store, &root, false).is_err());
    fs::write(outside.join("later.jpg"), "later-1").unwrap();
    assert!(!vouched(&store, &root, "a dangling link's target made"));
    assert!(vouched(
        &store,
        &root,
        "after a dangling link's target was made"
    ));
    fs::OpenOptions::new()
        .write(true)
        .open(outside.join("later.jpg"))
        .unwrap()
        .write_all_at(b"LATER", 0)
        .unwrap();
    assert!(!vouched(&store, &root, "the new target changed in place"));

    // A file system mounted inside the tree raises no inotify event; the mount table's
    // change makes the watches be made again. (Needs the right to mount: as root.)
    let mnt = root.join("a/mnt");
    fs::create_dir(&mnt).unwrap();
    assert!(!vouched(&store, &root, "a folder to mount on"));
    assert!(vouched(&store, &root, "after a folder to mount on"));
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "none"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        let _unmount = Unmount(&mnt);
        fs::write(mnt.join("m.jpg"), "m").unwrap();
        assert!(!vouched(
            &store,
            &root,
            "a file system mounted inside the folder"
        ));
    } else {
        eprintln!("SKIPPED (this part): no right to mount a file system here");
    }
    assert!(!vouched(&store, &root, "a file system unmounted inside the folder") || !mounted);

    // The watcher stopped: every run walks again.
    drop(w);
    assert_eq!(ask(store.root(), &root), Answer::NoWatcher);
    assert!(!vouched(&store, &root, "the watcher stopped"));
}

#[test]
fn a_no_op_run_under_pipe_watch_skips_the_walk_and_a_change_runs_again() {
    let _alone = one_at_a_time();
    let (p, root) = Project::with_tiny_imagenet("tiny", 3, 6, 2);
    // Spelled with a `..`: what the run keeps of the folder goes by its canonical path.
    p.manifest("exp.toml", &tiny_manifest(&root.join("../tiny"), 2));
    let states = |out: &std::process::Output| -> Vec<(String, String)> {
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        string_pairs(&r["stages"], "name", "state")
    };
    let first = p.ok(&["run", "exp", "--json"]);
    assert!(states(&first).iter().all(|(_, s)| s == "ran"));
    // No store yet: said, naming the folder.
    let empty = tempfile::tempdir().unwrap();
    let none = empty.path().join("store");
    let out = pipe_in(p.path(), &["watch", "--cache", none.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("no store at {}", none.display())),
        "{err}"
    );
    let w = Watcher::start(p.path(), &p.cache(), false);
    // A second watcher on one store is refused.
    let err = p.fails(&["watch"]);
    assert!(
        err.contains("another `pipe watch` serves the store"),
        "{err}"
    );
    let note = "no change since the last run (pipe watch)";
    // What a run says, and which stages ran.
    let run = || -> (String, Vec<(String, String)>) {
        let out = p.ok(&["run", "exp"]);
        let said = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        let ran = ["ingest", "split", "hdf5"]
            .iter()
            .map(|s| {
                let line = said
                    .lines()
                    .find(|l| l.starts_with(s) && !l.contains("running"))
                    .unwrap_or_else(|| panic!("no line of {s}: {said}"));
                (
                    s.to_string(),
                    line.split_whitespace().nth(1).unwrap().to_string(),
                )
            })
            .collect();
        (said, ran)
    };
    let all_cached = |ran: &[(String, String)]| ran.iter().all(|(_, s)| s == "cached");
    // The first run under the watcher walks; the next take its word.
    for vouched in [false, true, true] {
        let (said, ran) = run();
        assert!(all_cached(&ran), "{said}");
        assert_eq!(said.contains(note), vouched, "{said}");
    }
    // A new image: the ingest runs again, with the walk's fingerprint.
    let class = fs::read_dir(root.join("train"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("images");
    let one = fs::read_dir(&class)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::copy(&one, class.join("extra_0.JPEG")).unwrap();
    let (said, ran) = run();
    assert!(!said.contains(note), "{said}");
    assert_eq!(ran[0].1, "ran", "{said}");
    let (said, ran) = run();
    assert!(said.contains(note) && all_cached(&ran), "{said}");

    // A change no event reports (a write through a memory mapping: here one letter of a
    // class name) is taken on the watcher's word by a no-op; a stage that then reads the
    // folder walks it first and stops, and the next run walks.
    let words = root.join("words.txt");
    let at = fs::read(&words)
        .unwrap()
        .iter()
        .rposition(u8::is_ascii_lowercase)
        .unwrap();
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&words)
        .unwrap();
    // SAFETY: the test alone uses this file while it is mapped.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
    map[at] = map[at].to_ascii_uppercase();
    map.flush().unwrap();
    drop(map);
    let (said, ran) = run();
    assert!(said.contains(note) && all_cached(&ran), "{said}");
    let out = p.ok(&["run", "exp", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ingest_key = string_pairs(&r["stages"], "name", "key")[0].1.clone();
    fs::remove_file(p.cache().join("keys").join(format!("{ingest_key}.json"))).unwrap();
    let err = p.fails(&["run", "exp"]);
    assert!(
        err.contains("changed with no event that `pipe watch` saw"),
        "{err}"
    );
    assert!(
        err.contains(root.canonicalize().unwrap().to_str().unwrap()),
        "{err}"
    );
    let (said, ran) = run();
    assert!(!said.contains(note), "{said}");
    assert_eq!(ran[0].1, "ran", "{said}");

    // Its socket and lock in the store are nothing `verify` or `gc` trips on.
    let said = String::from_utf8_lossy(&p.ok(&["verify"]).stderr).into_owned();
    assert!(said.contains("none damaged"), "{said}");
    p.ok(&["gc"]);
    let (said, ran) = run();
    assert!(said.contains(note) && all_cached(&ran), "{said}");

    // The watcher suspended (Ctrl-Z in its terminal): a run sees the process stopped and
    // walks, instead of waiting for an answer (30 s a folder, before). The bound is far
    // above a walk of this folder and below that wait: a stall, not a speed, is tested.
    let pid = w.0.id().to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    let t = Instant::now();
    let (said, ran) = run();
    let took = t.elapsed();
    signal("-CONT");
    assert!(!said.contains(note) && all_cached(&ran), "{said}");
    assert!(
        took < Duration::from_secs(20),
        "waited {took:?} on a stopped watcher"
    );
    // Going on, it answers again (a client that gave up on it did not end it).
    let (said, ran) = run();
    assert!(said.contains(note) && all_cached(&ran), "{said}");

    // The watcher stopped: runs walk again, with no word of it.
    drop(w);
    let (said, ran) = run();
    assert!(!said.contains(note) && all_cached(&ran), "{said}");
}

//! Datasets that are broken, change while a run reads them, or go missing: an empty class
//! folder, a Tiny ImageNet class without images or without val, a split whose images were
//! all skipped, a truncated JPEG, an image replaced or removed after ingest fingerprinted
//! the tree (the stage fails and publishes nothing), a dataset folder that is gone, names
//! that are not UTF-8, a folder named like an image, a val image listed twice.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use pipe::data::h5;

/// An image-folder dataset of real JPEGs: `root/<class>/<i>.jpg`.
fn image_folder(root: &Path, classes: &[&str], per_class: usize) {
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

/// The training of [`pipeline_t`] on the image folder `data/`, 2 images of each class split off
/// as `val` (`extra_hdf5` appended to the hdf5 stage).
fn folder_pipeline(extra_hdf5: &str) -> String {
    pipeline_t().replace(
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
    let (p, root) = Project::with_tiny_imagenet("tiny", 3, 4, 2);
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
fn odd_names_in_a_dataset_are_errors_naming_them_or_ignored_never_a_dead_end() {
    use std::os::unix::ffi::OsStrExt;
    let p = Project::new();
    let data = p.path().join("data");
    image_folder(&data, &["cat", "dog", "owl"], 6);
    p.manifest("t.toml", &folder_pipeline(""));
    // A folder named like an image is no image: ingest and hdf5 run as without it.
    std::fs::create_dir_all(data.join("cat/old.jpg")).unwrap();
    let r = p.run_json("t", &["--until", "hdf5"]);
    assert_eq!(state_of(&r, "hdf5"), "ran");
    let index = std::fs::read_to_string(p.artifact(&r, "ingest").join("train.csv")).unwrap();
    assert!(!index.contains("old.jpg"), "{index}");
    assert_eq!(index.lines().count(), 1 + 18, "{index}");
    std::fs::remove_dir(data.join("cat/old.jpg")).unwrap();
    // A file name that is not UTF-8, and a class folder so named: named, once, and what
    // to do about it.
    let bad = data
        .join("dog")
        .join(std::ffi::OsStr::from_bytes(b"\xff\xfe.jpg"));
    std::fs::copy(data.join("dog/0.jpg"), &bad).unwrap();
    let err = p.fails(&["run", "t", "--until", "hdf5"]);
    assert!(
        err.contains("a file name that is not UTF-8; rename it") && err.contains("dog/"),
        "{err}"
    );
    std::fs::remove_file(&bad).unwrap();
    let class = data.join(std::ffi::OsStr::from_bytes(b"b\xe9e"));
    std::fs::create_dir_all(&class).unwrap();
    std::fs::copy(data.join("dog/0.jpg"), class.join("0.jpg")).unwrap();
    let err = p.fails(&["run", "t", "--until", "hdf5"]);
    assert!(
        err.contains("data/b\u{FFFD}e: a file name that is not UTF-8; rename it"),
        "{err}"
    );
    std::fs::remove_dir_all(&class).unwrap();
    let r = p.run_json("t", &["--until", "hdf5"]);
    assert_eq!(state_of(&r, "hdf5"), "cached");
}

#[test]
fn a_tiny_imagenet_val_image_listed_twice_is_an_error_naming_both_lines() {
    let (p, root) = Project::with_tiny_imagenet("tiny", 3, 4, 2);
    p.manifest("t.toml", &tiny_manifest(&root, 1));
    let ann = root.join("val/val_annotations.txt");
    let text = std::fs::read_to_string(&ann).unwrap();
    let first = text.lines().next().unwrap().to_string();
    // The same image again, under another class.
    let (file, rest) = first.split_once('\t').unwrap();
    let (wnid, tail) = rest.split_once('\t').unwrap_or((rest, ""));
    let other = text
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap())
        .find(|w| *w != wnid)
        .unwrap()
        .to_string();
    let n = text.lines().count();
    std::fs::write(&ann, format!("{text}{file}\t{other}\t{tail}\n")).unwrap();
    let err = p.fails(&["run", "t", "--until", "ingest"]);
    assert!(
        err.contains(&format!(
            "val_annotations.txt:{}: image {file} is listed again (first on line 1)",
            n + 1
        )),
        "{err}"
    );
}

#[test]
fn a_moved_project_reads_its_images_where_they_are_now() {
    // The index names each image relative to the dataset folder (`dataset:cat/0.jpg`),
    // the ingest key holds the dataset's content: after the project moves, the cached
    // ingest still resolves, against the folder the manifest names now. A stage that must
    // read the images again does so without re-indexing.
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    std::fs::create_dir_all(a.join("pipelines")).unwrap();
    image_folder(&a.join("data"), &["cat", "dog", "owl"], 6);
    std::fs::write(a.join("pipelines/t.toml"), folder_pipeline("")).unwrap();
    let out = pipe_in(&a, &["run", "t", "--json"]);
    assert_success(&out, "pipe run t");
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let art = |dir: &Path, r: &serde_json::Value, stage: &str| {
        dir.join(".pipe/artifacts").join(field(r, stage, "output"))
    };
    let index = std::fs::read_to_string(art(&a, &first, "ingest").join("train.csv")).unwrap();
    assert!(index.contains("dataset:cat/0.jpg,0,cat,"), "{index}");
    assert!(!index.contains(&a.display().to_string()), "{index}");
    let b = tmp.path().join("b");
    std::fs::rename(&a, &b).unwrap();
    // Another chunking: hdf5 must read the images again.
    std::fs::write(b.join("pipelines/t.toml"), folder_pipeline("\nchunk = 8")).unwrap();
    let out = pipe_in(&b, &["run", "t", "--json"]);
    assert_success(&out, "pipe run t (moved, other chunking)");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state_of(&r, "ingest"), "cached", "{r}");
    assert_eq!(state_of(&r, "hdf5"), "ran", "{r}");
    let (moved, before) = (art(&b, &r, "hdf5"), art(&b, &first, "hdf5"));
    for split in ["train", "val"] {
        let x = h5::read_split(&moved.join(format!("{split}.h5"))).unwrap();
        let y = h5::read_split(&before.join(format!("{split}.h5"))).unwrap();
        assert_eq!((x.images, x.labels), (y.images, y.labels), "{split}");
    }
    // The first chunking again: everything is cached where it moved.
    std::fs::write(b.join("pipelines/t.toml"), folder_pipeline("")).unwrap();
    let out = pipe_in(&b, &["run", "t", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(states(&r).iter().all(|(_, s)| s == "cached"), "{r}");
    assert_eq!(field(&r, "hdf5", "output"), field(&first, "hdf5", "output"));
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

/// Run `pipe` with a fault point: wait until it stalls there, do `meanwhile`, then let it
/// go on and return its output.
fn stall_at(p: &Project, args: &[&str], fault: &str, meanwhile: impl FnOnce()) -> (bool, String) {
    let hold = Hold::new();
    let mut cmd = p.cmd(args);
    hold.on(cmd.stdout(Stdio::null()));
    let (mut child, mut stderr, mut text) = spawn_to_fault(cmd, fault);
    meanwhile();
    hold.release();
    stderr.read_to_string(&mut text).unwrap();
    (child.wait().unwrap().success(), text)
}

#[test]
fn an_image_changed_while_hdf5_reads_it_fails_the_stage_and_publishes_nothing() {
    let (p, root) = Project::with_tiny_imagenet("data/tiny", 3, 8, 2);
    p.manifest("exp.toml", &tiny_manifest(&root, 2));
    // Replace one image with another of the class (a real, decodable JPEG) after ingest
    // fingerprinted the tree, before hdf5 reads it.
    let class = first_entry(&root.join("train"));
    let mut imgs: Vec<PathBuf> = std::fs::read_dir(class.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    imgs.sort();
    let (a, b) = (imgs[0].clone(), imgs[1].clone());
    let (ok, err) = stall_at(&p, &["run", "exp"], "hdf5:start", || {
        std::fs::copy(&b, &a).unwrap();
    });
    assert!(!ok, "{err}");
    assert!(
        err.contains("changed after its dataset was fingerprinted"),
        "{err}"
    );
    assert!(err.contains(&a.display().to_string()), "{err}");
    // Nothing published for hdf5: no key, no artifact but ingest's and split's.
    assert_eq!(artifact_names(&p.cache()).len(), 2);
    let status = p.ok(&["status", "exp"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("dataset folder contents changed"), "{text}");
    // The next run takes the dataset as it is now, and verify finds the store sound.
    let r = p.run_json("exp", &[]);
    assert_eq!(state_of(&r, "ingest"), "ran");
    assert_eq!(state_of(&r, "hdf5"), "ran");
    assert!(p.ok(&["verify"]).status.success());
    // A fresh store over the same data gives the same keys and outputs.
    let fresh = Project::with("exp.toml", &tiny_manifest(&root, 2));
    let f = fresh.run_json("exp", &[]);
    for stage in ["ingest", "split", "hdf5"] {
        assert_eq!(field(&r, stage, "key"), field(&f, stage, "key"));
        assert_eq!(field(&r, stage, "output"), field(&f, stage, "output"));
    }
}

#[test]
fn an_image_removed_after_the_fingerprint_fails_the_stage_even_with_skip() {
    let (p, root) = Project::with_tiny_imagenet("data/tiny", 3, 8, 2);
    p.manifest(
        "exp.toml",
        &(tiny_manifest(&root, 2) + "on_bad_image = \"skip\"\n"),
    );
    let img = first_entry(&first_entry(&root.join("train")).join("images"));
    let (ok, err) = stall_at(&p, &["run", "exp"], "hdf5:start", || {
        std::fs::remove_file(&img).unwrap();
    });
    assert!(!ok, "{err}");
    assert!(
        err.contains("was removed after its dataset was fingerprinted"),
        "{err}"
    );
    assert_eq!(
        artifact_names(&p.cache()).len(),
        2,
        "nothing published for hdf5"
    );
}

/// What ingest reads besides the images (a CIFAR batch, `words.txt`) changed after the
/// fingerprint was taken, or an image removed before the folders were listed: the stage
/// fails naming the file and publishes nothing, rather than index other content under
/// the key of what was fingerprinted (a later run over the first content would reuse it).
#[test]
fn a_dataset_changed_between_its_fingerprint_and_ingest_fails_the_stage() {
    // A CIFAR batch relabelled.
    let p = Project::new();
    let root = p.path().join("cifar");
    pipe::data::synthetic::write_cifar10(&root, 12, 3).unwrap();
    p.manifest(
        "c.toml",
        &format!(
            "[stages.ingest]\nformat = \"cifar10\"\nroot = \"{}\"\n\n[stages.hdf5]\ninput = \"ingest\"\n",
            root.display()
        ),
    );
    let batch = root.join("data_batch_3.bin");
    let (ok, err) = stall_at(&p, &["run", "c"], "ingest:start", || {
        let mut b = std::fs::read(&batch).unwrap();
        b[0] = (b[0] + 1) % 10;
        std::fs::write(&batch, b).unwrap();
    });
    assert!(!ok, "{err}");
    assert!(
        err.contains("data_batch_3.bin changed after its dataset was fingerprinted"),
        "{err}"
    );
    assert!(artifact_names(&p.cache()).is_empty(), "nothing published");
    // The next run takes the batch as it is now.
    let r = p.run_json("c", &[]);
    assert_eq!(state_of(&r, "hdf5"), "ran");

    // Tiny ImageNet: the class names changed; then an image removed.
    let (p, root) = Project::with_tiny_imagenet("data/tiny", 3, 8, 2);
    p.manifest("exp.toml", &tiny_manifest(&root, 2));
    let words = root.join("words.txt");
    let (ok, err) = stall_at(&p, &["run", "exp"], "ingest:start", || {
        let text = std::fs::read_to_string(&words).unwrap_or_default();
        std::fs::write(&words, text + "n09999999\tanother class\n").unwrap();
    });
    assert!(!ok, "{err}");
    assert!(
        err.contains("words.txt changed after its dataset was fingerprinted"),
        "{err}"
    );
    let img = first_entry(&first_entry(&root.join("train")).join("images"));
    let (ok, err) = stall_at(&p, &["run", "exp"], "ingest:start", || {
        std::fs::remove_file(&img).unwrap();
    });
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!(
            "{}: fingerprinted, and not there when the dataset was listed",
            img.file_name().unwrap().to_string_lossy()
        )),
        "{err}"
    );
    assert!(artifact_names(&p.cache()).is_empty(), "nothing published");
}

#[test]
fn status_lists_every_stage_when_a_dataset_goes_missing_from_a_used_store() {
    let (p, root) = Project::with_tiny_imagenet("data/tiny", 2, 8, 2);
    p.manifest("exp.toml", &tiny_manifest(&root, 2));
    p.run_json("exp", &[]);
    std::fs::rename(&root, p.path().join("data/elsewhere")).unwrap();
    let out = p.ok(&["status", "exp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("does not exist"), "{text}");
    assert_eq!(text.matches("waiting").count(), 3, "{text}");
    let out = p
        .cmd(&["show", "exp"])
        .env("COLUMNS", "400")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ingest waiting: dataset folder"), "{text}");
}

/// An image changed in place with its size, mtime and inode kept (a byte of its JFIF
/// header: the pixels decode the same). Between runs, the stat cache sees it by its ctime,
/// which no one can set back: ingest runs again. During a run, after the fingerprint was
/// taken (the run held where hdf5 starts): the hdf5 stage refuses the file, naming it, and
/// publishes nothing; the next run takes the dataset as it is and finishes, with no
/// `touch`; `--force ingest` re-hashes the folder as well.
#[test]
fn an_image_changed_in_place_with_its_time_kept_is_seen_and_no_dead_end() {
    let (p, root) = Project::with_tiny_imagenet("data/tiny", 3, 8, 2);
    p.manifest("exp.toml", &tiny_manifest(&root, 2));
    p.run_json("exp", &[]);
    let class = first_entry(&root.join("train"));
    let mut imgs: Vec<PathBuf> = std::fs::read_dir(class.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    imgs.sort();
    let edit = |path: &Path| {
        tamper_keeping_time(path, |b| {
            assert_eq!(&b[6..11], b"JFIF\0", "a JFIF header");
            b[15] ^= 0x01; // the horizontal pixel density
        })
    };
    // Between runs.
    edit(&imgs[0]);
    let r = p.run_json("exp", &[]);
    assert_eq!(state_of(&r, "ingest"), "ran", "the changed file was seen");
    assert_eq!(state_of(&r, "hdf5"), "ran");

    // During a run: held at the start of hdf5, after every decision was taken.
    edit(&imgs[1]);
    let hold = Hold::new();
    let mut run = p.cmd(&["run", "exp"]);
    let mut run = hold
        .on(&mut run)
        .env("PIPE_FAULT", "hdf5:start")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = std::io::BufReader::new(run.stderr.take().unwrap());
    read_until(&mut said, "PIPE_FAULT reached: hdf5:start");
    edit(&imgs[2]);
    hold.release();
    let mut err = String::new();
    said.read_to_string(&mut err).unwrap();
    assert!(!run.wait().unwrap().success(), "{err}");
    assert!(
        err.contains("changed after its dataset was fingerprinted")
            && err.contains(&imgs[2].display().to_string()),
        "{err}"
    );
    let r = p.run_json("exp", &[]);
    assert_eq!(
        state_of(&r, "ingest"),
        "ran",
        "the changed file was read again"
    );
    assert_eq!(state_of(&r, "hdf5"), "ran");

    // The same change to another file, then `--force ingest`: ingest reads every file.
    edit(&imgs[3]);
    let r = p.run_json("exp", &["--force", "ingest"]);
    assert_eq!(state_of(&r, "hdf5"), "ran");
    assert!(p.ok(&["verify"]).status.success());
}

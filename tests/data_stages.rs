//! The data stages on generated datasets: what they write, byte for byte.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use common::*;
use pipe::data::{cifar, h5, index};

#[test]
fn hdf5_round_trip_matches_decoded_images_and_means() {
    let (p, root) = Project::with_tiny_imagenet("tiny", 5, 16, 3);
    p.manifest("exp.toml", &tiny_manifest(&root, 4));
    let r = p.run_json("exp", &[]);
    let split_dir = p.artifact(&r, "split");
    let h5_dir = p.artifact(&r, "hdf5");

    let mut train_sum = [0f64; 3];
    let mut train_px = 0f64;
    for (split, n) in [("train", 5 * 12), ("test", 5 * 4), ("val", 5 * 3)] {
        let rows = index::read_index(&split_dir.join(format!("{split}.csv"))).unwrap();
        assert_eq!(rows.len(), n, "{split}");
        let data = h5::read_split(&h5_dir.join(format!("{split}.h5"))).unwrap();
        assert_eq!(data.shape, [n, 16, 16, 3]);
        assert_eq!(
            data.labels,
            rows.iter().map(|r| r.label).collect::<Vec<_>>()
        );
        for (i, row) in rows.iter().enumerate() {
            let path = match index::ImageRef::resolve(&row.path, &split_dir, Some(&root)).unwrap() {
                index::ImageRef::File(p) => p,
                other => panic!("unexpected {other:?}"),
            };
            let img = image::open(&path).unwrap().to_rgb8();
            let stored = &data.images[i * 16 * 16 * 3..(i + 1) * 16 * 16 * 3];
            assert_eq!(
                stored,
                img.as_raw().as_slice(),
                "{split} image {i} ({})",
                path.display()
            );
            if split == "train" {
                for px in img.pixels() {
                    for (acc, v) in train_sum.iter_mut().zip(px.0) {
                        *acc += v as f64;
                    }
                    train_px += 1.0;
                }
            }
        }
    }
    let means: serde_json::Value = read_json(&h5_dir.join("means.json"));
    for (k, ch) in ["R", "G", "B"].iter().enumerate() {
        let got = means[ch].as_f64().unwrap();
        let want = train_sum[k] / train_px;
        assert!((got - want).abs() < 1e-9, "{ch}: {got} vs {want}");
    }
    // Labels follow sorted wnids; class names come from words.txt.
    let classes = index::read_classes(&h5_dir.join("classes.csv")).unwrap();
    assert_eq!(classes.len(), 5);
    assert_eq!(classes[0].id, "n00001000");
    assert_eq!(classes[0].name, "synthetic class 0, pattern 0");
}

#[test]
fn h5py_opens_the_files() {
    let python = std::env::var("PIPE_PYTHON").unwrap_or_else(|_| "python3".into());
    let have = std::process::Command::new(&python)
        .args(["-c", "import h5py, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var("PIPE_REQUIRE_H5PY").is_err(),
            "PIPE_REQUIRE_H5PY is set but {python} cannot import h5py"
        );
        eprintln!("skipping: h5py not installed (CI installs it and sets PIPE_REQUIRE_H5PY)");
        return;
    }
    let (p, root) = Project::with_tiny_imagenet("tiny", 3, 10, 2);
    p.manifest("exp.toml", &tiny_manifest(&root, 2));
    let r = p.run_json("exp", &[]);
    let dir = p.artifact(&r, "hdf5");
    let script = r#"
import sys, h5py, numpy as np
with h5py.File(sys.argv[1] + "/train.h5", "r") as f:
    im, lb = f["images"], f["labels"]
    assert im.shape == (24, 16, 16, 3), im.shape
    assert im.dtype == np.uint8 and lb.dtype == np.int64
    assert im.chunks[1:] == (16, 16, 3)
    print(int(im[...].astype(np.int64).sum()), ",".join(str(int(x)) for x in lb[...]))
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script, dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_success(&out, "h5py reading the files");
    let text = String::from_utf8_lossy(&out.stdout);
    let (sum, labels) = text.trim().split_once(' ').unwrap();
    let data = h5::read_split(&dir.join("train.h5")).unwrap();
    let want: u64 = data.images.iter().map(|&b| b as u64).sum();
    assert_eq!(sum.parse::<u64>().unwrap(), want);
    let want_labels: Vec<String> = data.labels.iter().map(|l| l.to_string()).collect();
    assert_eq!(labels, want_labels.join(","));
}

#[test]
fn a_corrupt_jpeg_stops_the_stage_naming_the_file() {
    let (p, root) = Project::with_tiny_imagenet("tiny", 3, 8, 2);
    let bad = root.join("train/n00001007/images/n00001007_2.JPEG");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 this is not a JPEG").unwrap();
    p.manifest("exp.toml", &tiny_manifest(&root, 2));
    let err = p.fails(&["run", "exp"]);
    assert!(err.contains("stage `hdf5` (hdf5) failed"), "{err}");
    assert!(
        err.contains(&format!("cannot decode image {}", bad.display())),
        "{err}"
    );
    assert!(err.contains("on_bad_image"), "{err}");
    // Nothing half-written was published, and no output folder is left in scratch.
    let s = p.ok(&["status", "exp", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(v["stages"][2]["state"], "stale");
    let left: Vec<_> = std::fs::read_dir(p.cache().join("scratch"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("publishing-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // With on_bad_image = "skip" the file is left out and counted.
    let r = run_skipping(&p, &root, 2, "", 1);
    let dir = p.artifact(&r, "hdf5");
    let n = |s: &str| h5::read_split(&dir.join(format!("{s}.h5"))).unwrap().shape[0];
    assert_eq!(n("train") + n("test"), 3 * 8 - 1);
    // Named relative to the dataset folder: the artifact names no place on this machine.
    let skipped = std::fs::read_to_string(dir.join("skipped.txt")).unwrap();
    assert_eq!(skipped, "train/n00001007/images/n00001007_2.JPEG\n");
    // The images after the skipped one moved up in order.
    let left_out =
        stored_are_their_files(&p.artifact(&r, "split"), &root, &dir, &["n00001007_2.JPEG"]);
    assert_eq!(left_out.len(), 1);
}

#[test]
fn split_is_stratified_seeded_and_disjoint() {
    let (p, root) = Project::with_tiny_imagenet("tiny", 4, 20, 0);
    let run = |seed: u64| {
        let text = tiny_manifest(&root, 5).replace("seed = 42", &format!("seed = {seed}"));
        p.manifest("exp.toml", &text);
        let r = p.run_json("exp", &["--until", "split"]);
        let dir = p.artifact(&r, "split");
        (
            index::read_index(&dir.join("train.csv")).unwrap(),
            index::read_index(&dir.join("test.csv")).unwrap(),
        )
    };
    let (train, test) = run(42);
    assert_eq!(train.len(), 60);
    assert_eq!(test.len(), 20);
    let mut per_class = BTreeMap::new();
    for r in &test {
        *per_class.entry(r.label).or_insert(0) += 1;
    }
    assert_eq!(
        per_class.values().copied().collect::<Vec<_>>(),
        vec![5, 5, 5, 5]
    );
    let a: HashSet<_> = train.iter().map(|r| r.path.clone()).collect();
    let b: HashSet<_> = test.iter().map(|r| r.path.clone()).collect();
    assert!(a.is_disjoint(&b));
    assert_eq!(a.len() + b.len(), 80);
    let (_, test_again) = run(42);
    assert_eq!(test, test_again);
    let (_, test_other) = run(7);
    assert_ne!(test, test_other);
}

#[test]
fn cifar10_batches_are_ingested_record_by_record() {
    let p = Project::new();
    let root = p.path().join("cifar");
    pipe::data::synthetic::write_cifar10(&root, 30, 3).unwrap();
    p.manifest(
        "c.toml",
        &format!(
            "[stages.ingest]\nformat = \"cifar10\"\nroot = \"{}\"\n\n[stages.hdf5]\ninput = \"ingest\"\n",
            root.display()
        ),
    );
    let r = p.run_json("c", &[]);
    assert_eq!(
        field(&r, "ingest", "summary"),
        "10 classes; test 30, train 150"
    );
    let dir = p.artifact(&r, "hdf5");
    let train = h5::read_split(&dir.join("train.h5")).unwrap();
    assert_eq!(train.shape, [150, 32, 32, 3]);
    let bytes = std::fs::read(root.join("data_batch_2.bin")).unwrap();
    let rec = &bytes[7 * cifar::RECORD..8 * cifar::RECORD];
    let (label, img) = cifar::decode_record(rec);
    let i = 30 + 7;
    assert_eq!(train.labels[i], label as i64);
    assert_eq!(
        &train.images[i * 3072..(i + 1) * 3072],
        img.as_raw().as_slice()
    );
    // Planes (R then G then B) become interleaved pixels.
    assert_eq!(train.images[i * 3072 + 1], rec[1 + 1024]);
    let classes = index::read_classes(&dir.join("classes.csv")).unwrap();
    assert_eq!(classes[3].name, "cat");
}

#[test]
fn image_folder_ingest_and_resize() {
    let p = Project::new();
    let root = p.path().join("folders");
    pipe::data::synthetic::write_image_folder(&root, 3, 6, 20, 1).unwrap();
    // One PNG of another size among the JPEGs.
    image::RgbImage::from_pixel(30, 10, image::Rgb([10, 20, 30]))
        .save(root.join("class_001/extra.png"))
        .unwrap();
    let text = format!(
        "[stages.ingest]\nformat = \"image-folder\"\nroot = \"{}\"\n\n[stages.hdf5]\ninput = \"ingest\"\n",
        root.display()
    );
    p.manifest("f.toml", &text);
    let err = p.fails(&["run", "f"]);
    assert!(
        err.contains("extra.png is 30x10 but the split's images are 20x20"),
        "{err}"
    );
    assert!(err.contains("size = [20, 20]"), "{err}");
    p.manifest("f.toml", &(text + "size = [8, 8]\nfilter = \"nearest\"\n"));
    let r = p.run_json("f", &[]);
    assert_eq!(field(&r, "ingest", "summary"), "3 classes; train 19");
    let data = h5::read_split(&p.artifact(&r, "hdf5").join("train.h5")).unwrap();
    assert_eq!(data.shape, [19, 8, 8, 3]);
    let extra = 6; // sorted: class_001/00000..00005.jpg then extra.png
    let k = (6 + extra) * 8 * 8 * 3;
    assert_eq!(&data.images[k..k + 3], &[10, 20, 30]);
    assert_eq!(data.labels[6 + extra], 1);
}

#[test]
fn missing_dataset_folder_is_a_clear_error() {
    let p = Project::with(
        "exp.toml",
        &tiny_manifest(Path::new("/definitely/not/here"), 2),
    );
    let err = p.fails(&["run", "exp"]);
    assert!(
        err.contains("stage `ingest`: cannot read its dataset folder"),
        "{err}"
    );
    assert!(err.contains("/definitely/not/here"), "{err}");
}

#[test]
fn demo_pipeline_runs_end_to_end() {
    let p = demo_project();
    let r = p.run_json("demo", &[]);
    assert!(states(&r).iter().all(|(_, s)| s == "ran"), "{r}");
    let dir = p.artifact(&r, "hdf5");
    let train = h5::read_split(&dir.join("train.h5")).unwrap();
    assert_eq!(train.shape, [1000, 32, 32, 3]);
    // The demo's network learns: far above chance (10 %) on the held-out test split.
    let m: serde_json::Value = read_json(&p.artifact(&r, "evaluate").join("metrics.json"));
    let rank1 = m["rank"]["rank-1"].as_f64().unwrap();
    assert!(rank1 > 0.6, "demo rank-1 accuracy {rank1}");
    assert_eq!(m["images"], 200);
}

#[test]
fn every_shipped_manifest_loads() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines"));
    let files = pipe::manifest::list(dir).unwrap();
    assert!(files.len() >= 7, "{files:?}");
    let mut sweeps = Vec::new();
    for f in files {
        let t = pipe::engine::load_target(&f, &[], dir.parent().unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        match t {
            pipe::engine::Target::Pipeline(m) => assert!(!m.stages.is_empty()),
            pipe::engine::Target::Sweep(s) => sweeps.push((
                s.name.clone(),
                s.points.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
            )),
            pipe::engine::Target::Point(..) => unreachable!("a file is not a point"),
        }
    }
    // The chapter as sweeps: its three learning rates, and the ablation's four points;
    // and the demo's 2 x 2.
    assert_eq!(
        sweeps,
        [
            (
                "cifar10_minigooglenet_lr".to_string(),
                vec!["lr=1e-3".to_string(), "lr=1e-2".into(), "lr=5e-3".into()]
            ),
            (
                "demo_lr".to_string(),
                vec![
                    "train.lr=2e-3,drop.lr=2e-4".to_string(),
                    "train.lr=2e-3,drop.lr=1e-3".into(),
                    "train.lr=5e-3,drop.lr=2e-4".into(),
                    "train.lr=5e-3,drop.lr=1e-3".into()
                ]
            ),
            (
                "tiny_imagenet_ablation".to_string(),
                vec![
                    "act=relu,bn_first=true".to_string(),
                    "act=relu,bn_first=false".into(),
                    "act=elu,bn_first=true".into(),
                    "act=elu,bn_first=false".into()
                ]
            )
        ]
    );
}

#[test]
fn the_lr_sweeps_points_have_the_keys_of_the_chapters_three_runs() {
    // So a run of either is the other's cache.
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines"));
    let load = |name: &str| {
        pipe::engine::load_target(&dir.join(name), &[], dir.parent().unwrap()).unwrap()
    };
    let pipe::engine::Target::Sweep(s) = load("cifar10_minigooglenet_lr.toml") else {
        panic!("a sweep")
    };
    let key = |p: &pipe::manifest::Pipeline, stage: &str, inputs: &[&str]| {
        let inputs: Vec<String> = inputs.iter().map(|i| i.to_string()).collect();
        pipe::engine::stage_key(p, stage, &inputs, Some("fingerprint")).unwrap()
    };
    for (id, exp) in [
        ("lr=1e-3", "cifar10_minigooglenet_exp1.toml"),
        ("lr=1e-2", "cifar10_minigooglenet_exp2.toml"),
        ("lr=5e-3", "cifar10_minigooglenet_exp3.toml"),
    ] {
        let point = &s.point(id).unwrap().pipeline;
        let pipe::engine::Target::Pipeline(e) = load(exp) else {
            panic!("a pipeline")
        };
        assert_eq!(key(point, "ingest", &[]), key(&e, "ingest", &[]), "{id}");
        assert_eq!(key(point, "hdf5", &["x"]), key(&e, "hdf5", &["x"]), "{id}");
        assert_eq!(
            key(point, "train", &["x"]),
            key(&e, "train", &["x"]),
            "{id}"
        );
        assert_eq!(
            key(point, "evaluate", &["y", "x"]),
            key(&e, "evaluate", &["y", "x"]),
            "{id}"
        );
    }
}

/// Blocks of 256 images (`chunk = 1`) take turns in two reused buffers: over four blocks,
/// with undecodable files left out of the third and fourth, every stored image is its index
/// row's file, decoded, with its label, in order, and the means are those of what is stored.
#[test]
fn hdf5_blocks_reuse_their_buffers_and_close_the_gaps_of_skipped_images() {
    let p = Project::new();
    let root = p.path().join("tiny");
    tiny_imagenet_sized(&root, 3, 300, 0, 8);
    // The last class's rows come last in the index (897 training rows: 598 onwards).
    let bad = [
        "n00001014_5.JPEG",
        "n00001014_150.JPEG",
        "n00001014_99.JPEG",
    ];
    for b in bad {
        std::fs::write(root.join("train/n00001014/images").join(b), b"not a jpeg").unwrap();
    }
    let r = run_skipping(&p, &root, 1, "chunk = 1\n", 3);
    let dir = p.artifact(&r, "hdf5");
    let split = p.artifact(&r, "split");
    assert!(index::read_index(&split.join("train.csv")).unwrap().len() > 3 * 256);
    let left_out = stored_are_their_files(&split, &root, &dir, &bad);
    assert_eq!(left_out.len(), 3);
    let in_late_blocks = left_out
        .iter()
        .filter(|(s, i)| s == "train" && *i >= 2 * 256)
        .count();
    assert!(
        in_late_blocks >= 2,
        "{in_late_blocks} of the bad files in blocks 3-4"
    );
    // The means are those of what is stored.
    let data = h5::read_split(&dir.join("train.h5")).unwrap();
    let mut sums = [0u64; 3];
    for px in data.images.chunks_exact(3) {
        for (s, v) in sums.iter_mut().zip(px) {
            *s += u64::from(*v);
        }
    }
    let means: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("means.json")).unwrap()).unwrap();
    let px = (data.images.len() / 3) as f64;
    for (c, k) in ["R", "G", "B"].iter().enumerate() {
        let want = sums[c] as f64 / px;
        assert!((means[k].as_f64().unwrap() - want).abs() < 1e-9, "{k}");
    }
}

/// `exp` run over `root` (`tiny_manifest(root, test_per_class)`) with `on_bad_image = "skip"` and the
/// hdf5 keys in `extra`: its report, once its summary says `skipped` images were left out.
fn run_skipping(
    p: &Project,
    root: &Path,
    test_per_class: usize,
    extra: &str,
    skipped: usize,
) -> serde_json::Value {
    let text = tiny_manifest(root, test_per_class).replace(
        "input = \"split\"\n",
        &format!("input = \"split\"\n{extra}on_bad_image = \"skip\"\n"),
    );
    p.manifest("exp.toml", &text);
    let r = p.run_json("exp", &[]);
    assert!(
        field(&r, "hdf5", "summary").contains(&format!("{skipped} undecodable images skipped")),
        "{r}"
    );
    r
}

/// Check that each split (train, test) of hdf5 artifact `dir` holds, in order, the decoded
/// file and the label of every row of split artifact `split`'s index but those whose path
/// ends in one of `bad`; returns the (split, row number) of the rows left out.
fn stored_are_their_files(
    split: &Path,
    root: &Path,
    dir: &Path,
    bad: &[&str],
) -> Vec<(String, usize)> {
    let mut left_out = Vec::new();
    for name in ["train", "test"] {
        let all = index::read_index(&split.join(format!("{name}.csv"))).unwrap();
        let mut rows = Vec::new();
        for (i, row) in all.iter().enumerate() {
            if bad.iter().any(|b| row.path.ends_with(b)) {
                left_out.push((name.to_string(), i));
            } else {
                rows.push(row);
            }
        }
        let data = h5::read_split(&dir.join(format!("{name}.h5"))).unwrap();
        assert_eq!(data.shape[0], rows.len());
        let frame = data.shape[1] * data.shape[2] * 3;
        for (i, row) in rows.iter().enumerate() {
            let Ok(index::ImageRef::File(file)) =
                index::ImageRef::resolve(&row.path, split, Some(root))
            else {
                panic!("{} is not an image file of the dataset", row.path);
            };
            let want = pipe::data::decode::decode_file(&file).unwrap();
            assert!(
                data.images[i * frame..(i + 1) * frame] == want.as_raw()[..],
                "{name} image {i} ({}) is not the file's pixels",
                row.path
            );
            assert_eq!(data.labels[i], row.label);
        }
    }
    left_out
}

#[test]
fn an_hdf5_chunk_too_large_to_hold_is_an_error_before_any_image_is_decoded() {
    // 128 images of 2048 x 2048 x 3 are 1.5 GiB a chunk: two blocks of at least that were
    // to be held in memory (at 4096 x 4096, past HDF5's 4 GiB chunk cap: an error naming
    // no file).
    let full = Generated::new("big").text();
    let data_only = &full[..full.find("[networks").unwrap()];
    let text = data_only.replace(
        "[stages.hdf5]\ninput = \"ingest\"\n",
        "[stages.hdf5]\ninput = \"ingest\"\nsize = [2048, 2048]\nchunk = 128\n",
    );
    let p = Project::with("big.toml", &text);
    let err = p.fails(&["run", "big"]);
    assert!(
        err.contains("a chunk of 128 images of 2048x2048 is 1536 MiB")
            && err.contains("lower `chunk`"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

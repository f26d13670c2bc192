//! `pipe predict` on new images: on scikit-learn's real handwritten digits its top-1 (and
//! top-5) is the evaluate stage's, image by image; on JPEGs that need resizing it prepares
//! exactly the pixels the hdf5 stage stored; every bad input gets its error.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The image paths of a split index, in order (relative ones resolved against the index's
/// artifact, as the hdf5 stage resolves them).
fn split_paths(index_dir: &Path, split: &str) -> Vec<String> {
    let mut r = csv::Reader::from_path(index_dir.join(format!("{split}.csv"))).unwrap();
    let col = r
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "path")
        .unwrap();
    r.records()
        .map(|x| {
            let p = PathBuf::from(x.unwrap()[col].to_string());
            let p = if p.is_absolute() {
                p
            } else {
                index_dir.join(p)
            };
            p.display().to_string()
        })
        .collect()
}

/// The evaluate stage's top-5 labels per image, in split order.
fn evaluated_top5(eval_dir: &Path) -> Vec<Vec<usize>> {
    let mut r = csv::Reader::from_path(eval_dir.join("predictions.csv")).unwrap();
    r.records()
        .map(|x| {
            x.unwrap()[1]
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect()
        })
        .collect()
}

/// `pipe predict --json` lines: (path, top labels, top probabilities).
fn predicted(out: &[u8]) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let top = v["top"].as_array().unwrap();
            (
                v["path"].as_str().unwrap().to_string(),
                top.iter()
                    .map(|t| t["label"].as_u64().unwrap() as usize)
                    .collect(),
                top.iter().map(|t| t["p"].as_f64().unwrap()).collect(),
            )
        })
        .collect()
}

#[test]
fn on_the_digits_predict_agrees_with_evaluate_image_by_image() {
    let p = Project::new();
    let root = p.path().join("digits");
    digits(&root, 600);
    p.manifest(
        "dg.toml",
        &fill(
            include_str!("manifests/predict_digits.toml"),
            &[("root", &root.display())],
        ),
    );
    let run = p.run_json("dg", &[]);
    let paths = split_paths(&p.artifact(&run, "split"), "test");
    assert_eq!(paths.len(), 100);
    let want = evaluated_top5(&p.artifact(&run, "evaluate"));
    let mut args = vec!["predict", "dg", "--json", "--top-k", "5"];
    args.extend(paths.iter().map(String::as_str));
    let got = predicted(&p.ok(&args).stdout);
    assert_eq!(got.len(), paths.len());
    let mut right = 0;
    for (i, (path, labels, probs)) in got.iter().enumerate() {
        assert_eq!(path, &paths[i], "one line per image, in order");
        assert_eq!(labels, &want[i], "{path}: predict's top-5 is evaluate's");
        assert!(probs.windows(2).all(|w| w[0] >= w[1]) && probs.iter().sum::<f64>() <= 1.0 + 1e-5);
        let truth: usize = Path::new(path)
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|d| d.to_str())
            .unwrap()
            .parse()
            .unwrap();
        right += usize::from(labels[0] == truth);
    }
    assert!(right >= 70, "the network learned the digits: {right}/100");
    // A folder, and paths on stdin, give the same answers.
    let folder = p.ok(&[
        "predict",
        "dg",
        root.join("3").to_str().unwrap(),
        "--top-k",
        "1",
        "--csv",
    ]);
    let text = String::from_utf8_lossy(&folder.stdout);
    assert!(text.starts_with("path,class_1,name_1,p_1\n"), "{text}");
    assert_eq!(
        text.lines().count() - 1,
        std::fs::read_dir(root.join("3")).unwrap().count()
    );
}

#[test]
fn a_jpeg_that_needs_resizing_is_prepared_as_the_hdf5_stage_prepared_it() {
    let p = Project::new();
    let root = p.path().join("tiny");
    tiny_imagenet_sized(&root, 4, 20, 10, 45);
    p.manifest(
        "t.toml",
        &fill(
            include_str!("manifests/predict_resized.toml"),
            &[("root", &root.display())],
        ),
    );
    let run = p.run_json("t", &[]);
    let paths = split_paths(&p.artifact(&run, "ingest"), "val");
    let h5 = pipe::data::h5::read_split(&p.artifact(&run, "hdf5").join("val.h5")).unwrap();
    assert_eq!(h5.shape, [40, 24, 32, 3]);
    let px = 24 * 32 * 3;
    for (i, path) in paths.iter().enumerate() {
        let (w, h) = image::image_dimensions(path).unwrap();
        assert_eq!((w, h), (45, 45), "the JPEG needs resizing");
        let mine = pipe::stages::predict::prepare_image(
            Path::new(path),
            (32, 24),
            pipe::manifest::ResizeFilter::Bicubic,
        )
        .unwrap();
        assert!(
            mine == h5.images[i * px..(i + 1) * px],
            "{path}: other pixels than the hdf5 stage's"
        );
    }
    // End to end, with the mean image subtracted: predict ranks as evaluate ranked.
    let want = evaluated_top5(&p.artifact(&run, "evaluate"));
    let mut args = vec!["predict", "t:train", "--json", "--top-k", "4"];
    args.extend(paths.iter().map(String::as_str));
    let got = predicted(&p.ok(&args).stdout);
    for (i, (_, labels, _)) in got.iter().enumerate() {
        assert_eq!(labels, &want[i]);
    }

    // Bad input, each with its error.
    let first = &paths[0];
    let bytes = std::fs::read(first).unwrap();
    let cut = p.path().join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let cut_s = cut.to_str().unwrap();
    let err = p.fails(&["predict", "t", cut_s, first]);
    assert!(
        err.contains("cut.jpg") && err.contains("truncated") && err.contains("--skip-bad"),
        "{err}"
    );
    let ok = p.ok(&["predict", "t", cut_s, first, "--skip-bad"]);
    assert_eq!(String::from_utf8_lossy(&ok.stdout).lines().count(), 1);
    assert!(String::from_utf8_lossy(&ok.stderr).contains("skipped 1 that did not decode"));
    let empty = p.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "not an image").unwrap();
    let err = p.fails(&["predict", "t", empty.to_str().unwrap()]);
    assert!(err.contains("no images to predict"), "{err}");
    let err = p.fails(&["predict", "t", p.path().join("nope").to_str().unwrap()]);
    assert!(err.contains("nope"), "{err}");
    let fifo = p.path().join("pipe.jpg");
    mkfifo(&fifo);
    let err = p.fails(&["predict", "t", fifo.to_str().unwrap()]);
    assert!(err.contains("pipe.jpg") && err.contains("FIFO"), "{err}");
    // A folder with a link back to itself: each image once, and a warning naming the loop.
    let looped = p.path().join("looped");
    std::fs::create_dir_all(&looped).unwrap();
    std::fs::copy(first, looped.join("a.jpg")).unwrap();
    std::os::unix::fs::symlink("../looped", looped.join("again")).unwrap();
    let out = p.ok(&["predict", "t", looped.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(
        warned.contains("again") && warned.contains("a loop"),
        "{warned}"
    );
    let err = p.fails(&["predict", "t:evaluate", first]);
    assert!(
        err.contains("not a training stage") && err.contains("train"),
        "{err}"
    );
    // Not trained yet: which stage must run first.
    p.manifest(
        "t2.toml",
        "extends = \"t.toml\"\nname = \"t2\"\n\n[stages.train]\nepochs = 3\n",
    );
    let err = p.fails(&["predict", "t2", first]);
    assert!(
        err.contains("stage `train` of `t2` has not been trained yet")
            && err.contains("pipe run t2 --until train"),
        "{err}"
    );
}

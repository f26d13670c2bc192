//! `pipe predict` on new images: on scikit-learn's real handwritten digits its top-1 (and
//! top-5) is the evaluate stage's, image by image; on JPEGs that need resizing it prepares
//! exactly the pixels the hdf5 stage stored; every bad input gets its error.

mod common;

use std::path::Path;

use common::*;

/// The image paths of a split index, in order (resolved as the hdf5 stage resolves them:
/// `dataset:` ones against the dataset folder `root`).
fn split_paths(index_dir: &Path, root: &Path, split: &str) -> Vec<String> {
    let mut r = csv::Reader::from_path(index_dir.join(format!("{split}.csv"))).unwrap();
    let col = r
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "path")
        .unwrap();
    r.records()
        .map(|x| {
            let row = x.unwrap()[col].to_string();
            match pipe::data::index::ImageRef::resolve(&row, index_dir, Some(root)).unwrap() {
                pipe::data::index::ImageRef::File(p) => p.display().to_string(),
                other => panic!("{other} is not an image file"),
            }
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
    let paths = split_paths(&p.artifact(&run, "split"), &root, "test");
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
    assert!(
        text.starts_with("path,class_1,name_1,p_1,skipped\n"),
        "{text}"
    );
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
    let paths = split_paths(&p.artifact(&run, "ingest"), &root, "val");
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
            pipe::data::decode::MAX_PIXELS,
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

/// CRC-32 (PNG's), for chunks written by hand.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG chunk: length, type, data, CRC.
fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// `img` as a PNG with an EXIF orientation (`eXIf` chunk after IHDR).
fn png_with_orientation(img: &image::RgbImage, orientation: u16) -> Vec<u8> {
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    // A big-endian TIFF header and one IFD entry: Orientation (0x0112), SHORT, 1 value.
    let mut exif = b"MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    exif.extend_from_slice(&orientation.to_be_bytes());
    exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let ihdr_end = 8 + 4 + 4 + 13 + 4;
    let mut out = png[..ihdr_end].to_vec();
    out.extend(chunk(b"eXIf", &exif));
    out.extend_from_slice(&png[ihdr_end..]);
    out
}

/// What the user's own inputs meet: a picture stored sideways with an EXIF orientation is
/// predicted, and stored by the hdf5 stage, upright (the same pixels, so the same artifact
/// and the same training key as the upright file); a decompression bomb is refused from its
/// header; `--batch 0` and a `--top-k` beyond the classes are errors; `--skip-bad` names
/// every skipped file and gives it a row in JSON and CSV; a tab or a line break in a file
/// name is escaped in the text output; `-0` reads NUL-separated paths from stdin.
#[test]
fn user_images_meet_orientation_limits_and_every_option_checked() {
    // An upright picture (left half dark, right half light) and the same stored turned a
    // quarter counter-clockwise, marked "turn 90 clockwise to show" (orientation 6).
    let upright = image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([if x < 8 { 20 } else { 230 }, (y * 15) as u8, 90])
    });
    let stored = image::imageops::rotate270(&upright);
    let data = |p: &Project, sideways: bool| -> std::path::PathBuf {
        let root = p.path().join("folder");
        for class in ["a", "b"] {
            std::fs::create_dir_all(root.join(class)).unwrap();
            for i in 0..4u8 {
                let img = image::RgbImage::from_fn(16, 16, |x, y| {
                    image::Rgb([
                        x as u8 * 9 + i,
                        y as u8 * 9,
                        if class == "a" { 40 } else { 200 },
                    ])
                });
                img.save(root.join(class).join(format!("{i}.png"))).unwrap();
            }
        }
        let odd = root.join("a/odd.png");
        match sideways {
            true => std::fs::write(&odd, png_with_orientation(&stored, 6)).unwrap(),
            false => upright.save(&odd).unwrap(),
        }
        root
    };
    let manifest = |root: &std::path::Path| {
        Generated::new("o")
            .split(1)
            .text()
            .replace(
                "format = \"synthetic\"\nclasses = 3\ntrain_per_class = 12\nval_per_class = 6\nimage_size = [16, 16]",
                &format!("format = \"image-folder\"\nroot = \"{}\"", root.display()),
            )
            .replace("test_per_class = 1\n", "test_per_class = 1\nto_split = \"val\"\n")
            .replace("classes = 3", "classes = 2")
    };
    let a = Project::new();
    let ra = {
        let root = data(&a, false);
        a.manifest("o.toml", &manifest(&root));
        a.run_json("o", &[])
    };
    let b = Project::new();
    let rb = {
        let root = data(&b, true);
        b.manifest("o.toml", &manifest(&root));
        b.run_json("o", &[])
    };
    assert_eq!(field(&ra, "hdf5", "output"), field(&rb, "hdf5", "output"));
    assert_eq!(field(&ra, "train", "key"), field(&rb, "train", "key"));
    // predict: the sideways file reads as the upright one.
    let up = a.path().join("folder/a/odd.png");
    let side = b.path().join("folder/a/odd.png");
    let probs = |f: &std::path::Path| {
        let out = a.ok(&["predict", "o", f.to_str().unwrap(), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["top"].to_string()
    };
    assert_eq!(probs(&up), probs(&side));

    // A PNG whose header claims 20000 x 20000 pixels: refused before decoding.
    let mut bomb = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = 20000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&20000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    bomb.extend(chunk(b"IHDR", &ihdr));
    bomb.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    bomb.extend(chunk(b"IEND", &[]));
    let bomb_path = a.path().join("bomb.png");
    std::fs::write(&bomb_path, &bomb).unwrap();
    let err = a.fails(&["predict", "o", bomb_path.to_str().unwrap()]);
    assert!(
        err.contains("bomb.png is 20000x20000 = 400000000 pixels, more than the 178956970 allowed")
            && err.contains("--max-pixels"),
        "{err}"
    );
    let err = a.fails(&["predict", "o", up.to_str().unwrap(), "--max-pixels", "100"]);
    assert!(err.contains("more than the 100 allowed"), "{err}");

    // Options that made no sense were taken before.
    let err = a.fails(&["predict", "o", up.to_str().unwrap(), "--batch", "0"]);
    assert!(err.contains("--batch must be at least 1"), "{err}");
    let err = a.fails(&["predict", "o", up.to_str().unwrap(), "--top-k", "11"]);
    assert!(
        err.contains("--top-k 11 asks for more classes than stage `train`"),
        "{err}"
    );

    // --skip-bad: every skipped file named, with a row of its own.
    let junk1 = a.path().join("junk1.png");
    let junk2 = a.path().join("junk2.png");
    std::fs::write(&junk1, b"not a png").unwrap();
    std::fs::write(&junk2, b"nor this").unwrap();
    let args = |fmt: &str| {
        vec![
            "predict".to_string(),
            "o".into(),
            junk1.display().to_string(),
            up.display().to_string(),
            junk2.display().to_string(),
            "--skip-bad".into(),
            fmt.into(),
        ]
    };
    let run = |v: Vec<String>| {
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        a.ok(&refs)
    };
    let out = run(args("--json"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("junk1.png") && err.contains("junk2.png"),
        "{err}"
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter().filter(|r| r["skipped"].is_string()).count() == 2,
        "{rows:?}"
    );
    let csv = String::from_utf8_lossy(&run(args("--csv")).stdout).into_owned();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(
        csv.lines()
            .filter(|l| l.contains("junk"))
            .all(|l| l.ends_with('"') || l.contains("cannot decode")),
        "{csv}"
    );

    // A tab and a line break in a file name stay inside one escaped field.
    let odd_name = a.path().join("odd\tname\nx.png");
    std::fs::copy(&up, &odd_name).unwrap();
    let out = a.ok(&["predict", "o", odd_name.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with(&format!("{}/odd\\tname\\nx.png\t", a.path().display())),
        "{text}"
    );

    // -0: NUL-separated paths on stdin (names with a line break come through whole).
    let mut child = a
        .cmd(&["predict", "o", "-", "-0", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let list = format!("{}\0{}\0", odd_name.display(), up.display());
        stdin.write_all(list.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}

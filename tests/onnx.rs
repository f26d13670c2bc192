//! ONNX export, checked by the real tools: `onnx.checker.check_model(full_check=True)`
//! and onnxruntime's CPU provider (both in the test command's `.venv`), and `tract-onnx`
//! in Rust. Each gives the same probabilities as `pipe predict`, within 1e-4, for the demo
//! network, MiniGoogLeNet, DeeperGoogLeNet at a reduced input, and a network of edge
//! cases: stride-2 `same` pooling on an odd size, average pooling next to padding, elu,
//! add, explicit padding, a flatten of an image, a dense layer without bias, and no final
//! softmax.
//!
//! The test command sets `PIPE_REQUIRE_ONNXRUNTIME=1`: there, onnx or onnxruntime missing
//! fails these tests. Run alone without them, the Python half is skipped saying so.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tract_onnx::prelude::*;

fn python() -> String {
    std::env::var("PIPE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether onnx and onnxruntime import (a failure when the test command requires them).
fn onnxruntime_ready() -> bool {
    let ok = Command::new(python())
        .args(["-c", "import onnx, onnxruntime"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("PIPE_REQUIRE_ONNXRUNTIME").is_ok_and(|v| v == "1") {
            panic!(
                "PIPE_REQUIRE_ONNXRUNTIME=1 but {} cannot import onnx and onnxruntime (scripts/bootstrap --with-python installs them)",
                python()
            );
        }
        eprintln!(
            "skipped the onnxruntime half: {} has no onnx/onnxruntime",
            python()
        );
    }
    ok
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// `pipe predict TARGET IMAGES --json` as full probability rows (by label).
fn predict_probs(p: &Project, target: &str, images: &[PathBuf], classes: usize) -> Vec<Vec<f32>> {
    predict_probs_with(p, target, images, classes, &[])
}

/// [`predict_probs`] with more options (`--tta flip`).
fn predict_probs_with(
    p: &Project,
    target: &str,
    images: &[PathBuf],
    classes: usize,
    extra: &[&str],
) -> Vec<Vec<f32>> {
    let k = classes.to_string();
    let mut args = vec!["predict", target, "--json", "--top-k", &k];
    args.extend_from_slice(extra);
    let paths: Vec<String> = images.iter().map(|i| i.display().to_string()).collect();
    args.extend(paths.iter().map(String::as_str));
    let out = p.ok(&args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut row = vec![f32::NAN; classes];
            for t in v["top"].as_array().unwrap() {
                row[t["label"].as_u64().unwrap() as usize] = t["p"].as_f64().unwrap() as f32;
            }
            row
        })
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[f32]) -> f32 {
    a.iter()
        .flatten()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Export `target`, run the file in onnxruntime and tract on `images`, and compare with
/// `pipe predict`; returns the file.
fn check(
    p: &Project,
    target: &str,
    images: &[PathBuf],
    size: (u32, u32),
    classes: usize,
) -> PathBuf {
    check_with(p, target, images, size, classes, &[])
}

/// [`check`] with options given to both `pipe export` and `pipe predict` (`--tta flip`).
fn check_with(
    p: &Project,
    target: &str,
    images: &[PathBuf],
    (w, h): (u32, u32),
    classes: usize,
    extra: &[&str],
) -> PathBuf {
    let model = p.path().join(format!(
        "{}{}.onnx",
        target.replace(':', "_"),
        extra.join("_").replace('-', "")
    ));
    let mut args = vec!["export", target, "-o", model.to_str().unwrap()];
    args.extend_from_slice(extra);
    let said = p.ok(&args);
    assert!(String::from_utf8_lossy(&said.stdout).contains("opset 17"));
    let n = images.len();
    let mut x = Vec::with_capacity(n * (w * h * 3) as usize);
    for i in images {
        let px = pipe::stages::predict::prepare_image(
            i,
            (w, h),
            pipe::manifest::ResizeFilter::Bilinear,
            pipe::data::decode::MAX_PIXELS,
        )
        .unwrap();
        x.extend(px.into_iter().map(f32::from));
    }
    let want = predict_probs_with(p, target, images, classes, extra);
    assert_eq!(want.len(), n);
    assert!(want.iter().flatten().all(|v| v.is_finite()));
    // tract, in this process.
    let plan = tract_onnx::onnx()
        .model_for_path(&model)
        .unwrap()
        .with_input_fact(0, f32::fact([n, h as usize, w as usize, 3]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input = Tensor::from_shape(&[n, h as usize, w as usize, 3], &x).unwrap();
    let out = plan.run(tvec!(input.into())).unwrap();
    let tract: Vec<f32> = out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    assert_eq!(tract.len(), n * classes);
    let d = max_diff(&want, &tract);
    assert!(
        d <= 1e-4,
        "{target}: tract differs from pipe predict by {d}"
    );
    // onnx's checker and onnxruntime.
    if onnxruntime_ready() {
        let input_path = p.path().join("input.f32");
        let output_path = p.path().join("output.f32");
        std::fs::write(
            &input_path,
            x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        )
        .unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx_check.py");
        let o = Command::new(python())
            .arg(&script)
            .arg(&model)
            .arg(&input_path)
            .args([n.to_string(), h.to_string(), w.to_string()])
            .arg(&output_path)
            .output()
            .unwrap();
        assert_success(
            &o,
            &format!("{target}: the onnx checker or onnxruntime refused the file"),
        );
        let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(info["opset"], 17);
        assert_eq!(info["output"], serde_json::json!([n, classes]));
        for key in [
            "pipe.classes",
            "pipe.mean",
            "pipe.input_size",
            "pipe.pipeline",
            "pipe.key",
        ] {
            assert!(
                info["metadata"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k == key),
                "{key}: {info}"
            );
        }
        let ort = read_f32(&output_path);
        let d = max_diff(&want, &ort);
        assert!(
            d <= 1e-4,
            "{target}: onnxruntime differs from pipe predict by {d}"
        );
    }
    model
}

/// Some of an ingest artifact's generated images.
fn images_of(p: &Project, run: &serde_json::Value, n: usize) -> Vec<PathBuf> {
    let mut all = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        let mut es: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        es.sort();
        for e in es {
            if e.is_dir() {
                walk(&e, out);
            } else if e.extension().is_some_and(|x| x == "jpg") {
                out.push(e);
            }
        }
    }
    walk(&p.artifact(run, "ingest"), &mut all);
    let step = (all.len() / n).max(1);
    all.into_iter().step_by(step).take(n).collect()
}

fn network_file(name: &str) -> String {
    repo_file(&format!("pipelines/networks/{name}"))
}

#[test]
fn the_demo_network_exports_and_runs_the_same_everywhere() {
    let p = demo_project();
    p.manifest(
        "small.toml",
        "extends = \"demo.toml\"\nname = \"small\"\n\n[stages.ingest]\ntrain_per_class = 20\nval_per_class = 4\n\n[stages.split]\ntest_per_class = 4\n\n[stages.train]\nepochs = 2\n\n[stages.drop]\nepochs = 1\n\n[stages.onnx]\nkind = \"export\"\ninput = \"drop\"\n",
    );
    let run = p.run_json("small", &[]);
    let images = images_of(&p, &run, 12);
    check(&p, "small", &images, (32, 32), 10);
    // The export stage's artifact is the same network: same answers, and it names the
    // model's content, not a pipeline (it is shared by every pipeline with its key).
    assert_eq!(stage(&run, "onnx")["state"], "ran");
    let file = p.artifact(&run, "onnx").join("model.onnx");
    let m = pipe::data::onnx::read(&std::fs::read(&file).unwrap()).unwrap();
    let meta = pipe::data::onnx::metadata(&m);
    assert!(meta.contains_key("pipe.model") && !meta.contains_key("pipe.pipeline"));
    assert_eq!(meta["pipe.input_size"], "32x32");
    let classes: Vec<String> = serde_json::from_str(&meta["pipe.classes"]).unwrap();
    assert_eq!(classes.len(), 10);
    // Cached like every stage.
    let again = p.run_json("small", &[]);
    assert!(again["stages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["state"] == "cached"));

    // `-o -` writes the same bytes to stdout; a link is written through.
    let file = p.path().join("small.onnx");
    let written = std::fs::read(&file).unwrap();
    let out = p.ok(&["export", "small", "-o", "-"]);
    assert_eq!(out.stdout, written);
    let target = p.path().join("real.onnx");
    std::fs::write(&target, b"old").unwrap();
    let link = p.path().join("link.onnx");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    p.ok(&["export", "small", "-o", link.to_str().unwrap()]);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), written);
    // A link into the store (to the export stage's own published model), or a path in
    // it, is refused: the published file is left as it was, and its artifact sound.
    let published = p.artifact(&run, "onnx").join("model.onnx");
    let sealed = std::fs::read(&published).unwrap();
    let into = p.path().join("into-store.onnx");
    std::os::unix::fs::symlink(&published, &into).unwrap();
    for o in [into.clone(), p.artifact(&run, "onnx").join("other.onnx")] {
        let err = p.fails(&[
            "export",
            "small",
            "--tta",
            "flip",
            "-o",
            o.to_str().unwrap(),
        ]);
        assert!(err.contains("is inside the store"), "{err}");
    }
    assert_eq!(std::fs::read(&published).unwrap(), sealed);
    assert!(!p.artifact(&run, "onnx").join("other.onnx").exists());
    p.ok(&["verify"]);
    // A folder, a FIFO or a device is refused, and left as it was.
    let err = p.fails(&["export", "small", "-o", p.path().to_str().unwrap()]);
    assert!(err.contains("is not a regular file"), "{err}");
    let fifo = p.path().join("fifo.onnx");
    mkfifo(&fifo);
    let err = p.fails(&["export", "small", "-o", fifo.to_str().unwrap()]);
    assert!(err.contains("is not a regular file"), "{err}");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    let err = p.fails(&["export", "small", "-o", "/dev/null"]);
    assert!(err.contains("is not a regular file"), "{err}");
    // A folder that is not there is an error, not created.
    let nowhere = p.path().join("no/such/dir/m.onnx");
    let err = p.fails(&["export", "small", "-o", nowhere.to_str().unwrap()]);
    assert!(err.contains("there is no folder"), "{err}");
    assert!(!p.path().join("no").exists());
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    // No temporary file is left behind by any of these.
    let left: Vec<_> = std::fs::read_dir(p.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Untrained: which stage must run first; a stage that does not train: named.
    p.manifest(
        "other.toml",
        "extends = \"small.toml\"\nname = \"other\"\n\n[stages.drop]\nepochs = 2\n",
    );
    let err = p.fails(&["export", "other", "-o", "x.onnx"]);
    assert!(
        err.contains("stage `drop` of `other` has not been trained yet"),
        "{err}"
    );
    assert!(err.contains("pipe run other --until drop"), "{err}");
    assert!(!p.path().join("x.onnx").exists());
    let err = p.fails(&["export", "small:hdf5", "-o", "x.onnx"]);
    assert!(
        err.contains("`hdf5` is not a training stage of `small`"),
        "{err}"
    );
}

#[test]
fn flip_tta_in_the_exported_graph_equals_pipe_predict_with_tta() {
    let p = demo_project();
    p.manifest(
        "small.toml",
        "extends = \"demo.toml\"\nname = \"small\"\n\n[stages.ingest]\ntrain_per_class = 20\nval_per_class = 4\n\n[stages.split]\ntest_per_class = 4\n\n[stages.train]\nepochs = 1\nmean = \"pixel\"\n\n[stages.drop]\nepochs = 1\n",
    );
    // A per-pixel mean (not symmetric): the mirror is taken before it is subtracted.
    let run = p.run_json("small", &[]);
    let images = images_of(&p, &run, 6);
    let model = check_with(&p, "small", &images, (32, 32), 10, &["--tta", "flip"]);
    let info = pipe::data::onnx::metadata(
        &pipe::data::onnx::read(&std::fs::read(&model).unwrap()).unwrap(),
    );
    assert_eq!(info["pipe.tta"], "flip");
    // pipe predict --tta flip is the mean of the image's and its mirror's probabilities,
    // the mirror written as a file of its own.
    let plain = predict_probs(&p, "small", &images, 10);
    let tta = predict_probs_with(&p, "small", &images, 10, &["--tta", "flip"]);
    let mut mirrors = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let m = p.path().join(format!("mirror{i}.png"));
        let rgb = image::open(img).unwrap().fliph();
        rgb.save(&m).unwrap();
        mirrors.push(m);
    }
    let mirrored = predict_probs(&p, "small", &mirrors, 10);
    for i in 0..images.len() {
        for c in 0..10 {
            let mean = (plain[i][c] + mirrored[i][c]) / 2.0;
            assert!(
                (tta[i][c] - mean).abs() < 1e-5,
                "{i}/{c}: {} vs {mean}",
                tta[i][c]
            );
        }
        assert!(
            plain[i] != tta[i],
            "the mirror changed nothing for image {i}"
        );
    }
    let out = p.ok(&[
        "predict",
        "small",
        "--tta",
        "flip",
        images[0].to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("tta = flip"));
}

#[test]
fn mini_googlenet_exports_and_runs_the_same_everywhere() {
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("pipelines/networks")).unwrap();
    p.manifest(
        "networks/mini_googlenet.toml",
        &network_file("mini_googlenet.toml"),
    );
    p.manifest("mini.toml", include_str!("manifests/onnx_mini.toml"));
    let run = p.run_json("mini", &[]);
    check(&p, "mini", &images_of(&p, &run, 6), (32, 32), 10);
}

#[test]
fn deeper_googlenet_at_a_reduced_input_exports_and_runs_the_same_everywhere() {
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("pipelines/networks")).unwrap();
    p.manifest(
        "networks/deeper_googlenet.toml",
        &network_file("deeper_googlenet.toml"),
    );
    // 56 x 56 (not 64): the windows meet odd sizes (7 -> 4 at pool4).
    p.manifest("deeper.toml", include_str!("manifests/onnx_deeper.toml"));
    let run = p.run_json("deeper", &[]);
    check(&p, "deeper", &images_of(&p, &run, 4), (56, 56), 4);
}

#[test]
fn edge_cases_export_as_our_kernels_compute_them() {
    let p = Project::with("edge.toml", include_str!("manifests/onnx_edge.toml"));
    let run = p.run_json("edge", &[]);
    check(&p, "edge", &images_of(&p, &run, 8), (15, 15), 3);
}

/// The README's ONNX snippet, run as written (only its two file names replaced) on images
/// of other sizes than the model's: it agrees with `pipe predict` on every top-1, and on
/// PNGs (which every decoder decodes alike) its probabilities are `pipe predict`'s within
/// 1e-4: its resize is pipe's, and the exported model says which filter that is.
#[test]
fn the_readmes_onnx_snippet_agrees_with_pipe_predict() {
    let p = Project::with("r.toml", &Generated::new("r").epochs(3).text());
    p.ok(&["run", "r"]);
    let onnx = p.path().join("r.onnx");
    p.ok(&["export", "r", "-o", onnx.to_str().unwrap()]);
    let meta = pipe::data::onnx::metadata(
        &pipe::data::onnx::read(&std::fs::read(&onnx).unwrap()).unwrap(),
    );
    assert_eq!(meta["pipe.resize_filter"], "bilinear");
    // Images of other sizes: smooth patterns (shrunk and enlarged), as PNG and JPEG.
    let dir = p.path().join("imgs");
    std::fs::create_dir_all(&dir).unwrap();
    let mut images = Vec::new();
    for (i, (w, h)) in [(45, 31), (9, 12), (64, 64), (16, 40), (23, 23), (100, 7)]
        .into_iter()
        .enumerate()
    {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let t = (x as f32 * 0.37 + y as f32 * 0.21 + i as f32).sin() * 0.5 + 0.5;
            image::Rgb([(t * 255.0) as u8, (y * 255 / h) as u8, (i * 40) as u8])
        });
        for ext in ["png", "jpg"] {
            let path = dir.join(format!("{i}.{ext}"));
            img.save(&path).unwrap();
            images.push(path);
        }
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let snippet = readme
        .split("```python\n")
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("ort.InferenceSession"))
        .expect("the README's ONNX snippet");
    let harness = dir.join("harness.py");
    std::fs::write(
        &harness,
        r#"import json, sys
snippet, onnx = open(sys.argv[1]).read(), sys.argv[2]
for path in sys.argv[3:]:
    scope = {}
    code = snippet.replace('"exp3.onnx"', repr(onnx)).replace('"cat.jpg"', repr(path))
    code = code.replace("print(", "_ = (")
    exec(code, scope)
    print(json.dumps({"path": path, "probs": [float(x) for x in scope["probs"][0]]}))
"#,
    )
    .unwrap();
    let snippet_file = dir.join("snippet.py");
    std::fs::write(&snippet_file, snippet).unwrap();
    let out = Command::new(python())
        .arg(&harness)
        .arg(&snippet_file)
        .arg(&onnx)
        .args(&images)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the README's snippet failed (its Python needs numpy, onnxruntime and pillow): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<Vec<f32>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["probs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let ours = predict_probs(&p, "r", &images, 3);
    let top1 = |r: &[f32]| (0..r.len()).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap();
    for ((img, a), b) in images.iter().zip(&ours).zip(&theirs) {
        assert_eq!(top1(a), top1(b), "{}: {a:?} against {b:?}", img.display());
        if img.extension().is_some_and(|e| e == "png") {
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-4, "{}: {a:?} against {b:?}", img.display());
        }
    }
}

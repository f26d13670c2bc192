//! Helpers for the integration tests: a throwaway project folder and the `pipe` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A temporary project: `<dir>/pipelines/`, cache at `<dir>/.pipe`.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
        Project { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cache(&self) -> PathBuf {
        self.path().join(".pipe")
    }

    /// Write `pipelines/<name>`.
    pub fn manifest(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join("pipelines").join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pipe"));
        c.args(args).current_dir(self.path());
        c.env_remove("PIPE_CACHE").env_remove("PIPE_FAULT");
        c
    }

    /// Run `pipe` and return its output, asserting success.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().expect("spawn pipe");
        assert!(
            out.status.success(),
            "pipe {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Run `pipe` expecting failure; return stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("spawn pipe");
        assert!(
            !out.status.success(),
            "pipe {args:?} should have failed; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `pipe run <p> --json ...`, parsed.
    pub fn run_json(&self, pipeline: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["run", pipeline, "--json"];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        serde_json::from_slice(&out.stdout).expect("run --json prints JSON")
    }
}

/// stage name -> state from a `run --json` report.
pub fn states(report: &serde_json::Value) -> Vec<(String, String)> {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub fn state_of(report: &serde_json::Value, stage: &str) -> String {
    states(report)
        .into_iter()
        .find(|(n, _)| n == stage)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no stage {stage} in report"))
}

pub fn field(report: &serde_json::Value, stage: &str, f: &str) -> String {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stage)
        .and_then(|s| s[f].as_str())
        .unwrap_or_default()
        .to_string()
}

/// A small Tiny-ImageNet-shaped tree of real JPEGs.
pub fn tiny_imagenet(dir: &Path, classes: usize, per_class: usize, val_per_class: usize) {
    pipe::data::synthetic::write_tiny_imagenet(dir, classes, per_class, val_per_class, 16, 7)
        .unwrap();
}

/// A Tiny-ImageNet-shaped tree with images of side `size`.
pub fn tiny_imagenet_sized(
    dir: &Path,
    classes: usize,
    per_class: usize,
    val_per_class: usize,
    size: u32,
) {
    pipe::data::synthetic::write_tiny_imagenet(dir, classes, per_class, val_per_class, size, 7)
        .unwrap();
}

/// `[networks.tiny]`, the small network most tests train: on 16x16 RGB images, a conv of
/// 4 filters, relu, global average pooling, a dense layer of `classes` and softmax.
pub fn tiny_network(classes: usize) -> String {
    format!(
        r#"[networks.tiny]
input = [16, 16, 3]
classes = {classes}
layers = [
  {{ conv2d = {{ filters = 4, kernel = 3 }} }},
  {{ relu = {{}} }},
  {{ global_avgpool = {{}} }},
  {{ dense = "$classes" }},
  {{ softmax = {{}} }},
]
"#
    )
}

/// The standard three-stage manifest over a Tiny ImageNet root.
pub fn tiny_manifest(root: &Path, test_per_class: usize) -> String {
    format!(
        r#"name = "exp"
seed = 42

[stages.ingest]
kind = "ingest"
format = "tiny-imagenet"
root = "{}"

[stages.split]
kind = "split"
input = "ingest"
test_per_class = {test_per_class}

[stages.hdf5]
kind = "hdf5"
input = "split"
"#,
        root.display()
    )
}

/// The dashboard of `p`, served on a free loopback port; killed when dropped.
pub struct Ui {
    child: Child,
    pub base: String,
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ui {
    pub fn start(p: &Project, extra: &[&str]) -> (Ui, String) {
        let mut args = vec!["ui", "--port", "0"];
        args.extend_from_slice(extra);
        let mut child = p
            .cmd(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in `{line}`"))
            .trim_end_matches('/')
            .to_string();
        (Ui { child, base }, line)
    }

    /// A raw GET of `path` exactly as written: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let host = self.base.trim_start_matches("http://");
        let mut s = TcpStream::connect(host).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_string());
        (status, body)
    }

    pub fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }
}

/// Every file and folder under `dir` with its modification time.
pub fn listing(dir: &std::path::Path) -> Vec<(String, std::time::SystemTime)> {
    fn walk(d: &std::path::Path, out: &mut Vec<(String, std::time::SystemTime)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            out.push((e.path().display().to_string(), md.modified().unwrap()));
            if md.is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, &mut v);
    v.sort();
    v
}

/// Write the digits (`limit` of them) as `<dir>/<digit>/<i>.png`. The test command's
/// Python (`PIPE_PYTHON`) has scikit-learn; without it this fails, it does not skip.
pub fn digits(dir: &Path, limit: usize) {
    let python = std::env::var("PIPE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/digits.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(dir)
        .arg(limit.to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "writing the digits needs scikit-learn in {python} (scripts/bootstrap installs it in .venv): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

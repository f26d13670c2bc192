//! Helpers for the integration tests: a throwaway project folder and the `pipe` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

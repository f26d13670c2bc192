//! Helpers for the integration tests: a throwaway project folder and the `pipe` binary,
//! readers of its reports, the datasets and manifests the tests share, runs stopped at a
//! fault point, and (in `gradcheck`) networks and finite-difference gradient checks.
#![allow(dead_code)]

pub mod gradcheck;
mod manifests;

#[allow(unused_imports)] // not every test uses the shared manifests
pub use manifests::*;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};

// Running `pipe`.

/// `pipe args` run in folder `dir`, with no `PIPE_CACHE` or `PIPE_FAULT` from the test's
/// environment.
pub fn pipe_command(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pipe"));
    c.args(args).current_dir(dir);
    c.env_remove("PIPE_CACHE").env_remove("PIPE_FAULT");
    c
}

/// `pipe args` run in folder `dir` (not necessarily a project): its output.
pub fn pipe_in(dir: &Path, args: &[&str]) -> Output {
    pipe_command(dir, args).output().unwrap()
}

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

    /// A new project holding the manifest `pipelines/<name>`.
    pub fn with(name: &str, text: &str) -> Project {
        let p = Project::new();
        p.manifest(name, text);
        p
    }

    /// A new project with a Tiny ImageNet tree at `<project>/<folder>` (see
    /// [`tiny_imagenet`]); and the tree's root.
    pub fn with_tiny_imagenet(
        folder: &str,
        classes: usize,
        per_class: usize,
        val_per_class: usize,
    ) -> (Project, PathBuf) {
        let p = Project::new();
        let root = p.path().join(folder);
        tiny_imagenet(&root, classes, per_class, val_per_class);
        (p, root)
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
        pipe_command(self.path(), args)
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

    /// Run `pipe`, asserting success, and parse what it prints as JSON.
    pub fn ok_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "pipe {args:?}: {e}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// `pipe run <p> --json ...`, parsed.
    pub fn run_json(&self, pipeline: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["run", pipeline, "--json"];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        serde_json::from_slice(&out.stdout).expect("run --json prints JSON")
    }

    /// The artifact folder of `stage` in a `run --json` (or `status --json`) report.
    pub fn artifact(&self, report: &serde_json::Value, stage: &str) -> PathBuf {
        let out = field(report, stage, "output");
        assert!(!out.is_empty(), "no output for {stage}: {report}");
        self.cache().join("artifacts").join(out)
    }
}

/// Asserts that a finished process succeeded, saying `what` it was and its stderr when
/// not.
#[track_caller]
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Spawn `cmd` with the fault point `fault` set (`PIPE_FAULT`) and its stderr piped, and
/// read its stderr until it says it reached the fault: the child (still running or
/// stalled there), the rest of its stderr, and what it said so far. Panics when it ends
/// before.
pub fn spawn_to_fault(mut cmd: Command, fault: &str) -> (Child, BufReader<ChildStderr>, String) {
    let mut child = cmd
        .env("PIPE_FAULT", fault)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let said = read_until(&mut reader, &format!("PIPE_FAULT reached: {fault}"));
    (child, reader, said)
}

/// A process held at its fault point until the test lets it go, rather than for a guessed
/// number of seconds: `PIPE_FAULT_RELEASE` names a file that does not exist yet, and
/// [`Hold::release`] creates it (so does dropping the hold, should the test fail first).
pub struct Hold {
    dir: tempfile::TempDir,
}

impl Hold {
    pub fn new() -> Self {
        Hold {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `cmd`, held at its fault point until [`Hold::release`] (at most 300 s, so that a
    /// test that fails before releasing it leaves no process behind for long).
    pub fn on<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("PIPE_FAULT_RELEASE", self.dir.path().join("release"))
            .env("PIPE_FAULT_SECS", "300")
    }

    /// Let the held process go on.
    pub fn release(&self) {
        std::fs::write(self.dir.path().join("release"), b"").unwrap();
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.path().join("release"), b"");
    }
}

/// A server that `start(port)` spawns, on a free loopback port, once it accepts
/// connections. The port is found by binding port 0 and letting it go, so another process
/// may take it first; a server that then exits (it could not bind) is started again on
/// another port, three times at most. Errors: `start`'s, or none listening within 20 s.
pub fn serve_on_free_port(
    what: &str,
    mut start: impl FnMut(u16) -> Result<Child, String>,
) -> Result<(Child, u16), String> {
    let mut why = String::new();
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut child = start(port)?;
        let t = std::time::Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                why = format!("{what} on port {port} stopped ({status})");
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Listening, and still ours: a server that lost the port has exited.
                std::thread::sleep(std::time::Duration::from_millis(50));
                if child.try_wait().is_ok_and(|s| s.is_none()) {
                    return Ok((child, port));
                }
                continue;
            }
            if t.elapsed() > std::time::Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not listen on port {port} within 20 s"));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    Err(why)
}

/// Read `r` line by line until a line contains `what`: everything read so far. Panics,
/// with what was read, when `r` ends first.
pub fn read_until(r: &mut impl BufRead, what: &str) -> String {
    let mut said = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 {
            panic!("never said {what:?}:\n{said}");
        }
        said.push_str(&line);
        if line.contains(what) {
            return said;
        }
    }
}

/// `pipe args` in `p`, killed (SIGKILL) as soon as it reaches the fault point `fault`.
pub fn kill_at_fault(p: &Project, args: &[&str], fault: &str) {
    let (mut child, stderr, _) = spawn_to_fault(p.cmd(args), fault);
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stderr);
}

/// The epochs a run's stderr says `stage` trained (`train: epoch   3/4 ...`).
pub fn epochs_trained(stderr: &str, stage: &str) -> Vec<usize> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{stage}: epoch ")))
        .filter_map(|l| l.trim_start().split('/').next()?.parse().ok())
        .collect()
}

// Reading its reports and its store.

/// The string fields `a` and `b` of each object of a JSON array.
pub fn string_pairs(items: &serde_json::Value, a: &str, b: &str) -> Vec<(String, String)> {
    let text = |item: &serde_json::Value, f: &str| item[f].as_str().unwrap().to_string();
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (text(item, a), text(item, b)))
        .collect()
}

/// (name, state) of each stage of a report's `stages` array.
pub fn stage_states(stages: &serde_json::Value) -> Vec<(String, String)> {
    string_pairs(stages, "name", "state")
}

/// stage name -> state from a `run --json` report.
pub fn states(report: &serde_json::Value) -> Vec<(String, String)> {
    stage_states(&report["stages"])
}

/// The state of `stage` in a report (a panic when it has no such stage).
pub fn state_of(report: &serde_json::Value, stage: &str) -> String {
    states(report)
        .into_iter()
        .find(|(n, _)| n == stage)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no stage {stage} in report"))
}

/// The stage `name` of a report (its object in `stages`).
pub fn stage<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {report}"))
}

/// The string field `f` of `stage` in a report ("" when either is not there).
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

/// A JSON file, parsed.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The names in a store's `artifacts/` folder (none when it has none).
pub fn artifact_names(store: &Path) -> BTreeSet<String> {
    std::fs::read_dir(store.join("artifacts"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every file and folder under `dir` with its modification time.
pub fn listing(dir: &Path) -> Vec<(String, std::time::SystemTime)> {
    fn walk(d: &Path, out: &mut Vec<(String, std::time::SystemTime)>) {
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

/// Overwrite a published (read-only) file as a careless user would: chmod, then write
/// what `edit` makes of its bytes.
pub fn tamper(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    edit(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// [`tamper`], then give the file back its modification time: damage that a size and
/// time check cannot see.
pub fn tamper_keeping_time(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    tamper(path, edit);
    set_mtime(path, mtime);
}

/// Set the modification time of file `path`.
pub fn set_mtime(path: &Path, t: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

// Datasets and files.

/// The text of a file of this repository (`path` from its root), such as a shipped
/// manifest.
pub fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// A project holding the shipped demo pipeline (`pipelines/demo.toml`).
pub fn demo_project() -> Project {
    Project::with("demo.toml", &repo_file("pipelines/demo.toml"))
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

/// The test command's Python (`PIPE_PYTHON`, else `python3`).
pub fn python() -> String {
    std::env::var("PIPE_PYTHON").unwrap_or_else(|_| "python3".into())
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

/// The first entry that `read_dir` lists in `dir` (in no particular order).
pub fn first_entry(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .next()
        .unwrap_or_else(|| panic!("{} is empty", dir.display()))
        .unwrap()
        .path()
}

/// Make a FIFO (a named pipe) at `path`.
pub fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
}

// The dashboard.

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
    /// `pipe ui --port 0 <extra>` in `p`, its stdout and stderr piped.
    pub fn spawn(p: &Project, extra: &[&str]) -> Child {
        Ui::spawn_env(p, extra, &[])
    }

    /// [`Ui::spawn`] with `env` added to its environment.
    fn spawn_env(p: &Project, extra: &[&str], env: &[(&str, &str)]) -> Child {
        let mut args = vec!["ui", "--port", "0"];
        args.extend_from_slice(extra);
        p.cmd(&args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The dashboard, started; and the line it printed first.
    pub fn start(p: &Project, extra: &[&str]) -> (Ui, String) {
        Ui::start_env(p, extra, &[])
    }

    /// [`Ui::start`] with `env` added to its environment.
    pub fn start_env(p: &Project, extra: &[&str], env: &[(&str, &str)]) -> (Ui, String) {
        let mut child = Ui::spawn_env(p, extra, env);
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

    /// Its process.
    pub fn process(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The whole response (head and body) to a raw GET of `path` exactly as written.
    pub fn raw(&self, path: &str) -> String {
        let host = self.base.trim_start_matches("http://");
        self.raw_as(path, host)
    }

    /// The whole response to a raw GET of `path` whose `Host` header says `host`.
    pub fn raw_as(&self, path: &str, host: &str) -> String {
        let addr = self.base.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// A raw GET of `path` exactly as written: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let text = self.raw(path);
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

// A real S3 server.

/// The exports `scripts/garage-up` printed (endpoint, region, key), or None (skipped).
pub fn garage() -> Option<&'static std::collections::BTreeMap<String, String>> {
    static ENV: std::sync::OnceLock<Result<std::collections::BTreeMap<String, String>, String>> =
        std::sync::OnceLock::new();
    let r = ENV.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/garage-up");
        let out = Command::new(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/garage-up failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    });
    match r {
        Ok(env) => Some(env),
        Err(why) => {
            if std::env::var("PIPE_REQUIRE_GARAGE").is_ok_and(|v| v == "1") {
                panic!("PIPE_REQUIRE_GARAGE=1 but the Garage server is not up: {why}");
            }
            eprintln!("SKIPPED: Garage cannot start here: {why}");
            None
        }
    }
}

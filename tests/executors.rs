//! Executors: `--executor local -j N`, and `--executor slurm` against a real one-node Slurm
//! cluster (Debian's slurmctld + slurmd + munge, started by `scripts/slurm-up`).
//!
//! The test command (`scripts/test`) starts the cluster first and fails when it cannot,
//! and sets `PIPE_REQUIRE_SLURM=1`, so there a cluster that is not up fails these tests. A
//! bare `cargo test` on a machine without Slurm prints why and skips them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{artifact_names, fill, read_json, Hold, Project};

/// Two experiments over the same data stages; `lr` and `epochs` differ per pipeline.
fn experiment(name: &str, lr: f64, epochs: usize, per_class: usize) -> String {
    fill(
        include_str!("manifests/executors_experiment.toml"),
        &[
            ("name", &name),
            ("lr", &lr),
            ("epochs", &epochs),
            ("per_class", &per_class),
        ],
    )
}

/// SLURM_CONF of a running cluster, or None (skipped, with the reason printed).
fn cluster() -> Option<String> {
    static CONF: OnceLock<Result<String, String>> = OnceLock::new();
    let r = CONF.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-up");
        let out = Command::new(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.trim().strip_prefix("export SLURM_CONF=") {
            Some(conf) if out.status.success() => Ok(conf.to_string()),
            _ => Err(format!(
                "scripts/slurm-up failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    });
    match r {
        Ok(c) => Some(c.clone()),
        Err(why) => {
            if std::env::var("PIPE_REQUIRE_SLURM").is_ok_and(|v| v == "1") {
                panic!("PIPE_REQUIRE_SLURM=1 but the Slurm cluster is not up: {why}");
            }
            eprintln!("SKIPPED: Slurm's daemons cannot start here: {why}");
            None
        }
    }
}

fn pipe(p: &Project, conf: &str, args: &[&str]) -> (bool, String) {
    let out = p
        .cmd(args)
        .env("SLURM_CONF", conf)
        .output()
        .expect("spawn pipe");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `(stage, job id)` of every "submitted as job N" / "already queued as job N" line.
fn jobs_in(stderr: &str) -> Vec<(String, String, bool)> {
    stderr
        .lines()
        .filter_map(|l| {
            let stage = l.split_whitespace().next()?.to_string();
            let (fresh, rest) = if let Some(r) = l.split("submitted as job ").nth(1) {
                (true, r)
            } else {
                (false, l.split("already queued as job ").nth(1)?)
            };
            let id: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            Some((stage, id, fresh))
        })
        .collect()
}

fn slurm_job_state(conf: &str, id: &str) -> String {
    // A loaded slurmctld can time out a query: asked again, and only a job it no longer
    // knows ("Invalid job id") counts as gone.
    for _ in 0..20 {
        let out = Command::new("scontrol")
            .args(["show", "job", id, "-o"])
            .env("SLURM_CONF", conf)
            .output()
            .expect("scontrol");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if let Some(state) = stdout
            .split_whitespace()
            .find_map(|f| f.strip_prefix("JobState="))
        {
            return state.to_string();
        }
        if String::from_utf8_lossy(&out.stderr).contains("Invalid job id") {
            return "GONE".into();
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("scontrol cannot say what job {id} is doing");
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn log_of(p: &Project, conf: &str, id: &str) -> String {
    let out = Command::new("scontrol")
        .args(["show", "job", id, "-o"])
        .env("SLURM_CONF", conf)
        .output()
        .expect("scontrol");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let path = text
        .split_whitespace()
        .find_map(|f| f.strip_prefix("StdOut="))
        .map(PathBuf::from)
        .unwrap_or_else(|| p.cache().join("jobs"));
    std::fs::read_to_string(&path).unwrap_or_default()
}

#[test]
fn slurm_runs_shared_data_stages_once_and_each_training_as_its_own_job() {
    let Some(conf) = cluster() else { return };
    let p = Project::with("exp1.toml", &experiment("exp1", 0.01, 2, 30));
    // A name with a space: its jobs' names must read back from squeue and scontrol as
    // theirs (else `--wait` takes them for gone at its first look).
    p.manifest("exp2.toml", &experiment("exp 2", 0.02, 2, 30));

    let (ok, e1) = pipe(&p, &conf, &["run", "exp1", "--executor", "slurm"]);
    assert!(ok, "{e1}");
    let (ok, e2) = pipe(
        &p,
        &conf,
        &["run", "exp 2", "--executor", "slurm", "--wait"],
    );
    assert!(ok, "{e2}");
    let j1 = jobs_in(&e1);
    let j2 = jobs_in(&e2);
    assert_eq!(j1.len(), 5, "exp1 submits all five stages:\n{e1}");
    assert!(j1.iter().all(|j| j.2), "{e1}");
    // exp2's data stages are exp1's jobs; its train and evaluate are new jobs.
    for (stage, id, fresh) in &j2 {
        let mine = j1.iter().find(|j| &j.0 == stage);
        match stage.as_str() {
            "ingest" | "split" | "hdf5" => {
                assert!(!fresh, "{stage} submitted again:\n{e2}");
                assert_eq!(Some(id), mine.map(|j| &j.1), "{e2}");
            }
            "train" | "evaluate" => {
                assert!(fresh, "{e2}");
                assert_ne!(Some(id), mine.map(|j| &j.1));
            }
            other => panic!("unexpected stage {other}"),
        }
    }
    let train1 = &j1.iter().find(|j| j.0 == "train").unwrap().1;
    let train2 = &j2.iter().find(|j| j.0 == "train").unwrap().1;
    wait_for("exp1's jobs", 240, || {
        j1.iter().all(|(_, id, _)| {
            !matches!(
                slurm_job_state(&conf, id).as_str(),
                "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING"
            )
        })
    });
    // exp1's journal record, left running when it was submitted, is completed by its
    // jobs: every stage ran in its job, and the final metrics are there.
    let runs = p.ok_json(&["runs", "exp1", "--json"]);
    let rec = &runs.as_array().unwrap()[0];
    assert_eq!(rec["executor"], "slurm", "{rec}");
    assert_eq!(rec["state"], "done", "{rec}");
    let train = rec["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "train")
        .unwrap();
    assert_eq!(train["state"], "ran", "{rec}");
    assert_eq!(train["job"].as_str(), Some(train1.as_str()), "{rec}");
    assert!(rec["metrics"]["val.acc"].as_f64().is_some(), "{rec}");
    // Pushed, it goes as its jobs completed it: a teammate (no `runs/jobs/` of this
    // cluster) pulls it done, with its metrics.
    let remote = tempfile::tempdir().unwrap();
    let url = format!("file://{}", remote.path().display());
    p.ok(&["--remote", &url, "push", "exp1"]);
    let mate = Project::with("exp1.toml", &experiment("exp1", 0.01, 2, 30));
    mate.ok(&["--remote", &url, "pull", "exp1"]);
    let theirs = mate.ok_json(&["runs", "exp1", "--json"]);
    let theirs = &theirs.as_array().unwrap()[0];
    assert_eq!(theirs["id"], rec["id"], "{theirs}");
    assert_eq!(theirs["state"], "done", "{theirs}");
    assert_eq!(theirs["metrics"], rec["metrics"], "{theirs}");
    for id in [train1, train2] {
        assert_eq!(slurm_job_state(&conf, id), "COMPLETED");
        let log = log_of(&p, &conf, id);
        assert!(log.contains("train        ran"), "job {id}'s log:\n{log}");
    }
    // The shared stages ran once: one log, one "ran", per data stage.
    for (stage, id, _) in j1
        .iter()
        .filter(|j| ["ingest", "split", "hdf5"].contains(&j.0.as_str()))
    {
        let log = log_of(&p, &conf, id);
        assert_eq!(
            log.matches(&format!("{stage:<12} ran")).count(),
            1,
            "{stage}: {log}"
        );
    }
    // Both pipelines are complete in the store, and a second run submits nothing.
    for name in ["exp1", "exp 2"] {
        let st = p.ok(&["status", name, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        for s in v["stages"].as_array().unwrap() {
            assert_eq!(s["state"], "cached", "{name}: {s}");
        }
        let (ok, again) = pipe(&p, &conf, &["run", name, "--executor", "slurm"]);
        assert!(ok, "{again}");
        assert!(again.contains("nothing to do"), "{again}");
        assert!(jobs_in(&again).is_empty(), "{again}");
    }
    // Different learning rates: two different trained models.
    let metrics = |n: &str| {
        let out = p.ok(&["run", n, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        common::field(&v, "train", "output")
    };
    let (o1, o2) = (metrics("exp1"), metrics("exp 2"));
    assert_ne!(o1, o2);
    // Each job's log sits next to the artifact it made.
    for out in [o1, o2] {
        let log = std::fs::read_to_string(p.cache().join("logs").join(format!("{out}.log")))
            .unwrap_or_else(|e| panic!("the log of artifact {out}: {e}"));
        assert!(log.contains("train        ran"), "{log}");
    }

    // A run waited on: running while its submitter waits on its jobs (its record names no
    // job yet), interrupted once the submitter is killed; never done before its jobs are.
    p.manifest("exp3.toml", &experiment("exp3", 0.03, 2, 30));
    let hold = common::Hold::new();
    let mut cmd = p.cmd(&["run", "exp3", "--executor", "slurm", "--wait"]);
    cmd.env("SLURM_CONF", &conf);
    hold.on(&mut cmd);
    let (mut child, _rest, said) = common::spawn_to_fault(cmd, "slurm:waiting");
    let record = || p.ok_json(&["runs", "exp3", "--json"])[0].clone();
    let rec = record();
    assert_eq!(rec["state"], "running", "{rec}\n{said}");
    assert!(
        rec["metrics"].as_object().is_none_or(|m| m.is_empty()),
        "{rec}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let rec = record();
    assert_eq!(rec["state"], "interrupted", "{rec}");
    for (_, id, fresh) in jobs_in(&said) {
        if fresh {
            let _ = Command::new("scancel")
                .arg(&id)
                .env("SLURM_CONF", &conf)
                .status();
        }
    }
}

#[test]
fn a_training_job_cancelled_mid_run_resumes_from_its_checkpoint() {
    let Some(conf) = cluster() else { return };
    let p = Project::new();
    // Enough images that an epoch takes a moment on two cores.
    p.manifest("long.toml", &experiment("long", 0.01, 8, 400));
    // The job stalls after its second epoch's checkpoint (Slurm passes the submitter's
    // environment on): the cancel below never races the training's end.
    let out = p
        .cmd(&["run", "long", "--executor", "slurm"])
        .env("SLURM_CONF", &conf)
        .env("PIPE_FAULT", "train:epoch2")
        .env("PIPE_FAULT_SECS", "600")
        .output()
        .expect("spawn pipe");
    let (ok, e1) = (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(ok, "{e1}");
    let jobs = jobs_in(&e1);
    let train = jobs.iter().find(|j| j.0 == "train").unwrap().1.clone();
    let eval = jobs.iter().find(|j| j.0 == "evaluate").unwrap().1.clone();
    // Cancel it once it has written a checkpoint and is still running.
    let scratch = p.cache().join("scratch");
    let checkpoint = || -> Option<PathBuf> {
        for e in std::fs::read_dir(&scratch).ok()? {
            let c = e.ok()?.path().join("checkpoints/epoch_1.safetensors");
            if c.is_file() {
                return Some(c);
            }
        }
        None
    };
    wait_for("the training to stall after its second epoch", 240, || {
        log_of(&p, &conf, &train).contains("PIPE_FAULT reached: train:epoch2")
    });
    assert!(checkpoint().is_some());
    assert_eq!(slurm_job_state(&conf, &train), "RUNNING");
    let st = Command::new("scancel")
        .arg(&train)
        .env("SLURM_CONF", &conf)
        .status()
        .unwrap();
    assert!(st.success());
    wait_for("the cancelled job to end", 60, || {
        slurm_job_state(&conf, &train) == "CANCELLED"
    });
    // Its dependent was cancelled too, nothing of it was published, and status says why.
    wait_for("the dependent job to be cancelled", 60, || {
        slurm_job_state(&conf, &eval) != "PENDING"
    });
    assert_ne!(slurm_job_state(&conf, &eval), "COMPLETED");
    let out = p
        .cmd(&["status", "long", "--json"])
        .env("SLURM_CONF", &conf)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let train_status = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "train")
        .unwrap()
        .clone();
    assert_eq!(train_status["state"], "stale", "{train_status}");
    let reasons = train_status["reasons"].to_string();
    assert!(reasons.contains("CANCELLED"), "{reasons}");
    assert!(reasons.contains("resumes from its checkpoint"), "{reasons}");
    // The next run submits train and evaluate only, and the training resumes.
    let (ok, e2) = pipe(&p, &conf, &["run", "long", "--executor", "slurm", "--wait"]);
    assert!(ok, "{e2}");
    let again: Vec<String> = jobs_in(&e2).into_iter().map(|j| j.0).collect();
    assert_eq!(again, ["train", "evaluate"], "{e2}");
    let new_train = jobs_in(&e2).into_iter().find(|j| j.0 == "train").unwrap().1;
    let log = log_of(&p, &conf, &new_train);
    assert!(
        log.contains("resuming from its checkpoint at epoch"),
        "the second training job's log:\n{log}"
    );
    let out = p.ok(&["status", "long", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["state"] == "cached"));
}

#[test]
fn local_executor_runs_independent_stages_side_by_side() {
    let p = Project::new();
    // Two trainings reading one HDF5 stage: independent once the data exists.
    let mut text = experiment("fan", 0.01, 1, 20);
    text.push_str(
        r#"
[stages.train_b]
kind = "train"
input = "hdf5"
network = "net"
epochs = 1
batch_size = 16
optimizer = "sgd"
lr = 0.05
device = "cpu"
"#,
    );
    p.manifest("fan.toml", &text);
    let out = p.ok(&["run", "fan", "-j", "2"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    for stage in ["ingest", "split", "hdf5", "train", "train_b", "evaluate"] {
        assert!(err.contains(&format!("{stage:<12} started")), "{err}");
        assert!(err.contains(&format!("{stage:<12} ran")), "{err}");
    }
    // train and train_b both started before either finished.
    let pos = |s: &str| err.find(s).unwrap_or_else(|| panic!("{s} in {err}"));
    let first_done = pos("train        ran").min(pos("train_b      ran"));
    assert!(
        pos("train        started") < first_done && pos("train_b      started") < first_done,
        "{err}"
    );
    let again = p.ok(&["run", "fan", "-j", "2"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to do"));
    // The local run and the in-process run agree on every key.
    let v = p.run_json("fan", &[]);
    assert!(common::states(&v).iter().all(|(_, s)| s == "cached"));
}

/// The pids of the processes whose parent is `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`: comm may hold spaces, so read after its `)`.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// `pipe run -j` killed with SIGKILL (no handler of its own runs): its workers end too,
/// rather than train on with nobody to collect them.
#[test]
fn a_killed_parallel_run_takes_its_workers_with_it() {
    let p = Project::with("exp.toml", &experiment("exp", 0.01, 2, 20));
    p.ok(&["run", "exp", "--until", "hdf5"]);
    // The worker stalls after its first epoch (for ten minutes unless stopped).
    let mut parent = p
        .cmd(&["run", "exp", "-j", "1"])
        .env("PIPE_FAULT", "train:epoch1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut worker = None;
    wait_for("the training worker", 60, || {
        worker = children_of(parent.id()).first().copied();
        worker.is_some()
    });
    let worker = worker.unwrap();
    parent.kill().unwrap();
    parent.wait().unwrap();
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !matches!(
                s.rsplit_once(')').map(|x| x.1.trim_start().as_bytes()[0]),
                Some(b'Z')
            )
        })
    };
    wait_for("the orphaned worker to end", 20, || !alive(worker));
}

/// A `-j` worker reads the manifest when it starts. One edited after the run decided on
/// its stages is refused by the worker (it would record one configuration beside another's
/// results): the run fails naming why, and its record does not say the stage was done.
#[test]
fn a_worker_refuses_a_stage_the_manifest_changed_since_the_run_decided_it() {
    let p = Project::with("exp.toml", &experiment("exp", 0.01, 2, 20));
    p.ok(&["run", "exp", "--until", "hdf5"]);
    let hold = Hold::new();
    let mut cmd = p.cmd(&["run", "exp", "-j", "1"]);
    hold.on(&mut cmd)
        .env("PIPE_FAULT", "train:epoch1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    // The training worker (its stderr goes to its job log) holds after its first epoch.
    let jobs = p.cache().join("jobs");
    wait_for("the training worker at its first epoch", 60, || {
        std::fs::read_dir(&jobs).is_ok_and(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .any(|e| {
                    std::fs::read_to_string(e.path())
                        .is_ok_and(|t| t.contains("PIPE_FAULT reached: train:epoch1"))
                })
        })
    });
    // The evaluation asks for another rank meanwhile.
    let path = p.path().join("pipelines/exp.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("top_k = [1, 3]", "top_k = [1, 2]")).unwrap();
    hold.release();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("evaluate"), "{err}");
    let log: String = std::fs::read_dir(&jobs)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        log.contains("stage `evaluate` of `exp` is not the one this job was started for"),
        "{log}"
    );
    // Nothing evaluated under the old record, and the new manifest's evaluation runs now.
    let runs = p.ok_json(&["runs", "exp", "--json"]);
    assert_ne!(runs[0]["state"], "done", "{runs}");
    let r = p.run_json("exp", &[]);
    assert_eq!(common::field(&r, "evaluate", "state"), "ran", "{r}");
    // A recipe that is not one is refused by name, before anything is read or run.
    let err = p.fails(&["run-stage", "exp", "evaluate", "--recipe", "12ab-not-hex"]);
    assert!(
        err.contains("--recipe 12ab-not-hex: not a recipe (64 hex digits)"),
        "{err}"
    );
}

/// Jobs cancelled while they wait (on a partition that is down, so none starts) never
/// write how they went:
/// the run's record reads as failed, naming the job and what Slurm says, instead of
/// "running" for good.
#[test]
fn a_slurm_run_whose_jobs_were_cancelled_before_they_started_reads_as_failed() {
    let Some(conf) = cluster() else { return };
    let p = Project::with("exp.toml", &experiment("exp", 0.01, 1, 20));
    // The test cluster's `held` partition is down: its jobs stay pending.
    let out = p
        .cmd(&["run", "exp", "--executor", "slurm", "--partition", "held"])
        .env("SLURM_CONF", &conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let jobs = jobs_in(&err);
    assert_eq!(jobs.len(), 5, "{err}");
    for (_, id, _) in &jobs {
        assert_eq!(slurm_job_state(&conf, id), "PENDING", "job {id} waits");
    }
    let runs = || {
        let out = p
            .cmd(&["runs", "exp", "--json"])
            .env("SLURM_CONF", &conf)
            .output()
            .unwrap();
        assert!(out.status.success());
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(runs()[0]["state"], "running", "waiting, not cancelled yet");
    let ids: Vec<&str> = jobs.iter().map(|j| j.1.as_str()).collect();
    let cancel = Command::new("scancel")
        .args(&ids)
        .env("SLURM_CONF", &conf)
        .status()
        .unwrap();
    assert!(cancel.success());
    let mut last = serde_json::Value::Null;
    wait_for("the record to read as failed", 60, || {
        last = runs();
        last[0]["state"] == "failed"
    });
    let text = last.to_string();
    assert!(
        text.contains(&format!(
            "job {} ended without recording how it went",
            ids[0]
        )) && text.contains("CANCELLED"),
        "{text}"
    );
}

/// `--wait` gives up on a Slurm that does not answer (here `squeue` and `scontrol` fail as
/// they do with the controller down): the command fails saying so, and the run's record
/// is left to its jobs, which complete it as they end, instead of reading as failed.
#[test]
fn a_wait_given_up_on_a_silent_slurm_leaves_the_record_to_its_jobs() {
    let Some(conf) = cluster() else { return };
    let p = Project::with("exp.toml", &experiment("exp", 0.01, 1, 20));
    let fake = tempfile::tempdir().unwrap();
    for tool in ["squeue", "scontrol"] {
        let path = fake.path().join(tool);
        std::fs::write(
            &path,
            "#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        fake.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // On the `held` partition (down), so that none can end before the wait gives up.
    let out = p
        .cmd(&[
            "run",
            "exp",
            "--executor",
            "slurm",
            "--wait",
            "--partition",
            "held",
        ])
        .env("SLURM_CONF", &conf)
        .env("PATH", &path)
        .env("PIPE_SLURM_PATIENCE", "4")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("Slurm has not answered for 4 s"), "{err}");
    let jobs = jobs_in(&err);
    assert_eq!(jobs.len(), 5, "{err}");
    let ids: Vec<String> = jobs.iter().map(|j| j.1.clone()).collect();
    // The record is its jobs': running, each stage under its job, until they end.
    let runs = p.ok_json(&["runs", "exp", "--json"]);
    assert_eq!(runs[0]["state"], "running", "{runs}");
    let id = runs[0]["id"].as_str().unwrap();
    let text = std::fs::read_to_string(p.cache().join("runs").join(format!("{id}.json"))).unwrap();
    assert!(
        ids.iter().all(|id| text.contains(&format!("\"{id}\""))),
        "{text}"
    );
    for id in &ids {
        let moved = Command::new("scontrol")
            .args(["update", &format!("JobId={id}"), "Partition=debug"])
            .env("SLURM_CONF", &conf)
            .output()
            .unwrap();
        assert!(
            moved.status.success(),
            "{}",
            String::from_utf8_lossy(&moved.stderr)
        );
    }
    // Slurm answering again: the jobs end, and the record reads as they went.
    wait_for("the jobs", 240, || {
        ids.iter().all(|id| {
            !matches!(
                slurm_job_state(&conf, id).as_str(),
                "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING"
            )
        })
    });
    let runs = p.ok_json(&["runs", "exp", "--json"]);
    assert_eq!(runs[0]["state"], "done", "{runs}");
}

#[test]
fn resources_are_checked_and_stay_out_of_the_key() {
    let p = Project::new();
    let base = experiment("r", 0.01, 1, 20);
    p.manifest("r.toml", &base);
    let key = |p: &Project| {
        let out = p.ok(&["status", "r", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["stages"][3]["key"].as_str().unwrap_or("").to_string()
    };
    p.ok(&["run", "r", "--until", "hdf5"]);
    let k1 = key(&p);
    p.manifest(
        "r.toml",
        &base.replace(
            r#"resources = { cpus = 1, mem = "1G", time = "00:30:00" }"#,
            r#"resources = { cpus = 8, gpus = 1, mem = "32G", time = "1-12:00:00", partition = "gpu" }"#,
        ),
    );
    assert_eq!(key(&p), k1, "resources are not part of the key");
    for (bad, msg) in [
        (r#"resources = { mem = "lots" }"#, "`mem` must be a size"),
        (
            r#"resources = { time = "noon" }"#,
            "`time` must be a Slurm time limit",
        ),
        (r#"resources = { gpu = 1 }"#, "gpu"),
        (r#"resources = { cpus = -1 }"#, "cpus"),
    ] {
        p.manifest(
            "r.toml",
            &base.replace(
                r#"resources = { cpus = 1, mem = "1G", time = "00:30:00" }"#,
                bad,
            ),
        );
        let err = p.fails(&["status", "r"]);
        assert!(err.contains(msg), "{bad}: {err}");
        assert!(err.contains("stages.train.resources"), "{bad}: {err}");
    }
}

#[test]
fn a_worker_whose_input_is_missing_and_force_with_an_executor_are_clear_errors() {
    let p = Project::new();
    let m = p.manifest("w.toml", &experiment("w", 0.01, 1, 20));
    let manifest = m.display().to_string();
    // `run-stage` (what a job runs) for a stage whose inputs never ran.
    let err = p.fails(&["run-stage", &manifest, "train"]);
    assert!(
        err.contains("stage `train` needs `ingest`, which is not in the store"),
        "{err}"
    );
    let err = p.fails(&["run-stage", &manifest, "nope"]);
    assert!(err.contains("no stage `nope` in pipeline `w`"), "{err}");
    // --force re-runs in this process only.
    let err = p.fails(&["run", "w", "-j", "2", "--force", "train"]);
    assert!(
        err.contains("--force runs with the default executor only"),
        "{err}"
    );
    // Nothing was half-published by the failed worker.
    assert!(
        !p.cache().join("artifacts").exists()
            || std::fs::read_dir(p.cache().join("artifacts"))
                .unwrap()
                .count()
                == 0
    );
}

#[test]
fn slurm_runs_a_two_by_two_sweep_submitting_each_shared_stage_once() {
    let Some(conf) = cluster() else { return };
    let p = Project::with(
        "sw.toml",
        &(experiment("sw", 0.01, 1, 20)
            + "\n[sweep.grid]\n\"train.lr\" = [0.01, 0.02]\n\"train.batch_size\" = [8, 16]\n"),
    );
    let (ok, err) = pipe(&p, &conf, &["run", "sw", "--executor", "slurm", "--wait"]);
    assert!(ok, "{err}");
    let jobs = jobs_in(&err);
    let fresh = |stage: &str| jobs.iter().filter(|j| j.0 == stage && j.2).count();
    let reused = |stage: &str| jobs.iter().filter(|j| j.0 == stage && !j.2).count();
    for stage in ["ingest", "split", "hdf5"] {
        assert_eq!((fresh(stage), reused(stage)), (1, 3), "{stage}:\n{err}");
    }
    assert_eq!(fresh("train"), 4, "{err}");
    assert_eq!(fresh("evaluate"), 4, "{err}");
    // Every point is done.
    let out = p
        .cmd(&["status", "sw"])
        .env("SLURM_CONF", &conf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("stale") && !text.contains("waiting"),
        "{text}"
    );
    // The journal holds one record per point, each done, with its own learning rate.
    let runs = p.ok_json(&["runs", "sw", "--json"]);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 4, "{runs:?}");
    let mut points: Vec<&str> = runs.iter().map(|r| r["point"].as_str().unwrap()).collect();
    points.sort();
    points.dedup();
    assert_eq!(points.len(), 4, "{points:?}");
    for r in runs {
        assert_eq!(r["state"], "done", "{r}");
        assert_eq!(r["executor"], "slurm", "{r}");
        assert!(r["metrics"]["rank1"].as_f64().is_some(), "{r}");
    }
    let lrs: std::collections::BTreeSet<&str> = runs
        .iter()
        .map(|r| r["config"]["stages.train.lr"].as_str().unwrap())
        .collect();
    assert_eq!(lrs.len(), 2, "{lrs:?}");
    // And a second submission submits nothing.
    let (ok, err) = pipe(&p, &conf, &["run", "sw", "--executor", "slurm"]);
    assert!(ok, "{err}");
    assert!(jobs_in(&err).is_empty(), "{err}");
}

#[test]
fn slurm_halving_decides_in_a_promotion_job_with_no_pipe_left_waiting() {
    let Some(conf) = cluster() else { return };
    let p = Project::new();
    let text = experiment("hv", 0.01, 1, 20).replace(
        "[stages.evaluate]\nkind = \"evaluate\"\ninput = \"train\"",
        "[stages.drop]\nkind = \"lr-drop\"\nfrom = \"train\"\nlr = 0.001\nepochs = 1\n\n[stages.evaluate]\nkind = \"evaluate\"\ninput = \"drop\"",
    ) + "\n[sweep.grid]\n\"train.lr\" = [0.01, 0.02, 0.05]\n\n[sweep.halving]\nrungs = [\"train\", \"drop\"]\nmetric = \"val.loss\"\neta = 3\n";
    p.manifest("hv.toml", &text);
    let (ok, err) = pipe(&p, &conf, &["run", "hv", "--executor", "slurm"]);
    assert!(ok, "{err}");
    // The submitting command has returned; the promotion job has not run yet (it waits
    // for the rung's jobs), so nothing of pipe's waits on this machine for it.
    let promote_log = p.cache().join("jobs/promote-hv-0.log");
    let decisions = p.cache().join("sweeps/hv.json");
    assert!(err.contains("promotion job"), "{err}");
    assert!(
        !promote_log.exists() && !decisions.exists(),
        "the promotion ran before the submitting command returned"
    );
    // It runs, decides, and submits the survivor's next rung and evaluation.
    wait_for("the halving decision", 240, || decisions.exists());
    let d: serde_json::Value = read_json(&decisions);
    let kept = d["rungs"][0]["kept"].as_array().unwrap().clone();
    assert_eq!(kept.len(), 1, "{d}");
    assert_eq!(d["rungs"][0]["values"].as_array().unwrap().len(), 3, "{d}");
    let survivor = format!("hv@{}", kept[0].as_str().unwrap());
    wait_for("the survivor's evaluation", 240, || {
        let out = p
            .cmd(&["status", &survivor, "--json"])
            .env("SLURM_CONF", &conf)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["stages"]
            .as_array()
            .is_some_and(|s| s.iter().all(|x| x["state"] == "cached"))
    });
    // The pruned points trained their first rung only.
    let out = p
        .cmd(&["status", "hv"])
        .env("SLURM_CONF", &conf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("[pruned after train]").count(), 2, "{text}");
    let log = std::fs::read_to_string(&promote_log).unwrap();
    assert!(log.contains("go on"), "{log}");
    // The journal: one record per point, carried on by the promotion job. The survivor
    // ran every stage under a job and has its evaluation; the pruned points are done,
    // their stages after the rung `pruned`.
    let runs = p.ok_json(&["runs", "hv", "--json"]);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 3, "{runs:?}");
    for r in runs {
        assert_eq!(r["state"], "done", "{r}");
        let state = |name: &str| {
            r["stages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == name)
                .map(|s| s["state"].as_str().unwrap().to_string())
                .unwrap()
        };
        if r["pipeline"] == survivor.as_str() {
            assert!(r["remark"].is_null(), "{r}");
            assert!(r["metrics"]["rank1"].as_f64().is_some(), "{r}");
            for stage in ["train", "drop", "evaluate"] {
                assert_eq!(state(stage), "ran", "{stage}: {r}");
            }
        } else {
            assert_eq!(r["remark"], "pruned after train", "{r}");
            assert_eq!(state("train"), "ran", "{r}");
            assert_eq!(state("drop"), "pruned", "{r}");
            assert_eq!(state("evaluate"), "pruned", "{r}");
        }
    }
}

#[test]
fn slurm_jobs_on_stores_of_their_own_share_every_stage_through_the_remote() {
    let Some(conf) = cluster() else { return };
    let Some(env) = common::garage() else { return };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let url = format!("s3://pipe/slurm-nodes-{nanos}");
    let p = Project::with("exp1.toml", &experiment("exp1", 0.01, 2, 30));
    // Each job a store of its own (a node's scratch, here one per job): nothing but the
    // remote joins them.
    let scratch = tempfile::tempdir().unwrap();
    let job_store = format!("{}/node-$SLURM_JOB_ID", scratch.path().display());
    let cmd = |args: &[&str]| {
        let mut c = p.cmd(&["--remote", &url]);
        c.args(args).env("SLURM_CONF", &conf);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let submit = [
        "run",
        "exp1",
        "--executor",
        "slurm",
        "--job-store",
        &job_store,
        "--wait",
    ];
    // Without a remote, a job store is refused before anything is submitted.
    let (refused, why) = pipe(&p, &conf, &submit);
    assert!(!refused && why.contains("needs a remote cache"), "{why}");

    let out = cmd(&submit);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    let jobs = jobs_in(&said);
    assert_eq!(jobs.len(), 5, "{said}");
    // The submitter's store holds no artifact: every job worked in its own store, which
    // holds its stage's output and the inputs it pulled.
    assert!(artifact_names(&p.cache()).is_empty(), "{said}");
    for (stage, id, _) in &jobs {
        let store = scratch.path().join(format!("node-{id}"));
        let made = artifact_names(&store);
        assert!(
            !made.is_empty(),
            "{stage}: job {id} left no store at {store:?}"
        );
        let log = log_of(&p, &conf, id);
        assert!(log.contains(&format!("{stage:<12} ran")), "{stage}: {log}");
        if stage != "ingest" {
            assert!(made.len() >= 2, "{stage} pulled no input: {made:?}\n{log}");
        }
    }
    // The submitter's record is completed by the jobs' entries.
    let runs = p.ok_json(&["runs", "exp1", "--json"]);
    let rec = &runs.as_array().unwrap()[0];
    assert_eq!(rec["state"], "done", "{rec}");
    for s in rec["stages"].as_array().unwrap() {
        assert_eq!(s["state"], "ran", "{rec}");
        assert!(s["job"].is_string(), "{rec}");
    }
    // Here, every stage comes from the remote; none is computed again.
    let out = cmd(&["run", "exp1", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for s in report["stages"].as_array().unwrap() {
        assert_eq!(s["state"], "fetched", "{report}");
        let key = s["key"].as_str().unwrap();
        let entry = rec["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == s["name"])
            .unwrap();
        assert_eq!(entry["key"].as_str(), Some(key), "{rec}\n{report}");
    }
}

#[test]
fn a_job_store_is_refused_where_it_cannot_work_naming_why() {
    // No cluster is needed: each is refused before anything is submitted.
    let p = Project::with("exp1.toml", &experiment("exp1", 0.01, 1, 20));
    let err = p.fails(&["run", "exp1", "--job-store", "/scratch/x"]);
    assert!(err.contains("--job-store is for Slurm jobs"), "{err}");
    let err = p.fails(&["run", "exp1", "-j", "2", "--job-store", "/scratch/x"]);
    assert!(err.contains("--job-store is for Slurm jobs"), "{err}");
    let slurm_x = [
        "run",
        "exp1",
        "--executor",
        "slurm",
        "--job-store",
        "/scratch/x",
    ];
    let err = p.fails(&slurm_x);
    assert!(err.contains("needs a remote cache"), "{err}");
    let remote = tempfile::tempdir().unwrap();
    let url = format!("file://{}", remote.path().display());
    let with_remote = |store: &str| {
        p.fails(&[
            "--remote",
            &url,
            "run",
            "exp1",
            "--executor",
            "slurm",
            "--job-store",
            store,
        ])
    };
    let err = with_remote(" ");
    assert!(err.contains("--job-store is empty"), "{err}");
    let err = with_remote("~/s");
    assert!(err.contains("write $HOME"), "{err}");
    // A remote the jobs would not push to.
    std::fs::write(
        p.path().join("pipe.toml"),
        format!("[remote]\nurl = \"{url}\"\npush = \"never\"\n"),
    )
    .unwrap();
    let err = p.fails(&slurm_x);
    assert!(err.contains("push = \"never\""), "{err}");
    std::fs::remove_file(p.path().join("pipe.toml")).unwrap();
    // Halving on Slurm reads every point's results from one store.
    let mut sweep = experiment("hv", 0.01, 1, 20);
    sweep.push_str(
        "\n[sweep.grid]\n\"train.lr\" = [1e-2, 2e-2]\n\n[sweep.halving]\nrungs = [\"train\"]\n",
    );
    p.manifest("hv.toml", &sweep);
    let err = p.fails(&[
        "--remote",
        &url,
        "run",
        "hv",
        "--executor",
        "slurm",
        "--job-store",
        "/scratch/x",
    ]);
    assert!(err.contains("with halving on Slurm"), "{err}");
}

#[test]
fn a_sweep_whose_submission_fails_half_way_leaves_the_submitted_points_to_their_jobs() {
    let Some(conf) = cluster() else { return };
    let p = Project::with(
        "sf.toml",
        &(experiment("sf", 0.01, 1, 20) + "\n[sweep.grid]\n\"train.lr\" = [0.01, 0.05]\n"),
    );
    // An sbatch that refuses the second point's jobs (their arguments name it: `lr=5e-2`).
    let bin = tempfile::tempdir().unwrap();
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v sbatch"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let wrapper = bin.path().join("sbatch");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$*\" in *5e-2*) echo 'sbatch: error: refused by the test' >&2; exit 1;; esac\nexec {real} \"$@\"\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    let out = p
        .cmd(&["run", "sf", "--executor", "slurm"])
        .env("SLURM_CONF", &conf)
        .env("PATH", &path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("refused by the test"), "{err}");
    let state_of = |lr: &str| -> serde_json::Value {
        let runs = p.ok_json(&["runs", "sf", "--json"]);
        runs.as_array()
            .unwrap()
            .iter()
            .find(|r| r["config"]["stages.train.lr"] == lr)
            .unwrap_or_else(|| panic!("no run with lr {lr}: {runs}"))
            .clone()
    };
    // The refused point: failed, saying why.
    let refused = state_of("0.05");
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("refused by the test"),
        "{refused}"
    );
    // The one submitted before: its jobs complete it.
    let first = state_of("0.01");
    assert_ne!(first["state"], "failed", "{first}");
    wait_for("the first point's jobs", 240, || {
        state_of("0.01")["state"] == "done"
    });
    let done = state_of("0.01");
    assert!(done["metrics"]["val.acc"].as_f64().is_some(), "{done}");
}

/// When `-j` itself fails with workers running (here: the log of the next job cannot be
/// opened, a folder stands in its place), the workers are stopped and waited for, each
/// said so, and nothing is left training on its own or recorded as running.
#[test]
fn a_parallel_run_that_fails_itself_stops_the_workers_it_started() {
    let text = experiment("g", 0.01, 3, 40) + "\n[sweep.grid]\n\"train.lr\" = [0.01, 0.02]\n";
    let p = Project::with("g.toml", &text);
    let plan = p.ok_json(&["run", "g", "--dry-run", "--json"]);
    let trains: Vec<String> = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["outcome"]["name"] == "train")
        .map(|s| s["recipe"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(trains.len(), 2, "{plan}");
    // The second training's log cannot be opened: the first is running by then.
    let blocked = p.cache().join("jobs").join(format!("{}.log", trains[1]));
    std::fs::create_dir_all(&blocked).unwrap();
    let out = p.cmd(&["run", "g", "-j", "2"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot open {}", blocked.display())),
        "{err}"
    );
    assert!(err.contains("train: stopped (the run failed)"), "{err}");
    // No worker of this store is left.
    let store = p.cache().display().to_string();
    let workers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&store) && c.contains("run-stage"))
        .collect();
    assert!(workers.is_empty(), "{workers:?}");
    let runs = p.ok_json(&["runs", "--json"]);
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] != "running"),
        "{runs}"
    );
    // The stopped training recorded nothing: run again, both train in full.
    std::fs::remove_dir(&blocked).unwrap();
    let out = p.ok(&["run", "g", "-j", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches(":train ran").count(), 2, "{err}");
}

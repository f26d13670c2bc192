//! Asking Slurm how a job stands (`squeue`, then `scontrol`), and the names pipe gives
//! its jobs: what the executor waits on and what a Slurm run's record is completed from.

use std::collections::HashSet;
use std::process::Command;

use crate::outcome::JobState;

/// The state of Slurm job `job`, named `name` (a recorded id that now names another job —
/// the cluster's numbering restarted — is gone): `squeue` while it is queued or running,
/// then `scontrol` (which remembers ended jobs for the cluster's MinJobAge), else gone.
/// When Slurm does not answer, `Unknown`.
pub fn slurm_state(job: &str, name: &str) -> JobState {
    let q = Command::new("squeue")
        .args(["-h", "-j", job, "-o", "%T %M %j %r"])
        .output();
    match &q {
        Ok(o) if o.status.success() => {}
        // squeue fails for a job id it no longer knows: ask scontrol below.
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("Invalid job id") => {}
        _ => return JobState::Unknown,
    }
    if let Ok(o) = &q {
        let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let mut it = line.split_whitespace();
        let (state, time, jname, reason) = (it.next(), it.next(), it.next(), it.next());
        if jname.is_some_and(|j| j != name) {
            return JobState::Gone;
        }
        match (state, time, reason) {
            (Some("PENDING"), _, reason) => {
                let r = reason.filter(|r| *r != "None").unwrap_or("");
                return JobState::Queued(if r.is_empty() {
                    String::new()
                } else {
                    format!("({r})")
                });
            }
            (
                Some(
                    s @ ("RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "REQUEUED"
                    | "RESIZING" | "STOPPED" | "PREEMPTED"),
                ),
                t,
                _,
            ) => return JobState::Running(format!("{} {}", s.to_lowercase(), t.unwrap_or(""))),
            _ => {}
        }
    }
    let Ok(o) = Command::new("scontrol")
        .args(["show", "job", job, "-o"])
        .output()
    else {
        return JobState::Unknown;
    };
    let text = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        return if String::from_utf8_lossy(&o.stderr).contains("Invalid job id") {
            JobState::Gone
        } else {
            JobState::Unknown
        };
    }
    let field = |k: &str| {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .map(|v| v.to_string())
    };
    if field("JobName=").is_some_and(|j| j != name) {
        return JobState::Gone;
    }
    match field("JobState=").as_deref() {
        Some("COMPLETED") => JobState::Done,
        Some("REQUEUED" | "RESIZING" | "STOPPED" | "PREEMPTED" | "SUSPENDED") => {
            JobState::Running("requeued or suspended".into())
        }
        Some("PENDING") => JobState::Queued(field("Reason=").unwrap_or_default()),
        Some("RUNNING" | "CONFIGURING" | "COMPLETING") => JobState::Running("running".into()),
        Some(s) => JobState::Failed(format!(
            "{s}{}",
            field("ExitCode=")
                .map(|c| format!(", exit code {c}"))
                .unwrap_or_default()
        )),
        None => JobState::Gone,
    }
}

/// The Slurm job name of a stage.
pub fn job_name(pipeline: &str, stage: &str) -> String {
    // One word: `squeue` and `scontrol -o` print fields split by spaces, so a name with a
    // space (`name = "baseline v2"`) would read back as another job's.
    format!("pipe:{pipeline}:{stage}")
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect()
}

/// Which of `jobs` Slurm has queued or running now (one `squeue`); `None` when it does not
/// answer for them all (one id it no longer knows fails the whole question).
pub fn queued_or_running(jobs: &[&str]) -> Option<HashSet<String>> {
    if jobs.is_empty() {
        return Some(HashSet::new());
    }
    let o = Command::new("squeue")
        .args(["-h", "-o", "%i", "-j", &jobs.join(",")])
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .collect(),
    )
}

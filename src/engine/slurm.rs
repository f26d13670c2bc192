//! Asking Slurm how a job stands (`squeue`, then `scontrol`), and the names pipe gives
//! its jobs: what the executor waits on and what a Slurm run's record is completed from.

use std::collections::HashSet;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::outcome::JobState;

/// The longest one question to Slurm may take: a controller that hangs makes it
/// unanswered (`Unknown`), not a `pipe runs` or a dashboard page that hangs with it.
const ASK_WITHIN: Duration = Duration::from_secs(20);

/// `cmd`'s output, or `None` if it cannot start or takes longer than `limit` (then it is
/// killed).
fn output_within(mut cmd: Command, limit: Duration) -> Option<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.ok(),
        Err(_) => {
            // SAFETY: kill takes plain integers; the child is not reaped until the thread
            // waiting on it sees it end, so the pid still names it.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            None
        }
    }
}

/// The state of Slurm job `job`: `squeue` while it is queued or running, then `scontrol`
/// (which remembers ended jobs for the cluster's MinJobAge), else gone. With `name`, a
/// job of another name is gone (a recorded id that now names another job: the cluster's
/// numbering restarted). When Slurm does not answer, `Unknown`.
pub fn slurm_state(job: &str, name: Option<&str>) -> JobState {
    let mut cmd = Command::new("squeue");
    cmd.args(["-h", "-j", job, "-o", "%T %M %j %r"]);
    let Some(o) = output_within(cmd, ASK_WITHIN) else {
        return JobState::Unknown;
    };
    // squeue fails for a job id it no longer knows: ask scontrol below.
    let unknown_id = String::from_utf8_lossy(&o.stderr).contains("Invalid job id");
    if !o.status.success() && !unknown_id {
        return JobState::Unknown;
    }
    if o.status.success() {
        let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let mut it = line.split_whitespace();
        let (state, time, jname, reason) = (it.next(), it.next(), it.next(), it.next());
        if name.is_some_and(|name| jname.is_some_and(|j| j != name)) {
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
    let mut cmd = Command::new("scontrol");
    cmd.args(["show", "job", job, "-o"]);
    let Some(o) = output_within(cmd, ASK_WITHIN) else {
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
    if name.is_some_and(|name| field("JobName=").is_some_and(|j| j != name)) {
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
    let mut cmd = Command::new("squeue");
    cmd.args(["-h", "-o", "%i", "-j", &jobs.join(",")]);
    let o = output_within(cmd, ASK_WITHIN)?;
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

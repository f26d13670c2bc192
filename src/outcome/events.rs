//! What a run tells whoever watches it, as it goes: the engine and the stages send
//! [`Event`]s to a [`Watcher`] and print nothing themselves; the command line's watcher
//! decides how they look (`commands::console`), a test's collects them, [`Silent`] drops
//! them.

use indicatif::ProgressBar;

use super::history::EpochRecord;
use super::{Reason, StageOutcome};

/// One thing that happened.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A stage starts running, and why.
    Starting(&'a str, &'a [Reason]),
    /// A stage's fate is settled (cached, ran, stale, skipped, ...).
    Settled(&'a StageOutcome),
    /// A training stage finished an epoch of its segment (which ends at epoch `end`).
    Epoch {
        /// The epoch's record.
        record: &'a EpochRecord,
        /// The segment's last epoch.
        end: usize,
    },
    /// Something the user should know (a damaged artifact, a refused checkpoint).
    Warning(String),
    /// Progress worth a line, which `--json` leaves out (a dataset fingerprinted, jobs
    /// submitted).
    Note(String),
    /// What the user sees whatever the output format: a lock waited for, a training
    /// starting or resuming, a device's notes.
    Notice(String),
    /// A test's fault-injection point was reached (`PIPE_FAULT`): always shown, so the
    /// test that set it sees where the process stalls.
    Fault(&'a str),
}

/// Whoever watches a run: the console, a test, nothing. Shared by the stages' threads.
pub trait Watcher: Send + Sync {
    /// Take one event.
    fn event(&self, e: Event<'_>);

    /// A progress bar for `len` items of `stage` (images decoded, trained): hidden unless
    /// the watcher draws one.
    fn bar(&self, len: u64, stage: &str, what: &str) -> ProgressBar {
        let _ = (len, stage, what);
        ProgressBar::hidden()
    }
}

/// A watcher that drops every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Watcher for Silent {
    fn event(&self, _: Event<'_>) {}
}

/// A fault-injection point for tests: with `PIPE_FAULT=<name>` in the environment the
/// watcher is told (the console always shows it) and the process stalls here, so a test
/// can kill it there or race another process against it. The stall ends when the file
/// named by `PIPE_FAULT_RELEASE` appears (the test has done what it raced: no guessed
/// window on a slow machine), and at the latest after `PIPE_FAULT_SECS` (default 600).
pub fn fault_point(w: &dyn Watcher, name: &str) {
    use std::time::{Duration, Instant};
    if std::env::var("PIPE_FAULT").is_ok_and(|v| v == name) {
        let secs: u64 = std::env::var("PIPE_FAULT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600);
        let release = std::env::var_os("PIPE_FAULT_RELEASE").map(std::path::PathBuf::from);
        w.event(Event::Fault(name));
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let now = Instant::now();
            if now >= until || release.as_deref().is_some_and(std::path::Path::exists) {
                break;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(10)));
        }
    }
}

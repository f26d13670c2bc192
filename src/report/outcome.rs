//! A run's lines as the console shows them: one line per stage as `pipe run` goes, the
//! closing summary, `pipe status`'s table, a training epoch's line. Text only: the command
//! line's watcher prints them.

use crate::fmt;
use crate::outcome::history::EpochRecord;
use crate::outcome::{Reason, RunReport, StageOutcome, StageState};

/// Reasons as one line: `a; b`.
pub fn join(reasons: &[Reason]) -> String {
    reasons
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// One stage's line while `pipe run` goes: name, state, time, key, what it made or why
/// it would run.
pub fn run_line(o: &StageOutcome) -> String {
    let time = if matches!(o.state, StageState::Ran | StageState::Fetched) {
        format!("{:.1}s", o.seconds)
    } else {
        String::new()
    };
    let detail = match o.state {
        StageState::Stale | StageState::Waiting => {
            let est = o.estimate.map_or("no estimate yet".into(), |e| {
                format!("est. {}", fmt::secs(e))
            });
            format!("[{est}] {}", join(&o.reasons))
        }
        _ => {
            let mut d = o.summary.clone();
            if o.state == StageState::Ran && o.reasons.contains(&Reason::OutputUnchanged) {
                d.push_str(" [output unchanged: later stages stay cached]");
            }
            d
        }
    };
    format!(
        "{:<12} {:<9} {:>7}  key {}  {detail}",
        o.name,
        o.state,
        time,
        o.short_key()
    )
}

/// The closing line of `pipe run`: what ran, what was cached, and the total estimate of a
/// dry run.
pub fn run_summary(r: &RunReport, dry_run: bool) -> String {
    let mut out = String::new();
    if dry_run {
        let total: f64 = r.stages.iter().filter_map(|s| s.estimate).sum();
        if total > 0.0 {
            out.push_str(&format!("estimated: {}\n", fmt::secs(total)));
        }
    }
    let count = |st: StageState| r.stages.iter().filter(|s| s.state == st).count();
    let (ran, cached) = (count(StageState::Ran), count(StageState::Cached));
    let fetched = count(StageState::Fetched);
    let secs: f64 = r.stages.iter().map(|s| s.seconds).sum();
    if ran == 0 && fetched == 0 && cached == r.stages.len() {
        out.push_str(&format!("nothing to do: all {cached} stages cached"));
    } else if fetched > 0 {
        out.push_str(&format!(
            "{ran} ran, {fetched} fetched, {cached} cached in {secs:.1}s"
        ));
    } else {
        out.push_str(&format!("{ran} ran, {cached} cached in {secs:.1}s"));
    }
    out
}

/// What `status` says of a stage after its key: what it made, or its estimate and why it
/// is not cached.
pub fn status_detail(s: &StageOutcome) -> String {
    if s.state == StageState::Cached {
        return s.summary.clone();
    }
    if let crate::outcome::Source::Remote { bytes } = s.source {
        return format!(
            "in remote: {}, about {} to fetch; {}",
            fmt::bytes(bytes),
            fmt::secs(s.estimate.unwrap_or(0.0)),
            join(&s.reasons)
        );
    }
    let est = s
        .estimate
        .map_or(String::new(), |e| format!("[est. {}] ", fmt::secs(e)));
    format!("{est}{}", join(&s.reasons))
}

/// `pipe status`: a header, one line per stage, and the time to bring it up to date.
pub fn status_text(pipeline: &str, manifest: &str, stages: &[StageOutcome]) -> String {
    let mut out = format!("pipeline {pipeline} ({manifest})\n");
    for s in stages {
        let detail = status_detail(s);
        out.push_str(&format!(
            "  {:<12} {:<7} key {:<12}  {detail}\n",
            s.name,
            s.state,
            s.short_key()
        ));
    }
    let total: f64 = stages.iter().filter_map(|s| s.estimate).sum();
    let unknown = stages
        .iter()
        .filter(|s| s.state != StageState::Cached && s.estimate.is_none())
        .count();
    if total > 0.0 {
        out.push_str(&format!(
            "estimated time to bring it up to date: {}{}\n",
            fmt::secs(total),
            if unknown > 0 {
                format!(" (+ {unknown} stage(s) with no past run to go by)")
            } else {
                String::new()
            }
        ));
    }
    out
}

/// A training epoch's line: `train: epoch   3/6  lr 2.00e-3  loss ...  2411 img/s`.
pub fn epoch_line(r: &EpochRecord, end: usize) -> String {
    let ema = match (r.ema_val_loss, r.ema_val_acc) {
        (Some(l), Some(a)) => format!("  ema val_loss {l:.4}  val_acc {:.2}%", 100.0 * a),
        _ => String::new(),
    };
    format!(
        "{}: epoch {:>3}/{end}  lr {:.2e}  loss {:.4}  acc {:.2}%  val_loss {:.4}  val_acc {:.2}%{ema}  {:.0} img/s",
        r.stage,
        r.epoch,
        r.lr,
        r.train_loss,
        100.0 * r.train_acc,
        r.val_loss,
        100.0 * r.val_acc,
        r.images_per_sec
    )
}

//! `pipe runs`: the journal as a table (newest first) or CSV.

use std::fmt::Write;

use anyhow::Result;

use crate::outcome::record::RunRecord;

/// `2026-12-06 04:15` from an RFC 3339 time.
pub fn when(started: &str) -> String {
    started
        .get(..16)
        .map(|s| s.replace('T', " "))
        .unwrap_or_else(|| started.to_string())
}

/// The headline metrics in one cell: `rank1 93.3% val.acc 91.0%`.
pub fn headline(r: &RunRecord) -> String {
    r.headline()
        .iter()
        .map(|(k, v)| {
            if k.ends_with("loss") {
                format!("{k} {v:.4}")
            } else {
                format!("{k} {:.1}%", v * 100.0)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The state, with how it ended: `done`, `failed`, `done (pruned after drop1)`.
pub fn state(r: &RunRecord) -> String {
    let mut s = match &r.remark {
        Some(m) => format!("{} ({m})", r.state),
        None => r.state.to_string(),
    };
    if !r.collected.is_empty() {
        s += ", collected";
    }
    s
}

/// One line per run: id, pipeline, start, state, time, headline metrics, what changed
/// since the pipeline's previous run; tags after the changes.
pub fn table(runs: &[RunRecord]) -> String {
    let rows: Vec<[String; 7]> = runs
        .iter()
        .map(|r| {
            let mut changed = r.changes.join(", ");
            if r.previous.is_none() {
                changed = "(first run)".into();
            } else if changed.is_empty() {
                changed = "(no change)".into();
            }
            if !r.tags.is_empty() {
                changed = format!("{changed}  [{}]", r.tags.join(", "));
            }
            [
                r.id.clone(),
                r.pipeline.clone(),
                when(&r.started),
                state(r),
                r.seconds
                    .map(crate::fmt::secs)
                    .unwrap_or_else(|| "-".into()),
                headline(r),
                changed,
            ]
        })
        .collect();
    let head = [
        "RUN",
        "PIPELINE",
        "STARTED (UTC)",
        "STATE",
        "TIME",
        "METRICS",
        "CHANGED",
    ];
    let mut w = [0usize; 7];
    for (i, h) in head.iter().enumerate() {
        w[i] = h.chars().count();
    }
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                let _ = write!(out, "{c}");
            } else {
                let _ = write!(out, "{c:<width$}  ", width = w[i]);
            }
        }
        out.push('\n');
    };
    line(&mut out, &head);
    for r in &rows {
        line(&mut out, &r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// CSV: one row per run, with every metric and configuration key any of them has.
pub fn csv(runs: &[RunRecord]) -> Result<String> {
    let mut metrics = std::collections::BTreeSet::new();
    let mut config = std::collections::BTreeSet::new();
    let configs: Vec<_> = runs.iter().map(RunRecord::config).collect();
    for (r, c) in runs.iter().zip(&configs) {
        metrics.extend(r.metrics.keys().cloned());
        config.extend(c.keys().cloned());
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut head: Vec<String> = [
        "run",
        "pipeline",
        "sweep",
        "point",
        "started",
        "ended",
        "seconds",
        "state",
        "error",
        "git_commit",
        "git_dirty",
        "host",
        "backend",
        "device",
        "tags",
        "changes",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    head.extend(metrics.iter().cloned());
    head.extend(config.iter().cloned());
    w.write_record(&head)?;
    for (r, cfg) in runs.iter().zip(&configs) {
        let mut row = vec![
            r.id.clone(),
            r.pipeline.clone(),
            r.sweep.clone().unwrap_or_default(),
            r.point.clone().unwrap_or_default(),
            r.started.clone(),
            r.ended.clone().unwrap_or_default(),
            r.seconds.map(|s| format!("{s:.3}")).unwrap_or_default(),
            r.state.to_string(),
            r.error.clone().unwrap_or_default(),
            r.git.as_ref().map(|g| g.commit.clone()).unwrap_or_default(),
            r.git
                .as_ref()
                .map(|g| g.dirty.to_string())
                .unwrap_or_default(),
            r.host.hostname.clone(),
            r.backend.clone(),
            r.device.clone(),
            r.tags.join("; "),
            r.changes.join("; "),
        ];
        row.extend(
            metrics
                .iter()
                .map(|k| r.metrics.get(k).map(|v| v.to_string()).unwrap_or_default()),
        );
        row.extend(
            config
                .iter()
                .map(|k| cfg.get(k).cloned().unwrap_or_default()),
        );
        w.write_record(&row)?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

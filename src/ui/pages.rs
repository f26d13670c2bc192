//! The dashboard's pages as HTML: runs, one run, compare, a sweep, and "not found". The
//! same functions make the served pages and `--export`'s files; [`Links`] says where a
//! link goes in each. Every string from a manifest, the store or a request goes through
//! maud, which escapes it; the only markup inserted as is: the DAG from [`super::svg`], and
//! the charts' JSON data blocks from [`super::charts`] (every `<` in them escaped).

use std::collections::BTreeMap;

use maud::{html, Markup, DOCTYPE};

use super::{charts, svg};
use crate::fmt;
use crate::outcome::history::EpochRecord;
use crate::outcome::record::RunRecord;
use crate::outcome::sweep::HalvingDecisions;
use crate::outcome::StageState;
use crate::report::diff::Diff;
use crate::report::outcome::join;
use crate::report::run::{Live, RunView};
use crate::report::runs as runs_report;
use crate::report::show::{self, Row};

/// Where links point: the server's URLs, or the exported files.
pub trait Links {
    /// The runs page.
    fn home(&self) -> String;
    /// A run's page.
    fn run(&self, name: &str) -> String;
    /// A run's chart data as JSON, fetched again by a live page (`None`: embedded only).
    fn curves(&self, name: &str) -> Option<String>;
    /// A run's live events (server-sent events; `None` when exported).
    fn events(&self, name: &str) -> Option<String>;
    /// Compare these runs.
    fn compare(&self, names: &[&str]) -> String;
    /// A sweep's page.
    fn sweep(&self, name: &str) -> String;
    /// A file of an artifact.
    fn file(&self, output: &str, path: &str) -> String;
    /// A built-in asset (`ui.css`, `ui.js`).
    fn asset(&self, name: &str) -> String;
    /// The journal (`None`), or one recorded run's page; empty where there is none (the
    /// static export).
    fn journal(&self, id: Option<&str>) -> String {
        match id {
            None => "/journal".into(),
            Some(id) => format!("/journal/{id}"),
        }
    }
    /// A Content-Security-Policy the page carries itself, for pages no server sends
    /// headers for (the static export); `None` where the server sends it as a header.
    fn csp(&self) -> Option<&'static str> {
        None
    }
}

/// A run's state in one word, for colour and filtering.
pub fn row_state(r: &Row) -> &'static str {
    if r.error.is_some() {
        return "unknown";
    }
    if r.note.is_some() {
        return "pruned";
    }
    if r.stages.iter().any(|s| {
        s.reasons.iter().any(|x| {
            matches!(
                x,
                crate::outcome::Reason::Job {
                    state: crate::outcome::JobState::Failed(_),
                    ..
                }
            )
        })
    }) {
        return "failed";
    }
    if r.stages.iter().any(|s| s.state == StageState::Running) {
        return "running";
    }
    if r.stages.iter().any(|s| s.state == StageState::Queued) {
        return "queued";
    }
    if !r.stages.is_empty() && r.stages.iter().all(|s| s.state == StageState::Cached) {
        return "cached";
    }
    "stale"
}

fn page(title: &str, links: &dyn Links, attrs: &[(&str, String)], body: Markup) -> String {
    let events = attrs
        .iter()
        .find(|(k, _)| *k == "events")
        .map(|(_, v)| v.clone());
    let charts = attrs.iter().any(|(k, _)| *k == "charts");
    let kind = attrs
        .iter()
        .find(|(k, _)| *k == "page")
        .map(|(_, v)| v.clone());
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if let Some(csp) = links.csp() {
                    meta http-equiv="Content-Security-Policy" content=(csp);
                }
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · pipe" }
                link rel="stylesheet" href=(links.asset("ui.css"));
                script src=(links.asset("ui.js")) defer {}
                @if charts {
                    script src=(links.asset("echarts.min.js")) defer {}
                    script src=(links.asset("charts.js")) defer {}
                }
            }
            body data-events=[events] data-page=[kind] {
                header {
                    a class="brand" href=(links.home()) { "pipe" }
                    nav {
                        a href=(links.home()) { "runs" }
                        @let j = links.journal(None);
                        @if !j.is_empty() { " " a href=(j) { "journal" } }
                    }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

/// The recorded runs the runs page shows, newest first (the journal page has them all).
const RECENT_RECORDS: usize = 30;

/// A cell longer than this (a waiting reason) is cut, with the whole text on hover.
const LONG_CELL: usize = 40;

/// A number of a row's metrics as a sortable value.
fn sort_value(r: &Row, header: &str) -> Option<f64> {
    let m = r.metrics();
    let key = match header {
        "train loss" => "train.loss".to_string(),
        "train acc" => "train.acc".to_string(),
        "val loss" => "val.loss".to_string(),
        "val acc" => "val.acc".to_string(),
        "params" => "params".to_string(),
        "MACs" => "macs".to_string(),
        "time" => "time".to_string(),
        h => h.to_string(),
    };
    if let Some(v) = m.get(&key) {
        return Some(*v);
    }
    r.swept
        .iter()
        .find(|(k, _)| k == header)
        .and_then(|(_, v)| v.parse().ok())
}

/// The runs page: every pipeline and sweep point, the columns of `pipe show` (sortable,
/// those equal for all hidden on demand), a filter by name and by state, a compare
/// button, the best so far, and the sweeps.
/// Best so far: the highest of each accuracy, the lowest val loss, among the runs that
/// `show` may mark best (none pruned, none with a training segment without a result):
/// (metric, run, value).
fn best_so_far(rows: &[Row]) -> Vec<(String, String, f64)> {
    let mut best = Vec::new();
    for (key, higher) in [("val.acc", true), ("val.loss", false), ("rank1", true)] {
        let found = rows
            .iter()
            .filter(|r| r.note.is_none() && r.segments.iter().all(|s| s.last.is_some()))
            .filter_map(|r| r.metrics().get(key).map(|v| (r.pipeline.clone(), *v)))
            .filter(|(_, v)| v.is_finite())
            .reduce(|a, b| {
                if (higher && b.1 > a.1) || (!higher && b.1 < a.1) {
                    b
                } else {
                    a
                }
            });
        if let Some((name, v)) = found {
            best.push((key.to_string(), name, v));
        }
    }
    best
}

pub fn runs_page(
    rows: &[Row],
    sweeps: &[(String, usize)],
    skipped: &[String],
    journal: &[RunRecord],
    links: &dyn Links,
) -> String {
    // The headline metrics come right after the name, so that they are on screen at
    // 1,400 px however many swept keys and stage metrics follow.
    let mut cols = show::columns(rows);
    let rank = |h: &str| match h {
        "pipeline" => 0,
        "val acc" | "val loss" => 1,
        h if h.ends_with(".rank1") => 1,
        "state" => 2,
        _ => 3,
    };
    cols.sort_by_key(|(h, _)| rank(h));
    let constant: Vec<bool> = cols
        .iter()
        .map(|(_, cells)| rows.len() > 1 && cells.iter().all(|c| *c == cells[0]))
        .collect();
    let states: Vec<&str> = rows.iter().map(row_state).collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &states {
        *counts.entry(s).or_insert(0) += 1;
    }
    let best = best_so_far(rows);
    let body = html! {
        h1 { "Runs" }
        p class="summary" {
            (rows.len()) " runs"
            @for (s, n) in &counts { " · " span class={ "state state-" (s) } { (n) " " (s) } }
        }
        @if !best.is_empty() {
            p class="best-so-far" {
                "Best so far: "
                @for (i, (key, name, v)) in best.iter().enumerate() {
                    @if i > 0 { " · " }
                    (key) " "
                    (if key.ends_with("loss") { format!("{v:.4}") } else { format!("{:.2}%", 100.0 * v) })
                    " (" a href=(links.run(name)) { (name) } ")"
                }
            }
        }
        @if !sweeps.is_empty() {
            p class="sweeps" {
                "Sweeps: "
                @for (i, (name, n)) in sweeps.iter().enumerate() {
                    @if i > 0 { ", " }
                    a href=(links.sweep(name)) { (name) } " (" (n) " points)"
                }
            }
        }
        div class="controls" {
            input id="filter" type="search" placeholder="filter by name";
            select id="state-filter" {
                option value="" { "any state" }
                @for s in counts.keys() { option value=(s) { (s) } }
            }
            label { input id="varying" type="checkbox" checked; " only columns that vary" }
            details id="columns" class="columns" {
                summary { "columns" }
                div class="panel" {
                    @for (h, _) in cols.iter().skip(1) {
                        label { input type="checkbox" value=(h) checked; " " (h) }
                    }
                }
            }
            @if !links.compare(&[]).is_empty() { button id="compare" type="button" data-href=(links.compare(&[])) { "compare selected" } }
        }
        div class="table-wrap" {
        table id="runs" class={ "runs varying" @if links.compare(&[]).is_empty() { " no-pick" } } {
            thead {
                tr {
                    th class="pick" {}
                    @for (i, (h, _)) in cols.iter().enumerate() {
                        th class=[constant[i].then_some("const")] data-col=(i) data-h=(h)
                            data-best=[higher_is_better(h).map(|hi| if hi { "max" } else { "min" })]
                            title=(if higher_is_better(h).is_some() { "sort (best first)" } else { "sort" }) { (h) }
                    }
                }
            }
            tbody {
                @for (ri, r) in rows.iter().enumerate() {
                    tr data-name=(r.pipeline) data-state=(states[ri]) class={ "row-" (states[ri]) @if r.best { " best" } } {
                        td class="pick" { input type="checkbox" value=(r.pipeline) aria-label="select"; }
                        @for (ci, (h, cells)) in cols.iter().enumerate() {
                            @let v = if ci == 0 { None } else { sort_value(r, h) };
                            td class=[constant[ci].then_some("const")] data-v=[v.map(|x| x.to_string())] {
                                @if ci == 0 {
                                    a href=(links.run(&r.pipeline)) { (r.pipeline) }
                                    @if r.best { " " span class="star" title="best" { "★" } }
                                } @else if h == "state" {
                                    span class={ "state state-" (states[ri]) } { (cells[ri]) }
                                } @else if cells[ri].chars().count() > LONG_CELL {
                                    span class="long" title=(cells[ri]) { (cells[ri]) }
                                } @else {
                                    (cells[ri])
                                }
                            }
                        }
                    }
                }
            }
        }
        }
        @if !journal.is_empty() {
            section class="recorded" {
                h2 { "Recorded runs" }
                p { "The " (journal.len().min(RECENT_RECORDS)) " latest of the journal (" a href=(links.journal(None)) { "all " (journal.len()) } "): runs with " code { "--set" } ", on Slurm, or before their manifest changed; the first line of each pipeline is its manifest now." }
                (journal_groups(&journal[..journal.len().min(RECENT_RECORDS)], journal, rows, Some(10), links))
            }
        }
        @if !skipped.is_empty() {
            details class="skipped" {
                summary { (skipped.len()) " manifests not shown" }
                ul { @for s in skipped { li { (s.lines().next().unwrap_or("")) } } }
            }
        }
    };
    page("Runs", links, &[], body)
}

/// Progress of a training running now (or stopped mid-way).
pub fn progress_text(live: &Option<Live>, eta: Option<f64>) -> String {
    match live {
        None => String::new(),
        Some(l) => {
            let speed = l
                .images_per_sec
                .map_or(String::new(), |v| format!(", {v:.0} images/s"));
            let eta = eta.map_or(String::new(), |s| format!(", about {} left", fmt::secs(s)));
            if l.running {
                format!(
                    "{} running: epoch {} of {}{speed}{eta}",
                    l.stage, l.epoch, l.last_epoch
                )
            } else {
                format!(
                    "{} stopped at epoch {} of {} (no process runs it now; `pipe run` resumes it)",
                    l.stage, l.epoch, l.last_epoch
                )
            }
        }
    }
}

/// Files listed per artifact (an ingest of generated images holds thousands).
pub(crate) const MAX_FILES: usize = 100;

/// A metric's value: counts whole, the rest to 4 decimals.
/// Which way a metric is better, by its name: `Some(true)` higher (accuracies, ranks),
/// `Some(false)` lower (losses, time), `None` neither (sizes).
fn higher_is_better(name: &str) -> Option<bool> {
    let n = name.to_ascii_lowercase();
    if n.ends_with("acc") || n.contains("rank") {
        Some(true)
    } else if n.ends_with("loss") || n == "time" {
        Some(false)
    } else {
        None
    }
}

/// A metric as people read it: accuracies and ranks in percent, time as a duration,
/// sizes as counts (`24.7k`), losses to 4 significant digits (large ones abbreviated).
pub fn metric_cell(name: &str, v: f64) -> String {
    let n = name.to_ascii_lowercase();
    if !v.is_finite() {
        return format!("{v}");
    }
    if higher_is_better(&n) == Some(true) {
        return pct(v);
    }
    if n == "time" {
        return fmt::secs(v);
    }
    if (n == "params" || n == "macs") && v >= 0.0 {
        return fmt::count(v as usize);
    }
    let a = v.abs();
    if a >= 1e5 || (a > 0.0 && a < 1e-3) {
        format!("{v:.3e}")
    } else {
        let digits = if a >= 100.0 {
            1
        } else if a >= 10.0 {
            2
        } else {
            4
        };
        format!("{v:.digits$}")
    }
}

fn pct(v: f64) -> String {
    format!("{:.2}%", 100.0 * v)
}

/// One run: progress, curves, DAG and stages, configuration, networks, evaluations,
/// artifacts.
pub fn run_page(v: &RunView, links: &dyn Links) -> String {
    let curves = charts::curves(
        &[charts::Series {
            name: &v.pipeline,
            epochs: &v.history,
        }],
        links.curves(&v.pipeline).as_deref(),
    );
    let dag_stages: Vec<(String, String)> = v
        .stages
        .iter()
        .map(|o| (o.name.clone(), o.state.to_string()))
        .collect();
    let dag = svg::dag(&dag_stages, &v.edges);
    let mut attrs = vec![("charts", String::new())];
    // A finished run opens no stream; one that may still run (or runs now) does.
    let finished = v.stages.iter().all(|o| o.state == StageState::Cached)
        && !v.live.as_ref().is_some_and(|l| l.running);
    if let Some(e) = links.events(&v.pipeline).filter(|_| !finished) {
        attrs.push(("events", e));
    }
    let body = html! {
        h1 { (v.pipeline) }
        p class="manifest" { "manifest " code { (v.manifest) } }
        @if let Some(d) = &v.description { p class="description" { (d) } }
        p id="progress" class="progress" data-epochs=(v.history.len()) { (progress_text(&v.live, None)) }
        section {
            h2 { "Curves" }
            @if v.history.is_empty() { p class="hint" { "No epoch trained yet" @if !finished { ": the charts fill in as it trains." } } }
            (charts::curves_panel(&curves))
        }
        section id="stages" {
            h2 { "Stages" }
            div class="dag" { (svg::embed(&dag)) }
            table class="stages" {
                thead { tr { th { "stage" } th { "kind" } th { "state" } th { "key" } th { "result or why it would run" } } }
                tbody {
                    @for o in &v.stages {
                        tr class={ "row-" (o.state) } {
                            td { (o.name) }
                            td { (o.kind) }
                            td { span class={ "state state-" (o.state) } { (o.state) } }
                            td { code { (o.short_key()) } }
                            td {
                                @if o.state == StageState::Cached { (o.summary) } @else {
                                    @if let Some(e) = o.estimate { "[est. " (fmt::secs(e)) "] " }
                                    (join(&o.reasons))
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !v.evals.is_empty() {
            section {
                h2 { "Evaluation" }
                @for e in &v.evals {
                    h3 { (e.stage) " (" (e.split) @if let Some(n) = e.images { ", " (n) " images" } ")" }
                    p {
                        @for (k, r) in &e.ranks { "rank-" (k) ": " strong { (pct(*r)) } " " }
                        @if let Some(l) = e.loss { "loss " (format!("{l:.4}")) }
                    }
                    @if !e.confusion.is_empty() && e.confusion.len() <= 200 {
                        details open[e.confusion.len() <= 20] {
                            summary { "confusion matrix (rows: true class, columns: predicted)" }
                            table class="confusion" {
                                thead { tr { th {} @for j in 0..e.confusion.len() { th title=(e.classes.get(j).map_or("", |s| s.as_str())) { (j) } } } }
                                tbody {
                                    @for (i, row) in e.confusion.iter().enumerate() {
                                        @let total: usize = row.iter().sum();
                                        tr {
                                            th { (i) " " (e.classes.get(i).map_or("", |s| s.as_str())) }
                                            @for (j, c) in row.iter().enumerate() {
                                                @let shade = if total > 0 { (*c * 9).div_ceil(total).min(9) } else { 0 };
                                                td class={ "c" (shade) @if i == j { " diag" } } { (c) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Configuration" }
            table class="config" {
                tbody { @for (k, val) in &v.config { tr { td { code { (k) } } td { (val) } } } }
            }
        }
        @if !v.networks.is_empty() {
            section {
                h2 { "Networks" }
                @for n in &v.networks {
                    details {
                        summary {
                            strong { (n.name) }
                            @if !n.trained_by.is_empty() { " (trained by " (n.trained_by.join(", ")) ")" }
                            ": " (n.layers.len()) " layers, " (n.trainable + n.non_trainable) " parameters ("
                            (n.non_trainable) " batch-norm statistics), " (n.macs) " MACs per image"
                        }
                        table class="layers" {
                            thead { tr { th { "layer" } th { "op" } th { "output" } th { "params" } th { "MACs" } } }
                            tbody {
                                @for l in &n.layers {
                                    tr { td { (l.name) } td { (l.op) } td { (l.shape) } td class="num" { (l.params) } td class="num" { (l.macs) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !v.artifacts.is_empty() {
            section {
                h2 { "Artifacts" }
                @for a in &v.artifacts {
                    details {
                        summary { (a.stage) ": " code { (crate::ids::short(&a.output)) } " (" (a.files.len()) " files)" }
                        ul class="files" {
                            @for (f, size) in a.files.iter().take(MAX_FILES) {
                                @let href = links.file(&a.output, f);
                                li {
                                    @if href.is_empty() { (f) } @else { a href=(href) { (f) } }
                                    " " span class="size" { (fmt::bytes(*size)) }
                                }
                            }
                        }
                        @if a.files.len() > MAX_FILES {
                            p class="more" { "and " (a.files.len() - MAX_FILES) " more files (" code { "artifacts/" (a.output) } " in the store)" }
                        }
                    }
                }
            }
        }
    };
    page(&v.pipeline, links, &attrs, body)
}

/// Compare runs: their curves overlaid, their metrics side by side, and the diff of the
/// first two (configuration, layers, metrics).
/// One run on the compare page: a pipeline as it stands, or a recorded run.
#[derive(Debug, Clone)]
pub struct Compared {
    /// Its name (`exp`, or `exp@20261206-041500-3fa9`).
    pub name: String,
    /// Its page.
    pub link: String,
    /// Its epochs.
    pub epochs: Vec<EpochRecord>,
    /// Its metrics, as `diff` names them.
    pub metrics: BTreeMap<String, f64>,
}

pub fn compare_page(runs: &[Compared], diff: Option<&Diff>, links: &dyn Links) -> String {
    let series: Vec<charts::Series> = runs
        .iter()
        .map(|c| charts::Series {
            name: &c.name,
            epochs: &c.epochs,
        })
        .collect();
    let curves = charts::curves(&series, None);
    let metrics: std::collections::BTreeSet<String> = runs
        .iter()
        .flat_map(|c| c.metrics.keys().cloned())
        .collect();
    let body = html! {
        h1 { "Compare " (runs.len()) " runs" }
        section {
            h2 { "Curves" }
            (charts::curves_panel(&curves))
        }
        section {
            h2 { "Metrics" }
            table class="metrics" {
                thead { tr { th { "metric" } @for (i, c) in runs.iter().enumerate() { th { svg class="swatch" width="10" height="10" { rect width="10" height="10" fill=(charts::colour(i)) {} } " " a href=(c.link) { (c.name) } } } } }
                tbody {
                    @for m in &metrics {
                        @let vals: Vec<Option<f64>> = runs.iter().map(|c| c.metrics.get(m).copied()).collect();
                        @let best = higher_is_better(m).and_then(|hi| {
                            vals.iter().flatten().copied().filter(|v| v.is_finite()).reduce(|a, b| if (b > a) == hi { b } else { a })
                        });
                        tr {
                            td { (m) }
                            @for v in &vals {
                                td class={ "num" @if runs.len() > 1 && v.is_some() && *v == best { " best" } } title=[v.map(|x| x.to_string())] {
                                    (v.map_or("-".to_string(), |x| metric_cell(m, x)))
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(d) = diff {
            section {
                h2 { "Differences: " (d.a) " vs " (d.b) }
                h3 { "Configuration" }
                @if d.config.is_empty() { p { "the same" } } @else {
                    table class="diff" {
                        thead { tr { th { "key" } th { (d.a) } th { (d.b) } } }
                        tbody { @for (k, a, b) in &d.config { tr { td { code { (k) } } td { (a.as_deref().unwrap_or("-")) } td { (b.as_deref().unwrap_or("-")) } } } }
                    }
                }
                h3 { "Networks" }
                @for (stage, na, nb) in &d.networks_one_side {
                    p { (stage) ": only in " (if na.is_some() { &d.a } else { &d.b }) " (" (na.as_deref().or(nb.as_deref()).unwrap_or("")) ")" }
                }
                @if d.networks.is_empty() && d.networks_one_side.is_empty() { p { "the same" } } @else {
                    @for n in &d.networks {
                        p { (n.stage) ": " (n.networks.0) " (" (n.params.0) " params) -> " (n.networks.1) " (" (n.params.1) " params)" }
                        table class="diff" {
                            thead { tr { th { "change" } th { "layer" } th { "what" } th { "params" } } }
                            tbody { @for l in &n.layers { tr { td { (l.change) } td { (l.layer) } td { (l.detail) } td class="num" { (format!("{:+}", l.params)) } } } }
                        }
                    }
                }
            }
        }
    };
    let attrs = [("charts", String::new()), ("page", "compare".to_string())];
    page("Compare", links, &attrs, body)
}

/// A sweep: parallel coordinates of the swept values against a metric (best point and
/// pruned points marked), the points with their values, and the halving decisions.
pub fn sweep_page(
    name: &str,
    file: &str,
    keys: &[String],
    rows: &[Row],
    metric: &str,
    decisions: &HalvingDecisions,
    links: &dyn Links,
) -> String {
    let mut axes: Vec<charts::Axis> = keys
        .iter()
        .map(|k| charts::Axis {
            name: k.clone(),
            values: rows
                .iter()
                .map(|r| {
                    let v = r
                        .swept
                        .iter()
                        .find(|(x, _)| x == k)
                        .map_or(charts::MISSING.to_string(), |(_, v)| v.clone());
                    let n = v.parse::<f64>().ok();
                    (v, n)
                })
                .collect(),
        })
        .collect();
    let values: Vec<Option<f64>> = rows
        .iter()
        .map(|r| r.metrics().get(metric).copied())
        .collect();
    axes.push(charts::Axis {
        name: metric.to_string(),
        values: values
            .iter()
            .map(|v| (v.map_or(charts::MISSING.into(), |x| format!("{x:.4}")), *v))
            .collect(),
    });
    let lines: Vec<charts::Line> = rows
        .iter()
        .map(|r| charts::Line {
            name: r.pipeline.clone(),
            best: r.best,
            pruned: r.note.is_some(),
            href: links.run(&r.pipeline),
        })
        .collect();
    let chart = charts::parallel(&axes, &lines);
    let names: Vec<&str> = rows.iter().map(|r| r.pipeline.as_str()).collect();
    let body = html! {
        h1 { "Sweep " (name) }
        p class="manifest" { "manifest " code { (file) } " · " (rows.len()) " points · "
            a href=(links.compare(&names)) { "compare all" } }
        section {
            h2 { "Parallel coordinates (" (metric) ")" }
            p class="legend" { span class="best-key" { "best" } " · " span class="pruned-key" { "pruned" } " · drag along an axis to brush it; the points table follows" }
            (charts::parallel_panel(&chart))
        }
        section {
            h2 { "Points" }
            table class="runs" id="points" {
                thead { tr { th { "point" } @for k in keys { th { (k) } } th { (metric) } th { "state" } } }
                tbody {
                    @for (i, r) in rows.iter().enumerate() {
                        tr data-name=(r.pipeline) class={ "row-" (row_state(r)) @if r.best { " best" } } {
                            td { a href=(links.run(&r.pipeline)) { (r.pipeline) } @if r.best { " " span class="star" { "★" } } }
                            @for k in keys { td { (r.swept.iter().find(|(x, _)| x == k).map_or("-", |(_, v)| v.as_str())) } }
                            td class="num" { (values[i].map_or("-".into(), |x| format!("{x:.4}"))) }
                            td { span class={ "state state-" (row_state(r)) } { (r.state_line()) } }
                        }
                    }
                }
            }
        }
        @if !decisions.rungs.is_empty() {
            section {
                h2 { "Halving" }
                @for rg in &decisions.rungs {
                    p { "after " strong { (rg.stage) } " (" (rg.metric) ", " (rg.goal) ", eta " (rg.eta) "): kept " (rg.kept.join(", ")) }
                }
            }
        }
    };
    page(
        &format!("Sweep {name}"),
        links,
        &[("charts", String::new())],
        body,
    )
}

/// The page for an unknown run, sweep or file, or a refused path.
pub fn not_found_page(what: &str, links: &dyn Links) -> String {
    let body = html! {
        h1 { "Not found" }
        p class="not-found" { (what) }
        p { a href=(links.home()) { "all runs" } }
    };
    page("Not found", links, &[], body)
}

/// The manifest's state now, in one line: `now: cached`, or the first stage that is not
/// and why (`now: drop stale: config changed: lr 0.01 -> 0.005`).
fn now_line(r: &Row) -> String {
    match r.stages.iter().find(|s| s.state != StageState::Cached) {
        None if r.error.is_none() => "now: cached (as its last run left it)".to_string(),
        None => format!(
            "now: {}",
            r.error
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
        ),
        Some(s) if s.reasons.is_empty() => format!("now: {} {}", s.name, s.state),
        Some(s) => format!("now: {} {}: {}", s.name, s.state, join(&s.reasons)),
    }
}

/// Recorded runs grouped by pipeline, newest first in each (at most `per_group` each,
/// with a link to the rest), each group led by its manifest's state now (`rows`). `all`:
/// the whole journal `runs` is taken from, which each group's count is of.
fn journal_groups(
    runs: &[RunRecord],
    all: &[RunRecord],
    rows: &[Row],
    per_group: Option<usize>,
    links: &dyn Links,
) -> Markup {
    let mut groups: BTreeMap<&str, Vec<&RunRecord>> = BTreeMap::new();
    for r in runs {
        groups.entry(r.pipeline.as_str()).or_default().push(r);
    }
    let mut total: BTreeMap<&str, usize> = BTreeMap::new();
    for r in all {
        *total.entry(r.pipeline.as_str()).or_default() += 1;
    }
    html! {
        @for (name, rs) in &groups {
            @let now = rows.iter().find(|r| r.pipeline == *name);
            @let shown = per_group.map_or(rs.len(), |n| n.min(rs.len()));
            @let count = total.get(name).copied().unwrap_or(rs.len()).max(rs.len());
            h3 { a href=(links.run(name)) { (name) } " · " (count) " runs" }
            table class="runs journal" {
                thead { tr {
                    th class="pick" {} th { "run" } th { "started (UTC)" } th { "state" } th { "time" }
                    th { "metrics" } th { "changed" } th { "tags" }
                } }
                tbody {
                    @if let Some(row) = now {
                        tr class="now" {
                            td class="pick" { input type="checkbox" value=(row.pipeline) aria-label="select"; }
                            td colspan="7" { a href=(links.run(name)) { (now_line(row)) } }
                        }
                    }
                    @for r in &rs[..shown] {
                        tr class={ "row-" (r.state.as_str()) } {
                            td class="pick" { input type="checkbox" value=(r.id) aria-label="select"; }
                            td { a href=(links.journal(Some(&r.id))) { (r.id) } }
                            td { (runs_report::when(&r.started)) }
                            td { span class={ "state state-" (r.state.as_str()) } { (runs_report::state(r)) } }
                            td { (r.seconds.map(fmt::secs).unwrap_or_else(|| "-".into())) }
                            td { (runs_report::headline(r)) }
                            td { (if r.previous.is_none() { "(first run)".to_string() } else { r.changes.join(", ") }) }
                            td { (r.tags.join(", ")) }
                        }
                    }
                    @if shown < count {
                        tr { td {} td colspan="7" { a href=(links.journal(None)) { (count - shown) " older runs in the journal" } } }
                    }
                }
            }
        }
    }
}

/// The journal: every recorded run, grouped by pipeline, newest first in each, with what
/// changed since the pipeline's run before, each group led by its manifest's state now.
pub fn journal_page(
    runs: &[RunRecord],
    rows: &[Row],
    warnings: &[String],
    links: &dyn Links,
) -> String {
    let pipelines: std::collections::BTreeSet<&str> =
        runs.iter().map(|r| r.pipeline.as_str()).collect();
    let body = html! {
        h1 { "Journal" }
        p class="summary" { (runs.len()) " recorded runs of " (pipelines.len()) " pipelines" }
        @for w in warnings { p class="warning" { (w) } }
        div class="controls" {
            @if !links.compare(&[]).is_empty() { button id="compare" type="button" data-href=(links.compare(&[])) { "compare selected" } }
        }
        (journal_groups(runs, runs, rows, None, links))
    };
    page("Journal", links, &[], body)
}

/// One recorded run as it ran: its state, where and when, what changed, its overrides,
/// metrics, stages, curves (`history`: its epochs so far, read from the artifact or, while
/// it trains, from its scratch) and configuration.
pub fn record_page(r: &RunRecord, history: &[EpochRecord], links: &dyn Links) -> String {
    let curves = charts::curves(
        &[charts::Series {
            name: &r.pipeline,
            epochs: history,
        }],
        None,
    );
    let body = html! {
        h1 { (r.pipeline) " · run " (r.id) }
        p class="summary" {
            span class={ "state state-" (r.state.as_str()) } { (runs_report::state(r)) }
            " · started " (runs_report::when(&r.started)) " UTC"
            @if let Some(s) = r.seconds { " · " (fmt::secs(s)) }
            " · " (r.executor) " on " (r.host.hostname) " (" (r.host.cpu) ", " (r.host.cores) " cores)"
            @if !r.backend.is_empty() { " · " (r.backend) " on " (r.device) }
            @if let Some(g) = &r.git { " · git " (g.commit.get(..12).unwrap_or(&g.commit)) @if g.dirty { " (dirty)" } }
        }
        @if let Some(e) = &r.error { p class="error" { (e) } }
        p { "Manifest " code { (r.manifest) } @if !r.sets.is_empty() { " with " code { "--set " (r.sets.join(" --set ")) } } }
        p { "Run it again as it ran: " code { "pipe run --from " (r.id) } }
        @if !r.changes.is_empty() {
            p { "Changed since " @if let Some(prev) = &r.previous { a href=(links.journal(Some(prev))) { (prev) } } ": " (r.changes.join(", ")) }
        }
        @if !r.tags.is_empty() { p { "Tags: " (r.tags.join(", ")) } }
        @for n in &r.notes { p class="note" { (n) } }
        h2 { "Curves" }
        @if history.is_empty() { p { "no epoch recorded yet" } } @else { (charts::curves_panel(&curves)) }
        @if !r.metrics.is_empty() {
            h2 { "Metrics" }
            table class="metrics" { tbody {
                @for (k, v) in &r.metrics { tr { td { (k) } td class="num" title=(v) { (metric_cell(k, *v)) } } }
            } }
        }
        h2 { "Stages" }
        table class="stages" {
            thead { tr { th { "stage" } th { "kind" } th { "state" } th { "time" } th { "key" } th { "summary" } } }
            tbody {
                @for s in &r.stages {
                    tr {
                        td { (s.name) } td { (s.kind) } td { (s.state) @if let Some(j) = &s.job { " (job " (j) ")" } }
                        td { (fmt::secs(s.seconds)) }
                        td { code { (s.key.as_deref().map(crate::ids::short).unwrap_or("-")) } }
                        td { (s.summary) }
                    }
                }
            }
        }
        h2 { "Configuration" }
        table class="config" { tbody {
            @for (k, v) in &r.config() { tr { td { (k) } td { (v) } } }
        } }
    };
    let attrs = [("charts", String::new())];
    page(&format!("{} {}", r.pipeline, r.id), links, &attrs, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::StageKind;
    use crate::outcome::history::EpochRecord;
    use crate::report::show::Segment;

    fn segment(stage: &str, val_acc: Option<f64>) -> Segment {
        Segment {
            stage: stage.into(),
            kind: StageKind::Train,
            network: "net".into(),
            optimizer: "sgd".into(),
            lr: 0.01,
            epochs: 2,
            last: val_acc.map(|a| EpochRecord {
                epoch: 2,
                stage: stage.into(),
                lr: 0.01,
                train_loss: 1.0,
                train_acc: 0.5,
                val_loss: 1.0 - a,
                val_acc: a,
                ema_val_loss: None,
                ema_val_acc: None,
                images_per_sec: 0.0,
                seconds: 0.0,
            }),
        }
    }

    fn row(name: &str, segments: Vec<Segment>, note: Option<&str>) -> Row {
        Row {
            pipeline: name.into(),
            segments,
            note: note.map(String::from),
            ..Row::default()
        }
    }

    #[test]
    fn best_so_far_passes_over_pruned_runs_and_runs_with_a_segment_missing() {
        let rows = [
            row("kept", vec![segment("train", Some(0.6))], None),
            // A higher accuracy, from a shorter training that halving pruned.
            row(
                "pruned",
                vec![segment("train", Some(0.9))],
                Some("pruned after train"),
            ),
            // A higher accuracy from its first segment; its lr drop has no result.
            row(
                "half",
                vec![segment("train", Some(0.8)), segment("drop", None)],
                None,
            ),
        ];
        let best = best_so_far(&rows);
        assert_eq!(
            best.iter()
                .map(|(k, r, _)| (k.as_str(), r.as_str()))
                .collect::<Vec<_>>(),
            [("val.acc", "kept"), ("val.loss", "kept")]
        );
    }
}

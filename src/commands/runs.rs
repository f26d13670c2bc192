//! `pipe runs` (the journal: list, filter, export to TensorBoard), `pipe tag` and
//! `pipe note`.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::Global;
use crate::engine::journal::Journal;
use crate::engine::sweep::{parse_conditions, Condition};
use crate::engine::Project;
use crate::outcome::record::RunRecord;
use crate::report::runs as report;

/// `pipe runs`'s options.
#[derive(Debug, Clone, Default)]
pub struct RunsOptions {
    /// Pipelines or sweeps (none: every run).
    pub names: Vec<String>,
    /// `--where EXPR`.
    pub filter: Option<String>,
    /// `--since WHEN`.
    pub since: Option<String>,
    /// `--limit N`.
    pub limit: Option<usize>,
    /// `--json`.
    pub json: bool,
    /// `--csv`.
    pub csv: bool,
    /// `--tensorboard DIR`.
    pub tensorboard: Option<std::path::PathBuf>,
}

/// The journal of the project's store (read-only).
fn journal(g: &Global) -> Result<(Project, Journal)> {
    let proj = Project::discover(g.cache.clone())?;
    let store = crate::engine::store::Store::open_read_only(&proj.cache);
    let j = Journal::of(&store);
    Ok((proj, j))
}

/// `pipe runs [NAMES...]`.
pub fn runs(g: &Global, o: &RunsOptions) -> Result<()> {
    let (proj, j) = journal(g)?;
    // A manifest named as `run` takes it (`t` for pipelines/t.toml, a path, an alias)
    // selects the runs of the pipeline it names (its `name` may differ from the file's).
    let mut o = o.clone();
    for n in o.names.clone() {
        // Unchecked: the runs of a name two manifests share are still its runs to read.
        if let Ok((_, t)) = proj.load_target_unchecked(&n, &[]) {
            let name = match t {
                crate::engine::Target::Pipeline(p) => p.name,
                crate::engine::Target::Point(s, i) => s.points[i].pipeline.name.clone(),
                crate::engine::Target::Sweep(s) => s.name,
            };
            if !o.names.contains(&name) {
                o.names.push(name);
            }
        }
    }
    let o = &o;
    // The table needs only what the heads hold; JSON, CSV, TensorBoard and conditions on
    // configuration keys read the records whole.
    let whole = o.json || o.csv || o.tensorboard.is_some() || o.filter.is_some();
    let listing = if whole { j.list() } else { j.list_heads() };
    for w in &listing.warnings {
        eprintln!("warning: {w}");
    }
    let mut selected = select(listing.runs, o)?;
    j.mark_collected(&mut selected);
    if let Some(dir) = &o.tensorboard {
        let n = crate::data::tensorboard::write_runs(
            dir,
            &selected,
            &j.dir().parent().unwrap_or(Path::new(".")).join("artifacts"),
        )?;
        eprintln!(
            "wrote TensorBoard event files for {n} run(s) into {} (tensorboard --logdir {})",
            dir.display(),
            dir.display()
        );
        return Ok(());
    }
    if o.json {
        println!("{}", serde_json::to_string_pretty(&selected)?);
    } else if o.csv {
        print!("{}", report::csv(&selected)?);
    } else if selected.is_empty() {
        eprintln!(
            "no recorded run{} in {}",
            if o.names.is_empty() && o.filter.is_none() && o.since.is_none() {
                String::new()
            } else {
                " matches".to_string()
            },
            j.dir().display()
        );
    } else {
        print!("{}", report::table(&selected));
    }
    Ok(())
}

/// The runs `o` selects, newest first.
pub fn select(runs: Vec<RunRecord>, o: &RunsOptions) -> Result<Vec<RunRecord>> {
    let conds = match &o.filter {
        Some(e) => parse_conditions(e, "--where")?,
        None => Vec::new(),
    };
    let since = match &o.since {
        Some(s) => Some(since_cutoff(s)?),
        None => None,
    };
    let mut out = Vec::new();
    for r in runs {
        if !o.names.is_empty()
            && !o
                .names
                .iter()
                .any(|n| r.pipeline == *n || r.sweep.as_deref() == Some(n.as_str()))
        {
            continue;
        }
        if since.is_some_and(|c| {
            crate::engine::journal::unix_nanos_of(&r.started).is_none_or(|t| t < c)
        }) {
            continue;
        }
        if !conds.iter().all(|c| condition_holds(&r, c)) {
            continue;
        }
        if o.limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        out.push(r);
    }
    Ok(out)
}

/// Whether a run meets one `--where` condition: the key is a metric (`val.acc`,
/// `evaluate.rank1`), a configuration key (`train.lr`, `stages.train.lr`, or a unique
/// last part: `lr`), `pipeline`, `state`, `tag` or `backend`.
fn condition_holds(r: &RunRecord, c: &Condition) -> bool {
    let key = c.key.as_str();
    match key {
        "pipeline" => return c.holds(&r.pipeline),
        "state" => return c.holds(r.state.as_str()),
        "backend" => return c.holds(&r.backend),
        "device" => return c.holds(&r.device),
        // `tag=best`: one of its tags is; `tag!=best`: none is (an untagged run too);
        // `tag=` (empty): it has none.
        // `tag!=` (empty): it has one.
        "tag" if c.negated() && c.value.is_empty() => return !r.tags.is_empty(),
        "tag" if c.negated() => return r.tags.iter().all(|t| c.holds(t)),
        "tag" => {
            return r.tags.iter().any(|t| c.holds(t)) || (c.value.is_empty() && r.tags.is_empty())
        }
        _ => {}
    }
    if let Some(v) = r.metrics.get(key) {
        return c.holds(&v.to_string());
    }
    let config = r.config();
    if let Some(v) = config
        .get(key)
        .or_else(|| config.get(&format!("stages.{key}")))
    {
        return c.holds(v);
    }
    let suffix = format!(".{key}");
    let found: Vec<&String> = config
        .iter()
        .filter(|(k, _)| k.ends_with(&suffix))
        .map(|(_, v)| v)
        .collect();
    !found.is_empty() && found.iter().all(|v| c.holds(v))
}

/// `--since`: `30m`, `12h`, `3d`, `2w` ago, a date (`2026-12-01`, UTC) or an RFC 3339
/// time; as nanoseconds since the epoch.
fn since_cutoff(s: &str) -> Result<i128> {
    let s = s.trim();
    let now = time::OffsetDateTime::now_utc();
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) => (&s[..i], c),
        None => ("", ' '),
    };
    let per = match unit {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86400),
        'w' => Some(7 * 86400),
        _ => None,
    };
    let span = match (num.parse::<u64>(), per) {
        (Ok(n), Some(per)) => Some(
            i64::try_from(n)
                .ok()
                .and_then(|n| n.checked_mul(per))
                .and_then(|secs| now.checked_sub(time::Duration::seconds(secs)))
                .with_context(|| format!("--since `{s}`: further back than a date can be"))?,
        ),
        _ => None,
    };
    let rfc = &time::format_description::well_known::Rfc3339;
    let t = if let Some(t) = span {
        t
    } else if let Ok(t) = time::OffsetDateTime::parse(s, rfc) {
        t
    } else if let Ok(d) =
        time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
    {
        d.midnight().assume_utc()
    } else {
        bail!("--since `{s}`: expected a span back from now (`30m`, `12h`, `3d`, `2w`), a date (`2026-12-01`) or an RFC 3339 time");
    };
    Ok(t.unix_timestamp_nanos())
}

/// `pipe tag RUN TEXT` / `pipe note RUN TEXT` (`kind`: `tag` or `note`).
pub fn annotate(g: &Global, reference: &str, kind: &str, text: &str) -> Result<()> {
    let proj = Project::discover(g.cache.clone())?;
    let store = crate::engine::store::Store::open_read_only(&proj.cache);
    let j = Journal::of(&store);
    let Some(rec) = j.resolve(reference, None)? else {
        bail!("`{reference}` names no run: give a run id (`pipe runs` lists them), `PIPELINE~N` or `PIPELINE@ID-PREFIX`");
    };
    if text.trim().is_empty() {
        bail!("the {kind} is empty");
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        bail!("the {kind} holds a control character");
    }
    j.annotate(&rec.id, kind, text)?;
    eprintln!("{kind} added to run {} ({})", rec.id, rec.pipeline);
    Ok(())
}

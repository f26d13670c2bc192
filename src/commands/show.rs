//! `pipe show`: pipelines side by side.

use anyhow::Result;

use super::Global;
use crate::engine::Project;
use crate::report::show;

/// Columns of the terminal on stdout (`$COLUMNS`, else the tty's, else 120).
fn terminal_width() -> usize {
    if let Some(w) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return w;
    }
    // SAFETY: TIOCGWINSZ fills a winsize struct we own; on failure it is left zeroed.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        ws.ws_col as usize
    } else {
        120
    }
}

/// Output format of `show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowFormat {
    /// A table that fits the terminal.
    Table,
    /// JSON rows.
    Json,
    /// CSV, every column.
    Csv,
}

/// `pipe show`: pipelines side by side (default: every manifest in `pipelines/`).
pub fn show(
    g: &Global,
    pipelines: &[String],
    sets: &[String],
    sort: Option<&str>,
    format: ShowFormat,
) -> Result<()> {
    let discovered = Project::discover(g.cache.clone())?;
    // Recorded runs (`exp3~1`, an id) are shown as they ran; the rest as they stand.
    let mut names = Vec::new();
    let mut recorded = Vec::new();
    for a in pipelines {
        match super::resolve_run(g, a)? {
            Some((proj, rec, p)) => {
                if !sets.is_empty() {
                    anyhow::bail!("`{a}` is a recorded run: --set does not apply to it");
                }
                let engine = super::looking(&proj);
                recorded.push(engine.record_row(&rec, p.as_ref().ok()));
            }
            None => names.push(a.clone()),
        }
    }
    let runs = if names.is_empty() && !recorded.is_empty() {
        crate::engine::runs::ProjectRuns::default()
    } else {
        discovered.runs(&names, sets)?
    };
    let mut runs = runs;
    runs.mark_best(sort);
    let mut rows = runs.rows;
    rows.extend(recorded);
    let skipped = runs.skipped;
    if let Some(key) = sort {
        show::sort(&mut rows, key)?;
    }
    match format {
        ShowFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        ShowFormat::Csv => print!("{}", show::render_csv(&rows)?),
        ShowFormat::Table => {
            if rows.is_empty() {
                let why: Vec<&str> = skipped
                    .iter()
                    .map(|s| s.lines().next().unwrap_or(""))
                    .collect();
                match why.is_empty() {
                    true => {
                        anyhow::bail!("no pipelines to show in {}", discovered.pipelines.display())
                    }
                    false => anyhow::bail!(
                        "no pipelines to show in {}: none of its manifests loaded:\n  {}",
                        discovered.pipelines.display(),
                        why.join("\n  ")
                    ),
                }
            }
            print!("{}", show::render_table(&rows, terminal_width()));
        }
    }
    for s in skipped {
        eprintln!("note: not shown: {}", s.lines().next().unwrap_or(""));
    }
    Ok(())
}

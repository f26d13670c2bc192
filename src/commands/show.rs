//! `pipe show`: pipelines side by side.

use anyhow::Result;

use super::Global;
use crate::engine::{Engine, Project, Target};
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
    let names: Vec<String> = if pipelines.is_empty() {
        crate::manifest::list(&discovered.pipelines)?
            .into_iter()
            .map(|p| p.display().to_string())
            .collect()
    } else {
        pipelines.to_vec()
    };
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut sweeps = 0;
    for n in &names {
        match discovered.load_target(n, sets) {
            Ok((proj, t)) => {
                let mut engine = Engine::read_only(&proj.cache);
                match t {
                    Target::Pipeline(p) => rows.push(engine.row(&p)?),
                    Target::Point(s, i) => rows.extend(engine.sweep_rows(&s, &[i])?),
                    Target::Sweep(s) => {
                        sweeps += 1;
                        let all: Vec<usize> = (0..s.points.len()).collect();
                        rows.extend(engine.sweep_rows(&s, &all)?);
                    }
                }
            }
            // Named explicitly: an error. Listed from the folder: say so and go on (a
            // base file that is not a pipeline, a manifest that needs `--set`).
            Err(e) if pipelines.is_empty() => skipped.push(format!("{n}: {e}")),
            Err(e) => return Err(e),
        }
    }
    if let Some(key) = sort {
        show::sort(&mut rows, key)?;
    }
    if sweeps > 0 {
        show::mark_best(&mut rows, sort);
    }
    match format {
        ShowFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        ShowFormat::Csv => print!("{}", show::render_csv(&rows)?),
        ShowFormat::Table => {
            if rows.is_empty() {
                anyhow::bail!("no pipelines to show in {}", discovered.pipelines.display());
            }
            print!("{}", show::render_table(&rows, terminal_width()));
        }
    }
    for s in skipped {
        eprintln!("note: not shown: {}", s.lines().next().unwrap_or(""));
    }
    Ok(())
}

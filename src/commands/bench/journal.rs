//! `pipe bench journal`: the run journal at scale — `pipe runs` and the dashboard's
//! journal page over N records, and what writing the record adds to a no-op `pipe run`.

use std::time::Instant;

use anyhow::{Context, Result};

use super::{manifest, max, median, Pipe, Scratch};
use crate::engine::journal::Journal;

/// `pipe bench journal --records N`: the tiny pipeline run once, its record copied to N
/// records (each its own id, start time and lr, written with their heads as N runs would
/// leave them); then, `rounds`
/// times each: `pipe runs` (whole process, all N listed), `GET /journal` from `pipe ui`,
/// a no-op `pipe run`, and the journal's own begin + finish of one record in this process.
pub fn bench_journal(records: usize, rounds: usize) -> Result<()> {
    anyhow::ensure!(records >= 1, "--records must be at least 1");
    let scratch = Scratch::new()?;
    let project = scratch.dir.join("project");
    let pipe = Pipe::in_project(&project)?;
    pipe.write("tiny.toml", &manifest("tiny.toml", &[]))?;
    // A git repository, as a project usually is: the record asks git for its commit.
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(&project)
            .env("GIT_AUTHOR_NAME", "bench")
            .env("GIT_AUTHOR_EMAIL", "bench@localhost")
            .env("GIT_COMMITTER_NAME", "bench")
            .env("GIT_COMMITTER_EMAIL", "bench@localhost")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let in_git = git(&["init", "-q"]) && git(&["add", "pipelines"]) && git(&["commit", "-qm", "x"]);
    pipe.run(&["run", "tiny"])?;
    let runs = project.join(".pipe").join("runs");
    let first = std::fs::read_dir(&runs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .context("the first run left no record")?;
    let proto: serde_json::Value = serde_json::from_slice(&std::fs::read(&first)?)?;
    eprintln!("writing {records} records...");
    let j = Journal::of(&crate::engine::store::Store::open(&project.join(".pipe"))?);

    let base = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    let fmt = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    for i in 0..records {
        let t = base + time::Duration::seconds(i as i64 * 60);
        let id = format!("{}-{:04x}", t.format(&fmt)?, i % 0x10000);
        let mut r = proto.clone();
        r["id"] = id.clone().into();
        r["started"] = t
            .format(&time::format_description::well_known::Rfc3339)?
            .into();
        r["config"]["stages.train.lr"] = format!("{}", 0.001 * (1 + i % 50) as f64).into();
        std::fs::write(
            runs.join(format!("{id}.json")),
            serde_json::to_vec_pretty(&r)?,
        )?;
        // A finished run leaves its head in `runs/heads.jsonl` after its record.
        j.add_head(&serde_json::from_value(r)?)?;
    }
    // Past runs' records are on disk, not in flight: let the writeback finish first.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let mut list = Vec::new();
    let mut lines = 0;
    let mut noop = Vec::new();
    let mut bare = Vec::new();
    for _ in 0..rounds.max(1) {
        let (s, out) = pipe.run(&["runs"])?;
        list.push(s);
        lines = out.iter().filter(|&&b| b == b'\n').count();
    }
    // A no-op `pipe run`, with the journal and without it (`PIPE_NO_JOURNAL=1`), in
    // alternating rounds: the difference is what the record costs.
    for _ in 0..rounds.max(1) * 4 {
        noop.push(pipe.run(&["run", "tiny"])?.0);
        let t = Instant::now();
        let out = pipe
            .command(&["run", "tiny"])
            .env("PIPE_NO_JOURNAL", "1")
            .output()?;
        anyhow::ensure!(out.status.success(), "pipe run tiny failed");
        bare.push(t.elapsed().as_secs_f64());
    }
    // The journal's own work for one run, in this process: begin (config, previous run's
    // changes, the record and its lock) and finish (metrics, the fsync'd record).
    let proj = crate::engine::Project::at(project.clone(), Some(project.join(".pipe")));
    let (_, p) = proj.load("tiny", &[])?;
    let mut own = Vec::new();
    for _ in 0..rounds.max(1) * 4 {
        let t = Instant::now();
        let rec = j.begin(&p, "in-process")?;
        let entries = rec.record().stages.clone();
        rec.finish(&entries, &proj.cache.join("artifacts"), None, None, false)?;
        own.push(t.elapsed().as_secs_f64());
    }
    let ((page, bytes), (home, home_bytes)) = journal_page(&pipe, rounds)?;
    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| project | {} |",
        if in_git {
            "a git repository (each record asks git for its commit)"
        } else {
            "not a git repository (no git here)"
        }
    );
    println!(
        "| records | {records} (+{} from these rounds) |",
        noop.len() + own.len()
    );
    println!(
        "| `pipe runs` (whole process, {lines} lines), median of {} | {:.0} ms (max {:.0} ms) |",
        list.len(),
        1e3 * median(list.clone()),
        1e3 * max(&list)
    );
    println!(
        "| `GET /journal` ({} KiB), median of {} | {:.0} ms (max {:.0} ms) |",
        bytes / 1024,
        page.len(),
        1e3 * median(page.clone()),
        1e3 * max(&page)
    );
    println!(
        "| `GET /` (the runs page, its recorded runs included; {} KiB), median of {} | {:.0} ms (max {:.0} ms) |",
        home_bytes / 1024,
        home.len(),
        1e3 * median(home.clone()),
        1e3 * max(&home)
    );
    let (with, without) = (median(noop.clone()), median(bare.clone()));
    println!(
        "| no-op `pipe run tiny` (whole process), alternating, median of {} each | {:.1} ms with the journal, {:.1} ms without (`PIPE_NO_JOURNAL=1`): {:+.1} ms |",
        noop.len(),
        1e3 * with,
        1e3 * without,
        1e3 * (with - without)
    );
    println!(
        "| the record's begin + finish in-process, median of {} | {:.2} ms (max {:.2} ms) |",
        own.len(),
        1e3 * median(own.clone()),
        1e3 * max(&own)
    );
    Ok(())
}

/// Timings of one page: (seconds of each request, bytes).
type PageTimes = (Vec<f64>, usize);

/// `GET /journal` and `GET /` from `pipe ui` over the project, `rounds` times each.
fn journal_page(pipe: &Pipe, rounds: usize) -> Result<(PageTimes, PageTimes)> {
    super::ui::with_server(pipe, |host| {
        let agent = super::ui::agent();
        let page = |path: &str| -> Result<PageTimes> {
            let mut times = Vec::new();
            let mut bytes = 0;
            for _ in 0..rounds.max(1) {
                let (s, status, n) = super::ui::get(&agent, host, path)?;
                anyhow::ensure!(status == 200, "GET {path} answered {status}");
                times.push(s);
                bytes = n;
            }
            Ok((times, bytes))
        };
        Ok((page("/journal")?, page("/")?))
    })
}

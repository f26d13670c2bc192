//! `pipe bench ui`: the dashboard over many trained runs — the runs page and `/api/runs`
//! timed, then how soon an epoch another process writes reaches an open page.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

use super::{manifest, max, median, Pipe, Scratch};

/// An HTTP client for the server on loopback: statuses are answers, not errors.
pub(super) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// GET `path` from the server at `host`: (seconds to the last byte, status, body bytes).
pub(super) fn get(agent: &ureq::Agent, host: &str, path: &str) -> Result<(f64, u16, usize)> {
    let t = Instant::now();
    let mut resp = agent
        .get(&format!("http://{host}{path}"))
        .call()
        .with_context(|| format!("GET {path}"))?;
    // No cap: the runs page of 10,000 runs is larger than ureq's default 10 MiB.
    let body = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()?;
    Ok((
        t.elapsed().as_secs_f64(),
        resp.status().as_u16(),
        body.len(),
    ))
}

/// `pipe bench ui`: a store of `runs` runs (random sweeps over a tiny pipeline, every
/// point trained), served by `pipe ui`; the runs page and `/api/runs` timed over `rounds`
/// requests each; then a training in another process, and for each epoch how long after
/// its `history.json` was written the open page's event arrived, and the chart it fetches.
pub fn bench_ui(runs: usize, rounds: usize) -> Result<()> {
    anyhow::ensure!(runs >= 2, "--runs must be at least 2");
    let scratch = Scratch::new()?;
    let pipe = Pipe::in_project(&scratch.dir.join("project"))?;
    pipe.write("tiny.toml", &manifest("tiny.toml", &[]))?;
    // Sweeps of up to 1,000 random points (more in one would draw the same point twice):
    // `many`, `many2`, ...
    let mut sweeps = Vec::new();
    for (i, start) in (0..runs).step_by(PER_SWEEP).enumerate() {
        let name = match i {
            0 => "many".to_string(),
            _ => format!("many{}", i + 1),
        };
        let n = PER_SWEEP.min(runs - start);
        let text = manifest(
            "many.toml",
            &[
                ("RUNS", n.to_string()),
                ("NAME", name.clone()),
                ("SEED", (i + 1).to_string()),
            ],
        );
        pipe.write(&format!("{name}.toml"), &text)?;
        sweeps.push(name);
    }
    pipe.write("slow.toml", &manifest("slow.toml", &[]))?;
    eprintln!("training {runs} runs (random sweeps over a tiny pipeline)...");
    let t = Instant::now();
    for s in &sweeps {
        pipe.run(&["run", s])?;
    }
    eprintln!("  {:.1} s", t.elapsed().as_secs_f64());
    pipe.run(&["run", "slow", "--until", "hdf5"])?;
    with_server(&pipe, |host| measure(&pipe, host, runs, rounds))
}

/// Points per random sweep of `pipe bench ui`.
const PER_SWEEP: usize = 1000;

/// `pipe ui --port 0` in the project, for as long as `f` runs against its address
/// (`127.0.0.1:PORT`, from its banner); stopped after.
pub(super) fn with_server<T>(pipe: &Pipe, f: impl FnOnce(&str) -> Result<T>) -> Result<T> {
    let log = pipe.project.join("ui.stderr");
    let mut server = pipe
        .command(&["ui", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let mut banner = String::new();
    BufReader::new(server.stdout.take().expect("piped")).read_line(&mut banner)?;
    let result = banner
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .map(|h| h.trim_end_matches('/').to_string())
        .ok_or_else(|| anyhow::anyhow!("no URL in `{banner}`"))
        .and_then(|host| f(&host));
    if let Ok(Some(status)) = server.try_wait() {
        // It should serve until killed: say how it ended, and what it said.
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!("warning: `pipe ui` ended early ({status}): {said}");
    }
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// The timings against a running server, printed as a table.
fn measure(pipe: &Pipe, host: &str, runs: usize, rounds: usize) -> Result<()> {
    let agent = agent();
    let (mut page, mut api, mut bytes) = (Vec::new(), Vec::new(), 0);
    for _ in 0..rounds.max(1) {
        let (s, status, n) = get(&agent, host, "/")?;
        anyhow::ensure!(status == 200, "GET / answered {status}");
        page.push(s);
        bytes = n;
        api.push(get(&agent, host, "/api/runs")?.0);
    }
    let (lat, svg) = live_latency(pipe, host, &agent)?;
    let browser = in_browser(host);
    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| runs | {runs} (random sweeps over a tiny pipeline, every point trained and evaluated) |"
    );
    println!(
        "| `GET /` (the runs page, {} KiB), median of {} | {:.1} ms (max {:.1} ms) |",
        bytes / 1024,
        page.len(),
        1e3 * median(page.clone()),
        1e3 * max(&page)
    );
    println!(
        "| `GET /api/runs`, median of {} | {:.1} ms (max {:.1} ms) |",
        api.len(),
        1e3 * median(api.clone()),
        1e3 * max(&api)
    );
    println!(
        "| epoch written -> its event at an open page, median of {} epochs | {:.0} ms (max {:.0} ms) |",
        lat.len(),
        1e3 * median(lat.clone()),
        1e3 * max(&lat)
    );
    println!(
        "| then the page's chart data (`GET /api/runs/slow/chart`), median | {:.1} ms (max {:.1} ms) |",
        1e3 * median(svg.clone()),
        1e3 * max(&svg)
    );
    match browser {
        Ok(b) => {
            println!(
                "| Chromium: the runs page's first contentful paint, median of {} loads | {:.0} ms (max {:.0} ms) |",
                b.paint.len(),
                median(b.paint.clone()),
                max(&b.paint)
            );
            println!(
                "| Chromium: the sweep page ({} points) interactive (parallel coordinates drawn, brushing attached), median of {} loads | {:.0} ms (max {:.0} ms) |",
                runs.min(PER_SWEEP),
                b.parallel.len(),
                median(b.parallel.clone()),
                max(&b.parallel)
            );
        }
        Err(e) => println!("| Chromium | not measured: {e:#} |"),
    }
    println!(
        "| the chart library embedded (ECharts 6.1.0, `echarts.min.js`) | {:.2} MB |",
        crate::ui::ECHARTS_BYTES as f64 / 1e6
    );
    Ok(())
}

/// What Chromium measured, in milliseconds from navigation.
struct InBrowser {
    paint: Vec<f64>,
    parallel: Vec<f64>,
}

/// Load the runs page and the sweep page in headless Chromium, 5 times each, with the
/// browser's own clocks: first contentful paint, and the sweep's chart ready.
fn in_browser(host: &str) -> Result<InBrowser> {
    let mut b = super::browser::Browser::start()?;
    let (mut paint, mut parallel) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        b.goto(&format!("http://{host}/"))?;
        paint.push(b.first_paint_ms()?);
        b.goto(&format!("http://{host}/sweep/many"))?;
        parallel.push(b.ready_ms("parallel")?);
    }
    Ok(InBrowser { paint, parallel })
}

/// Train `slow` in another process while reading its page's event stream: for each epoch
/// after the first, seconds from its `history.json` being written to its event arriving,
/// and the time to fetch the chart then.
fn live_latency(pipe: &Pipe, host: &str, agent: &ureq::Agent) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut trainer = pipe
        .command(&["run", "slow"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // The stream's lines, read on their own thread so that waiting can look at the trainer.
    let resp = agent
        .get(&format!("http://{host}/api/runs/slow/events"))
        .header("Accept", "text/event-stream")
        .call()?;
    let (tx, lines) = mpsc::channel::<(String, SystemTime)>();
    std::thread::spawn(move || {
        let reader = BufReader::new(resp.into_body().into_reader());
        for line in reader.lines().map_while(|l| l.ok()) {
            if tx.send((line, SystemTime::now())).is_err() {
                break;
            }
        }
    });
    let scratch = pipe.project.join(".pipe/scratch");
    let began = Instant::now();
    let (mut lat, mut svg, mut last) = (Vec::new(), Vec::new(), 0);
    while lat.len() < 10 {
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(300),
            "`slow` did not finish within 300 s"
        );
        let (line, arrived) = match lines.recv_timeout(Duration::from_secs(5)) {
            Ok(x) => x,
            // Quiet for a while (between epochs): look whether the trainer ended.
            Err(mpsc::RecvTimeoutError::Timeout) if trainer.try_wait()?.is_none() => continue,
            Err(_) => break,
        };
        let Some(data) = line.trim_end().strip_prefix("data: ") else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(data)?;
        let epochs = v["epochs"].as_u64().unwrap_or(0);
        if epochs <= last || v["live"]["running"] != true {
            continue;
        }
        // When the epoch was written: the newest history.json in the scratch.
        let written = std::fs::read_dir(&scratch)?
            .flatten()
            .filter_map(|e| std::fs::metadata(e.path().join("history.json")).ok())
            .filter_map(|m| m.modified().ok())
            .max();
        if let (Some(w), true) = (written, last > 0) {
            lat.push(arrived.duration_since(w).unwrap_or_default().as_secs_f64());
            svg.push(get(agent, host, "/api/runs/slow/chart")?.0);
        }
        last = epochs;
    }
    let _ = trainer.kill();
    let _ = trainer.wait();
    anyhow::ensure!(
        !lat.is_empty(),
        "no epoch event arrived while `slow` trained"
    );
    Ok((lat, svg))
}

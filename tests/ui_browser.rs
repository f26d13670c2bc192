//! `pipe ui` in a real browser: Debian's Chromium, headless, driven through WebDriver by
//! its own chromedriver (fantoccini). The demo's runs and sweeps over it are served; the
//! test sorts the runs table (headline metrics on screen at 1,400 px, best first), opens a
//! run by a click and counts its charts' points, compares three runs (each run's own lr
//! drop, smoothing checked against TensorBoard's formula, zoom followed by every chart),
//! brushes a 100-point sweep's parallel coordinates and sees the table follow, checks that
//! the DAG of tiny_imagenet_exp3 has no edge through a box, that a `<script>` description
//! renders as text and runs nothing, that the static export draws the same charts from
//! file:// under its own policy, and that `..` paths are refused, and watches a
//! training that another `pipe` process runs gain epochs with no reload, then turn its
//! stage table cached and close its stream, and sees a manifest added while the runs page
//! is open appear in its table. It saves a screenshot of each page (into
//! `$PIPE_UI_SHOTS`, else the test's scratch folder).
//!
//! The test command installs chromium and chromium-driver (scripts/bootstrap) and sets
//! `PIPE_REQUIRE_CHROMIUM=1`: there, a browser that cannot start fails the test. Run alone
//! without that variable and without Chromium, it is skipped saying so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};

const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER: &str = "/usr/bin/chromedriver";

struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver on a free port, or why not.
fn start_driver() -> Result<Driver, String> {
    for p in [CHROMIUM, DRIVER] {
        if !Path::new(p).exists() {
            return Err(format!(
                "{p} is missing (scripts/bootstrap installs Debian's chromium and chromium-driver)"
            ));
        }
    }
    let (child, port) = serve_on_free_port(DRIVER, |port| {
        Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {DRIVER}: {e}"))
    })?;
    Ok(Driver { child, port })
}

async fn browser(d: &Driver, profile: &Path) -> Result<Client, String> {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", d.port))
        .await
        .map_err(|e| format!("Chromium did not start through chromedriver: {e}"))
}

/// A browser, or (outside the test command) a skip with the reason.
async fn browser_or_skip(profile: &Path) -> Option<(Driver, Client)> {
    let required = std::env::var("PIPE_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1");
    let got = match start_driver() {
        Ok(d) => match browser(&d, profile).await {
            Ok(c) => Ok((d, c)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match got {
        Ok(x) => Some(x),
        Err(why) if required => {
            panic!("PIPE_REQUIRE_CHROMIUM=1 but the browser cannot start: {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

fn shots_dir() -> PathBuf {
    let d = std::env::var_os("PIPE_UI_SHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-shots"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
}

/// Poll `f` until it returns `Some`, for up to `secs`.
async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn js(c: &Client, script: &str) -> serde_json::Value {
    c.execute(script, vec![]).await.unwrap()
}

async fn points(c: &Client, selector: &str) -> usize {
    js(
        c,
        &format!("return document.querySelectorAll({selector:?}).length;"),
    )
    .await
    .as_u64()
    .unwrap() as usize
}

/// The open page's description shows its markup as text, and none of it ran.
async fn markup_is_text(c: &Client) {
    let text = c
        .find(Locator::Css("p.description"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("<script>window.__pwned = 1</script>"),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(js(c, "return window.__pwned === undefined;").await, true);
    assert_eq!(
        points(c, "p.description img, p.description script").await,
        0
    );
}

fn demo() -> String {
    repo_file("pipelines/demo.toml")
}

/// How many points the series `id` of chart `panel` ("loss", "acc", "lr") has.
async fn series_points(c: &Client, panel: &str, id: &str) -> i64 {
    js(
        c,
        &format!(
            "const o = window.PIPE && window.PIPE.curves && window.PIPE.curves.charts.{panel}.getOption();
             const s = o ? o.series.find(s => s.id === {id:?}) : null;
             return s ? s.data.length : -1;"
        ),
    )
    .await
    .as_i64()
    .unwrap()
}

/// Segments of the DAG's edges that pass through a stage box other than their own two
/// ends, from the drawn SVG's coordinates (empty: none).
const DAG_CROSSINGS: &str = r#"
const boxes = Array.from(document.querySelectorAll('svg.dag g.node')).map(g => {
  const r = g.querySelector('rect');
  return { name: g.dataset.stage, x: +r.getAttribute('x'), y: +r.getAttribute('y'),
           w: +r.getAttribute('width'), h: +r.getAttribute('height') };
});
const crosses = (b, a, c) => {
  const e = 1e-3, x0 = b.x + e, x1 = b.x + b.w - e, y0 = b.y + e, y1 = b.y + b.h - e;
  const dx = c[0] - a[0], dy = c[1] - a[1];
  let t0 = 0, t1 = 1;
  for (const [p, q] of [[-dx, a[0] - x0], [dx, x1 - a[0]], [-dy, a[1] - y0], [dy, y1 - a[1]]]) {
    if (p === 0) { if (q < 0) return false; }
    else { const r = q / p; if (p < 0) t0 = Math.max(t0, r); else t1 = Math.min(t1, r); if (t0 > t1) return false; }
  }
  return t1 - t0 > 1e-9;
};
const out = [];
for (const pl of document.querySelectorAll('svg.dag polyline.edge')) {
  const pts = pl.getAttribute('points').trim().split(/\s+/).map(p => p.split(',').map(Number));
  for (let i = 1; i < pts.length; i++)
    for (const b of boxes)
      if (b.name !== pl.dataset.from && b.name !== pl.dataset.to && crosses(b, pts[i - 1], pts[i]))
        out.push(pl.dataset.from + '->' + pl.dataset.to + ' through ' + b.name);
}
return { crossings: out, boxes: boxes.length, edges: document.querySelectorAll('svg.dag polyline.edge').length };
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let p = Project::with("demo.toml", &demo());
    p.manifest(
        "demo_lr.toml",
        "extends = \"demo.toml\"\nname = \"demo_lr\"\n\n[sweep.grid]\n\"drop.lr\" = [2e-4, 1e-3]\n",
    );
    p.manifest(
        "xss.toml",
        "extends = \"demo.toml\"\nname = \"xss\"\ndescription = \"<script>window.__pwned = 1</script><img src=x onerror=\\\"window.__pwned = 2\\\">\"\n",
    );
    // A longer training, watched while it runs: small batches, more epochs (enough that
    // the open page still finds it running two epochs after it is let go).
    p.manifest(
        "slow.toml",
        "extends = \"demo.toml\"\nname = \"slow\"\n\n[stages.train]\nepochs = 24\nbatch_size = 4\n",
    );
    // A 100-point sweep (not run: its points are brushed on their swept axes).
    let lrs: Vec<String> = (1..=10).map(|i| format!("{i}e-3")).collect();
    let drops: Vec<String> = (1..=10).map(|i| format!("{i}e-4")).collect();
    p.manifest(
        "grid.toml",
        &format!(
            "extends = \"demo.toml\"\nname = \"grid\"\n\n[sweep.grid]\n\"train.lr\" = [{}]\n\"drop.lr\" = [{}]\n",
            lrs.join(", "),
            drops.join(", ")
        ),
    );
    // The biggest shipped pipeline's graph, for its DAG.
    for dir in ["base", "networks"] {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("pipelines")
            .join(dir);
        let to = p.path().join("pipelines").join(dir);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&from).unwrap().flatten() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    p.manifest(
        "tiny_imagenet_exp3.toml",
        &repo_file("pipelines/tiny_imagenet_exp3.toml"),
    );
    let profile = tempfile::tempdir().unwrap();
    let Some((_driver, c)) = browser_or_skip(profile.path()).await else {
        return;
    };
    p.ok(&["run", "demo"]);
    p.ok(&["run", "demo_lr"]);
    let (ui, _) = Ui::start(&p, &[]);
    let base = ui.base.clone();

    // The runs table lists the demo's runs, and sorts, best first on a metric.
    c.goto(&format!("{base}/")).await.unwrap();
    let names: Vec<String> = js(
        &c,
        "return Array.from(document.querySelectorAll('#runs tbody tr')).map(r => r.dataset.name);",
    )
    .await
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_str().unwrap().to_string())
    .collect();
    for want in ["demo", "demo_lr@lr=2e-4", "demo_lr@lr=1e-3", "xss", "slow"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    // At 1,400 px the headline metrics are on screen without scrolling.
    let visible = js(
        &c,
        "return ['val loss', 'val acc'].map(h => { const th = document.querySelector(`#runs th[data-h='${h}']`); const r = th.getBoundingClientRect(); return [h, r.width > 0 && r.right <= window.innerWidth, window.innerWidth]; });",
    )
    .await;
    for v in visible.as_array().unwrap() {
        assert_eq!(v[1], true, "{v} is not on screen at 1,400 px");
    }
    let col = js(
        &c,
        "return Array.from(document.querySelectorAll('#runs thead th')).findIndex(h => h.textContent.trim() === 'val loss') - 1;",
    )
    .await
    .as_i64()
    .unwrap();
    assert!(col >= 0, "a val loss column");
    let header = c
        .find(Locator::Css(&format!("#runs thead th[data-col='{col}']")))
        .await
        .unwrap();
    let column = format!(
        "return Array.from(document.querySelectorAll('#runs tbody tr')).map(r => r.cells[{}].dataset.v).filter(v => v !== undefined).map(Number);",
        col + 1
    );
    header.click().await.unwrap();
    let up: Vec<f64> = serde_json::from_value(js(&c, &column).await).unwrap();
    assert!(up.len() >= 3, "{up:?}");
    assert!(
        up.windows(2).all(|w| w[0] <= w[1]),
        "lowest loss first: {up:?}"
    );
    header.click().await.unwrap();
    let down: Vec<f64> = serde_json::from_value(js(&c, &column).await).unwrap();
    assert!(
        down.windows(2).all(|w| w[0] >= w[1]),
        "descending: {down:?}"
    );
    shot(&c, "runs").await;

    // A manifest added while the page is open brings a column (its swept key): the
    // refreshed table takes the new heads with the new rows, so each cell stays under its
    // own head, and the sort stays on its column.
    let heads = "return document.querySelectorAll('#runs thead th').length;";
    let before = js(&c, heads).await.as_i64().unwrap();
    p.manifest(
        "mom.toml",
        "extends = \"demo.toml\"\nname = \"mom\"\n\n[sweep.grid]\n\"train.momentum\" = [0.5, 0.8]\n",
    );
    let cr = &c;
    let after = wait_for(60, "the new column", move || async move {
        let n = js(cr, heads).await.as_i64().unwrap();
        (n > before).then_some(n)
    })
    .await;
    let widths = js(
        &c,
        "return Array.from(document.querySelectorAll('#runs tbody tr')).map(r => r.cells.length);",
    )
    .await;
    for w in widths.as_array().unwrap() {
        assert_eq!(
            w.as_i64(),
            Some(after),
            "a row's cells against {after} heads"
        );
    }
    let sorted = js(
        &c,
        "const h = document.querySelector('#runs thead th[aria-sort]'); return h ? [h.textContent.trim(), h.getAttribute('aria-sort')] : null;",
    )
    .await;
    assert_eq!(sorted, serde_json::json!(["val loss", "descending"]));
    let col = js(
        &c,
        "return Array.from(document.querySelectorAll('#runs thead th')).findIndex(h => h.textContent.trim() === 'val loss');",
    )
    .await
    .as_i64()
    .unwrap();
    let column = format!(
        "return Array.from(document.querySelectorAll('#runs tbody tr')).map(r => r.cells[{col}].dataset.v).filter(v => v !== undefined).map(Number);"
    );
    let down: Vec<f64> = serde_json::from_value(js(&c, &column).await).unwrap();
    assert!(
        down.len() >= 3 && down.windows(2).all(|w| w[0] >= w[1]),
        "descending after the refresh: {down:?}"
    );

    // A click opens a run whose curve has one point per epoch (6 + 2).
    c.find(Locator::Css("#runs a[href='/run/demo']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let cr = &c;
    wait_for(10, "the run page", move || async move {
        cr.current_url()
            .await
            .ok()
            .filter(|u| u.path() == "/run/demo")
    })
    .await;
    wait_for(10, "the charts", move || async move {
        (series_points(cr, "loss", "demo/val_loss").await == 8).then_some(())
    })
    .await;
    assert_eq!(series_points(&c, "acc", "demo/train_acc").await, 8);
    assert_eq!(series_points(&c, "lr", "demo/lr").await, 8);
    assert_eq!(points(&c, "svg.dag g.node.state-cached").await, 6);
    assert_eq!(
        js(&c, "return document.body.dataset.events === undefined;").await,
        true,
        "a finished run opens no stream"
    );
    shot(&c, "run").await;

    // Compare three runs: overlaid, each with its own lr drop; smoothing; zoom.
    c.goto(&format!(
        "{base}/compare?run=demo&run=demo_lr%40lr%3D2e-4&run=demo_lr%40lr%3D1e-3"
    ))
    .await
    .unwrap();
    wait_for(10, "three runs on the chart", move || async move {
        (series_points(cr, "loss", "demo_lr@lr=1e-3/val_loss").await == 8).then_some(())
    })
    .await;
    let legend = js(
        &c,
        "return window.PIPE.curves.charts.loss.getOption().legend[0].data;",
    )
    .await;
    assert_eq!(
        legend,
        serde_json::json!(["demo", "demo_lr@lr=2e-4", "demo_lr@lr=1e-3"])
    );
    let drops = js(
        &c,
        "return window.PIPE.curves.charts.loss.getOption().series.filter(s => s.markLine).map(s => s.markLine.data.map(d => d.label.formatter)).flat();",
    )
    .await;
    assert_eq!(
        drops,
        serde_json::json!(["lr 2e-4", "lr 2e-4", "lr 1e-3"]),
        "each run's drop is labelled with its own lr"
    );
    // A schedule that moves the rate every epoch (cosine) is marked only where its next
    // segment starts; a step schedule's step is marked. (Drawn from data given to the
    // page's own charts, then the page's data put back.)
    let drops = js(
        &c,
        r##"const keep = window.PIPE.curves.data();
        const d = JSON.parse(JSON.stringify(keep));
        const e = (epoch, stage, lr) => ({ epoch, stage, lr, train_loss: 1, val_loss: 1, train_acc: 0.5, val_acc: 0.5, seconds: epoch });
        d.runs = [
          { name: "cosine", colour: "#1f77b4", epochs: [e(1, "t", 0.1), e(2, "t", 0.09), e(3, "t", 0.07), e(4, "t", 0.04), e(5, "d", 0.001), e(6, "d", 0.001)] },
          { name: "step", colour: "#d62728", epochs: [e(1, "t", 0.1), e(2, "t", 0.1), e(3, "t", 0.01), e(4, "t", 0.01)] },
        ];
        window.PIPE.curves.replace(d);
        const got = window.PIPE.curves.charts.loss.getOption().series.filter(s => s.markLine).map(s => s.markLine.data.map(x => x.label.formatter)).flat();
        window.PIPE.curves.replace(keep);
        return got;"##,
    )
    .await;
    assert_eq!(drops, serde_json::json!(["lr 1e-3", "lr 1e-2"]));
    // Smoothing: the slider moves, the raw curves fade behind the smoothed ones.
    let raw_first = js(&c, "return window.PIPE.curves.charts.loss.getOption().series.find(s => s.id === 'demo/val_loss').data.map(p => p[1]);").await;
    js(
        &c,
        "const s = document.getElementById('smooth'); s.value = '0.6'; s.dispatchEvent(new Event('input')); return 0;",
    )
    .await;
    let smoothed = js(&c, "return window.PIPE.curves.charts.loss.getOption().series.find(s => s.id === 'demo/val_loss').data.map(p => p[1]);").await;
    let (r, sm): (Vec<f64>, Vec<f64>) = (
        serde_json::from_value(raw_first).unwrap(),
        serde_json::from_value(smoothed).unwrap(),
    );
    assert_eq!(r.len(), sm.len());
    assert!(
        (r[0] - sm[0]).abs() < 1e-9,
        "debiased: the first point is kept"
    );
    // The EMA of TensorBoard: s_k = (0.6 m + 0.4 x_k), debiased by 1 - 0.6^k.
    let (mut m, mut want) = (0.0, Vec::new());
    for (k, x) in r.iter().enumerate() {
        m = 0.6 * m + 0.4 * x;
        want.push(m / (1.0 - 0.6f64.powi(k as i32 + 1)));
    }
    for (a, b) in sm.iter().zip(&want) {
        assert!((a - b).abs() < 1e-9, "{sm:?} vs {want:?}");
    }
    assert_eq!(
        points(&c, "#smooth-value").await,
        1,
        "the slider's value is shown"
    );
    assert!(
        js(&c, "return window.PIPE.curves.charts.loss.getOption().series.filter(s => s.id.endsWith('/raw')).length;").await.as_u64().unwrap() >= 6,
        "the raw curves stay, faded"
    );
    // Zoom: epochs 3-6 of 8 on the loss chart; the connected charts follow.
    js(
        &c,
        "window.PIPE.curves.charts.loss.dispatchAction({type: 'dataZoom', startValue: 3, endValue: 6}); return 0;",
    )
    .await;
    let zoomed = wait_for(10, "the zoom on every chart", move || async move {
        let v = js(
            cr,
            "return ['loss', 'acc', 'lr'].map(p => { const z = window.PIPE.curves.charts[p].getOption().dataZoom[0]; return [z.startValue, z.endValue]; });",
        )
        .await;
        (v.as_array()?.iter().all(|z| z[0] == 3 && z[1] == 6)).then_some(v)
    })
    .await;
    eprintln!("zoomed: {zoomed}");
    shot(&c, "compare").await;

    // The 2-point sweep: the best line on top.
    c.goto(&format!("{base}/sweep/demo_lr")).await.unwrap();
    wait_for(10, "the parallel coordinates", move || async move {
        (js(cr, "return !!(window.PIPE && window.PIPE.parallel);").await == true).then_some(())
    })
    .await;
    let series = js(
        &c,
        "return window.PIPE.parallel.chart.getOption().series.map(s => [s.id, s.data.length, s.z]);",
    )
    .await;
    assert_eq!(
        series,
        serde_json::json!([["points", 1, 1], ["pruned", 0, 2], ["best", 1, 10]])
    );
    // A point's tooltip is set as HTML: its name (a sweep's name is the user's) escaped.
    let tip = js(
        &c,
        "return window.PIPE.parallel.chart.getOption().tooltip[0].formatter({name: '<img src=x onerror=alert(1)>@a'});",
    )
    .await;
    assert_eq!(tip, "&lt;img src=x onerror=alert(1)&gt;@a");
    shot(&c, "sweep").await;

    // The 100-point sweep: brushing the train.lr axis to [3e-3, 5e-3] keeps 30 points in
    // the table (3 lrs x 10 drops); brushing drop.lr too keeps 3 x 2.
    c.goto(&format!("{base}/sweep/grid")).await.unwrap();
    wait_for(10, "the grid's parallel coordinates", move || async move {
        (js(cr, "return !!(window.PIPE && window.PIPE.parallel);").await == true).then_some(())
    })
    .await;
    assert_eq!(points(&c, "#points tbody tr").await, 100);
    assert_eq!(points(&c, "#points tbody tr.hidden").await, 0);
    let axes = js(
        &c,
        "return window.PIPE.parallel.chart.getOption().parallelAxis.map(a => [a.name, a.id]);",
    )
    .await;
    eprintln!("axes: {axes}");
    js(
        &c,
        "window.PIPE.parallel.chart.dispatchAction({type: 'axisAreaSelect', parallelAxisId: 'axis0', intervals: [[0.0029, 0.0051]]}); return 0;",
    )
    .await;
    let shown = wait_for(10, "the table to follow the brush", move || async move {
        let n = points(cr, "#points tbody tr:not(.hidden)").await;
        (n < 100).then_some(n)
    })
    .await;
    assert_eq!(shown, 30, "3 lrs x 10 drops");
    js(
        &c,
        "window.PIPE.parallel.chart.dispatchAction({type: 'axisAreaSelect', parallelAxisId: 'axis1', intervals: [[0.00015, 0.00035]]}); return 0;",
    )
    .await;
    let shown = wait_for(10, "the second brush", move || async move {
        let n = points(cr, "#points tbody tr:not(.hidden)").await;
        (n < 30).then_some(n)
    })
    .await;
    assert_eq!(shown, 6, "3 lrs x 2 drops");
    let kept: Vec<String> = serde_json::from_value(
        js(
            &c,
            "return Array.from(document.querySelectorAll('#points tbody tr:not(.hidden)')).map(r => r.dataset.name);",
        )
        .await,
    )
    .unwrap();
    for k in &kept {
        assert!(
            ["lr=3e-3", "lr=4e-3", "lr=5e-3"]
                .iter()
                .any(|l| k.contains(l)),
            "{k}"
        );
    }
    shot(&c, "sweep-brushed").await;

    // The DAG of tiny_imagenet_exp3: no edge passes through a stage's box.
    c.goto(&format!("{base}/run/tiny_imagenet_exp3"))
        .await
        .unwrap();
    let dag = js(&c, DAG_CROSSINGS).await;
    assert!(dag["boxes"].as_u64().unwrap() >= 8, "{dag}");
    assert!(dag["edges"].as_u64().unwrap() >= 8, "{dag}");
    assert_eq!(dag["crossings"], serde_json::json!([]), "{dag}");
    js(
        &c,
        "document.getElementById('stages').scrollIntoView(); return 0;",
    )
    .await;
    shot(&c, "dag").await;

    // A description holding markup is text, and nothing of it runs.
    c.goto(&format!("{base}/run/xss")).await.unwrap();
    markup_is_text(&c).await;

    // The static export, opened from file:// in the same browser: its charts draw from
    // the folder's own scripts (8 epochs, as served), its policy (a `<meta>`) blocks an
    // inline script put into the page, and the description's markup runs nothing there.
    let site = p.path().join("site");
    p.ok(&["ui", "--export", site.to_str().unwrap()]);
    let file_url = |rel: &str| format!("file://{}", site.join(rel).display());
    c.goto(&file_url("runs/demo.html")).await.unwrap();
    wait_for(30, "the exported page's chart", move || async move {
        (series_points(cr, "loss", "demo/val_loss").await == 8).then_some(())
    })
    .await;
    assert_eq!(series_points(&c, "lr", "demo/lr").await, 8);
    assert_eq!(
        points(&c, "meta[http-equiv='Content-Security-Policy']").await,
        1
    );
    assert_eq!(
        js(
            &c,
            "const s = document.createElement('script'); s.textContent = 'window.__inline = 1'; document.head.appendChild(s); return window.__inline === undefined;"
        )
        .await,
        true,
        "an inline script ran in the exported page"
    );
    shot(&c, "export-run").await;
    c.goto(&file_url("runs/xss.html")).await.unwrap();
    markup_is_text(&c).await;

    // `..` is refused (the browser sends the encoded form as is).
    c.goto(&format!("{base}/files/..%2f..%2f..%2fetc%2fpasswd"))
        .await
        .unwrap();
    let body = c
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("Not found") && !body.contains("root:"),
        "{body}"
    );

    // Live: another process trains `slow`; its open page gains epochs with no reload,
    // and when the training ends its stage table turns cached and the stream closes.
    // The training is held after its first epoch until the page is open and has drawn
    // it, so a slow page load cannot miss the training running.
    let hold = Hold::new();
    let mut trainer = p.cmd(&["run", "slow"]);
    hold.on(trainer
        .env("PIPE_FAULT", "train:epoch1")
        .stdout(Stdio::null())
        .stderr(Stdio::null()));
    let mut trainer = trainer.spawn().unwrap();
    let u = &ui;
    wait_for(120, "slow's first epoch", move || async move {
        let h = u.json("/api/runs/slow/history");
        (h["live"]["running"] == true && h["epochs"].as_array().is_some_and(|e| !e.is_empty()))
            .then_some(())
    })
    .await;
    c.goto(&format!("{base}/run/slow")).await.unwrap();
    js(&c, "window.__same_page = 1; return 0;").await;
    let first = wait_for(10, "the live chart", move || async move {
        let n = series_points(cr, "loss", "slow/val_loss").await;
        (n > 0).then_some(n)
    })
    .await;
    hold.release();
    let grown = wait_for(
        120,
        "two more epochs on the open page",
        move || async move {
            let n = series_points(cr, "loss", "slow/val_loss").await;
            (n >= first + 2).then_some(n)
        },
    )
    .await;
    let progress = c
        .find(Locator::Css("#progress"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(progress.contains("train running: epoch"), "{progress}");
    eprintln!("live: {first} -> {grown} epochs with no reload; {progress}");
    shot(&c, "live").await;
    let status = trainer.wait().unwrap();
    assert!(status.success(), "pipe run slow: {status}");
    let states = wait_for(60, "the stage table to turn cached", move || async move {
        let v = js(
            cr,
            "return Array.from(document.querySelectorAll('#stages table.stages tbody tr')).map(r => r.cells[2].textContent.trim());",
        )
        .await;
        let all: Vec<String> = serde_json::from_value(v).ok()?;
        (!all.is_empty() && all.iter().all(|s| s == "cached")).then_some(all)
    })
    .await;
    assert_eq!(states.len(), 6, "{states:?}");
    assert_eq!(
        points(&c, "svg.dag g.node.state-cached").await,
        6,
        "the DAG too"
    );
    assert_eq!(
        series_points(&c, "loss", "slow/val_loss").await,
        26,
        "24 + 2 epochs"
    );
    wait_for(10, "the stream to close", move || async move {
        (js(cr, "return document.body.dataset.closed === '1';").await == true).then_some(())
    })
    .await;
    assert_eq!(
        js(&c, "return window.__same_page;").await,
        1,
        "the page reloaded"
    );
    shot(&c, "live-done").await;

    // The runs page follows the project with no reload: a manifest added while it is
    // open appears in its table, and the sort shown is kept.
    c.goto(&format!("{base}/")).await.unwrap();
    js(&c, "window.__runs_page = 1; return 0;").await;
    let before = points(&c, "#runs tbody tr").await;
    p.manifest("late.toml", "extends = \"demo.toml\"\nname = \"late\"\n");
    wait_for(90, "the new manifest's row on the open runs page", move || async move {
        (points(cr, "#runs tbody tr[data-name='late']").await == 1).then_some(())
    })
    .await;
    assert_eq!(points(&c, "#runs tbody tr").await, before + 1);
    assert_eq!(
        js(&c, "return window.__runs_page;").await,
        1,
        "the runs page reloaded"
    );
    c.close().await.unwrap();
}

//! `pipe ui` in a real browser: Debian's Chromium, headless, driven through WebDriver by
//! its own chromedriver (fantoccini). The demo's runs and a sweep over it are served; the
//! test sorts the runs table, opens a run by a click and counts its curve's points, watches
//! a training that another `pipe` process runs gain epochs with no reload, compares two
//! runs, checks that a `<script>` description renders as text and runs nothing, and that
//! `..` paths are refused. It saves a screenshot of each page (into `$PIPE_UI_SHOTS`, else
//! the test's scratch folder).
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let port = free_port();
    let child = Command::new(DRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {DRIVER}: {e}"))?;
    let d = Driver { child, port };
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(20) {
            return Err(format!(
                "{DRIVER} did not listen on port {port} within 20 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(d)
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

fn demo() -> String {
    repo_file("pipelines/demo.toml")
}

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
    // A longer training, watched while it runs: small batches, many epochs.
    p.manifest(
        "slow.toml",
        "extends = \"demo.toml\"\nname = \"slow\"\n\n[stages.train]\nepochs = 60\nbatch_size = 4\n",
    );
    let profile = tempfile::tempdir().unwrap();
    let Some((_driver, c)) = browser_or_skip(profile.path()).await else {
        return;
    };
    p.ok(&["run", "demo"]);
    p.ok(&["run", "demo_lr"]);
    let (ui, _) = Ui::start(&p, &[]);
    let base = ui.base.clone();

    // The runs table lists the demo's runs, and sorts.
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
    assert!(up.windows(2).all(|w| w[0] <= w[1]), "ascending: {up:?}");
    header.click().await.unwrap();
    let down: Vec<f64> = serde_json::from_value(js(&c, &column).await).unwrap();
    assert!(
        down.windows(2).all(|w| w[0] >= w[1]),
        "descending: {down:?}"
    );
    shot(&c, "runs").await;

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
    assert_eq!(
        points(&c, "#curves g.series[data-metric='val_loss'] circle").await,
        8
    );
    assert_eq!(points(&c, "svg.dag g.node.state-cached").await, 6);
    shot(&c, "run").await;

    // Compare shows both runs' curves.
    c.goto(&format!("{base}/compare?run=demo&run=demo_lr%40lr%3D1e-3"))
        .await
        .unwrap();
    assert_eq!(
        points(&c, "#curves g.series[data-metric='val_acc']").await,
        2
    );
    assert_eq!(
        points(&c, "#curves g.series[data-metric='val_acc'] circle").await,
        16
    );
    shot(&c, "compare").await;

    // The sweep: parallel coordinates, one line per point, the best marked.
    c.goto(&format!("{base}/sweep/demo_lr")).await.unwrap();
    assert_eq!(points(&c, "svg.parallel polyline.pline").await, 2);
    assert_eq!(points(&c, "svg.parallel polyline.pline.best").await, 1);
    shot(&c, "sweep").await;

    // A description holding markup is text, and nothing of it runs.
    c.goto(&format!("{base}/run/xss")).await.unwrap();
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
    assert_eq!(js(&c, "return window.__pwned === undefined;").await, true);
    assert_eq!(
        points(&c, "p.description img, p.description script").await,
        0
    );

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

    // Live: another process trains `slow`; its open page gains epochs with no reload.
    let mut trainer = p
        .cmd(&["run", "slow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let u = &ui;
    wait_for(120, "slow's first epoch", move || async move {
        let h = u.json("/api/runs/slow/history");
        (h["live"]["running"] == true && h["epochs"].as_array().is_some_and(|e| !e.is_empty()))
            .then_some(())
    })
    .await;
    c.goto(&format!("{base}/run/slow")).await.unwrap();
    js(&c, "window.__same_page = 1; return 0;").await;
    let first = points(&c, "#curves g.series[data-metric='val_loss'] circle").await;
    let grown = wait_for(
        120,
        "two more epochs on the open page",
        move || async move {
            let n = points(cr, "#curves g.series[data-metric='val_loss'] circle").await;
            (n >= first + 2).then_some(n)
        },
    )
    .await;
    assert_eq!(
        js(&c, "return window.__same_page;").await,
        1,
        "the page reloaded"
    );
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
    let _ = trainer.kill();
    let _ = trainer.wait();
    c.close().await.unwrap();
}

//! A real browser for `pipe bench ui`: Debian's headless Chromium, driven through its
//! chromedriver by the W3C WebDriver protocol (plain JSON over HTTP, with the ureq client
//! the benchmarks already use). It loads a page and reads the browser's own clocks: the
//! first contentful paint from the Paint Timing API, and when the page's charts were
//! ready from `window.PIPE`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium session; the driver is stopped when dropped.
pub struct Browser {
    driver: Child,
    base: String,
    agent: ureq::Agent,
    /// Chromium's profile, removed when dropped.
    profile: std::path::PathBuf,
}

impl Browser {
    /// Start chromedriver and a Chromium session (an error saying so where there is no
    /// Chromium).
    pub fn start() -> Result<Browser> {
        if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(DRIVER).exists() {
            bail!("no {CHROMIUM} and {DRIVER} (scripts/bootstrap --with-browser installs them)");
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {DRIVER}"))?;
        let profile =
            std::env::temp_dir().join(format!("pipe-bench-chromium-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&profile)?;
        let mut b = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            // WebDriver answers errors as JSON with a status: read them, not fail on them.
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
            profile,
        };
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t.elapsed() > Duration::from_secs(20) {
                bail!("chromedriver did not listen within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({
            "capabilities": { "alwaysMatch": { "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                    format!("--user-data-dir={}", b.profile.display()),
                ],
            } } }
        });
        let v = b.post("/session", &caps)?;
        let id = v["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no session from chromedriver: {v}"))?
            .to_string();
        b.base = format!("{}/session/{id}", b.base);
        Ok(b)
    }

    fn post(&mut self, path: &str, body: &Value) -> Result<Value> {
        let mut resp = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .with_context(|| format!("WebDriver {path}"))?;
        let status = resp.status().as_u16();
        let v: Value = serde_json::from_slice(&resp.body_mut().read_to_vec()?)?;
        if status != 200 {
            bail!("WebDriver {path}: {status} {v}");
        }
        Ok(v)
    }

    /// Load `url` (WebDriver returns once the page has loaded).
    pub fn goto(&mut self, url: &str) -> Result<()> {
        self.post("/url", &json!({ "url": url }))?;
        Ok(())
    }

    /// Run `script` (a function body) in the page and return its value.
    pub fn js(&mut self, script: &str) -> Result<Value> {
        Ok(self.post("/execute/sync", &json!({ "script": script, "args": [] }))?["value"].take())
    }

    /// Milliseconds from navigation to the first contentful paint of the page loaded.
    pub fn first_paint_ms(&mut self) -> Result<f64> {
        let t = Instant::now();
        loop {
            let v = self.js(
                "const e = performance.getEntriesByName('first-contentful-paint')[0]; return e ? e.startTime : null;",
            )?;
            if let Some(ms) = v.as_f64() {
                return Ok(ms);
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("no first contentful paint within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Milliseconds from navigation until the page's `window.PIPE[what].ready` was set
    /// (its chart drawn and its handlers attached).
    pub fn ready_ms(&mut self, what: &str) -> Result<f64> {
        let t = Instant::now();
        loop {
            let v = self.js(&format!(
                "return window.PIPE && window.PIPE.{what} ? window.PIPE.{what}.ready : null;"
            ))?;
            if let Some(ms) = v.as_f64() {
                return Ok(ms);
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("`{what}` was not ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

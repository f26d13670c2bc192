//! `pipe ui` without a browser: its JSON against `pipe show --json`, `--export`'s pages and
//! their chart data, escaping, refused paths (as raw requests: a browser would normalise
//! `..` away) and hosts, 404s, loopback by default, and no write to the store from any
//! request. The
//! browser tests are in tests/ui_browser.rs.

mod common;

use std::io::{BufRead, BufReader};

use common::*;

/// A tiny pipeline (generated data, two short segments, an evaluation) whose description
/// is markup.
fn tiny() -> String {
    Generated::new("tiny")
        .description("<script>window.__pwned = 1</script><img src=x onerror=alert(1)> & co")
        .epochs(3)
        .drop("0.001", 2)
        .evaluate()
        .text()
}

/// The tiny pipeline and a two-point sweep over it, both run.
fn project() -> Project {
    let p = Project::with("tiny.toml", &tiny());
    p.manifest(
        "tiny_lr.toml",
        "extends = \"tiny.toml\"\nname = \"tiny_lr\"\n\n[sweep.grid]\n\"train.lr\" = [1e-2, 3e-2]\n",
    );
    p.ok(&["run", "tiny"]);
    p.ok(&["run", "tiny_lr"]);
    p
}

#[test]
fn the_json_endpoints_give_what_pipe_show_gives_and_no_request_writes() {
    let p = project();
    let before = listing(&p.cache());
    let (ui, banner) = Ui::start(&p, &[]);
    assert!(ui.base.starts_with("http://127.0.0.1:"), "{banner}");
    // The runs: the same rows as `pipe show --json`.
    let show = p.ok_json(&["show", "--json"]);
    let api = ui.json("/api/runs");
    assert_eq!(api, show);
    assert_eq!(api.as_array().unwrap().len(), 3, "tiny and two points");
    // One run: its curve has one record per epoch (3 + 2), its stages, its evaluation.
    let h = ui.json("/api/runs/tiny/history");
    assert_eq!(h["epochs"].as_array().unwrap().len(), 5);
    assert_eq!(h["epochs"][4]["stage"], "drop");
    let v = ui.json("/api/runs/tiny");
    assert_eq!(v["stages"].as_array().unwrap().len(), 5);
    assert_eq!(v["evals"][0]["confusion"].as_array().unwrap().len(), 3);
    let images: u64 = v["evals"][0]["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()))
        .sum();
    assert_eq!(images, 18, "every val image counted once");
    let mut first = show[0].clone();
    first.as_object_mut().unwrap().remove("best");
    assert_eq!(
        v["row"], first,
        "the run's own row (the best mark is the table's)"
    );
    // A point by its id, the sweep with its swept key.
    let pt = ui.json("/api/runs/tiny_lr@lr=3e-2/history");
    assert_eq!(pt["epochs"][0]["lr"], 0.03);
    let sw = ui.json("/api/sweeps/tiny_lr");
    assert_eq!(sw["keys"], serde_json::json!(["train.lr"]));
    assert_eq!(sw["points"].as_array().unwrap().len(), 2);
    // Its best point is the one `pipe show` marks.
    let best = |rows: &serde_json::Value| -> Vec<String> {
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["best"] == true && r["pipeline"].as_str().unwrap().starts_with("tiny_lr@")
            })
            .map(|r| r["pipeline"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(best(&sw["points"]), best(&show), "{sw}");
    assert_eq!(best(&show).len(), 1, "{show}");
    // Pages render.
    for path in [
        "/",
        "/run/tiny",
        "/run/tiny_lr@lr=1e-2",
        "/api/runs/tiny/chart",
        "/sweep/tiny_lr",
        "/compare?run=tiny&run=tiny_lr%40lr%3D3e-2",
        "/assets/ui.js",
        "/assets/charts.js",
        "/assets/echarts.min.js",
        "/assets/echarts.LICENSE.txt",
    ] {
        let (status, body) = ui.get(path);
        assert_eq!(status, 200, "{path}: {body}");
    }
    // No request wrote anything.
    drop(ui);
    assert_eq!(before, listing(&p.cache()), "a request changed the store");
}

#[test]
fn user_strings_are_escaped_and_paths_out_of_the_store_refused() {
    let p = project();
    let (ui, _) = Ui::start(&p, &[]);
    let (status, page) = ui.get("/run/tiny");
    assert_eq!(status, 200);
    assert!(
        page.contains("&lt;script&gt;window.__pwned = 1&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt; &amp; co"),
        "the description is shown as text"
    );
    assert!(!page.contains("<script>window") && !page.contains("<img src=x"));
    // The page allows no script but the dashboard's own.
    let head = ui.raw("/");
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    // A real artifact, then every way out of it.
    let v = ui.json("/api/runs/tiny");
    let a = v["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["stage"] == "evaluate")
        .unwrap();
    let out = a["output"].as_str().unwrap();
    let (status, body) = ui.get(&format!("/files/{out}/metrics.json"));
    assert_eq!(status, 200);
    assert!(body.contains("\"rank\""), "{body}");
    for bad in [
        format!("/files/{out}/../../../../../../etc/passwd"),
        format!("/files/{out}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
        format!("/files/{out}/..%2f..%2f..%2f..%2fetc%2fpasswd"),
        format!("/files/{out}/..%5c..%5cetc%5cpasswd"),
        "/files/../../etc/passwd".to_string(),
        "/run/..%2F..%2F..%2Fetc%2Fpasswd".to_string(),
        "/assets/..%2f..%2fCargo.toml".to_string(),
        "/files/0000000000000000000000000000000000000000000000000000000000000000/x".to_string(),
        "/run/%2Fetc%2Fpasswd".to_string(),
    ] {
        let (status, body) = ui.get(&bad);
        assert_eq!(status, 404, "{bad}: {body}");
        assert!(!body.contains("root:"), "{bad}");
        assert!(body.contains("Not found"), "{bad}: {body}");
    }
    // Unknown things are 404 pages.
    for unknown in [
        "/run/nope",
        "/sweep/nope",
        "/api/runs/nope",
        "/nope",
        "/compare?run=nope",
    ] {
        let (status, body) = ui.get(unknown);
        assert_eq!(status, 404, "{unknown}");
        assert!(body.contains("Not found"), "{unknown}: {body}");
    }
    // One request compares a bounded number of runs (each costs a decision walk).
    let many = format!("/compare?{}", vec!["run=tiny"; 25].join("&"));
    let (status, body) = ui.get(&many);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("at most 24 runs at once (25 asked)"),
        "{body}"
    );
}

/// The JSON data block `id` of a page.
fn data_block(page: &str, id: &str) -> serde_json::Value {
    let open = format!("<script type=\"application/json\" id=\"{id}\">");
    let at = page.find(&open).unwrap_or_else(|| panic!("no {id} block")) + open.len();
    let end = page[at..].find("</script>").unwrap() + at;
    serde_json::from_str(&page[at..end]).unwrap()
}

#[test]
fn export_writes_pages_whose_charts_hold_one_point_per_epoch() {
    let p = project();
    let before = listing(&p.cache());
    let out = p.path().join("site");
    let o = p.ok(&["ui", "--export", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("wrote"));
    assert_eq!(before, listing(&p.cache()), "export changed the store");
    // A folder that is not an earlier export is refused and left as it was.
    let mine = p.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep").unwrap();
    let e = p.fails(&["ui", "--export", mine.to_str().unwrap()]);
    assert!(
        e.contains("is not empty and is no earlier `pipe ui --export`"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);
    // An earlier export is replaced whole: a page no run has now is gone, and nothing of
    // the new one is left beside the folder.
    std::fs::write(out.join("runs/gone.html"), "old").unwrap();
    p.ok(&["ui", "--export", out.to_str().unwrap()]);
    assert!(!out.join("runs/gone.html").exists());
    assert!(out.join(".pipe-export").is_file());
    let working: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".pipe-export-"))
        .collect();
    assert!(working.is_empty(), "{working:?}");
    // What an export killed part-way leaves inside the folder (its new pages half
    // written, the earlier entries half moved aside) is cleared by the next one.
    for left in [".pipe-export-new/runs", ".pipe-export-old/runs"] {
        std::fs::create_dir_all(out.join(left)).unwrap();
        std::fs::write(out.join(left).join("half.html"), "half").unwrap();
    }
    p.ok(&["ui", "--export", out.to_str().unwrap()]);
    for left in [".pipe-export-new", ".pipe-export-old"] {
        assert!(!out.join(left).exists(), "{left}");
    }
    assert!(!out.join("runs/half.html").exists());
    assert!(out.join("runs/tiny.html").is_file());
    let page = std::fs::read_to_string(out.join("runs/tiny.html")).unwrap();
    let d = data_block(&page, "curve-data");
    let epochs = d["runs"][0]["epochs"].as_array().unwrap();
    assert_eq!(d["runs"][0]["name"], "tiny");
    assert_eq!(epochs.len(), 5, "3 + 2 epochs");
    let lrs: Vec<f64> = epochs.iter().map(|e| e["lr"].as_f64().unwrap()).collect();
    assert_eq!(lrs[2], 0.01);
    assert_eq!(lrs[3], 0.001, "the drop, where the chart draws it");
    for metric in ["train_loss", "val_loss", "train_acc", "val_acc"] {
        assert!(
            epochs
                .iter()
                .all(|e| e[metric].as_f64().is_some_and(f64::is_finite)),
            "{metric}"
        );
    }
    assert!(
        epochs.iter().all(|e| e["seconds"].as_f64().unwrap() > 0.0),
        "every epoch has its wall time: {epochs:?}"
    );
    // So does each recorded run's page (its timings are read beside its curves).
    let mut recorded = 0;
    for e in std::fs::read_dir(out.join("journal")).unwrap().flatten() {
        let page = std::fs::read_to_string(e.path()).unwrap();
        if !page.contains("id=\"curve-data\"") {
            continue;
        }
        let d = data_block(&page, "curve-data");
        let epochs = d["runs"][0]["epochs"].as_array().unwrap();
        assert_eq!(epochs.len(), 5, "{}", e.path().display());
        assert!(
            epochs.iter().all(|e| e["seconds"].as_f64().unwrap() > 0.0),
            "a recorded run's epochs have their wall times: {epochs:?}"
        );
        recorded += 1;
    }
    assert!(recorded >= 1, "no recorded run's page with curves");
    assert!(d["live"].is_null(), "an exported page fetches nothing");
    assert!(!page.contains("data-events"), "nor opens a stream");
    // The page loads the chart library and its script from the folder: it works offline.
    for asset in ["ui.css", "ui.js", "charts.js", "echarts.min.js"] {
        assert!(page.contains(&format!("\"../assets/{asset}\"")), "{asset}");
        assert!(out.join("assets").join(asset).is_file(), "{asset}");
    }
    assert!(out.join("assets/echarts.LICENSE.txt").is_file());
    // Artifact files are copied beside the pages and linked relatively: the folder works
    // wherever it is copied.
    let moved = p.path().join("moved-site");
    std::fs::rename(&out, &moved).unwrap();
    let page = std::fs::read_to_string(moved.join("runs/tiny.html")).unwrap();
    assert!(!page.contains("file://"), "no absolute link");
    let link = page
        .split("href=\"../files/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a relative artifact link")
        .to_string();
    let copied = moved.join("files").join(&link);
    let (output, rel) = link.split_once('/').unwrap();
    let original = p.cache().join("artifacts").join(output).join(rel);
    assert_eq!(
        std::fs::read(&copied).unwrap(),
        std::fs::read(&original).unwrap(),
        "{link}"
    );
    let index = std::fs::read_to_string(moved.join("index.html")).unwrap();
    assert!(
        !index.contains("compare selected"),
        "no control that needs a server"
    );
    std::fs::rename(&moved, &out).unwrap();
    // Exported again over a folder where that file is now a link elsewhere: the link is
    // replaced, and what it pointed at is left alone.
    let victim = p.path().join("victim.txt");
    std::fs::write(&victim, "mine").unwrap();
    let at = out.join("files").join(&link);
    std::fs::remove_file(&at).unwrap();
    std::os::unix::fs::symlink(&victim, &at).unwrap();
    p.ok(&["ui", "--export", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "mine");
    assert!(!std::fs::symlink_metadata(&at).unwrap().is_symlink());
    assert_eq!(
        std::fs::read(&at).unwrap(),
        std::fs::read(&original).unwrap()
    );
    let echarts = std::fs::read(out.join("assets/echarts.min.js")).unwrap();
    assert!(echarts.len() > 500_000, "the real library");
    let index = std::fs::read_to_string(out.join("index.html")).unwrap();
    for run in [
        "runs/tiny.html",
        "runs/tiny_lr@lr=1e-2.html",
        "sweeps/tiny_lr.html",
    ] {
        assert!(index.contains(&format!("href=\"{run}\"")), "{run}");
        assert!(out.join(run).is_file(), "{run}");
    }
    let sweep = std::fs::read_to_string(out.join("sweeps/tiny_lr.html")).unwrap();
    let par = data_block(&sweep, "parallel-data");
    assert_eq!(par["lines"].as_array().unwrap().len(), 2);
    assert_eq!(
        par["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["best"] == true)
            .count(),
        1
    );
    assert_eq!(par["axes"][0]["name"], "lr");
    assert_eq!(
        par["axes"].as_array().unwrap().len(),
        2,
        "lr and the metric"
    );
    // The journal is exported too: its page lists the three recorded runs, each with its
    // own page, linked relatively, with the run's curves as it ran.
    let runs = p.ok_json(&["runs", "--json"]);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 3, "tiny and two points");
    let journal = std::fs::read_to_string(out.join("journal.html")).unwrap();
    assert!(
        index.contains("href=\"journal.html\""),
        "the runs page links it"
    );
    for r in runs {
        let id = r["id"].as_str().unwrap();
        assert!(
            journal.contains(&format!("href=\"journal/{id}.html\"")),
            "{id}"
        );
        let page = std::fs::read_to_string(out.join(format!("journal/{id}.html"))).unwrap();
        assert!(page.contains(&format!("pipe run --from {id}")), "{id}");
        let d = data_block(&page, "curve-data");
        assert_eq!(d["runs"][0]["name"], r["pipeline"]);
        assert_eq!(d["runs"][0]["epochs"].as_array().unwrap().len(), 5, "{id}");
        assert!(page.contains("\"../assets/charts.js\""), "{id}");
    }
}

#[test]
fn only_this_dashboards_host_is_answered() {
    let p = Project::with("tiny.toml", &tiny());
    let (ui, _) = Ui::start(&p, &["--allow-host", "pipe.lan"]);
    let port = ui.base.rsplit(':').next().unwrap().to_string();
    let status = |text: &str| -> u16 {
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    };
    for ok in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_string(),
        format!("[::1]:{port}"),
        format!("app.localhost:{port}"),
        format!("PIPE.LAN:{port}"),
        "pipe.lan".to_string(),
    ] {
        let r = ui.raw_as("/api/runs", &ok);
        assert_eq!(status(&r), 200, "{ok}: {r}");
    }
    for bad in [
        "attacker.example".to_string(),
        format!("attacker.example:{port}"),
        format!("localhost.attacker.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("10.1.2.3:{port}"),
        "pipe.lan.evil".to_string(),
        "localhost:80:80".to_string(),
        "[::1".to_string(),
        String::new(),
    ] {
        let r = ui.raw_as("/api/runs", &bad);
        assert!(matches!(status(&r), 403 | 400), "{bad}: {r}");
        assert!(!r.contains("\"pipeline\""), "{bad}: no data");
    }
    let r = ui.raw_as("/", "attacker.example");
    assert!(
        r.contains("refused: the Host `attacker.example` is not this dashboard")
            && r.contains("--allow-host"),
        "{r}"
    );
    drop(ui);
    // `--bind localhost` listens on loopback.
    let (ui, banner) = Ui::start(&p, &["--bind", "localhost"]);
    assert!(ui.base.starts_with("http://127.0.0.1:"), "{banner}");
    assert_eq!(ui.get("/api/runs").0, 200);
    // A name that does not resolve is a clear error, not a panic.
    let o = p
        .cmd(&["ui", "--bind", "no-such-host.invalid", "--port", "0"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--bind no-such-host.invalid"), "{err}");
}

#[test]
fn a_linked_artifact_folder_and_every_traversal_are_refused() {
    let p = project();
    // An artifact folder that is a link out of the store (never sealed): nothing of it.
    let fake = "ab".repeat(32);
    std::os::unix::fs::symlink("/etc", p.cache().join("artifacts").join(&fake)).unwrap();
    let (ui, _) = Ui::start(&p, &[]);
    for path in [
        format!("/files/{fake}/passwd"),
        format!("/files/{fake}/hostname"),
    ] {
        let (status, body) = ui.get(&path);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("root:"), "{path}");
    }
    // A sealed artifact with a file swapped for a link out: refused too.
    let v = ui.json("/api/runs/tiny");
    let out = v["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["stage"] == "evaluate")
        .unwrap()["output"]
        .as_str()
        .unwrap()
        .to_string();
    let metrics = p.cache().join("artifacts").join(&out).join("metrics.json");
    let (status, _) = ui.get(&format!("/files/{out}/metrics.json"));
    assert_eq!(status, 200);
    let kept = std::fs::read(&metrics).unwrap();
    std::fs::remove_file(&metrics).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &metrics).unwrap();
    let (status, body) = ui.get(&format!("/files/{out}/metrics.json"));
    assert!(status == 409 || status == 404, "{status}: {body}");
    assert!(!body.contains("root:"));
    std::fs::remove_file(&metrics).unwrap();
    std::fs::write(&metrics, kept).unwrap();
    // Every spelling of a way out, on every route that takes a path: 404, nothing read.
    let ways = [
        "../../../../etc/passwd",
        "..%2f..%2f..%2f..%2fetc%2fpasswd",
        "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
        "%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..%5c..%5c..%5c..%5cetc%5cpasswd",
        "..\\..\\..\\..\\etc\\passwd",
        ".%2e/.%2e/.%2e/.%2e/etc/passwd",
        "%2e./%2e./%2e./%2e./etc/passwd",
        "..%00/etc/passwd",
        "%00",
        "./../../../../etc/passwd",
        "%2fetc%2fpasswd",
        "%2Fetc%2Fpasswd",
        "..;/..;/..;/etc/passwd",
    ];
    let mut n = 0;
    for prefix in [
        format!("/files/{out}/"),
        "/run/".to_string(),
        "/assets/".to_string(),
    ] {
        for way in ways {
            let path = format!("{prefix}{way}");
            let (status, body) = ui.get(&path);
            assert!(status == 404 || status == 400, "{path}: {status} {body}");
            assert!(!body.contains("root:"), "{path}");
            n += 1;
        }
    }
    // And the bare ones.
    for path in ["/files/../../etc/passwd", "/../../etc/passwd"] {
        let (status, body) = ui.get(path);
        assert!(status == 404 || status == 400, "{path}: {status}");
        assert!(!body.contains("root:"), "{path}");
        n += 1;
    }
    assert!(n >= 47, "{n} variants");
}

#[test]
fn another_address_than_loopback_is_said_out_loud() {
    let p = Project::with("tiny.toml", &tiny());
    let mut child = Ui::spawn(&p, &["--bind", "0.0.0.0"]);
    let mut err = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut err)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        err.contains("warning") && err.contains("not loopback"),
        "{err}"
    );
}

#[test]
fn a_history_being_written_never_breaks_a_page() {
    let p = project();
    // A training that has not finished: its key's scratch holds what it wrote so far.
    p.manifest(
        "longer.toml",
        "extends = \"tiny.toml\"\nname = \"longer\"\n\n[stages.train]\nepochs = 9\n",
    );
    let (ui, _) = Ui::start(&p, &[]);
    let v = ui.json("/api/runs/longer");
    let key = stage(&v, "train")["key"]
        .as_str()
        .expect("the training's key is known: its input is cached")
        .to_string();
    let scratch = p.cache().join("scratch").join(&key);
    std::fs::create_dir_all(&scratch).unwrap();
    let epoch = |e: usize| {
        format!(
            "{{\"epoch\":{e},\"stage\":\"train\",\"lr\":0.01,\"train_loss\":1.0,\"train_acc\":0.5,\"val_loss\":1.1,\"val_acc\":0.4}}"
        )
    };
    // Half a file: nothing to show yet, and every page still answers.
    let whole = format!("[{},{}]", epoch(1), epoch(2));
    std::fs::write(scratch.join("history.json"), &whole[..whole.len() / 2]).unwrap();
    for path in [
        "/run/longer",
        "/api/runs/longer/chart",
        "/api/runs/longer",
        "/",
    ] {
        assert_eq!(ui.get(path).0, 200, "{path}");
    }
    assert_eq!(
        ui.json("/api/runs/longer/history")["epochs"],
        serde_json::json!([])
    );
    // The whole file: two epochs, and no process holds the training: it stopped there.
    std::fs::write(scratch.join("history.json"), &whole).unwrap();
    let h = ui.json("/api/runs/longer/history");
    assert_eq!(h["epochs"].as_array().unwrap().len(), 2);
    assert_eq!(h["live"]["epoch"], 2);
    assert_eq!(h["live"]["last_epoch"], 9);
    assert_eq!(h["live"]["running"], false);
    let (_, page) = ui.get("/run/longer");
    assert!(page.contains("train stopped at epoch 2 of 9"), "{page}");
}

/// A connection that sends nothing is closed after the idle limit (`PIPE_UI_IDLE_SECS`),
/// so silent clients cannot hold every file descriptor; and Ctrl-C stops the dashboard
/// while a live page's event stream is open (the stream never ends by itself).
#[test]
fn a_silent_connection_is_closed_and_ctrl_c_stops_the_server_with_a_stream_open() {
    use std::io::{Read, Write};
    let p = project();
    let (mut ui, _) = Ui::start_env(&p, &[], &[("PIPE_UI_IDLE_SECS", "2")]);
    let addr = ui.base.trim_start_matches("http://").to_string();
    // Silent: closed by the server (end of file) after about two seconds.
    let mut silent = std::net::TcpStream::connect(&addr).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let t = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    let waited = t.elapsed();
    assert_eq!(n, 0, "the server said something to a silent client");
    assert!(
        waited >= std::time::Duration::from_millis(1500)
            && waited < std::time::Duration::from_secs(15),
        "closed after {waited:?}"
    );
    // A request begun and not finished (the client sent something): the server waits
    // longer for it than for a client that said nothing.
    let mut partial = std::net::TcpStream::connect(&addr).unwrap();
    write!(partial, "GET / HTTP/1.1\r\n").unwrap();
    partial
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let e = partial.read(&mut buf).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "closed after 5 s: {e}"
    );
    drop(partial);
    // A head that trickles in, a byte every 200 ms (slowloris): each byte does not buy
    // more time; the connection is closed three idle limits (6 s) after the first.
    let mut trickle = std::net::TcpStream::connect(&addr).unwrap();
    trickle
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let t = std::time::Instant::now();
    // It starts with empty lines, which the parser skips and which end no head.
    let head = b"\r\n\r\nGET / HTTP/1.1\r\nX-Slow: "
        .iter()
        .chain(std::iter::repeat(&b'a'));
    let mut closed = None;
    for &b in head {
        if trickle.write_all(&[b]).is_err() {
            closed = Some(t.elapsed());
            break;
        }
        match trickle.read(&mut buf) {
            Ok(0) | Err(_) if t.elapsed() > std::time::Duration::from_secs(30) => break,
            Ok(0) => {
                closed = Some(t.elapsed());
                break;
            }
            Ok(_) => panic!("the server answered a head that never ended"),
            Err(_) => {}
        }
    }
    let closed = closed.expect("a trickling head held its connection for 30 s");
    assert!(
        closed >= std::time::Duration::from_secs(5) && closed < std::time::Duration::from_secs(15),
        "closed after {closed:?}"
    );
    // An event stream, open (its head read), then SIGINT: the process ends.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET /api/runs/tiny/events HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let kill = std::process::Command::new("kill")
        .args(["-INT", &ui.process().id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let t = std::time::Instant::now();
    loop {
        if let Some(status) = ui.process().try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "pipe ui still running 10 s after Ctrl-C with a stream open"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

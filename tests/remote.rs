//! The remote cache against a real S3 server: a single-node Garage on loopback
//! (`scripts/garage-up`). Two projects with their own stores stand for two machines that
//! share only the remote. These tests fail, not skip, under `PIPE_REQUIRE_GARAGE=1` when
//! the server cannot start.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use common::*;

/// One test at a time: the request counts are the server's, for all its clients.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh prefix in the test bucket: each test its own remote.
fn remote_url(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3://pipe/{test}-{nanos}")
}

/// `pipe args` in `p` with the Garage credentials and `--remote url`: its output.
fn with_remote(p: &Project, env: &BTreeMap<String, String>, url: &str, args: &[&str]) -> Command {
    let mut c = p.cmd(&["--remote", url]);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn ok(mut c: Command) -> (String, String) {
    let out = c.output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "failed:\n{so}\n{se}");
    (so, se)
}

fn run_json(c: Command) -> (serde_json::Value, String) {
    let (so, se) = ok(c);
    (
        serde_json::from_str(&so).unwrap_or_else(|e| panic!("{e}: {so}")),
        se,
    )
}

/// The tiny pipeline: generated images, hdf5, a training of 2 epochs, an evaluation.
fn manifest() -> String {
    Generated::new("g").evaluate().text()
}

/// The S3 requests Garage has answered so far (its own Prometheus counter).
fn server_requests(env: &BTreeMap<String, String>) -> u64 {
    use std::io::{Read, Write};
    let host = env["PIPE_GARAGE_ADMIN"].trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    text.lines()
        .filter(|l| l.starts_with("api_s3_request_counter"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn keys_of(report: &serde_json::Value) -> Vec<(String, String)> {
    string_pairs(&report["stages"], "name", "key")
}

#[test]
fn a_second_machine_fetches_every_stage_and_an_edit_pushes_only_what_changed() {
    let Some(env) = garage() else { return };
    let _one = serial();
    let url = remote_url("share");
    let a = Project::with("g.toml", &manifest());
    let (ra, _) = run_json(with_remote(&a, env, &url, &["run", "g", "--json"]));
    assert!(states(&ra).iter().all(|(_, s)| s == "ran"), "{ra}");

    // Machine B: its own empty store, the same manifest and remote. Nothing is computed.
    let b = Project::with("g.toml", &manifest());
    let (rb, said) = run_json(with_remote(&b, env, &url, &["run", "g", "--json"]));
    for (stage, state) in states(&rb) {
        assert_eq!(state, "fetched", "{stage}: {said}");
    }
    assert_eq!(keys_of(&ra), keys_of(&rb));
    assert!(
        string_pairs(&rb["stages"], "name", "summary")
            .iter()
            .all(|(_, s)| s.contains(&format!("from {url}"))),
        "{rb}"
    );
    // What B fetched is B's now: a second run is a no-op, and verify finds it sound.
    let (again, _) = run_json(with_remote(&b, env, &url, &["run", "g", "--json"]));
    assert!(states(&again).iter().all(|(_, s)| s == "cached"), "{again}");
    b.ok(&["verify"]);

    // An edit on B: the training and the evaluation run again, and are pushed; A then
    // fetches exactly those.
    b.manifest("g.toml", &manifest().replace("lr = 0.01", "lr = 0.02"));
    let (rb2, _) = run_json(with_remote(&b, env, &url, &["run", "g", "--json"]));
    let ran: Vec<String> = states(&rb2)
        .into_iter()
        .filter(|(_, s)| s == "ran")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(ran, ["train", "evaluate"], "{rb2}");
    a.manifest("g.toml", &manifest().replace("lr = 0.01", "lr = 0.02"));
    let (ra2, _) = run_json(with_remote(&a, env, &url, &["run", "g", "--json"]));
    let st: BTreeMap<String, String> = states(&ra2).into_iter().collect();
    assert_eq!(st["train"], "fetched", "{ra2}");
    assert_eq!(st["evaluate"], "fetched", "{ra2}");
    assert_eq!(st["hdf5"], "cached", "{ra2}");
    assert_eq!(keys_of(&ra2), keys_of(&rb2));

    // The run records went along: A pulls B's and lists them.
    ok(with_remote(&a, env, &url, &["pull", "g"]));
    let runs = a.ok_json(&["runs", "g", "--json"]);
    let hosts_runs: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let b_ids = b.ok_json(&["runs", "g", "--json"]);
    for r in b_ids.as_array().unwrap() {
        let fetched_or_ran = r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["state"] == "ran" || s["state"] == "fetched");
        if fetched_or_ran {
            assert!(hosts_runs.contains(&r["id"].as_str().unwrap()), "{r}");
        }
    }
}

#[test]
fn status_says_in_remote_and_pull_only_final_is_enough_to_predict() {
    let Some(env) = garage() else { return };
    let _one = serial();
    let url = remote_url("final");
    let a = Project::with("g.toml", &manifest());
    ok(with_remote(&a, env, &url, &["run", "g"]));

    let c = Project::with("g.toml", &manifest());
    let (text, _) = ok(with_remote(&c, env, &url, &["status", "g"]));
    assert_eq!(text.matches("in remote:").count(), 4, "{text}");
    let (_, said) = ok(with_remote(&c, env, &url, &["pull", "g", "--only-final"]));
    assert!(said.contains("fetched 2 artifact(s)"), "{said}");
    // Only the model and the evaluation are in the store.
    assert_eq!(artifact_names(&c.cache()).len(), 2, "{said}");
    // An image of the generated data (16x16 RGB) classified with the pulled model.
    let img = c.path().join("x.png");
    image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([(x * 16) as u8, (y * 16) as u8, 90])
    })
    .save(&img)
    .unwrap();
    let (out, err) = ok(with_remote(
        &c,
        env,
        &url,
        &["predict", "g", img.to_str().unwrap(), "--json"],
    ));
    let line = out.lines().next().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let top = &v["top"];
    assert_eq!(top.as_array().unwrap().len(), 3, "{v}");
    let p: f64 = top
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["p"].as_f64().unwrap())
        .sum();
    assert!((p - 1.0).abs() < 1e-3, "{v}");
}

#[test]
fn a_damaged_remote_object_is_refused_and_the_stage_computed_here() {
    let Some(env) = garage() else { return };
    let _one = serial();
    let url = remote_url("damaged");
    let a = Project::with("g.toml", &manifest());
    let (ra, _) = run_json(with_remote(&a, env, &url, &["run", "g", "--json"]));
    // One byte of the trained weights changed in the bucket, through the S3 API.
    let train = a.artifact(&ra, "train");
    let output = train.file_name().unwrap().to_str().unwrap().to_string();
    let object = format!(
        "{}/artifacts/{output}/model.safetensors",
        url.trim_start_matches("s3://pipe/")
    );
    let mut bytes = std::fs::read(train.join("model.safetensors")).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x40;
    put_object(env, &object, bytes);

    let b = Project::with("g.toml", &manifest());
    let (rb, said) = run_json(with_remote(&b, env, &url, &["run", "g", "--json"]));
    assert!(said.contains("model.safetensors is damaged"), "{said}");
    assert!(said.contains("refused; the stage runs here"), "{said}");
    let st: BTreeMap<String, String> = states(&rb).into_iter().collect();
    assert_eq!(st["train"], "ran", "{rb}");
    assert_eq!(st["hdf5"], "fetched", "{rb}");
    assert_eq!(keys_of(&ra), keys_of(&rb));
    // `pipe verify --remote` finds it too, and fails.
    let out = with_remote(&b, env, &url, &["verify"]).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("DAMAGED") && text.contains("model.safetensors"),
        "{text}"
    );
}

/// Write `bytes` as object `key` of the test bucket (Garage's S3 API, signed with the
/// test key), as a damaged or hand-made object would be.
fn put_object(env: &BTreeMap<String, String>, key: &str, bytes: Vec<u8>) {
    use object_store::ObjectStoreExt;
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&env["AWS_ENDPOINT_URL"])
        .with_region(&env["AWS_REGION"])
        .with_access_key_id(&env["AWS_ACCESS_KEY_ID"])
        .with_secret_access_key(&env["AWS_SECRET_ACCESS_KEY"])
        .with_bucket_name(&env["PIPE_GARAGE_BUCKET"])
        .with_allow_http(true)
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(store.put(&object_store::path::Path::from(key), bytes.into()))
        .unwrap();
}

#[test]
fn a_push_killed_half_way_leaves_nothing_a_reader_takes() {
    let Some(env) = garage() else { return };
    let _one = serial();
    let url = remote_url("killed");
    let a = Project::with("g.toml", &manifest());
    // Killed after the first stage's files are uploaded, before its manifest and key.
    let (mut child, stderr, _) = spawn_to_fault(
        with_remote(&a, env, &url, &["run", "g"]),
        "remote-push:files-sent",
    );
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stderr);
    // Another machine finds no stage in the remote: it computes everything.
    let b = Project::with("g.toml", &manifest());
    let (rb, _) = run_json(with_remote(&b, env, &url, &["run", "g", "--json"]));
    assert!(states(&rb).iter().all(|(_, s)| s == "ran"), "{rb}");
}

#[test]
fn an_unreachable_or_silent_server_never_fails_a_run() {
    let Some(env) = garage() else { return };
    let _one = serial();
    // Nothing listens on this port: a warning, then the run goes on locally. The port is
    // held, bound and not listening, for the run: no other process can take it meanwhile,
    // and a connection to it is refused.
    let closed = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    closed.bind(&any.into()).unwrap();
    let port = closed.local_addr().unwrap().as_socket().unwrap().port();
    let a = Project::with("g.toml", &manifest());
    let mut c = with_remote(&a, env, "s3://pipe/nowhere", &["run", "g", "--json"]);
    c.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    let (r, said) = run_json(c);
    assert!(states(&r).iter().all(|(_, s)| s == "ran"), "{r}");
    assert_eq!(
        said.matches("cannot be reached").count(),
        1,
        "one warning:\n{said}"
    );
    drop(closed);

    // A server that accepts and never answers: bounded by `timeout`, then local work.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for s in silent.incoming().take(8) {
            conns.push(s);
        }
    });
    let b = Project::with("g.toml", &manifest());
    std::fs::write(
        b.path().join("pipe.toml"),
        "[remote]\nurl = \"s3://pipe/silent\"\ntimeout = 2\n",
    )
    .unwrap();
    let t = std::time::Instant::now();
    let mut c = b.cmd(&["run", "g", "--json"]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    let (r, said) = run_json(c);
    assert!(states(&r).iter().all(|(_, s)| s == "ran"), "{r}");
    assert!(said.contains("cannot be reached"), "{said}");
    assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());
    drop(held);
}

#[test]
fn wrong_credentials_are_named_and_no_secret_is_printed() {
    let Some(env) = garage() else { return };
    let _one = serial();
    let url = remote_url("creds");
    let a = Project::with("g.toml", &manifest());
    ok(a.cmd(&["run", "g"]));
    let secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let mut c = with_remote(&a, env, &url, &["push"]);
    c.env("AWS_SECRET_ACCESS_KEY", secret);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(
        err.contains("AWS_ACCESS_KEY_ID") && err.contains("AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );
    assert!(
        !err.contains(secret) && !err.contains(&env["AWS_SECRET_ACCESS_KEY"]),
        "{err}"
    );
    // A run with them warns once and goes on; its record holds no secret either.
    let b = Project::with("g.toml", &manifest());
    let mut c = with_remote(&b, env, &url, &["run", "g"]);
    c.env("AWS_SECRET_ACCESS_KEY", secret);
    let (_, said) = ok(c);
    assert_eq!(said.matches("refused the credentials").count(), 1, "{said}");
    for f in std::fs::read_dir(b.cache().join("runs")).unwrap().flatten() {
        if f.path().is_file() {
            let text = std::fs::read_to_string(f.path()).unwrap_or_default();
            assert!(!text.contains(secret), "{}", f.path().display());
        }
    }
}

#[test]
fn two_machines_pushing_one_key_at_once_leave_one_valid_artifact() {
    let Some(env) = garage() else { return };
    let _one = serial();
    let url = remote_url("race");
    let a = Project::with("g.toml", &manifest());
    let b = Project::with("g.toml", &manifest());
    let ca = with_remote(&a, env, &url, &["run", "g", "--json"]).spawn_output();
    let cb = with_remote(&b, env, &url, &["run", "g", "--json"]).spawn_output();
    let (ra, rb) = (ca.join().unwrap(), cb.join().unwrap());
    assert_eq!(keys_of(&ra), keys_of(&rb));
    // A third machine fetches every stage, each checked against the key.
    let c = Project::with("g.toml", &manifest());
    let (rc, said) = run_json(with_remote(&c, env, &url, &["run", "g", "--json"]));
    assert!(
        states(&rc).iter().all(|(_, s)| s == "fetched"),
        "{rc}\n{said}"
    );
    ok(with_remote(&c, env, &url, &["verify"]));
}

#[test]
fn a_no_op_run_with_a_remote_sends_no_request() {
    let Some(env) = garage() else { return };
    let _one = serial();
    let url = remote_url("noop");
    let a = Project::with("g.toml", &manifest());
    ok(with_remote(&a, env, &url, &["run", "g"]));
    let before = server_requests(env);
    for _ in 0..3 {
        ok(with_remote(&a, env, &url, &["run", "g"]));
    }
    ok(with_remote(&a, env, &url, &["status", "g"]));
    assert_eq!(server_requests(env), before, "requests reached the server");
    // And the counter does count: one push sends some.
    ok(with_remote(&a, env, &url, &["push", "g"]));
    assert!(server_requests(env) > before);
}

/// A command run on its own thread, its JSON report collected.
trait SpawnOutput {
    fn spawn_output(self) -> std::thread::JoinHandle<serde_json::Value>;
}

impl SpawnOutput for Command {
    fn spawn_output(mut self) -> std::thread::JoinHandle<serde_json::Value> {
        std::thread::spawn(move || {
            let out = self.output().unwrap();
            let so = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{so}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_str(&so).unwrap()
        })
    }
}

#[test]
fn a_job_on_a_store_of_its_own_pulls_its_inputs_and_pushes_its_output() {
    let Some(env) = garage() else { return };
    let _one = serial();
    let url = remote_url("job");
    let a = Project::with("g.toml", &manifest());
    ok(with_remote(&a, env, &url, &["run", "g"]));
    // A job (what Slurm runs on a node) with an empty local store: the evaluation, with a
    // top_k no one ran. Its inputs come from the remote; it runs; its output goes there.
    let edited = manifest().replace("top_k = [1, 2]", "top_k = [1, 3]");
    let node = Project::with("g.toml", &edited);
    let (_, said) = ok(with_remote(
        &node,
        env,
        &url,
        &["run-stage", "pipelines/g.toml", "evaluate"],
    ));
    assert!(
        said.contains("evaluate") && said.contains(" ran "),
        "{said}"
    );
    assert_eq!(artifact_names(&node.cache()).len(), 4, "{said}");
    // Another machine with the edit fetches all four.
    let b = Project::with("g.toml", &edited);
    let (rb, _) = run_json(with_remote(&b, env, &url, &["run", "g", "--json"]));
    assert!(states(&rb).iter().all(|(_, s)| s == "fetched"), "{rb}");
}

#[test]
fn the_demo_run_on_one_machine_is_fetched_whole_by_another() {
    let Some(env) = garage() else { return };
    let _one = serial();
    let url = remote_url("demo");
    let a = demo_project();
    let (ra, _) = run_json(with_remote(&a, env, &url, &["run", "demo", "--json"]));
    assert_eq!(states(&ra).len(), 6, "{ra}");
    assert!(states(&ra).iter().all(|(_, s)| s == "ran"), "{ra}");
    // Machine B trains nothing: all six stages fetched, the same keys, the same result.
    let b = demo_project();
    let (rb, said) = run_json(with_remote(&b, env, &url, &["run", "demo", "--json"]));
    assert!(
        states(&rb).iter().all(|(_, s)| s == "fetched"),
        "{rb}\n{said}"
    );
    assert!(!said.contains("epoch"), "B trained:\n{said}");
    assert_eq!(keys_of(&ra), keys_of(&rb));
    let metrics = |p: &Project, r: &serde_json::Value| -> serde_json::Value {
        read_json(&p.artifact(r, "evaluate").join("metrics.json"))
    };
    assert_eq!(metrics(&a, &ra), metrics(&b, &rb));
    // An edit on B (the drop's lr): only the drop and the evaluation run, and are pushed.
    let edited = repo_file("pipelines/demo.toml").replace("lr = 2e-4", "lr = 1e-4");
    b.manifest("demo.toml", &edited);
    let (rb2, _) = run_json(with_remote(&b, env, &url, &["run", "demo", "--json"]));
    let st: BTreeMap<String, String> = states(&rb2).into_iter().collect();
    for stage in ["ingest", "split", "hdf5", "train"] {
        assert_eq!(st[stage], "cached", "{stage}: {rb2}");
    }
    assert_eq!(
        (st["drop"].as_str(), st["evaluate"].as_str()),
        ("ran", "ran"),
        "{rb2}"
    );
    a.manifest("demo.toml", &edited);
    let (ra2, _) = run_json(with_remote(&a, env, &url, &["run", "demo", "--json"]));
    let st: BTreeMap<String, String> = states(&ra2).into_iter().collect();
    assert_eq!(
        (st["drop"].as_str(), st["evaluate"].as_str()),
        ("fetched", "fetched"),
        "{ra2}"
    );
}

/// A TCP relay to Garage that can be cut: every connection through it is closed, and no
/// new one is accepted, once `cut` is called ("the server stopped").
struct Relay {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn to(target: &str) -> Relay {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (s, c, target) = (stop.clone(), conns.clone(), target.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if s.load(Ordering::SeqCst) {
                    drop(client);
                    break;
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let mut held = c.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, stop, conns }
    }

    fn cut(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        // Wake the accept loop so that it sees `stop` and closes the listener.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[test]
fn the_server_stopped_in_the_middle_of_a_run_leaves_the_run_to_finish_here() {
    let Some(env) = garage() else { return };
    let _one = serial();
    let url = remote_url("stopped");
    let relay = Relay::to(env["AWS_ENDPOINT_URL"].trim_start_matches("http://"));
    let a = Project::with("g.toml", &manifest());
    let mut c = with_remote(&a, env, &url, &["run", "g", "--json"]);
    let hold = Hold::new();
    hold.on(c
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", relay.port),
        )
        .stdout(std::process::Stdio::piped()));
    // The first stage ran and its files went up; then the server goes away, and only
    // then does the run go on.
    let (child, mut stderr, said) = spawn_to_fault(c, "remote-push:files-sent");
    relay.cut();
    hold.release();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{said}{rest}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(states(&r).iter().all(|(_, s)| s == "ran"), "{r}");
    assert_eq!(rest.matches("cannot be reached").count(), 1, "{said}{rest}");
    // Nothing of it is visible as finished: another machine computes every stage.
    let b = Project::with("g.toml", &manifest());
    let (rb, _) = run_json(with_remote(&b, env, &url, &["run", "g", "--json"]));
    assert!(states(&rb).iter().all(|(_, s)| s == "ran"), "{rb}");
}

#[test]
fn local_workers_use_the_runs_remote_and_their_record_is_shared() {
    let Some(env) = garage() else { return };
    let _one = serial();
    let url = remote_url("workers");
    // `-j 2`: each stage a worker process, given the remote on its command line.
    let a = Project::with("g.toml", &manifest());
    ok(with_remote(&a, env, &url, &["run", "g", "-j", "2"]));
    let b = Project::with("g.toml", &manifest());
    let (rb, said) = run_json(with_remote(&b, env, &url, &["run", "g", "--json"]));
    assert!(
        states(&rb).iter().all(|(_, s)| s == "fetched"),
        "{rb}\n{said}"
    );
    // A's record went up with the stages. Its manifest texts there being rewritten (not
    // their hash): the pull says so and leaves that run for later, and the next takes it.
    let sources = a.ok_json(&["runs", "g", "--json"])[0]["sources"]
        .as_str()
        .unwrap()
        .to_string();
    let object = format!(
        "{}/runs/sources/{sources}.json",
        url.trim_start_matches("s3://pipe/")
    );
    put_object(env, &object, b"{\"files\": {}}".to_vec());
    let (_, said) = ok(with_remote(&b, env, &url, &["pull", "g"]));
    assert!(
        said.contains(&format!("runs/sources/{sources}.json")) && said.contains("skipped"),
        "{said}"
    );
    assert!(b
        .ok_json(&["runs", "g", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["executor"] != "local"));
    let text = std::fs::read(a.cache().join(format!("runs/sources/{sources}.json"))).unwrap();
    put_object(env, &object, text);
    ok(with_remote(&b, env, &url, &["pull", "g"]));
    let runs = b.ok_json(&["runs", "g", "--json"]);
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .any(|r| r["executor"] == "local" && r["state"] == "done"),
        "{runs}"
    );
}

#[test]
fn a_laptop_without_the_dataset_pulls_the_model_by_the_run_record_and_predicts() {
    let Some(env) = garage() else { return };
    let _one = serial();
    let url = remote_url("laptop");
    // Real JPEG class folders (Tiny ImageNet's layout) that only machine A has.
    let text = format!(
        "{}size = [16, 16]\n\n{}\n[stages.train]\nkind = \"train\"\ninput = \"hdf5\"\nnetwork = \"tiny\"\nepochs = 2\nbatch_size = 8\nlr = 0.01\n\n[stages.evaluate]\nkind = \"evaluate\"\ninput = \"train\"\nsplit = \"test\"\ntop_k = [1, 2]\n",
        tiny_manifest(Path::new("data"), 2),
        tiny_network(3)
    );
    let a = Project::with("t.toml", &text);
    tiny_imagenet(&a.path().join("data"), 3, 8, 4);
    ok(with_remote(&a, env, &url, &["run", "t"]));
    // (The manifest's `name` is `exp`; `t` names it by its file, as `run` took it.)
    let model_a = a.ok_json(&["runs", "t", "--json"])[0]["stages"][3]["output"].clone();
    assert!(
        model_a.is_string(),
        "{}",
        a.ok_json(&["runs", "t", "--json"])
    );

    // The laptop: the manifest, no dataset, an empty store.
    let laptop = Project::with("t.toml", &text);
    let (_, said) = ok(with_remote(
        &laptop,
        env,
        &url,
        &["pull", "t", "--only-final"],
    ));
    assert!(said.contains("cannot be keyed here"), "{said}");
    assert!(said.contains("fetched 2 artifact(s)"), "{said}");
    assert_eq!(artifact_names(&laptop.cache()).len(), 2, "{said}");
    assert!(
        artifact_names(&laptop.cache()).contains(model_a.as_str().unwrap()),
        "{said}"
    );
    // predict finds the pulled model through the pulled record, and says so.
    let img = laptop.path().join("x.jpg");
    image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([(x * 16) as u8, (y * 16) as u8, 90])
    })
    .save(&img)
    .unwrap();
    let predict = |p: &Project| {
        ok(with_remote(
            p,
            env,
            &url,
            &["predict", "t", img.to_str().unwrap(), "--json"],
        ))
    };
    let (out, err) = predict(&laptop);
    assert!(err.contains("using the model of its run"), "{err}");
    // The same image on machine A, which keys the pipeline itself: the same answer.
    let (on_a, _) = predict(&a);
    let top = |o: &str| {
        let v: serde_json::Value = serde_json::from_str(o.lines().next().unwrap()).unwrap();
        v["top"].clone()
    };
    assert_eq!(top(&out), top(&on_a), "{out}\n{on_a}");
    assert_eq!(top(&out).as_array().unwrap().len(), 3, "{out}");

    // An edited manifest was never run: nothing stands in for it, and predict says what
    // to do rather than use another manifest's model.
    laptop.manifest("t.toml", &text.replace("lr = 0.01", "lr = 0.02"));
    let (_, said) = ok(with_remote(
        &laptop,
        env,
        &url,
        &["pull", "t", "--only-final"],
    ));
    assert!(said.contains("no run of it recorded"), "{said}");
    let out = with_remote(&laptop, env, &url, &["predict", "t", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has not been trained yet"), "{err}");
}

/// A WsgiDAV server (a real WebDAV server, from `.venv`) on a free loopback port, serving
/// a fresh folder; stopped when dropped. None (skipped) when it is not installed, unless
/// `PIPE_REQUIRE_WEBDAV=1` (the test command), where that fails.
struct WebDav {
    child: std::process::Child,
    root: tempfile::TempDir,
    url: String,
}

impl Drop for WebDav {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn webdav() -> Option<WebDav> {
    webdav_with(None)
}

/// [`webdav`], asking for HTTP Basic authentication as `user` with `password` when given.
fn webdav_with(login: Option<(&str, &str)>) -> Option<WebDav> {
    let bin = std::env::var_os("PIPE_PYTHON")
        .map(|p| Path::new(&p).with_file_name("wsgidav"))
        .filter(|b| b.exists());
    let Some(bin) = bin else {
        if std::env::var("PIPE_REQUIRE_WEBDAV").is_ok_and(|v| v == "1") {
            panic!("PIPE_REQUIRE_WEBDAV=1 but wsgidav is not beside $PIPE_PYTHON (scripts/bootstrap --with-python installs it)");
        }
        eprintln!("SKIPPED: no wsgidav beside $PIPE_PYTHON");
        return None;
    };
    let root = tempfile::tempdir().unwrap();
    // A body that ends short of its length (a file rewritten in place while it is
    // served) holds the client until the server's socket timeout: 1 s, not cheroot's 10.
    // Symbolic links are followed (a test links a file to /dev/null).
    let config = root.path().join("wsgidav.yaml");
    let mut yaml =
        "server_args:\n  timeout: 1\nfs_dav_provider:\n  follow_symlinks: true\n".to_string();
    if let Some((user, password)) = login {
        yaml += &format!(
            "http_authenticator:\n  accept_basic: true\n  accept_digest: false\n  default_to_digest: false\nsimple_dc:\n  user_mapping:\n    \"*\":\n      \"{user}\":\n        password: \"{password}\"\n"
        );
    }
    std::fs::write(&config, yaml).unwrap();
    let auth: &[&str] = match login {
        Some(_) => &[],
        None => &["--auth", "anonymous"],
    };
    let (child, port) = serve_on_free_port("wsgidav", |port| {
        Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "-q"])
            .args(auth)
            .arg("--root")
            .arg(root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let server = WebDav {
        child,
        root,
        url: format!("http://127.0.0.1:{port}"),
    };
    Some(server)
}

#[test]
fn a_webdav_remote_with_a_password_logs_in_and_never_shows_it() {
    let Some(dav) = webdav_with(Some(("ana", "s3cr3t-pw"))) else {
        return;
    };
    let host = dav.url.trim_start_matches("http://");
    let url = format!("http://ana:s3cr3t-pw@{host}/team");
    let a = Project::with("g.toml", &manifest());
    let (ra, said) = run_json(a.cmd(&["--remote", &url, "run", "g", "--json"]));
    assert!(states(&ra).iter().all(|(_, s)| s == "ran"), "{ra}");
    assert!(!said.contains("warning"), "{said}");
    assert!(
        dav.root.path().join("team/keys").is_dir(),
        "nothing pushed: {said}"
    );
    let b = Project::with("g.toml", &manifest());
    let (rb, said) = run_json(b.cmd(&["--remote", &url, "run", "g", "--json"]));
    for (stage, state) in states(&rb) {
        assert_eq!(state, "fetched", "{stage}: {said}");
    }
    // A wrong password: refused, said, the run computes, and no password is shown (the
    // one given, or the header it makes: `ana:wr0ng-pw` in base64).
    let wrong = format!("http://ana:wr0ng-pw@{host}/team");
    let c = Project::with("g.toml", &manifest());
    let (rc, said) = run_json(c.cmd(&["--remote", &wrong, "run", "g", "--json"]));
    assert!(states(&rc).iter().all(|(_, s)| s == "ran"), "{rc}");
    assert!(
        said.contains("warning") && (said.contains("401") || said.contains("credentials")),
        "{said}"
    );
    for secret in ["wr0ng-pw", "YW5hOndyMG5nLXB3"] {
        assert!(!said.contains(secret), "{said}");
    }
    let (_, said) = {
        let out = c.cmd(&["verify", "--remote", &wrong]).output().unwrap();
        (
            (),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    assert!(
        !said.contains("wr0ng-pw") && !said.contains("YW5hOndyMG5nLXB3"),
        "{said}"
    );
    let record = std::fs::read_dir(c.cache().join("runs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<String>();
    assert!(!record.contains("wr0ng-pw"), "{record}");
}

#[test]
fn a_webdav_remote_shares_stages_and_its_damage_is_found() {
    let Some(dav) = webdav() else { return };
    // Folders of the path that are not there yet are made on the first upload.
    let url = format!("{}/team/pipe", dav.url);
    let run = |p: &Project, args: &[&str]| {
        let mut c = p.cmd(&["--remote", &url]);
        c.args(args);
        c
    };
    let a = Project::with("g.toml", &manifest());
    let (ra, said) = run_json(run(&a, &["run", "g", "--json"]));
    assert!(states(&ra).iter().all(|(_, s)| s == "ran"), "{ra}");
    assert!(!said.contains("warning"), "{said}");
    let b = Project::with("g.toml", &manifest());
    let (rb, said) = run_json(run(&b, &["run", "g", "--json"]));
    for (stage, state) in states(&rb) {
        assert_eq!(state, "fetched", "{stage}: {said}");
    }
    assert_eq!(keys_of(&ra), keys_of(&rb));
    let (_, said) = ok(b.cmd(&["verify", "--remote", &url]));
    assert!(said.contains("all sound"), "{said}");
    // Two machines pushing the same new stages at once make the same folders at once:
    // both succeed, with no warning, and a third fetches what they pushed.
    let edited = manifest().replace("lr = 0.01", "lr = 0.03");
    let racers: Vec<std::process::Child> = (0..4)
        .map(|_| {
            let m = Project::with("g.toml", &edited);
            let child = run(&m, &["run", "g"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::mem::forget(m); // its folder outlives the race
            child
        })
        .collect();
    for child in racers {
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !said.contains("warning"), "{said}");
    }
    let d = Project::with("g.toml", &edited);
    let (rd, said) = run_json(run(&d, &["run", "g", "--json"]));
    let st: BTreeMap<String, String> = states(&rd).into_iter().collect();
    assert_eq!(st["train"], "fetched", "{said}");
    // A path with a space (escaped in the URL) is the store's root as it is: it must
    // exist, as a bucket must, and holds what is pushed.
    std::fs::create_dir(dav.root.path().join("my dir")).unwrap();
    let spaced = format!("{}/my%20dir", dav.url);
    let e = Project::with("g.toml", &manifest());
    let mut c = e.cmd(&["--remote", &spaced, "run", "g"]);
    let (_, said) = ok({
        c.env_remove("PIPE_REMOTE");
        c
    });
    assert!(!said.contains("warning"), "{said}");
    assert!(dav.root.path().join("my dir/keys").is_dir(), "{said}");
    // A file changed on the server's disk: verify names it and fails, and a third
    // machine computes that stage rather than take it.
    let train = string_pairs(&ra["stages"], "name", "output")
        .into_iter()
        .find(|(n, _)| n == "train")
        .unwrap()
        .1;
    let model = dav
        .root
        .path()
        .join("team/pipe/artifacts")
        .join(train)
        .join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&model, bytes).unwrap();
    let out = b.cmd(&["verify", "--remote", &url]).output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("model.safetensors"), "{said}");
    let c = Project::with("g.toml", &manifest());
    let (rc, said) = run_json(run(&c, &["run", "g", "--json"]));
    let st: BTreeMap<String, String> = states(&rc).into_iter().collect();
    assert_eq!(st["train"], "ran", "{said}");
    assert_eq!(st["hdf5"], "fetched", "{said}");
    // `verify --remote --repair` from a project: whether it succeeded, and what it said.
    let repair = |p: &Project| -> (bool, String) {
        let out = p
            .cmd(&["verify", "--remote", &url, "--repair"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), said)
    };
    // From a machine with no copy of it: still damaged, and it says why.
    let (ok_, said) = repair(&Project::new());
    assert!(!ok_, "{said}");
    assert!(said.contains("holds no sound copy"), "{said}");
    // From one that holds it sound: sent again, checked, and fetched whole after.
    let (ok_, said) = repair(&b);
    assert!(ok_, "{said}");
    assert!(
        said.contains("REPAIRED") && said.contains("1 of them repaired"),
        "{said}"
    );
    let (_, said) = ok(b.cmd(&["verify", "--remote", &url]));
    assert!(said.contains("all sound"), "{said}");
    let d = Project::with("g.toml", &manifest());
    let (rd, said) = run_json(run(&d, &["run", "g", "--json"]));
    assert!(
        states(&rd).iter().all(|(_, s)| s == "fetched"),
        "{rd}\n{said}"
    );
}

/// Machines pushing one stage at once to a WebDAV server, each with a key record and a
/// manifest of its own (its `seconds`, its summary, its `timings.json`). WsgiDAV writes a
/// PUT in place, so two at once can leave one machine's record followed by the tail of
/// another's, and both PUTs succeed. Each pusher reads back what it wrote and writes it
/// again until it reads whole: after the race, the key and its manifest read, and fetch.
#[test]
fn machines_pushing_one_key_to_webdav_at_once_leave_its_records_whole() {
    use pipe::engine::remote::{Remote, RemoteConfig};
    use pipe::engine::store::KeyRecord;
    use pipe::ids::{ContentHash, StageKey};
    let Some(dav) = webdav() else { return };
    let cfg = RemoteConfig {
        url: Some(format!("{}/race", dav.url)),
        ..Default::default()
    };
    const MACHINES: usize = 6;
    // Each machine's artifact: the same content, a record file of its own size.
    let arts: Vec<tempfile::TempDir> = (0..MACHINES)
        .map(|i| {
            let d = tempfile::tempdir().unwrap();
            std::fs::write(d.path().join("model.safetensors"), [7u8; 1000]).unwrap();
            std::fs::write(d.path().join("timings.json"), vec![b' '; 1 + 997 * i]).unwrap();
            d
        })
        .collect();
    let output = ContentHash::new(
        pipe::content::hash_dir(arts[0].path(), pipe::stages::ALL_RECORDS)
            .unwrap()
            .0,
    );
    let record = |key: &StageKey, i: usize| KeyRecord {
        key: key.clone(),
        kind: pipe::manifest::model::StageKind::Train,
        stage: "train".into(),
        output: output.clone(),
        // Records of very different lengths: a torn one never reads.
        summary: "s".repeat(1 + 60_000 * i),
        seconds: i as f64,
    };
    for round in 0..12u8 {
        let key = StageKey::new(format!("{round:02x}").repeat(32));
        let start = std::sync::Barrier::new(MACHINES);
        std::thread::scope(|s| {
            for (i, art) in arts.iter().enumerate() {
                let (cfg, start, rec) = (&cfg, &start, record(&key, i));
                s.spawn(move || {
                    let remote = Remote::open(cfg).unwrap();
                    start.wait();
                    remote.push_artifact(&rec, art.path(), &|| {}).unwrap();
                });
            }
        });
        let on_disk = |rel: String| std::fs::read(dav.root.path().join("race").join(rel)).unwrap();
        let rec: KeyRecord = serde_json::from_slice(&on_disk(format!("keys/{key}.json")))
            .unwrap_or_else(|e| panic!("round {round}: the key record is torn: {e}"));
        assert_eq!(rec.key, key);
        let m: pipe::engine::remote::Manifest =
            serde_json::from_slice(&on_disk(format!("sealed/{output}.json")))
                .unwrap_or_else(|e| panic!("round {round}: the manifest is torn: {e}"));
        assert_eq!(m.output, output);
        let into = tempfile::tempdir().unwrap();
        let got = Remote::open(&cfg)
            .unwrap()
            .fetch(&key, into.path())
            .unwrap();
        assert!(got.is_some(), "round {round}");
        assert_eq!(
            std::fs::read(into.path().join("model.safetensors")).unwrap(),
            [7u8; 1000]
        );
    }
    // A server that keeps no record it is sent (here the key's file is /dev/null on its
    // disk): the push fails and says why, rather than leave a key that does not read.
    let key = StageKey::new("ee".repeat(32));
    let null = dav.root.path().join(format!("race/keys/{key}.json"));
    std::os::unix::fs::symlink("/dev/null", null).unwrap();
    let remote = Remote::open(&cfg).unwrap();
    let e = remote
        .push_artifact(&record(&key, 1), arts[1].path(), &|| {})
        .unwrap_err();
    assert!(e.to_string().contains("did not read back whole"), "{e}");
    assert!(e.to_string().contains(&format!("keys/{key}.json")), "{e}");
}

#[test]
fn gc_waits_for_a_push_in_progress() {
    let a = Project::with("g.toml", &manifest());
    a.ok(&["run", "g"]);
    let remote = tempfile::tempdir().unwrap();
    let url = format!("file://{}", remote.path().display());
    let hold = common::Hold::new();
    let mut push = a.cmd(&["--remote", &url, "push"]);
    hold.on(&mut push);
    let (mut push, _rest, _) = common::spawn_to_fault(push, "push:files-sent");
    let mut gc = a
        .cmd(&["gc"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut gc_said = std::io::BufReader::new(gc.stderr.take().unwrap());
    let said = common::read_until(&mut gc_said, "waiting for the cache lock");
    assert!(said.contains("pipe push"), "{said}");
    assert!(
        push.try_wait().unwrap().is_none(),
        "the push ended while held"
    );
    hold.release();
    assert!(push.wait().unwrap().success());
    assert!(gc.wait().unwrap().success());
    // What was pushed is whole: another machine fetches every stage.
    let b = Project::with("g.toml", &manifest());
    let (rb, said) = run_json(b.cmd(&["--remote", &url, "run", "g", "--json"]));
    assert!(
        states(&rb).iter().all(|(_, s)| s == "fetched"),
        "{rb}\n{said}"
    );
}

#[test]
fn a_webdav_server_that_stalls_mid_body_is_given_up_once_not_per_stage() {
    use std::io::{BufRead, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Answers every request with the start of a body it never finishes.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in server.incoming().flatten() {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let mut w = s;
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"key\": ");
            let _ = w.flush();
            held.push(w);
        }
    });
    let a = Project::with("g.toml", &manifest());
    std::fs::write(
        a.path().join("pipe.toml"),
        format!("[remote]\nurl = \"http://127.0.0.1:{port}/team\"\ntimeout = 1\n"),
    )
    .unwrap();
    let mut c = a.cmd(&["run", "g", "--json"]);
    c.env_remove("PIPE_REMOTE");
    let (r, said) = run_json(c);
    assert!(states(&r).iter().all(|(_, s)| s == "ran"), "{r}");
    assert_eq!(
        said.matches("cannot be reached").count(),
        1,
        "one warning:\n{said}"
    );
    // The first lookup's tries; no stage after it asks again.
    let n = conns.load(Ordering::SeqCst);
    assert!(n <= 3, "{n} connections:\n{said}");
}

//! The dashboard's HTTP server (axum on tokio). Every route reads: the store is opened
//! read-only and nothing is written. Runs are found by name in the snapshot, never as
//! paths; artifact files are served only from inside a published artifact, and a path
//! with `..`, `.`, or an encoded `/` or `\` anywhere is refused before routing.
//!
//! Pages: `/`, `/run/{name}`, `/compare?run=A&run=B`, `/sweep/{name}`; data (JSON):
//! `/api/runs`, `/api/runs/{name}`, `/api/runs/{name}/history`, `/api/runs/{name}/chart`
//! (a run page's chart data), `/api/sweeps/{name}`; live: `/api/runs/{name}/events`
//! (server-sent events, one per new epoch, and `done` when its training ends); files:
//! `/files/{artifact}/{path}`.
//!
//! A request is answered only when its `Host` names this dashboard: a loopback name or
//! address, the address it is bound to, or a name given with `--allow-host` (a page of
//! another site that rebinds its DNS name to 127.0.0.1 is refused).

use std::convert::Infallible;
use std::future::IntoFuture;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use axum::Router;

use super::pages::{self, Links};
use super::snapshot::{Snapshot, Stamp};
use super::{assets, charts, segment};
use crate::engine::runs::CurveSource;
use crate::engine::runs::Servable;
use crate::engine::{Engine, Project};
use crate::manifest::Pipeline;
use crate::outcome::history::EpochRecord;
use crate::report::run::Live;

/// How often a live page's training is looked at.
const POLL: Duration = Duration::from_millis(200);

/// The longest the runs are kept without gathering them again, when nothing the
/// snapshot's [`Stamp`] looks at changed.
const FULL_REBUILD: Duration = Duration::from_secs(60);

/// `pipe ui`'s options.
#[derive(Debug, Clone)]
pub struct UiOptions {
    /// Port (0: any free one).
    pub port: u16,
    /// Address to listen on (default 127.0.0.1).
    pub bind: IpAddr,
    /// Host names answered besides loopback ones and the bound address (`--allow-host`,
    /// and the name `--bind` was given as).
    pub allow_hosts: Vec<String>,
    /// Open the dashboard in a browser.
    pub open: bool,
}

struct App {
    project: Project,
    snap: RwLock<Arc<Snapshot>>,
    /// The runs page, rendered with each snapshot (in the background, never in a
    /// request): serving it is a copy however many runs there are.
    home: RwLock<axum::body::Bytes>,
    /// The address bound.
    bound: IpAddr,
    /// `--allow-host` names, lowercase.
    allow_hosts: Vec<String>,
}

impl App {
    fn snap(&self) -> Arc<Snapshot> {
        self.snap
            .read()
            .map_or_else(|e| e.into_inner().clone(), |s| s.clone())
    }

    fn home(&self) -> axum::body::Bytes {
        self.home
            .read()
            .map_or_else(|e| e.into_inner().clone(), |h| h.clone())
    }

    fn engine(&self) -> Engine {
        Engine::read_only(&self.project.cache)
    }
}

/// Links of the served pages.
pub struct ServerLinks;

impl Links for ServerLinks {
    fn home(&self) -> String {
        "/".into()
    }
    fn run(&self, name: &str) -> String {
        format!("/run/{}", segment(name))
    }
    fn curves(&self, name: &str) -> Option<String> {
        Some(format!("/api/runs/{}/chart", segment(name)))
    }
    fn events(&self, name: &str) -> Option<String> {
        Some(format!("/api/runs/{}/events", segment(name)))
    }
    fn compare(&self, names: &[&str]) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for n in names {
            q.append_pair("run", n);
        }
        format!("/compare?{}", q.finish())
    }
    fn sweep(&self, name: &str) -> String {
        format!("/sweep/{}", segment(name))
    }
    fn file(&self, output: &str, path: &str) -> String {
        let parts: Vec<String> = path.split('/').map(segment).collect();
        format!("/files/{output}/{}", parts.join("/"))
    }
    fn asset(&self, name: &str) -> String {
        format!("/assets/{name}")
    }
}

/// Serve the dashboard of `project` until Ctrl-C.
pub fn serve(project: Project, opts: &UiOptions) -> Result<()> {
    let snap = Snapshot::build(&project)?;
    let (home, mut running) = render_home(&project, &snap);
    let app = Arc::new(App {
        project,
        snap: RwLock::new(Arc::new(snap)),
        home: RwLock::new(home),
        bound: opts.bind,
        allow_hosts: opts
            .allow_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    });
    // The runs and their rows are gathered again in the background, never in a request:
    // when what they are built from changed, and at least once a minute (a dataset
    // folder changed deep inside, a base file outside `pipelines/`).
    let bg = app.clone();
    std::thread::spawn(move || {
        // Behind the requests and the browser on the same cores: this thread and the one
        // thread its parallel work gets run at a lower priority.
        lower_priority();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "pipe-ui-snapshot".into())
            .start_handler(|_| lower_priority())
            .build()
            .ok();
        let build = |p: &Project| match &pool {
            Some(pool) => pool.install(|| Snapshot::build(p)),
            None => Snapshot::build(p),
        };
        let mut built = Instant::now();
        let mut failing: Option<String> = None;
        loop {
            let snap = bg.snap();
            std::thread::sleep((snap.took * 3).max(Duration::from_secs(2)));
            if !running && built.elapsed() < FULL_REBUILD && Stamp::of(&bg.project) == snap.stamp {
                continue;
            }
            built = Instant::now();
            // A snapshot that cannot be built (or a bug that panics in it) is said, once
            // per different reason, and the last good one stays served; the refresh goes
            // on trying.
            let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                build(&bg.project).map(|s| {
                    let (home, running) = render_home(&bg.project, &s);
                    (s, home, running)
                })
            }));
            let (s, home) = match made {
                Ok(Ok((s, home, now_running))) => {
                    running = now_running;
                    if failing.take().is_some() {
                        eprintln!("pipe ui: the runs are refreshed again");
                    }
                    (s, home)
                }
                Ok(Err(e)) => {
                    let why = format!("{e:#}");
                    if failing.as_deref() != Some(why.as_str()) {
                        eprintln!("warning: pipe ui cannot refresh the runs ({why}); the pages show them as they were");
                        failing = Some(why);
                    }
                    continue;
                }
                Err(_) => {
                    let why = "a bug (panic) while reading the runs".to_string();
                    if failing.as_deref() != Some(why.as_str()) {
                        eprintln!("warning: pipe ui cannot refresh the runs ({why}); the pages show them as they were");
                        failing = Some(why);
                    }
                    continue;
                }
            };
            if let Ok(mut w) = bg.home.write() {
                *w = home;
            }
            if let Ok(mut w) = bg.snap.write() {
                *w = Arc::new(s);
            }
        }
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((opts.bind, opts.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", opts.bind, opts.port))?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            eprintln!(
                "warning: serving on {addr}, not loopback: anyone who can reach this machine can read these runs"
            );
        }
        let url = format!("http://{addr}/");
        println!(
            "pipe ui: {} runs of {} at {url} (Ctrl-C to stop)",
            app.snap().runs.len(),
            app.project.pipelines.display()
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        if opts.open {
            if let Err(e) = std::process::Command::new("xdg-open").arg(&url).spawn() {
                eprintln!("note: could not open a browser ({e}); open {url}");
            }
        }
        let listener = super::conn::Listener::new(listener, super::conn::idle_limit());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(listener, router(app))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future();
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => r?,
            _ = tokio::signal::ctrl_c() => {
                // Requests in flight may finish; an open event stream never ends by itself,
                // so what is still open after a moment is dropped with the process.
                let _ = stop.send(());
                let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
            }
        }
        Ok(())
    })
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(runs_page))
        .route("/run/{name}", get(run_page))
        .route("/api/runs/{name}/chart", get(api_chart))
        .route("/compare", get(compare_page))
        .route("/sweep/{name}", get(sweep_page))
        .route("/files/{output}/{*path}", get(file))
        .route("/assets/{name}", get(asset))
        .route("/api/runs", get(api_runs))
        .route("/api/runs/{name}", get(api_run))
        .route("/api/runs/{name}/history", get(api_history))
        .route("/api/runs/{name}/events", get(events))
        .route("/api/sweeps/{name}", get(api_sweep))
        .route("/journal", get(journal_page))
        .route("/journal/{id}", get(record_page))
        .route("/api/journal", get(api_journal))
        .route("/api/journal/{id}", get(api_record))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Whether a request path stays inside the dashboard: no segment that, decoded, is `.`
/// or `..` or holds `/`, `\` or NUL (`%2e%2e`, `%2F`, `..%5c` included).
pub fn path_is_safe(path: &str) -> bool {
    path.split('/').all(|seg| {
        let d = percent_encoding::percent_decode_str(seg).decode_utf8_lossy();
        d != "." && d != ".." && !d.contains(['/', '\\', '\0'])
    })
}

/// Whether a request's `Host` header names this dashboard: `localhost` (or a name under
/// `.localhost`), a loopback address, the bound address (any address when bound to
/// `0.0.0.0` or `::`), or one of `allow` (lowercase). A port, if any, is not looked at.
pub fn host_is_allowed(host: &str, bound: IpAddr, allow: &[String]) -> bool {
    let h = host.trim().to_ascii_lowercase();
    let name = match h.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, tail)) if tail.is_empty() || tail.starts_with(':') => ip,
            _ => return false,
        },
        None => match h.rsplit_once(':') {
            Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
            Some(_) => return false,
            None => h.as_str(),
        },
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return false;
    }
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return ip.is_loopback() || ip == bound || bound.is_unspecified();
    }
    allow.iter().any(|a| a == name)
}

/// Refuse requests for another host and paths out of the dashboard; add the headers
/// every answer carries (no script but ours, no sniffing, no framing, no caching).
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let mut res = match host {
        Some(h) if !host_is_allowed(&h, app.bound, &app.allow_hosts) => refused(&format!(
            "refused: the Host `{h}` is not this dashboard's (a loopback name, {}, or a name given with --allow-host)",
            app.bound
        )),
        None => refused("refused: a request without a Host header"),
        Some(_) if path_is_safe(req.uri().path()) => next.run(req).await,
        Some(_) => not_found("refused: that path leads outside the dashboard"),
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(pages::not_found_page(what, &ServerLinks)),
    )
        .into_response()
}

fn refused(what: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(pages::not_found_page(what, &ServerLinks)),
    )
        .into_response()
}

fn server_error(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Html(pages::not_found_page(&format!("error: {e}"), &ServerLinks)),
    )
        .into_response()
}

async fn fallback() -> Response {
    not_found("no such page")
}

/// Run blocking store reads off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(server_error(format!("{e:#}"))),
        Err(e) => Err(server_error(e)),
    }
}

fn unknown_run(name: &str) -> Response {
    not_found(&format!("no run named `{name}` in this project"))
}

/// The runs page of `snap`, with the journal's recorded runs.
/// Make the calling thread yield to others (`nice` 10): the dashboard's background work.
fn lower_priority() {
    // SAFETY: setpriority takes plain integers: this thread's own id and a nice value.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
    }
}

/// The runs page of `snap` and the journal now, and whether a recorded run is running
/// (its record can turn `interrupted` with no file changing: look again soon).
fn render_home(project: &Project, snap: &Snapshot) -> (axum::body::Bytes, bool) {
    let journal = journal_of(project).list_heads();
    let running = journal
        .runs
        .iter()
        .any(|r| r.state == crate::outcome::record::RunState::Running);
    let page = pages::runs_page(
        &snap.rows,
        &snap.sweep_list(),
        &snap.skipped,
        &journal.runs,
        &ServerLinks,
    );
    (page.into(), running)
}

async fn runs_page(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        app.home(),
    )
        .into_response()
}

fn journal(app: &App) -> crate::engine::journal::Journal {
    journal_of(&app.project)
}

/// The journal of `project`'s store, opened read-only.
pub(super) fn journal_of(project: &Project) -> crate::engine::journal::Journal {
    crate::engine::journal::Journal::of(&crate::engine::store::Store::open_read_only(
        &project.cache,
    ))
}

async fn journal_page(State(app): State<Arc<App>>) -> Response {
    let a = app.clone();
    match blocking(move || Ok(journal(&a).list_heads())).await {
        Ok(l) => Html(pages::journal_page(
            &l.runs,
            &app.snap().rows,
            &l.warnings,
            &ServerLinks,
        ))
        .into_response(),
        Err(r) => r,
    }
}

async fn api_journal(State(app): State<Arc<App>>) -> Response {
    let a = app.clone();
    match blocking(move || Ok(journal(&a).list())).await {
        Ok(l) => Json(l.runs).into_response(),
        Err(r) => r,
    }
}

/// A recorded run and its epochs so far: from the artifact of its last training stage
/// that made one, else (it trains now) from the scratch of the stage running.
pub(super) fn record_and_history(
    project: &Project,
    id: &str,
) -> Result<Option<(crate::outcome::record::RunRecord, Vec<EpochRecord>)>> {
    if !crate::engine::journal::is_run_id(id) {
        return Ok(None);
    }
    let j = journal_of(project);
    // A record that is there and does not read is said so (with its file), not "no run".
    let r = match j.get(id) {
        Ok(r) => r,
        Err(_) if !j.has(id) => return Ok(None),
        Err(e) => return Err(e),
    };
    let cache = &project.cache;
    let read = |p: std::path::PathBuf| -> Option<Vec<EpochRecord>> {
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    };
    let training = |k: &str| matches!(k, "train" | "lr-drop" | "resume");
    // Each training stage's folder: its scratch while it runs, its artifact once done.
    let running: Vec<std::path::PathBuf> = r
        .stages
        .iter()
        .filter(|s| training(&s.kind) && s.state == "running")
        .filter_map(|s| {
            let key = crate::ids::StageKey::parse(s.key.as_deref()?)?;
            Some(cache.join("scratch").join(key.as_str()))
        })
        .collect();
    let done: Vec<std::path::PathBuf> = r
        .stages
        .iter()
        .filter(|s| training(&s.kind))
        .filter_map(|s| {
            let out = crate::ids::ContentHash::parse(s.output.as_deref()?)?;
            Some(cache.join("artifacts").join(out.as_str()))
        })
        .collect();
    let mut h = running
        .iter()
        .find_map(|d| read(d.join("history.json")))
        .or_else(|| done.iter().rev().find_map(|d| read(d.join("history.json"))))
        .unwrap_or_default();
    // The wall times are kept beside the curves (`timings.json`), not in them.
    let timings: Vec<_> = done
        .iter()
        .chain(&running)
        .flat_map(|d| crate::outcome::history::read_timings(d))
        .collect();
    crate::outcome::history::with_timings(&mut h, &timings);
    Ok(Some((r, h)))
}

async fn record_page(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let a = app.clone();
    let i = id.clone();
    match blocking(move || record_and_history(&a.project, &i)).await {
        Ok(Some((r, h))) => Html(pages::record_page(&r, &h, &ServerLinks)).into_response(),
        Ok(None) => not_found(&format!("no recorded run `{id}`")),
        Err(r) => r,
    }
}

async fn api_record(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let a = app.clone();
    let i = id.clone();
    match blocking(move || record_and_history(&a.project, &i)).await {
        Ok(Some((r, h))) => Json(serde_json::json!({ "record": r, "epochs": h })).into_response(),
        Ok(None) => not_found(&format!("no recorded run `{id}`")),
        Err(r) => r,
    }
}

fn pipeline_of(app: &App, name: &str) -> Option<Pipeline> {
    app.snap().run(name).map(|(r, _)| r.pipeline.clone())
}

async fn run_page(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    let Some(p) = pipeline_of(&app, &name) else {
        return unknown_run(&name);
    };
    let a = app.clone();
    match blocking(move || a.engine().run_view(&p, None)).await {
        Ok(v) => Html(pages::run_page(&v, &ServerLinks)).into_response(),
        Err(r) => r,
    }
}

fn query_pairs(q: &Option<String>) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn curves_of(engine: &mut Engine, p: &Pipeline) -> Result<(Vec<EpochRecord>, Option<Live>)> {
    let sources = engine.curve_sources(p)?;
    Ok(engine.curves(&sources))
}

/// A run page's chart data, as embedded in the page (a live page fetches it again).
async fn api_chart(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    let Some(p) = pipeline_of(&app, &name) else {
        return unknown_run(&name);
    };
    let a = app.clone();
    match blocking(move || curves_of(&mut a.engine(), &p)).await {
        Ok((h, _)) => Json(charts::curves(
            &[charts::Series {
                name: &name,
                epochs: &h,
            }],
            ServerLinks.curves(&name).as_deref(),
        ))
        .into_response(),
        Err(r) => r,
    }
}

/// The most runs one compare page shows.
const MAX_COMPARED: usize = 24;

async fn compare_page(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> Response {
    let names: Vec<String> = query_pairs(&q)
        .into_iter()
        .filter(|(k, _)| k == "run")
        .map(|(_, v)| v)
        .collect();
    if names.is_empty() {
        return not_found("compare what? pick runs on the runs page (compare?run=A&run=B)");
    }
    // Each run costs a decision walk or a manifest load: a bound on one request's work.
    if names.len() > MAX_COMPARED {
        return (
            StatusCode::BAD_REQUEST,
            Html(pages::not_found_page(
                &format!(
                    "compare at most {MAX_COMPARED} runs at once ({} asked)",
                    names.len()
                ),
                &ServerLinks,
            )),
        )
            .into_response();
    }
    // Each a pipeline as it stands, or a recorded run (its id), past or present.
    let mut ps = Vec::new();
    for n in &names {
        if crate::engine::journal::is_run_id(n) {
            ps.push(Err(n.clone()));
            continue;
        }
        match pipeline_of(&app, n) {
            Some(p) => ps.push(Ok(p)),
            None => return unknown_run(n),
        }
    }
    let a = app.clone();
    let r = blocking(move || {
        let mut e = a.engine();
        let mut runs = Vec::new();
        let mut sides = Vec::new();
        for p in &ps {
            match p {
                Ok(p) => {
                    let (h, _) = curves_of(&mut e, p)?;
                    let side = e.side(p)?;
                    runs.push(pages::Compared {
                        name: p.name.clone(),
                        link: ServerLinks.run(&p.name),
                        epochs: h,
                        metrics: side.metrics.clone(),
                    });
                    sides.push(side);
                }
                Err(id) => {
                    let Some((rec, h)) = record_and_history(&a.project, id)? else {
                        return Ok(None);
                    };
                    let j = journal(&a);
                    let p = j
                        .sources(&rec)
                        .and_then(|src| crate::engine::load_run(&rec, &src))
                        .ok();
                    let side = e.record_side(&rec, p.as_ref())?;
                    runs.push(pages::Compared {
                        name: side.label.clone(),
                        link: ServerLinks.journal(Some(id)),
                        epochs: h,
                        metrics: side.metrics.clone(),
                    });
                    sides.push(side);
                }
            }
        }
        let diff = match (sides.first(), sides.get(1)) {
            (Some(x), Some(y)) => Some(crate::report::diff::diff(x, y)),
            _ => None,
        };
        Ok(Some((runs, diff)))
    })
    .await;
    match r {
        Ok(None) => not_found("no such recorded run"),
        Ok(Some((runs, diff))) => {
            Html(pages::compare_page(&runs, diff.as_ref(), &ServerLinks)).into_response()
        }
        Err(r) => r,
    }
}

/// A sweep's halving decisions, off the async workers: with a record that no longer
/// fits the manifest they are decided again, fingerprints included.
async fn sweep_decisions(
    app: &Arc<App>,
    sw: &crate::manifest::Sweep,
) -> Result<crate::outcome::sweep::HalvingDecisions, Response> {
    let (a, sw) = (app.clone(), sw.clone());
    blocking(move || Ok(a.engine().decisions(&sw))).await
}

async fn sweep_page(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    let snap = app.snap();
    let Some(sw) = snap.sweep(&name) else {
        return not_found(&format!("no sweep named `{name}` in this project"));
    };
    let metric = snap.sweep_metric(sw);
    // Best as `pipe show` marks it (the snapshot's rows): by a halving sweep's goal, among
    // the points it did not prune.
    let rows = snap.sweep_rows(&name);
    let keys: Vec<String> = sw.keys.iter().map(|k| sw.short_key(k)).collect();
    let decisions = match sweep_decisions(&app, sw).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    Html(pages::sweep_page(
        &sw.name,
        &sw.file.display().to_string(),
        &keys,
        &rows,
        &metric,
        &decisions,
        &ServerLinks,
    ))
    .into_response()
}

async fn file(
    State(app): State<Arc<App>>,
    Path((output, path)): Path<(String, String)>,
) -> Response {
    // Off the async workers: a file is checked against its seal (hashed whole) first.
    let a = app.clone();
    let servable =
        match tokio::task::spawn_blocking(move || a.engine().servable(&output, &path)).await {
            Ok(s) => s,
            Err(e) => return server_error(e),
        };
    let (full, f) = match servable {
        Servable::File(path, handle) => (path, tokio::fs::File::from_std(handle)),
        Servable::Missing(why) => return not_found(&why),
        Servable::Damaged(why) => {
            return (
                StatusCode::CONFLICT,
                Html(pages::not_found_page(
                    &format!("damaged, not served: {why} (`pipe verify` sets it aside)"),
                    &ServerLinks,
                )),
            )
                .into_response()
        }
    };
    let ext = full
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let (ctype, attach) = match ext.as_str() {
        "png" => ("image/png", false),
        "jpg" | "jpeg" => ("image/jpeg", false),
        "json" | "csv" | "txt" | "log" | "toml" => ("text/plain; charset=utf-8", false),
        _ => ("application/octet-stream", true),
    };
    let mut res = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(f)));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if attach {
        res.headers_mut().insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
    }
    res
}

async fn asset(Path(name): Path<String>) -> Response {
    match assets::get(&name) {
        Some((ctype, body)) => ([(header::CONTENT_TYPE, ctype)], body).into_response(),
        None => not_found("no such asset"),
    }
}

async fn api_runs(State(app): State<Arc<App>>) -> Response {
    Json(app.snap().rows.clone()).into_response()
}

async fn api_run(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    let Some(p) = pipeline_of(&app, &name) else {
        return unknown_run(&name);
    };
    let a = app.clone();
    match blocking(move || a.engine().run_view(&p, None)).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn api_history(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    let Some(p) = pipeline_of(&app, &name) else {
        return unknown_run(&name);
    };
    let a = app.clone();
    match blocking(move || curves_of(&mut a.engine(), &p)).await {
        Ok((h, live)) => {
            Json(serde_json::json!({"run": name, "epochs": h, "live": live})).into_response()
        }
        Err(r) => r,
    }
}

async fn api_sweep(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    let snap = app.snap();
    let Some(sw) = snap.sweep(&name) else {
        return not_found(&format!("no sweep named `{name}` in this project"));
    };
    let metric = snap.sweep_metric(sw);
    // Best as `pipe show` marks it (the snapshot's rows): by a halving sweep's goal, among
    // the points it did not prune.
    let rows = snap.sweep_rows(&name);
    let halving = match sweep_decisions(&app, sw).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    Json(serde_json::json!({
        "sweep": sw.name,
        "manifest": sw.file.display().to_string(),
        "keys": sw.keys,
        "metric": metric,
        "points": rows,
        "halving": halving,
    }))
    .into_response()
}

/// What a live page is told, when it changes.
struct Watch {
    app: Arc<App>,
    pipeline: Pipeline,
    sources: Vec<CurveSource>,
    refreshed: Instant,
    sent: Option<(usize, Option<Live>)>,
    /// When each epoch was first seen (for the time left).
    seen: Vec<(usize, Instant)>,
    first: bool,
    /// Something of the run was seen running.
    was_running: bool,
    /// `done` was sent: the stream ends.
    ended: bool,
}

impl Watch {
    /// Look again (blocking: file reads). Cheap: the sources' files; every 2 s, when a
    /// training's key was not known yet, the sources themselves.
    fn look(&mut self) -> Result<(Vec<EpochRecord>, Option<Live>, bool)> {
        let mut e = self.app.engine();
        if self.sources.iter().any(|s| s.key.is_none())
            && self.refreshed.elapsed() > Duration::from_secs(2)
        {
            self.sources = e.curve_sources(&self.pipeline)?;
            self.refreshed = Instant::now();
        }
        e.refresh_sources(&mut self.sources);
        let (h, live) = e.curves(&self.sources);
        // Running: a training of it, or its latest recorded run (any stage).
        let running = live.as_ref().is_some_and(|l| l.running)
            || journal(&self.app).last_is_running(&self.pipeline.name) == Some(true);
        Ok((h, live, running))
    }
}

/// Server-sent events of a run: one `epoch` event whenever its curves gain an epoch (or
/// its training starts or stops), with the epochs so far, the progress and the time left.
async fn events(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    let Some(p) = pipeline_of(&app, &name) else {
        return unknown_run(&name);
    };
    let a = app.clone();
    let p2 = p.clone();
    let sources = match blocking(move || a.engine().curve_sources(&p2)).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let watch = Watch {
        app,
        pipeline: p,
        sources,
        refreshed: Instant::now(),
        sent: None,
        seen: Vec::new(),
        first: true,
        was_running: false,
        ended: false,
    };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        loop {
            if w.ended {
                return None;
            }
            if !w.first {
                tokio::time::sleep(POLL).await;
            }
            w.first = false;
            let (w2, looked) = match tokio::task::spawn_blocking(move || {
                let r = w.look();
                (w, r)
            })
            .await
            {
                Ok(x) => x,
                Err(_) => return None,
            };
            w = w2;
            let Ok((history, live, running)) = looked else {
                continue;
            };
            if running {
                w.was_running = true;
            } else if w.was_running {
                // It ended: say so once, with the last epochs, and close the stream.
                w.ended = true;
                let data = serde_json::json!({
                    "epochs": history.len(),
                    "live": live,
                    "text": pages::progress_text(&live, None),
                });
                let ev = Event::default().event("done").data(data.to_string());
                return Some((Ok::<_, Infallible>(ev), w));
            }
            let now = (history.len(), live.clone());
            if w.sent.as_ref() == Some(&now) {
                continue;
            }
            let epoch = history.last().map_or(0, |r| r.epoch);
            if !w.seen.iter().any(|(e, _)| *e == epoch) {
                w.seen.push((epoch, Instant::now()));
            }
            let eta = live.as_ref().filter(|l| l.running).and_then(|l| {
                let n = w.seen.len();
                if n < 2 {
                    return None;
                }
                let (e0, t0) = w.seen[n - 2];
                let (e1, t1) = w.seen[n - 1];
                let per = (t1 - t0).as_secs_f64() / (e1.saturating_sub(e0)).max(1) as f64;
                Some(per * l.last_epoch.saturating_sub(l.epoch) as f64)
            });
            let data = serde_json::json!({
                "epochs": history.len(),
                "epoch": epoch,
                "live": live,
                "eta_s": eta,
                "text": pages::progress_text(&live, eta),
            });
            w.sent = Some(now);
            let ev = Event::default().event("epoch").data(data.to_string());
            return Some((Ok::<_, Infallible>(ev), w));
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::path_is_safe;

    #[test]
    fn paths_out_of_the_dashboard_are_refused_in_every_spelling() {
        for bad in [
            "/files/abc/../../etc/passwd",
            "/files/abc/%2e%2e/x",
            "/files/abc/%2E%2E%2Fetc",
            "/run/..%2f..%2fetc",
            "/run/a%5cb",
            "/run/%00",
            "/./x",
        ] {
            assert!(!path_is_safe(bad), "{bad}");
        }
        for good in [
            "/",
            "/run/mini_lr@lr=5e-3",
            "/run/a%2525b",
            "/files/abc/history.json",
        ] {
            assert!(path_is_safe(good), "{good}");
        }
    }
}

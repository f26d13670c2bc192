//! `pipe ui --export DIR`: the dashboard's pages as static files, for a report or a CI
//! artifact. `index.html` (the runs), `runs/<run>.html` (its charts' data
//! inside the page), `sweeps/<sweep>.html`, `compare/<id>.html` (each sweep's points together),
//! `journal.html` and `journal/<id>.html` (every recorded run, as it ran),
//! `assets/` and `files/<artifact>/<path>`: each artifact file a page lists, up to
//! [`EXPORT_MAX`] bytes, copied from the store after its seal is checked. Every link is
//! relative, so the folder works copied elsewhere (a larger file is listed, unlinked). No
//! live updates: a page shows what the store held when written.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::assets;
use super::pages::{self, Links};
use super::snapshot::Snapshot;
use crate::engine::runs::Servable;
use crate::engine::{Engine, Project};

/// A file name for a run or sweep: its name where every character is plain, else the
/// plain part and a hash of the whole (distinct names never share a file).
pub fn stem(name: &str) -> String {
    let plain = name.len() <= 120
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@=,+".contains(c));
    if plain {
        return name.to_string();
    }
    let head: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_".contains(*c))
        .take(60)
        .collect();
    format!("{head}~{}", &blake3::hash(name.as_bytes()).to_hex()[..16])
}

/// The name of a compare page for these runs.
fn compare_id(names: &[&str]) -> String {
    blake3::hash(names.join("\n").as_bytes()).to_hex()[..16].to_string()
}

/// The largest artifact file copied into an export.
pub const EXPORT_MAX: u64 = 16 << 20;

struct FileLinks {
    /// `../` per level below the export's root.
    up: String,
    /// The artifact files copied into the export's `files/`.
    copied: RefCell<HashSet<(String, String)>>,
}

impl FileLinks {
    fn at(depth: usize) -> FileLinks {
        FileLinks {
            up: "../".repeat(depth),
            copied: RefCell::default(),
        }
    }

    /// Copy the files of `v`'s artifacts that its page lists (and that are small enough
    /// and match their seal) into `dir/files/`.
    fn copy_files(
        &self,
        engine: &Engine,
        v: &crate::report::run::RunView,
        dir: &Path,
    ) -> Result<()> {
        for a in &v.artifacts {
            for (f, size) in a.files.iter().take(pages::MAX_FILES) {
                let key = (a.output.clone(), f.clone());
                if *size > EXPORT_MAX || self.copied.borrow().contains(&key) {
                    continue;
                }
                let Servable::File(src, mut handle) = engine.servable(&a.output, f) else {
                    continue;
                };
                let to = dir.join("files").join(&a.output).join(f);
                if let Some(d) = to.parent() {
                    std::fs::create_dir_all(d)
                        .with_context(|| format!("cannot create {}", d.display()))?;
                }
                // Whatever is there goes first: a link left in the folder would have the
                // copy written through it, wherever it points.
                match std::fs::remove_file(&to) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("cannot replace {}", to.display()))
                    }
                    _ => {}
                }
                // From the handle that was checked, into a file made new here.
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&to)
                    .with_context(|| format!("cannot create {}", to.display()))?;
                std::io::copy(&mut handle, &mut out).with_context(|| {
                    format!("cannot copy {} to {}", src.display(), to.display())
                })?;
                self.copied.borrow_mut().insert(key);
            }
        }
        Ok(())
    }
}

fn href(s: &str) -> String {
    super::segment(s)
}

impl Links for FileLinks {
    fn home(&self) -> String {
        format!("{}index.html", self.up)
    }
    fn run(&self, name: &str) -> String {
        format!("{}runs/{}.html", self.up, href(&stem(name)))
    }
    fn curves(&self, _: &str) -> Option<String> {
        None
    }
    fn events(&self, _: &str) -> Option<String> {
        None
    }
    fn compare(&self, names: &[&str]) -> String {
        if names.is_empty() {
            // The runs page's "compare selected" needs a server.
            return String::new();
        }
        format!("{}compare/{}.html", self.up, compare_id(names))
    }
    fn sweep(&self, name: &str) -> String {
        format!("{}sweeps/{}.html", self.up, href(&stem(name)))
    }
    fn file(&self, output: &str, path: &str) -> String {
        if !self
            .copied
            .borrow()
            .contains(&(output.to_string(), path.to_string()))
        {
            return String::new();
        }
        let parts: Vec<String> = path.split('/').map(href).collect();
        format!("{}files/{}/{}", self.up, href(output), parts.join("/"))
    }
    fn asset(&self, name: &str) -> String {
        format!("{}assets/{name}", self.up)
    }
    fn csp(&self) -> Option<&'static str> {
        // The server's policy less what a `<meta>` cannot say (frame-ancestors); nothing
        // is fetched. Scripts and styles come from the folder, never inline.
        Some(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'none'; base-uri 'none'; form-action 'none'",
        )
    }
    fn journal(&self, id: Option<&str>) -> String {
        match id {
            None => format!("{}journal.html", self.up),
            Some(id) => format!("{}journal/{}.html", self.up, href(&stem(id))),
        }
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    crate::atomic::write_atomic(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// What marks a folder as written by `pipe ui --export` (an export may replace it).
const MARKER: &str = ".pipe-export";

/// The folders an export keeps inside DIR while it works: the new pages, and the earlier
/// export's entries while they are swapped out.
const STAGING: &str = ".pipe-export-new";
const REPLACED: &str = ".pipe-export-old";

/// Write the dashboard of `project` into folder `dir`; returns how many pages. The pages
/// are written into a folder inside `dir` first, and only once every one is written do
/// they replace what `dir` held: an export that fails part-way leaves `dir` as it was,
/// and one that succeeds leaves no page of an earlier export behind. `dir` itself stays
/// (a mount point, its permissions). It must be new, empty, or an earlier export.
pub fn export(project: &Project, dir: &Path) -> Result<usize> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => bail!("{} exists and is not a folder", dir.display()),
        Ok(_) => {
            let theirs: Vec<std::ffi::OsString> = std::fs::read_dir(dir)
                .with_context(|| format!("cannot read {}", dir.display()))?
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n != STAGING && n != REPLACED)
                .collect();
            // An export from before the marker: its index and its script.
            let earlier = dir.join(MARKER).is_file()
                || (dir.join("index.html").is_file() && dir.join("assets/ui.js").is_file());
            if !theirs.is_empty() && !earlier {
                bail!(
                    "{} is not empty and is no earlier `pipe ui --export` (it has no {MARKER}): export into a new or empty folder",
                    dir.display()
                );
            }
        }
        Err(_) => std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?,
    }
    let fresh = dir.join(STAGING);
    let old = dir.join(REPLACED);
    // What a killed export left.
    for left in [&fresh, &old] {
        if left.exists() {
            std::fs::remove_dir_all(left)
                .with_context(|| format!("cannot remove {}", left.display()))?;
        }
    }
    let written = export_into(project, &fresh)
        .and_then(|n| write(&fresh.join(MARKER), "written by pipe ui --export\n").map(|_| n));
    let n = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&fresh);
            return Err(e);
        }
    };
    // The swap: the earlier entries aside, the new ones in, the earlier ones gone.
    let entries = |d: &Path| -> Result<Vec<std::ffi::OsString>> {
        Ok(std::fs::read_dir(d)
            .with_context(|| format!("cannot read {}", d.display()))?
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != STAGING && n != REPLACED)
            .collect())
    };
    std::fs::create_dir(&old).with_context(|| format!("cannot create {}", old.display()))?;
    for name in entries(dir)? {
        std::fs::rename(dir.join(&name), old.join(&name))
            .with_context(|| format!("cannot move {} aside", dir.join(&name).display()))?;
    }
    for name in entries(&fresh)? {
        std::fs::rename(fresh.join(&name), dir.join(&name)).with_context(|| {
            format!(
                "cannot move the export's {} into place",
                name.to_string_lossy()
            )
        })?;
    }
    for left in [&fresh, &old] {
        std::fs::remove_dir_all(left)
            .with_context(|| format!("cannot remove {}", left.display()))?;
    }
    Ok(n)
}

/// [`export`]'s pages, written into `dir`.
fn export_into(project: &Project, dir: &Path) -> Result<usize> {
    let snap = Snapshot::build(project)?;
    let mut engine = Engine::read_only(&project.cache);
    let mut pages_written = 0;
    for name in assets::NAMES {
        let (_, body) = assets::get(name).expect("built in");
        write(&dir.join("assets").join(name), body)?;
    }
    let root = FileLinks::at(0);
    let journal = super::server::journal_of(project).list_heads();
    for w in &journal.warnings {
        eprintln!("warning: {w}");
    }
    write(
        &dir.join("index.html"),
        &pages::runs_page(
            &snap.rows,
            &snap.sweep_list(),
            &snap.skipped,
            &journal.runs,
            &root,
        ),
    )?;
    pages_written += 1;
    let one = FileLinks::at(1);
    // The journal (every page links it): every recorded run, and each one's page as it
    // ran.
    write(
        &dir.join("journal.html"),
        &pages::journal_page(&journal.runs, &snap.rows, &journal.warnings, &root),
    )?;
    pages_written += 1;
    for r in &journal.runs {
        let Some((rec, history)) = super::server::record_and_history(project, &r.id)? else {
            continue;
        };
        write(
            &dir.join("journal").join(format!("{}.html", stem(&rec.id))),
            &pages::record_page(&rec, &history, &one),
        )?;
        pages_written += 1;
    }
    for (run, row) in snap.runs.iter().zip(&snap.rows) {
        let v = engine.run_view(&run.pipeline, Some(row.clone()))?;
        one.copy_files(&engine, &v, dir)?;
        let s = stem(&run.name);
        write(
            &dir.join("runs").join(format!("{s}.html")),
            &pages::run_page(&v, &one),
        )?;
        pages_written += 1;
    }
    for sw in &snap.sweeps {
        let metric = snap.sweep_metric(sw);
        // Best as `pipe show` marks it (the snapshot's rows).
        let rows = snap.sweep_rows(&sw.name);
        let keys: Vec<String> = sw.keys.iter().map(|k| sw.short_key(k)).collect();
        write(
            &dir.join("sweeps").join(format!("{}.html", stem(&sw.name))),
            &pages::sweep_page(
                &sw.name,
                &sw.file.display().to_string(),
                &keys,
                &rows,
                &metric,
                &engine.decisions(sw),
                &one,
            ),
        )?;
        pages_written += 1;
        // Its points compared, as the sweep page links.
        let names: Vec<&str> = rows.iter().map(|r| r.pipeline.as_str()).collect();
        let mut runs = Vec::new();
        for pt in &sw.points {
            let sources = engine.curve_sources(&pt.pipeline)?;
            let (h, _) = engine.curves(&sources);
            let row = rows
                .iter()
                .find(|r| r.pipeline == pt.pipeline.name)
                .cloned()
                .map_or_else(|| engine.row(&pt.pipeline), Ok)?;
            runs.push(pages::Compared {
                name: pt.pipeline.name.clone(),
                link: one.run(&pt.pipeline.name),
                epochs: h,
                metrics: row.canonical_metrics(),
            });
        }
        let diff = match (sw.points.first(), sw.points.get(1)) {
            (Some(a), Some(b)) => Some(crate::report::diff::diff(
                &engine.side(&a.pipeline)?,
                &engine.side(&b.pipeline)?,
            )),
            _ => None,
        };
        write(
            &dir.join("compare")
                .join(format!("{}.html", compare_id(&names))),
            &pages::compare_page(&runs, diff.as_ref(), &one),
        )?;
        pages_written += 1;
    }
    Ok(pages_written)
}

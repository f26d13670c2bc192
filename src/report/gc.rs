//! What `pipe gc` removed, or would remove, and how it is shown.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::fmt;

/// One thing gc removes (or would).
#[derive(Debug, Clone, Serialize)]
pub struct Removal {
    /// `artifact`, `damaged artifact`, `key`, `scratch`, `state`.
    pub what: String,
    /// Its name: an artifact's hash, a key, a pipeline.
    pub name: String,
    /// What made it, when known (`train (demo)`).
    pub detail: String,
    /// Bytes it frees.
    pub bytes: u64,
}

/// What `pipe gc` did, or would do.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// The manifest folders it went by.
    pub pipelines: Vec<PathBuf>,
    /// Everything removed (or, in a dry run, to be removed).
    pub removed: Vec<Removal>,
    /// Manifests that could not be resolved (their last runs were kept).
    pub warnings: Vec<String>,
    /// Whether nothing was removed because it was a dry run.
    pub dry_run: bool,
}

impl GcReport {
    /// How many removals of a kind.
    pub fn count(&self, what: &str) -> usize {
        self.removed.iter().filter(|r| r.what == what).count()
    }

    /// Bytes freed (or to be freed).
    pub fn bytes(&self) -> u64 {
        self.removed.iter().map(|r| r.bytes).sum()
    }
}

/// The plan or result of `pipe gc` as text: one line per artifact, scratch folder or
/// state, the keys counted, and the total.
pub fn describe(r: &GcReport) -> String {
    let mut out = String::new();
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let mut by: BTreeMap<&str, Vec<&Removal>> = BTreeMap::new();
    for x in &r.removed {
        by.entry(x.what.as_str()).or_default().push(x);
    }
    for (what, items) in &by {
        if *what == "key" {
            continue;
        }
        for x in items {
            // Hashes are shown short; a pipeline's name whole.
            let name = if *what == "state" {
                x.name.as_str()
            } else {
                crate::ids::short(&x.name)
            };
            out.push_str(&format!(
                "{verb} {what} {}  {}  {}\n",
                name,
                fmt::bytes(x.bytes),
                x.detail
            ));
        }
    }
    out.push_str(&format!(
        "gc: {verb} {} artifacts, {} keys, {} scratch folders{}, {} in all (manifests: {})",
        r.count("artifact") + r.count("damaged artifact"),
        r.count("key"),
        r.count("scratch"),
        match r.count("state") {
            0 => String::new(),
            n => format!(", {n} recorded runs"),
        },
        fmt::bytes(r.bytes()),
        r.pipelines
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out
}

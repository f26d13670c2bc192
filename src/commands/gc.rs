//! `pipe gc`: remove what no manifest refers to.

use anyhow::Result;

use super::Global;
use crate::engine::{Engine, Project};
use crate::report::progress::human_bytes;

/// `pipe gc`.
pub fn gc(g: &Global) -> Result<()> {
    let proj = Project::discover(g.cache.clone())?;
    let mut engine = Engine::new(&proj.cache)?;
    let r = engine.gc(&proj)?;
    if let Some(first) = r.warnings.first() {
        eprintln!(
            "note: {} manifest(s) do not resolve here (e.g. {first}); only their last runs were kept",
            r.warnings.len()
        );
    }
    println!(
        "gc: removed {} artifacts and {} keys, freed {}",
        r.artifacts,
        r.keys,
        human_bytes(r.bytes)
    );
    Ok(())
}

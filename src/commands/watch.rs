//! `pipe watch`: serve the store's dataset-folder events (see `engine::fswatch`).

use anyhow::Result;

use super::Global;
use crate::engine::Project;

/// Watch the dataset folders that runs against this project's store ask about, until
/// stopped; each folder watched is said on stderr.
pub fn watch(g: &Global) -> Result<()> {
    let proj = Project::discover(g.cache.clone())?;
    let cache = std::path::absolute(&proj.cache).unwrap_or(proj.cache.clone());
    crate::engine::fswatch::serve(&cache, &mut |line| eprintln!("{line}"))
}

//! `pipe watch`: serve the store's dataset-folder events (see `engine::fswatch`).

use anyhow::Result;

use super::Global;
use crate::engine::Project;

/// Watch the dataset folders that runs against this project's store ask about, until
/// stopped; each folder watched is said on stderr.
pub fn watch(g: &Global) -> Result<()> {
    let proj = Project::discover(g.cache.clone())?;
    let cache = std::path::absolute(&proj.cache).unwrap_or(proj.cache.clone());
    // A closed stderr (a closed terminal) does not stop the watcher.
    crate::engine::fswatch::serve(&cache, &mut |line| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{line}");
    })
}

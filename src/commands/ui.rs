//! `pipe ui`: the dashboard, served or exported.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Result;

use super::Global;
use crate::engine::Project;

/// `pipe ui [--port N] [--bind ADDR] [--open] [--export DIR]`.
pub fn ui(g: &Global, port: u16, bind: IpAddr, open: bool, export: Option<&Path>) -> Result<()> {
    let project = Project::discover(g.cache.clone())?;
    if !project.pipelines.is_dir() {
        anyhow::bail!(
            "no pipelines/ folder here or above {}: run `pipe ui` in a project",
            project.dir.display()
        );
    }
    match export {
        Some(dir) => {
            let n = crate::ui::export(&project, dir)?;
            println!("pipe ui: wrote {n} pages into {}", dir.display());
            Ok(())
        }
        None => crate::ui::serve(project, &crate::ui::UiOptions { port, bind, open }),
    }
}

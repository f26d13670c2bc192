//! `pipe diff A [B]`: two pipelines, or one against its last run.

use anyhow::Result;

use super::Global;
use crate::engine::Project;
use crate::report::diff;

/// `pipe diff A [B]`: two pipelines, or one against its last run.
pub fn diff(g: &Global, a: &str, b: Option<&str>, sets: &[String], json: bool) -> Result<()> {
    let discovered = Project::discover(g.cache.clone())?;
    let (pa, p) = discovered.load(a, sets)?;
    let mut ea = super::looking(&pa);
    let (sa, sb) = match b {
        Some(b) => {
            let (pb, q) = discovered.load(b, sets)?;
            let mut eb = super::looking(&pb);
            (ea.side(&p)?, eb.side(&q)?)
        }
        None => ea.against_last_run(&p)?,
    };
    let d = diff::diff(&sa, &sb);
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        println!("{} vs {}", d.a, d.b);
        print!("{}", diff::render_diff(&d));
    }
    Ok(())
}

//! `pipe diff A [B]`: two pipelines or recorded runs, or one pipeline against its last
//! run.

use anyhow::Result;

use super::Global;
use crate::engine::Project;
use crate::report::diff::{self, Side};

/// One side: a recorded run (`exp3~1`, a run id, `exp3@ID-PREFIX`) as it ran, or a
/// pipeline as its manifest is now.
fn side(g: &Global, discovered: &Project, arg: &str, sets: &[String]) -> Result<Side> {
    if let Some((proj, rec, p)) = super::resolve_run(g, arg)? {
        if !sets.is_empty() {
            anyhow::bail!("`{arg}` is a recorded run: --set does not apply to it");
        }
        let engine = super::looking(&proj);
        return engine.record_side(&rec, p.as_ref().ok());
    }
    let (pa, p) = discovered.load(arg, sets)?;
    let mut e = super::looking(&pa);
    e.side(&p)
}

/// `pipe diff A [B]`: two pipelines or runs, or one pipeline against its last run.
pub fn diff(g: &Global, a: &str, b: Option<&str>, sets: &[String], json: bool) -> Result<()> {
    let discovered = Project::discover(g.cache.clone())?;
    let (sa, sb) = match b {
        Some(b) => (
            side(g, &discovered, a, sets)?,
            side(g, &discovered, b, sets)?,
        ),
        None => {
            let (pa, p) = discovered.load(a, sets)?;
            let mut ea = super::looking(&pa);
            ea.against_last_run(&p)?
        }
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

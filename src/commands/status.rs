//! `pipe status`: each stage cached or stale, and why.

use anyhow::Result;

use super::{load, Global};
use crate::engine::Engine;
use crate::report::outcome;

/// `pipe status`.
pub fn status(g: &Global, pipeline: &str, sets: &[String], json: bool) -> Result<()> {
    let (proj, p) = load(g, pipeline, sets)?;
    let mut engine = Engine::read_only(&proj.cache);
    let stages = engine.status(&p)?;
    if json {
        let v = serde_json::json!({"pipeline": p.name, "manifest": p.file.display().to_string(), "stages": stages});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!(
        "{}",
        outcome::status_text(&p.name, &p.file.display().to_string(), &stages)
    );
    Ok(())
}

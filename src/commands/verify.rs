//! `pipe verify`: re-hash artifacts against what was published.

use anyhow::Result;

use super::Global;
use crate::engine::integrity::Health;
use crate::engine::{Engine, Project};

/// `pipe verify [PIPELINE]`: re-hash every artifact (or the pipeline's last run's) against
/// what was published; an error if any is damaged.
pub fn verify(g: &Global, pipeline: Option<&str>) -> Result<()> {
    let project = Project::discover(g.cache.clone())?;
    let (project, only) = match pipeline {
        Some(name) => {
            let (proj, p) = project.load(name, &[])?;
            let engine = Engine::read_only(&proj.cache);
            let st = engine.store().load_state(&p.name);
            let outs: std::collections::HashSet<String> =
                st.stages.values().map(|s| s.output.clone()).collect();
            (proj, Some(outs))
        }
        None => (project, None),
    };
    let engine = Engine::read_only(&project.cache);
    let results = engine.verify(only.as_ref())?;
    let mut damaged = 0;
    for (a, stages, h) in &results {
        let who = if stages.is_empty() {
            String::new()
        } else {
            format!(" ({})", stages.join(", "))
        };
        match h {
            Health::Sound => {
                println!("ok       {}{who}", &a[..12.min(a.len())])
            }
            Health::Damaged(problems) => {
                damaged += 1;
                println!("DAMAGED  {}{who}", &a[..12.min(a.len())]);
                for pr in problems {
                    println!("         {pr}");
                }
            }
        }
    }
    if damaged > 0 {
        // Move them aside (so even damage a stat check cannot see is not reused).
        let store = crate::engine::store::Store::open(&project.cache)?;
        let _lock = store.lock("pipe verify")?;
        for (a, _, h) in &results {
            if *h != Health::Sound {
                store.quarantine(a)?;
            }
        }
        anyhow::bail!(
            "{damaged} of {} artifacts are damaged; they were moved aside: the next `pipe run` rebuilds what it needs, `pipe gc` deletes them",
            results.len()
        );
    }
    eprintln!("{} artifacts verified, none damaged", results.len());
    Ok(())
}

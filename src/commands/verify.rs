//! `pipe verify`: re-hash artifacts against what was published.

use std::collections::HashSet;

use anyhow::Result;

use super::Global;
use crate::engine::integrity::Health;
use crate::engine::{Engine, Project};

/// `pipe verify [PIPELINE]`: re-hash every artifact (or the pipeline's last run's) against
/// what was published; an error if any is damaged.
pub fn verify(g: &Global, pipeline: Option<&str>) -> Result<()> {
    let project = Project::discover(g.cache.clone())?;
    let (project, only, only_keys) = match pipeline {
        Some(name) => {
            let (proj, p) = project.load(name, &[])?;
            let engine = Engine::read_only(&proj.cache);
            let st = engine.store().load_state(&p.name);
            let outs: HashSet<String> = st.stages.values().map(|s| s.output.clone()).collect();
            let keys: HashSet<String> = st.stages.values().map(|s| s.key.clone()).collect();
            (proj, Some(outs), Some(keys))
        }
        None => (project, None, None),
    };
    let engine = Engine::read_only(&project.cache);
    let results = engine.verify(only.as_ref())?;
    let wrong = engine.verify_keys(only_keys.as_ref())?;
    let mut damaged = 0;
    for (a, stages, h) in &results {
        let who = if stages.is_empty() {
            String::new()
        } else {
            format!(" ({})", stages.join(", "))
        };
        match h {
            Health::Sound => {
                println!("ok       {}{who}", crate::content::short(a))
            }
            Health::Damaged(problems) => {
                damaged += 1;
                println!("DAMAGED  {}{who}", crate::content::short(a));
                for pr in problems {
                    println!("         {pr}");
                }
            }
        }
    }
    for (key, stage, why) in &wrong {
        println!(
            "WRONG    key {} ({stage}): {why}",
            crate::content::short(key)
        );
    }
    if damaged > 0 || !wrong.is_empty() {
        // Move damaged artifacts aside (so even damage a stat check cannot see is not
        // reused) and drop key records that point at the wrong artifact.
        let store = crate::engine::store::Store::open(&project.cache)?;
        let _lock = store.lock("pipe verify")?;
        for (a, _, h) in &results {
            if *h != Health::Sound {
                store.quarantine(a)?;
            }
        }
        for (key, _, _) in &wrong {
            store.remove_key(key)?;
        }
        anyhow::bail!(
            "{damaged} of {} artifacts are damaged and {} key records point at the wrong artifact; the damaged were moved aside and the records dropped: the next `pipe run` rebuilds what it needs, `pipe gc` deletes the rest",
            results.len(),
            wrong.len()
        );
    }
    eprintln!(
        "{} artifacts and their keys verified, none damaged",
        results.len()
    );
    Ok(())
}

//! `pipe verify`: re-hash artifacts against what was published.

use std::collections::HashSet;

use anyhow::Result;

use super::Global;
use crate::engine::integrity::Health;
use crate::engine::Project;
use crate::ids::ContentHash;

/// `pipe verify [PIPELINE]`: re-hash every artifact (or the pipeline's last run's) against
/// what was published; an error if any is damaged.
pub fn verify(g: &Global, pipeline: Option<&str>) -> Result<()> {
    let project = Project::discover(g.cache.clone())?;
    let (project, only, only_keys) = match pipeline {
        Some(name) => {
            let (proj, p) = project.load(name, &[])?;
            let engine = super::looking(&proj);
            let st = engine.store().load_state(&p.name);
            let outs: HashSet<ContentHash> = st.stages.values().map(|s| s.output.clone()).collect();
            let keys: HashSet<String> = st.stages.values().map(|s| s.key.to_string()).collect();
            (proj, Some(outs), Some(keys))
        }
        None => (project, None, None),
    };
    let engine = super::looking(&project);
    let verified = engine.verify(only.as_ref())?;
    let results = verified.artifacts;
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
                println!("ok       {}{who}", a.short())
            }
            Health::Damaged(problems) => {
                damaged += 1;
                println!("DAMAGED  {}{who}", a.short());
                for pr in problems {
                    println!("         {pr}");
                }
            }
        }
    }
    for (key, stage, why) in &wrong {
        println!("WRONG    key {} ({stage}): {why}", crate::ids::short(key));
    }
    // The run journal: every record reads, names itself, and its manifest texts match
    // their hash.
    let (records, problems) = crate::engine::journal::Journal::of(engine.store()).verify();
    for p in &problems {
        println!("DAMAGED  run record: {p}");
    }
    if damaged > 0 || !wrong.is_empty() {
        // Move damaged artifacts aside (so even damage a stat check cannot see is not
        // reused) and drop key records that point at the wrong artifact.
        let set_aside: Vec<ContentHash> = results
            .iter()
            .filter(|(_, _, h)| *h != Health::Sound)
            .map(|(a, _, _)| a.clone())
            .collect();
        let keys: Vec<String> = wrong.iter().map(|(k, _, _)| k.clone()).collect();
        let (moved, dropped) = super::writing(g, &project, false)?.set_aside(&set_aside, &keys)?;
        let meanwhile = if moved < set_aside.len() || dropped < keys.len() {
            format!(
                " ({} artifacts and {} records were mended by a run meanwhile and left in place)",
                set_aside.len() - moved,
                keys.len() - dropped
            )
        } else {
            String::new()
        };
        anyhow::bail!(
            "{damaged} of {} artifacts are damaged and {} key records point at the wrong artifact; {moved} were moved aside and {dropped} records dropped{meanwhile}: the next `pipe run` rebuilds what it needs, `pipe gc` deletes the rest",
            results.len(),
            wrong.len()
        );
    }
    // Sound files whose times had moved (a store copied with `cp -a`): their seals take the
    // new times, so `status` and runs do not read them again.
    if !verified.reproven.is_empty() {
        let files: usize = verified.reproven.iter().map(|(_, m)| m.len()).sum();
        crate::engine::Engine::new(&project.cache)?.refresh_seals(&verified.reproven)?;
        eprintln!(
            "{files} files of {} artifacts had new times and the same bytes: their seals were brought up to date",
            verified.reproven.len()
        );
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "{} of {} run records are damaged (listed above); `pipe runs` skips them",
            problems.len(),
            records + problems.len()
        );
    }
    eprintln!(
        "{} artifacts and their keys verified, and {records} run records; none damaged",
        results.len()
    );
    Ok(())
}

//! `pipe push`, `pipe pull` and `pipe verify --remote`: the remote cache by hand (a run
//! fetches and pushes on its own).

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::{Console, Global};
use crate::engine::remote::{Pushed, Remote, RemoteError};
use crate::engine::{Engine, Project};
use crate::ids::StageKey;
use crate::manifest::StageKind;
use crate::outcome::{Source, StageState};

/// The remote the project sets, or an error that says how to set one.
fn required(g: &Global, proj: &Project) -> Result<Arc<Remote>> {
    match super::open_remote(g, proj)? {
        Some(r) => Ok(r),
        None => bail!(
            "no remote cache is set: give --remote URL, set PIPE_REMOTE, or write\n  [remote]\n  url = \"s3://bucket/prefix\"\ninto {}",
            proj.dir.join(crate::engine::remote::PROJECT_FILE).display()
        ),
    }
}

fn remote_err(e: RemoteError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// `pipe push [P...]`: what the pipelines' current manifests use (every stage the store
/// holds for them) and the journal's completed run records, uploaded where missing.
pub fn push(g: &Global, names: &[String]) -> Result<()> {
    let proj = Project::discover(g.cache.clone())?;
    let rem = required(g, &proj)?;
    let runs = proj.runs(names, &[])?;
    for s in &runs.skipped {
        eprintln!("note: skipped {s}");
    }
    let mut engine = Engine::read_only(&proj.cache);
    // Held while uploading: `gc` and `verify` (which may collect or quarantine an
    // artifact) wait, rather than take files from under an upload.
    let _lock = match engine.share_store("pipe push") {
        Ok(l) => Some(l),
        // A store this user may only read (a team's, shared): pushed from as before.
        Err(e) => {
            eprintln!("note: pushing without the store's lock ({e:#}): a `pipe gc` meanwhile could take what is being sent");
            None
        }
    };
    // Each key once, in the order the pipelines list them.
    let mut keys: Vec<(String, StageKey)> = Vec::new();
    let mut seen = HashSet::new();
    for r in &runs.runs {
        for o in engine.status(&r.pipeline)? {
            if let (StageState::Cached, Some(k)) = (o.state, o.key) {
                if seen.insert(k.clone()) {
                    keys.push((format!("{}:{}", r.name, o.name), k));
                }
            }
        }
    }
    let store = engine.store();
    let console = super::Console::new(false);
    let files_sent = || crate::outcome::events::fault_point(&console, "push:files-sent");
    let (mut sent, mut there, mut bytes, mut secs) = (0, 0, 0u64, 0.0);
    for (what, key) in &keys {
        let Some(rec) = store.lookup(key) else {
            continue;
        };
        match rem
            .push_artifact(&rec, &store.artifact_dir(&rec.output), &files_sent)
            .map_err(remote_err)
            .with_context(|| format!("pushing {what}"))?
        {
            Pushed::Sent(b, s) => {
                eprintln!(
                    "pushed   {what:<32} {:>10}  {}",
                    crate::fmt::bytes(b),
                    crate::fmt::secs(s)
                );
                sent += 1;
                bytes += b;
                secs += s;
            }
            Pushed::There => there += 1,
        }
    }
    // The records of these pipelines' runs (every record, when none is named).
    let journal = crate::engine::journal::Journal::of(store);
    let listing = journal.list();
    for w in &listing.warnings {
        eprintln!("warning: {w}");
    }
    let wanted: HashSet<&str> = runs.runs.iter().map(|r| r.name.as_str()).collect();
    let in_remote: HashSet<String> = rem.record_ids().map_err(remote_err)?.into_iter().collect();
    let mut records = 0;
    for r in &listing.runs {
        let named = names.is_empty() || wanted.contains(r.pipeline.as_str());
        if !named
            || in_remote.contains(&r.id)
            || r.state == crate::outcome::record::RunState::Running
        {
            continue;
        }
        // A Slurm run goes as its jobs completed it, once all of them have ended (its
        // file still says `running`).
        let record = match r.executor == "slurm" {
            true => match journal.settled(&r.id)? {
                Some(done) => Some(serde_json::to_vec(&done)?),
                None => continue,
            },
            false => None,
        };
        rem.push_record(journal.dir(), &r.id, &r.sources, record)
            .map_err(remote_err)
            .with_context(|| format!("pushing run record {}", r.id))?;
        records += 1;
    }
    eprintln!(
        "pushed {sent} artifact(s), {} in {}, to {}; {there} already there; {records} run record(s)",
        crate::fmt::bytes(bytes),
        crate::fmt::secs(secs),
        rem.url()
    );
    Ok(())
}

/// `pipe pull [P...] [--only-final]`: what the pipelines' current manifests need and the
/// remote holds, fetched into the store (each file checked as it arrives, each artifact
/// against its key before it is published); and the remote's run records the journal
/// lacks. `only_final`: the last training stage and the evaluations of each pipeline.
pub fn pull(g: &Global, names: &[String], only_final: bool) -> Result<()> {
    let proj = Project::discover(g.cache.clone())?;
    let rem = required(g, &proj)?;
    let runs = proj.runs(names, &[])?;
    for s in &runs.skipped {
        eprintln!("note: skipped {s}");
    }
    super::device_notice();
    let mut engine = Engine::new(&proj.cache)?
        .watched_by(Box::new(Console::new(false)))
        .with_remote(Some(rem.clone()));
    // The remote's run records first: on a machine that cannot key a pipeline (its
    // dataset is not here), a pulled run of the same manifest says what to fetch.
    let records = pull_records(&rem, &engine, names, &runs)?;
    let (mut fetched, mut bytes, mut secs) = (0, 0u64, 0.0);
    let mut done = HashSet::new();
    for r in &runs.runs {
        let p = &r.pipeline;
        // Looking with the remote: each stage the store lacks and the remote has, with
        // its key (the keys after it follow from the remote's record of its output).
        let status = engine.status(p)?;
        let wanted: Vec<&String> = match only_final {
            false => status.iter().map(|o| &o.name).collect(),
            true => final_stages(p),
        };
        let mut want: Vec<(String, StageKind, StageKey, Option<u64>)> = Vec::new();
        for o in &status {
            let (Source::Remote { bytes: size }, Some(key)) = (o.source, &o.key) else {
                continue;
            };
            if wanted.contains(&&o.name) {
                want.push((o.name.clone(), o.kind, key.clone(), Some(size)));
            }
        }
        let keyless = status.iter().any(|o| {
            wanted.contains(&&o.name) && o.key.is_none() && o.state == StageState::Waiting
        });
        if keyless {
            match engine.stand_in_run(p) {
                Some(rec) => {
                    eprintln!(
                        "note: `{}` cannot be keyed here (a dataset it reads is not here); fetching what its run {} on {} made, from the same manifest texts",
                        r.name, rec.id, rec.host.hostname
                    );
                    for o in crate::engine::journal::outcomes_of(&rec) {
                        if let (true, Some(key)) = (wanted.contains(&&o.name), o.key) {
                            want.push((o.name.clone(), o.kind, key, None));
                        }
                    }
                }
                None => eprintln!(
                    "warning: `{}` cannot be keyed here (a dataset it reads is not here) and no run of it recorded in {} was loaded from these manifest texts: nothing of it to pull",
                    r.name,
                    rem.url()
                ),
            }
        }
        for (name, kind, key, size) in want {
            if !done.insert(key.clone()) {
                continue;
            }
            if let Some((output, summary, s)) = engine.pull_stage(&name, kind, &key)? {
                let size = size.unwrap_or_else(|| {
                    crate::content::dir_size(&engine.store().artifact_dir(&output))
                });
                eprintln!(
                    "fetched  {:<32} {:>10}  {}  {summary}",
                    format!("{}:{}", r.name, name),
                    crate::fmt::bytes(size),
                    crate::fmt::secs(s)
                );
                fetched += 1;
                bytes += size;
                secs += s;
            }
        }
    }
    eprintln!(
        "fetched {fetched} artifact(s), {} in {}, from {}; {records} run record(s)",
        crate::fmt::bytes(bytes),
        crate::fmt::secs(secs),
        rem.url()
    );
    Ok(())
}

/// What `--only-final` fetches of a pipeline: its last training stage (the model `pipe
/// predict` uses, with its class list) and its evaluations.
fn final_stages(p: &crate::manifest::Pipeline) -> Vec<&String> {
    let order = p.topo_order();
    let last_training = order
        .iter()
        .rev()
        .find(|n| p.stages[*n].config.is_training());
    p.stages
        .keys()
        .filter(|n| {
            Some(*n) == last_training
                || p.stages[*n].config.kind() == crate::manifest::StageKind::Evaluate
        })
        .collect()
}

/// The remote's run records (of these pipelines; all when none is named) that the
/// journal lacks, with their manifest texts, written into the journal.
fn pull_records(
    rem: &Remote,
    engine: &Engine,
    names: &[String],
    runs: &crate::engine::runs::ProjectRuns,
) -> Result<usize> {
    let journal = crate::engine::journal::Journal::of(engine.store());
    let local: HashSet<String> = journal
        .list_heads()
        .runs
        .into_iter()
        .map(|r| r.id)
        .collect();
    let wanted: HashSet<&str> = runs.runs.iter().map(|r| r.name.as_str()).collect();
    let mut n = 0;
    let mut sources: HashSet<String> = HashSet::new();
    for id in rem.record_ids().map_err(remote_err)? {
        if local.contains(&id) || !crate::engine::journal::is_run_id(&id) {
            continue;
        }
        let Some(bytes) = rem.get_record(&id).map_err(remote_err)? else {
            continue;
        };
        let rec: crate::outcome::record::RunRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "warning: {}/runs/{id}.json does not read ({e}): skipped",
                    rem.url()
                );
                continue;
            }
        };
        if rec.id != id || (!names.is_empty() && !wanted.contains(rec.pipeline.as_str())) {
            continue;
        }
        if !rec.sources.is_empty() && !sources.contains(&rec.sources) {
            if let Some(text) = rem.get_sources(&rec.sources).map_err(remote_err)? {
                // Texts that do not match their hash (being written there now): this run
                // is left for a later pull, the others are taken.
                if blake3::hash(&text).to_hex().as_str() != rec.sources {
                    eprintln!(
                        "warning: {}/runs/sources/{}.json does not match its hash (written there now?): run {id} skipped (pull again later)",
                        rem.url(),
                        rec.sources
                    );
                    continue;
                }
                journal.add_sources(&rec.sources, &text)?;
            }
            sources.insert(rec.sources.clone());
        }
        journal.add_record(&rec, &bytes)?;
        n += 1;
    }
    Ok(n)
}

/// `pipe verify --remote`: every artifact in the remote, downloaded and checked file by
/// file against its manifest (and the folder against its content hash). Exits non-zero
/// when any is damaged.
pub fn verify_remote(g: &Global, repair: bool) -> Result<()> {
    let proj = Project::discover(g.cache.clone())?;
    let rem = required(g, &proj)?;
    let outputs = rem.manifests().map_err(remote_err)?;
    let scratch = tempfile_dir(&proj)?;
    // Repairs read this store's artifacts: `gc` waits meanwhile.
    let engine = Engine::read_only(&proj.cache);
    let _lock = match repair && proj.cache.is_dir() {
        true => Some(engine.share_store("pipe verify --remote --repair")?),
        false => None,
    };
    let store = engine.store();
    let (mut damaged, mut repaired) = (0, 0);
    for out in &outputs {
        let into = scratch.join(out.as_str());
        let checked = check_remote(&rem, out, &into);
        let _ = std::fs::remove_dir_all(&into);
        match checked {
            Ok(()) => println!("ok       {}", out.short()),
            Err(e @ (RemoteError::Unreachable { .. } | RemoteError::Credentials { .. })) => {
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(remote_err(e));
            }
            Err(e) => {
                println!("DAMAGED  {}\n         {e}", out.short());
                if !repair {
                    damaged += 1;
                    continue;
                }
                // The same artifact here, sound (its files hash to its name): sent again,
                // then checked as any other.
                let local = store.artifact_dir(out);
                let sound = local.is_dir()
                    && crate::content::hash_dir(&local, crate::stages::ALL_RECORDS)
                        .is_ok_and(|(content, _)| content == out.as_str());
                if !sound {
                    damaged += 1;
                    println!("         not repaired: this store holds no sound copy of it");
                    continue;
                }
                let mended = rem
                    .resend_artifact(out, &local)
                    .and_then(|()| check_remote(&rem, out, &into));
                let _ = std::fs::remove_dir_all(&into);
                match mended {
                    Err(
                        e @ (RemoteError::Unreachable { .. } | RemoteError::Credentials { .. }),
                    ) => {
                        let _ = std::fs::remove_dir_all(&scratch);
                        return Err(remote_err(e));
                    }
                    Ok(()) => {
                        repaired += 1;
                        println!(
                            "REPAIRED {} (sent again from {})",
                            out.short(),
                            local.display()
                        );
                    }
                    Err(e) => {
                        damaged += 1;
                        println!("         not repaired: {e}");
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if damaged > 0 {
        bail!(
            "{damaged} of {} artifact(s) in {} are damaged{}: a run refuses them and computes those stages itself{}",
            outputs.len(),
            rem.url(),
            match repaired {
                0 => String::new(),
                n => format!(" ({n} more repaired)"),
            },
            match repair {
                true => "",
                false => "; `pipe verify --remote --repair` on a machine that holds them sends them again",
            }
        );
    }
    match repaired {
        0 => eprintln!("{} artifact(s) in {}: all sound", outputs.len(), rem.url()),
        n => eprintln!(
            "{} artifact(s) in {}: all sound, {n} of them repaired",
            outputs.len(),
            rem.url()
        ),
    }
    Ok(())
}

/// Download artifact `out` from the remote into `into` and check each file against its
/// manifest and the folder against its content hash.
fn check_remote(
    rem: &crate::engine::remote::Remote,
    out: &crate::ids::ContentHash,
    into: &std::path::Path,
) -> Result<(), RemoteError> {
    match rem.manifest(out) {
        Ok(Some(m)) => rem.download(&m, into).and_then(|()| {
            let (content, _) = crate::content::hash_dir(into, crate::stages::ALL_RECORDS)
                .map_err(|e| RemoteError::Refused(format!("{e:#}")))?;
            match content == out.as_str() {
                true => Ok(()),
                false => Err(RemoteError::Refused(format!(
                    "its files make artifact {}, not {}",
                    &content[..12],
                    out.short()
                ))),
            }
        }),
        Ok(None) => Err(RemoteError::Refused("its manifest went away".into())),
        Err(e) => Err(e),
    }
}

/// A private folder in the store's scratch for `verify --remote`'s downloads.
fn tempfile_dir(proj: &Project) -> Result<std::path::PathBuf> {
    let dir = proj
        .cache
        .join("scratch")
        .join(format!("verify-remote-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

//! `pipe bench remote`: the remote cache's throughput — one artifact of `mb` megabytes
//! (a file of random bytes) pushed and fetched, each file checked as it arrives, against
//! the remote the project sets (`--remote`, `PIPE_REMOTE`, `pipe.toml`).

use std::time::Instant;

use anyhow::{bail, Result};
use rand::RngCore;

use super::{max, median, Scratch};
use crate::engine::remote::{Pushed, Remote, RemoteConfig};
use crate::engine::store::KeyRecord;
use crate::ids::{ContentHash, StageKey};

/// `pipe bench remote --mb N --rounds R` against `url` (none: the project's remote).
pub fn bench_remote(url: Option<&str>, mb: usize, rounds: usize) -> Result<()> {
    let here = std::env::current_dir()?;
    let Some(mut cfg) = RemoteConfig::resolve(url, &here)? else {
        bail!("no remote is set: give --remote URL (e.g. the one scripts/garage-up serves: s3://pipe/bench) or PIPE_REMOTE");
    };
    // Each run under its own prefix, so every round uploads.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let base = cfg.url.clone().unwrap_or_default();
    let scratch = Scratch::new()?;
    let art = scratch.dir.join("artifact");
    std::fs::create_dir_all(&art)?;
    let mut bytes = vec![0u8; mb << 20];
    rand::rng().fill_bytes(&mut bytes);
    std::fs::write(art.join("model.safetensors"), &bytes)?;
    drop(bytes);
    let (hash, _) = crate::content::hash_dir(&art, &[])?;
    let output = ContentHash::new(hash);
    let (mut push, mut fetch) = (Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        cfg.url = Some(format!(
            "{}/bench-{nanos}-{round}",
            base.trim_end_matches('/')
        ));
        let remote = Remote::open(&cfg)?;
        let rec = KeyRecord {
            key: StageKey::new(
                blake3::hash(format!("{nanos}-{round}").as_bytes())
                    .to_hex()
                    .to_string(),
            ),
            kind: crate::manifest::StageKind::Train,
            stage: "bench".into(),
            output: output.clone(),
            summary: String::new(),
            seconds: 0.0,
        };
        let t = Instant::now();
        match remote.push_artifact(&rec, &art, &|| {}) {
            Ok(Pushed::Sent(..)) => push.push(t.elapsed().as_secs_f64()),
            Ok(Pushed::There) => bail!("the key was in the remote already"),
            Err(e) => bail!("{e}"),
        }
        let into = scratch.dir.join(format!("fetched-{round}"));
        let t = Instant::now();
        match remote.fetch(&rec.key, &into) {
            Ok(Some(_)) => fetch.push(t.elapsed().as_secs_f64()),
            Ok(None) => bail!("the key just pushed is not there"),
            Err(e) => bail!("{e}"),
        }
        std::fs::remove_dir_all(&into)?;
    }
    let rate = |s: f64| mb as f64 * 1.048576 / s;
    println!("| measurement | value |");
    println!("|---|---|");
    println!("| remote | {} |", crate::engine::remote::redact_url(&base));
    println!("| artifact | one file of {mb} MiB (random bytes) |");
    println!(
        "| push (files, manifest, key), median of {} | {:.2} s: {:.0} MB/s (slowest {:.0} MB/s) |",
        push.len(),
        median(push.clone()),
        rate(median(push.clone())),
        rate(max(&push))
    );
    println!(
        "| fetch (each part checked against the manifest as it arrives), median of {} | {:.2} s: {:.0} MB/s (slowest {:.0} MB/s) |",
        fetch.len(),
        median(fetch.clone()),
        rate(median(fetch.clone())),
        rate(max(&fetch))
    );
    Ok(())
}

//! `pipe export PIPELINE[:STAGE] -o FILE`: a trained stage as an ONNX model.

use std::path::Path;

use anyhow::{Context, Result};

use super::predict::load_stage_target;
use super::Global;
use crate::manifest::Tta;

/// `pipe export`.
pub fn export(g: &Global, target: &str, out: &Path, tta: Tta) -> Result<()> {
    let (proj, p, stage, run) = load_stage_target(g, target)?;
    // With a remote cache, a model pulled alone (`pipe pull --only-final`) is found by
    // the keys the remote's records give the stages before it.
    let mut engine = super::looking(&proj).with_remote(super::open_remote(g, &proj)?);
    let t = engine.trained_in(&p, stage.as_deref(), run.as_ref())?;
    let bytes = crate::stages::export::onnx_of(
        &t.model_dir,
        &t.data_dir,
        &p.name,
        &t.stage,
        Some(&t.key),
        t.filter,
        tta,
    )?;
    if out == Path::new("-") {
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        o.write_all(&bytes)?;
        o.flush()?;
        eprintln!(
            "wrote {} KiB to stdout: `{}` stage `{}` as ONNX (opset {}{})",
            bytes.len() / 1024,
            p.name,
            t.stage,
            crate::data::onnx::OPSET,
            crate::stages::export::tta_note(tta)
        );
        return Ok(());
    }
    // A link is written through; what is there must be a file (or nothing): the file is
    // replaced by one rename, which would replace a folder's entry, a FIFO or a device
    // node itself.
    let out = match std::fs::symlink_metadata(out) {
        Ok(m) if m.file_type().is_symlink() => out
            .canonicalize()
            .or_else(|_| {
                std::fs::read_link(out).map(|l| match out.parent() {
                    Some(d) if l.is_relative() => d.join(l),
                    _ => l,
                })
            })
            .with_context(|| format!("cannot follow the link {}", out.display()))?,
        _ => out.to_path_buf(),
    };
    match std::fs::metadata(&out) {
        Ok(m) if !m.is_file() => anyhow::bail!(
            "{} exists and is not a regular file (a folder, FIFO or device): give a file path, or `-` for stdout",
            out.display()
        ),
        _ => {}
    }
    // The folder must be there: a typo in it is an error, not a new tree of folders.
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            anyhow::bail!(
                "{}: there is no folder {} to write it into",
                out.display(),
                dir.display()
            );
        }
    }
    // Never into the store: a link to a published file would have it replaced under its
    // seal (the store's files are pipe's to write, at publish only).
    let folder = match out.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => std::path::PathBuf::from("."),
    };
    if let (Ok(dir), Ok(store)) = (folder.canonicalize(), proj.cache.canonicalize()) {
        if dir.starts_with(&store) {
            anyhow::bail!(
                "{} is inside the store {}: pipe writes there only when it publishes; give a path outside it",
                out.display(),
                store.display()
            );
        }
    }
    crate::atomic::write_atomic(&out, &bytes)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "wrote {} ({} KiB): `{}` stage `{}` as ONNX (opset {}{})",
        out.display(),
        bytes.len() / 1024,
        p.name,
        t.stage,
        crate::data::onnx::OPSET,
        crate::stages::export::tta_note(tta)
    );
    Ok(())
}

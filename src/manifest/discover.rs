//! Finding manifests: by path, by file name in `pipelines/`, or by a manifest's `name`
//! or `aliases`.

use std::path::{Path, PathBuf};

use super::error::{self, ManifestError};
use super::source::{display_path, read_source};
use super::value::{self, Kind};

/// Find the manifest for `arg`: a path, `pipelines/<arg>.toml`, or the manifest whose
/// `name` or `aliases` is `arg`.
pub fn find(pipelines_dir: &Path, arg: &str) -> anyhow::Result<PathBuf> {
    let as_path = Path::new(arg);
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    let direct = pipelines_dir.join(format!("{arg}.toml"));
    if direct.is_file() {
        return Ok(direct);
    }
    for p in [as_path, direct.as_path()] {
        if let Some(what) = not_a_manifest(p) {
            anyhow::bail!("{}: {what}, not a manifest file", p.display());
        }
    }
    let mut hits = Vec::new();
    for f in list(pipelines_dir)? {
        if let Ok((name, aliases)) = peek_names(&f) {
            if name.as_deref() == Some(arg) || aliases.iter().any(|a| a == arg) {
                hits.push(f);
            }
        }
    }
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => {
            let names: Vec<String> = list(pipelines_dir)?
                .iter()
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect();
            let hint = error::did_you_mean(arg, names.iter().map(|s| s.as_str()))
                .map(|m| format!(" (did you mean `{m}`?)"))
                .unwrap_or_default();
            anyhow::bail!(
                "no pipeline `{arg}`: not a file, not {}, and no manifest there is named so{hint}",
                direct.display()
            )
        }
        _ => anyhow::bail!(
            "`{arg}` is ambiguous: {}",
            hits.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// What is at `p` when something is there but it is no regular file to read: a link to
/// nothing, a FIFO, a device, a socket (`None`: nothing there, a regular file or a folder).
fn not_a_manifest(p: &Path) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let link = std::fs::symlink_metadata(p).ok()?;
    let t = match std::fs::metadata(p) {
        Ok(m) => m.file_type(),
        Err(_) if link.file_type().is_symlink() => {
            let to = std::fs::read_link(p).unwrap_or_default();
            return Some(format!("a link that leads to no file ({})", to.display()));
        }
        Err(_) => return None,
    };
    let what = if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        return None;
    };
    Some(what.to_string())
}

/// Every `*.toml` directly in `dir`, sorted: each entry that is not a folder and whose name
/// does not start with `.`, so one that cannot be read (a link to nothing, a FIFO, a file
/// without read permission) is listed too, and whoever loads it says why it did not load
/// instead of never seeing it.
pub fn list(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if dir.is_dir() {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            // Hidden names are an editor's or a file system's, not manifests: Emacs's lock
            // `.#exp.toml` (a link to nothing), macOS's `._exp.toml`.
            let hidden = p
                .file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
            if p.extension().is_some_and(|x| x == "toml") && !hidden && !p.is_dir() {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The name a manifest gives its pipeline (`name = ...`), read without loading it whole:
/// `Ok(None)` when it gives none; an error when it cannot be read or is no TOML.
pub fn declared_name(path: &Path) -> Result<Option<String>, ManifestError> {
    peek_names(path).map(|(name, _)| name)
}

/// The names the pipelines of the manifests in `dir` go by: each its own `name`, else its
/// file's stem (a name is never inherited through `extends`), with the files (canonical
/// paths: a link to a manifest beside it is that manifest) that go by it. One that
/// cannot be read is passed over: it is refused by name when it is loaded.
pub fn names_in(dir: &Path) -> std::collections::HashMap<String, Vec<PathBuf>> {
    let mut out: std::collections::HashMap<String, Vec<PathBuf>> = Default::default();
    for f in list(dir).unwrap_or_default() {
        let name = match peek_names(&f) {
            Ok((Some(n), _)) => n,
            Ok((None, _)) => match f.file_stem() {
                Some(s) => s.to_string_lossy().into_owned(),
                None => continue,
            },
            Err(_) => continue,
        };
        if let Ok(canon) = std::fs::canonicalize(&f) {
            let files = out.entry(name).or_default();
            if !files.contains(&canon) {
                files.push(canon);
            }
        }
    }
    out
}

/// Another manifest than `path` among `names` ([`names_in`] of its folder) whose
/// pipeline goes by `name` too.
pub fn same_name_among(
    names: &std::collections::HashMap<String, Vec<PathBuf>>,
    path: &Path,
    name: &str,
) -> Option<PathBuf> {
    let me = std::fs::canonicalize(path).ok()?;
    names.get(name)?.iter().find(|o| **o != me).cloned()
}

/// The folder a manifest path is in (`.` for a bare file name).
pub fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn peek_names(path: &Path) -> Result<(Option<String>, Vec<String>), ManifestError> {
    let src = read_source(path, display_path(path))?;
    let doc = value::parse_document(src)?;
    let name = doc
        .get("name")
        .and_then(|e| e.value.as_str())
        .map(|s| s.to_string());
    let aliases = match doc.get("aliases").map(|e| &e.value.kind) {
        Some(Kind::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(|s| s.to_string()))
            .collect(),
        _ => Vec::new(),
    };
    Ok((name, aliases))
}

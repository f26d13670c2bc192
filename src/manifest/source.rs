//! Source texts and spans: where every key and value of a manifest was written (a file,
//! or a `--set` argument), as line and column for errors. The bottom of `manifest`: it
//! imports nothing of pipe's.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One source text: a manifest file or a `--set` argument.
#[derive(Debug)]
pub struct Source {
    /// Display name (a path, or `--set`).
    pub name: String,
    /// Path on disk, if any.
    pub path: Option<PathBuf>,
    /// The full text.
    pub text: String,
}

/// Where a key or value was written.
#[derive(Clone)]
pub struct Origin {
    /// The text it came from.
    pub source: Arc<Source>,
    /// Byte range in that text.
    pub span: Range<usize>,
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (l, c) = self.line_col();
        write!(f, "{}:{}:{}", self.source.name, l, c)
    }
}

impl Origin {
    /// 1-based line and column of the start of the span.
    pub fn line_col(&self) -> (usize, usize) {
        let text = &self.source.text;
        let start = self.span.start.min(text.len());
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = text[line_start..start].chars().count() + 1;
        (line, col)
    }

    /// `file:line:col`.
    pub fn location(&self) -> String {
        let (l, c) = self.line_col();
        format!("{}:{}:{}", self.source.name, l, c)
    }

    /// The source line holding the span start, and the span's column range within it.
    pub fn snippet(&self) -> (String, usize, usize) {
        let text = &self.source.text;
        let start = self.span.start.min(text.len());
        let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line_end = text[start..]
            .find('\n')
            .map(|i| start + i)
            .unwrap_or(text.len());
        let line = text[line_start..line_end].to_string();
        let col = text[line_start..start].chars().count();
        let end = self.span.end.clamp(start, line_end);
        let width = text[start..end].chars().count().max(1);
        (line, col, width)
    }
}

/// Why a manifest file could not be read: I/O, or text that is not UTF-8 (with the line
/// and column of the first bad byte).
#[derive(Debug)]
pub struct ReadError(pub String);

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Read a manifest file into a [`Source`].
pub fn read_source(path: &Path, display: String) -> Result<Arc<Source>, ReadError> {
    let bytes = read_manifest_bytes(path)
        .map_err(|e| ReadError(format!("cannot read {}: {e}", path.display())))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            // Locate the first bad byte: line and column (in characters) of the valid prefix.
            let at = e.utf8_error().valid_up_to();
            let valid = std::str::from_utf8(&e.as_bytes()[..at]).unwrap_or_default();
            let line = valid.matches('\n').count() + 1;
            let col = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            return Err(ReadError(format!(
                "{display}:{line}:{col}: the file is not valid UTF-8 (byte 0x{:02x}); TOML files are UTF-8",
                e.as_bytes()[at]
            )));
        }
    };
    Ok(Arc::new(Source {
        name: display,
        path: Some(path.to_path_buf()),
        text,
    }))
}

/// The most a manifest file may hold.
const MANIFEST_CAP: u64 = 16 << 20;

/// A manifest's bytes: opened without waiting (a FIFO in its place does not block), and
/// refused when it is no regular file (a link to a device) or over [`MANIFEST_CAP`].
fn read_manifest_bytes(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other(
            "not a regular file (a FIFO, a device or a socket)",
        ));
    }
    let mut buf = Vec::new();
    f.take(MANIFEST_CAP + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MANIFEST_CAP {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB: not a manifest",
            MANIFEST_CAP >> 20
        )));
    }
    Ok(buf)
}

/// How a path is shown in messages: relative to the current folder when inside it.
pub fn display_path(path: &Path) -> String {
    let cwd = std::env::current_dir().ok();
    if let Some(cwd) = cwd {
        if let Ok(rel) = path.strip_prefix(&cwd) {
            return rel.display().to_string();
        }
    }
    path.display().to_string()
}

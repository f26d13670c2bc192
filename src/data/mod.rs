//! Data formats: dataset indexes, CIFAR-10 batches, image decoding, HDF5 split files and
//! the synthetic dataset generator. No caching or pipeline logic lives here.

pub mod augment;
pub mod checkpoint;
pub mod cifar;
pub mod decode;
pub mod h5;
pub mod index;
pub mod onnx;
pub mod synthetic;
pub mod tensorboard;

use std::path::Path;

use anyhow::{Context, Result};

/// What a file that is not a regular file is, for messages.
fn special_kind(md: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Whether `path` is a regular file or a link to one; `Err` names what it is instead.
pub fn check_regular(path: &Path) -> Result<()> {
    let md = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if md.is_file() {
        Ok(())
    } else {
        Err(not_regular(path, &md))
    }
}

/// The refusal of `path`, which is what `md` says instead of a regular file.
fn not_regular(path: &Path, md: &std::fs::Metadata) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is {}, not a regular file: only regular files (or links to them) are read",
        path.display(),
        special_kind(md)
    )
}

/// Write `bytes` to `path` (a stage's output file), with an error that names the file.
pub fn write_file(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, bytes.as_ref()).with_context(|| {
        format!(
            "cannot write {} ({} bytes)",
            path.display(),
            bytes.as_ref().len()
        )
    })
}

/// Copy `from` to `to`, with an error that names both and says which side failed (a
/// missing input, or a full disk while writing).
pub fn copy_file(from: &Path, to: &Path) -> Result<()> {
    check_regular(from)?;
    std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

/// The length of `path`, which must be a regular file (or a link to one).
pub fn regular_len(path: &Path) -> Result<u64> {
    check_regular(path)?;
    Ok(std::fs::metadata(path)?.len())
}

/// Read a whole file, which must be a regular file (or a link to one): a FIFO, a device
/// or a socket named like a data file is an error, never a read that does not end.
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    // One stat by name (anything else than a regular file is never opened: opening some
    // devices does something), then the read, sized from that stat.
    let md = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !md.is_file() {
        return Err(not_regular(path, &md));
    }
    read_known_regular(path, md.len())
}

/// Read a file a stat just found regular and `len` bytes long (the length only sizes the
/// buffer): no second stat. Opened non-blocking, so a FIFO put in its place since that stat
/// reads as empty at once instead of waiting for a writer.
pub fn read_known_regular(path: &Path, len: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let cannot = || format!("cannot read {}", path.display());
    // One byte more than the stat said, so that a file grown since shows at once.
    let want = usize::try_from(len)
        .ok()
        .and_then(|n| n.checked_add(1))
        .with_context(|| format!("cannot read {}: {len} bytes", path.display()))?;
    let mut bytes = Vec::new();
    // A file larger than memory is an error naming it, not an abort.
    bytes
        .try_reserve_exact(want)
        .with_context(|| format!("cannot read {}: {len} bytes", path.display()))?;
    // `read_to_end` would add an `fstat`, an `lseek` and a probe read per file: a third of
    // the system calls of a cold run over small JPEGs. The size is known, so one `read`
    // normally takes it all: a regular file reads short only at its end.
    loop {
        let spare = bytes.spare_capacity_mut();
        if spare.is_empty() {
            // Grown since the stat: the rest, however long.
            f.read_to_end(&mut bytes).with_context(cannot)?;
            return Ok(bytes);
        }
        // SAFETY: `spare` is `spare.len()` writable bytes owned by `bytes`; `read` writes at
        // most that many into it and returns how many it wrote.
        let n = unsafe { libc::read(f.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(anyhow::Error::new(e).context(cannot()));
        }
        if n == 0 {
            break;
        }
        // SAFETY: `read` initialised the first `n` bytes of the spare capacity.
        unsafe { bytes.set_len(bytes.len() + n as usize) };
        if bytes.len() as u64 == len {
            break;
        }
    }
    Ok(bytes)
}

/// [`read_regular`], as UTF-8 text.
pub fn read_regular_text(path: &Path) -> Result<String> {
    String::from_utf8(read_regular(path)?)
        .with_context(|| format!("{} is not UTF-8 text", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_sized_by_a_stat_returns_the_file_whatever_it_became_since() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.bin");
        let body: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, &body).unwrap();
        // As the stat said; then grown by one byte and by many; then shrunk; then empty.
        assert_eq!(read_known_regular(&p, 10_000).unwrap(), body);
        assert_eq!(read_known_regular(&p, 9_999).unwrap(), body);
        assert_eq!(read_known_regular(&p, 10).unwrap(), body);
        assert_eq!(read_known_regular(&p, 0).unwrap(), body);
        assert_eq!(read_known_regular(&p, 20_000).unwrap(), body);
        std::fs::write(&p, b"").unwrap();
        assert!(read_known_regular(&p, 0).unwrap().is_empty());
        assert!(read_known_regular(&p, 5).unwrap().is_empty());
        assert_eq!(read_regular(&p).unwrap(), b"");
    }

    #[test]
    fn a_file_too_large_for_memory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("huge.jpg");
        let f = std::fs::File::create(&p).unwrap();
        // Sparse, so no disk is used: 4 EiB (past any allocator and address space), or where
        // the filesystem caps sizes below that, 16 TiB (ext4's cap), which only a kernel
        // that refuses to overcommit memory (its default) fails to allocate.
        if f.set_len(1 << 62).is_err() {
            let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap();
            if mode.trim() == "1" || f.set_len((1 << 44) - 4096).is_err() {
                eprintln!("not run: no sparse file of 4 EiB here, and a 16 TiB one cannot be made or would be allocated (vm.overcommit_memory {})", mode.trim());
                return;
            }
        }
        let len = std::fs::metadata(&p).unwrap().len();
        let e = format!("{:#}", read_regular(&p).unwrap_err());
        assert!(
            e.starts_with(&format!("cannot read {}: {len} bytes", p.display())),
            "{e}"
        );
    }
}

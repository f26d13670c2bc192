//! Finding NVIDIA's libraries before cudarc opens them.
//!
//! cudarc (with `dynamic-loading`) opens each library by name at first use and panics when
//! it is missing. So `pipe` looks for every library itself first, in the places a CUDA
//! machine keeps them, and turns an absence into an error that names the library and every
//! place it looked. A library found outside the loader's own search path is opened here by
//! its full path (with the others of its family beside it, e.g. cuDNN's sub-libraries):
//! once loaded, the dynamic loader matches cudarc's later open by the library's soname.

use std::path::{Path, PathBuf};

/// One library `pipe` needs: what it is for, and the file names it may have.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    /// What it is, in words.
    pub what: &'static str,
    /// File names to look for, preferred first.
    pub names: &'static [&'static str],
    /// Prefix of libraries in the same folder that it loads itself (opened first).
    pub family: &'static str,
}

/// The driver, cuBLAS (with cuBLASLt), cuDNN 9 and NVRTC for CUDA 13.
pub const WANTED: [Wanted; 4] = [
    Wanted {
        what: "the CUDA driver",
        names: &["libcuda.so.1", "libcuda.so"],
        family: "",
    },
    Wanted {
        what: "cuBLAS",
        names: &["libcublas.so.13"],
        family: "libcublasLt.so.13",
    },
    Wanted {
        what: "cuDNN 9",
        names: &["libcudnn.so.9"],
        family: "libcudnn_",
    },
    Wanted {
        what: "NVRTC",
        names: &["libnvrtc.so.13"],
        family: "libnvrtc-builtins.so.13",
    },
];

/// The NVRTC entry of [`WANTED`] (what the kernel-compile check needs alone).
pub const NVRTC: Wanted = WANTED[3];

/// The folders searched, in order: `$PIPE_CUDA_LIBS` (colon-separated), `$LD_LIBRARY_PATH`,
/// the system library folders, `/usr/local/cuda*`, and the `nvidia/*/lib` folders of pip
/// wheels in the site-packages of `$VIRTUAL_ENV`, `./.venv`, the user and the system.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for var in ["PIPE_CUDA_LIBS", "LD_LIBRARY_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            dirs.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
        }
    }
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/lib/wsl/lib",
    ] {
        dirs.push(d.into());
    }
    let mut cuda_roots = glob_dirs(Path::new("/usr/local"), |n| n.starts_with("cuda"));
    cuda_roots.sort_by(|a, b| {
        // The unversioned `cuda` link first, then newest version first.
        (a.file_name() != Some("cuda".as_ref()))
            .cmp(&(b.file_name() != Some("cuda".as_ref())))
            .then(b.cmp(a))
    });
    for root in cuda_roots {
        for sub in ["lib64", "lib", "targets/x86_64-linux/lib"] {
            dirs.push(root.join(sub));
        }
    }
    let mut prefixes: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        prefixes.push(PathBuf::from(v).join("lib"));
    }
    prefixes.push(PathBuf::from(".venv/lib"));
    if let Some(home) = std::env::var_os("HOME") {
        prefixes.push(PathBuf::from(home).join(".local/lib"));
    }
    prefixes.push("/usr/local/lib".into());
    prefixes.push("/usr/lib".into());
    prefixes.push("/opt/conda/lib".into());
    for prefix in prefixes {
        for py in glob_dirs(&prefix, |n| n.starts_with("python3")) {
            for sp in ["site-packages", "dist-packages"] {
                let nv = py.join(sp).join("nvidia");
                for pkg in glob_dirs(&nv, |_| true) {
                    dirs.push(pkg.join("lib"));
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

fn glob_dirs(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(&keep))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

/// Where `w` is, or an error naming it and every folder looked in.
pub fn find(w: &Wanted, dirs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    for d in dirs {
        for n in w.names {
            let p = d.join(n);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let looked: Vec<String> = dirs.iter().map(|d| format!("  {}", d.display())).collect();
    anyhow::bail!(
        "{} ({}) was not found; looked in:\n{}\n(set PIPE_CUDA_LIBS to the folder that holds it)",
        w.what,
        w.names.join(" or "),
        if looked.is_empty() {
            "  (no folders)".to_string()
        } else {
            looked.join("\n")
        }
    )
}

/// Find every library of `wanted` and open it (its family first) so that cudarc's own
/// open by name finds it. Returns the paths, in `wanted`'s order.
pub fn load(wanted: &[Wanted]) -> anyhow::Result<Vec<PathBuf>> {
    let dirs = search_dirs();
    let mut found = Vec::new();
    for w in wanted {
        let path = find(w, &dirs)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut family: Vec<PathBuf> = if w.family.is_empty() {
            Vec::new()
        } else {
            std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.path())
                        .filter(|p| {
                            p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| n.starts_with(w.family) && n.contains(".so"))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        family.sort();
        // Sub-libraries depend on each other: open what opens, until nothing more does.
        let mut pending = family;
        while !pending.is_empty() {
            let before = pending.len();
            pending.retain(|p| open_global(p).is_err());
            if pending.len() == before {
                break; // the rest are optional or need what is absent; the main open says
            }
        }
        open_global(&path).map_err(|e| {
            anyhow::anyhow!(
                "{} was found at {} but does not load: {e}",
                w.what,
                path.display()
            )
        })?;
        found.push(path);
    }
    Ok(found)
}

/// `dlopen` with `RTLD_NOW | RTLD_GLOBAL`, kept open for the life of the process.
fn open_global(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated path; the handle is deliberately never closed.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if h.is_null() {
        // SAFETY: dlerror returns a NUL-terminated message owned by libc (or null).
        let msg = unsafe { libc::dlerror() };
        return Err(if msg.is_null() {
            "dlopen failed".into()
        } else {
            // SAFETY: non-null, NUL-terminated, read before any other dl call.
            unsafe { std::ffi::CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_names_itself_and_every_folder() {
        let t = tempfile::tempdir().unwrap();
        let dirs = vec![t.path().join("a"), t.path().join("b")];
        let err = find(&WANTED[2], &dirs).unwrap_err().to_string();
        assert!(
            err.contains("cuDNN 9 (libcudnn.so.9) was not found"),
            "{err}"
        );
        for d in &dirs {
            assert!(err.contains(&d.display().to_string()), "{err}");
        }
        std::fs::create_dir_all(&dirs[1]).unwrap();
        std::fs::write(dirs[1].join("libcudnn.so.9"), b"").unwrap();
        assert_eq!(
            find(&WANTED[2], &dirs).unwrap(),
            dirs[1].join("libcudnn.so.9")
        );
    }

    #[test]
    fn a_file_that_is_not_a_library_fails_to_load_with_its_path() {
        let t = tempfile::tempdir().unwrap();
        let fake = t.path().join("libnvrtc.so.13");
        std::fs::write(&fake, b"not an ELF file").unwrap();
        let err = open_global(&fake).unwrap_err();
        assert!(!err.is_empty());
    }
}

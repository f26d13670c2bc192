//! The CUDA source of our own kernels ([`SOURCE`], `kernels.cu`) and its compilation by
//! NVRTC to a CUBIN for one compute capability, cached on disk by content.

/// The kernels' CUDA C source.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Every kernel in [`SOURCE`], by name (each is loaded after compiling).
pub const NAMES: [&str; 24] = [
    "relu_forward",
    "relu_backward",
    "elu_forward",
    "elu_backward",
    "dropout_forward",
    "dropout_backward",
    "copy_rows",
    "add_forward",
    "bias_forward",
    "bias_backward",
    "maxpool_forward",
    "maxpool_backward",
    "avgpool_forward",
    "avgpool_backward",
    "global_avgpool_forward",
    "global_avgpool_backward",
    "softmax_forward",
    "softmax_backward",
    "softmax_cross_entropy",
    "batchnorm_running_single",
    "l2_backward",
    "sgd_update",
    "adam_update",
    "ema_update",
];

/// Where compiled kernels are cached: `$PIPE_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/pipe/kernels`, else `~/.cache/pipe/kernels`.
pub fn cache_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("PIPE_KERNEL_CACHE") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("pipe").join("kernels")
}

/// Compile [`SOURCE`] to a CUBIN for `sm_<major><minor>` (NVRTC must be loaded, see
/// [`super::libs`]), or take it from the cache in [`cache_dir`].
#[cfg(feature = "cuda")]
pub fn cubin(major: i32, minor: i32) -> anyhow::Result<Vec<u8>> {
    cubin_in(major, minor, &cache_dir())
}

/// [`cubin`], with its cache in folder `cache`. The cache key is the source, the
/// architecture and NVRTC's version; a cache file is written atomically.
#[cfg(feature = "cuda")]
pub fn cubin_in(major: i32, minor: i32, cache: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    use cudarc::nvrtc::{result, sys};
    let arch = format!("sm_{major}{minor}");
    let (vmaj, vmin) = {
        let (mut a, mut b) = (0, 0);
        // SAFETY: two out-pointers to live integers.
        unsafe { sys::nvrtcVersion(&mut a, &mut b) }
            .result()
            .context("asking NVRTC for its version")?;
        (a, b)
    };
    let key = blake3::hash(format!("{SOURCE}\n{arch}\nnvrtc {vmaj}.{vmin}").as_bytes());
    let path = cache.join(format!("{}-{arch}.cubin", &key.to_hex()[..16]));
    if let Ok(bin) = std::fs::read(&path) {
        if !bin.is_empty() {
            return Ok(bin);
        }
    }
    let src = std::ffi::CString::new(SOURCE).expect("no NUL in the source");
    let name = std::ffi::CString::new("kernels.cu").expect("no NUL");
    let prog = result::create_program(&src, Some(&name)).context("creating the NVRTC program")?;
    let opts = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--fmad=true".to_string(),
    ];
    // SAFETY: `prog` is a live program; the options are plain strings.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    if compiled.is_err() {
        // SAFETY: the program is live; its log is a NUL-terminated string.
        let log = unsafe { result::get_program_log(prog) }.unwrap_or_default();
        let log: Vec<u8> = log
            .iter()
            .map(|&c| c as u8)
            .take_while(|&c| c != 0)
            .collect();
        // SAFETY: destroyed once, not used after.
        let _ = unsafe { result::destroy_program(prog) };
        anyhow::bail!(
            "NVRTC could not compile the kernels for {arch}:\n{}",
            String::from_utf8_lossy(&log)
        );
    }
    let bin = cubin_of(prog);
    // SAFETY: destroyed once, not used after.
    let _ = unsafe { result::destroy_program(prog) };
    let bin = bin?;
    if let Some(dir) = path.parent() {
        if std::fs::create_dir_all(dir).is_ok() {
            let _ = crate::atomic::write_atomic(&path, &bin);
        }
    }
    Ok(bin)
}

#[cfg(feature = "cuda")]
fn cubin_of(prog: cudarc::nvrtc::sys::nvrtcProgram) -> anyhow::Result<Vec<u8>> {
    use cudarc::nvrtc::sys;
    let mut size = 0usize;
    // SAFETY: a compiled program and an out-pointer to a live usize.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| anyhow::anyhow!("NVRTC gave no CUBIN size: {e:?}"))?;
    let mut bin = vec![0u8; size];
    // SAFETY: `bin` holds exactly the `size` bytes NVRTC asked for.
    unsafe { sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| anyhow::anyhow!("NVRTC gave no CUBIN: {e:?}"))?;
    if bin.is_empty() {
        anyhow::bail!("NVRTC produced an empty CUBIN");
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_in_the_source_is_listed_and_named_after_its_op() {
        let defined: Vec<&str> = SOURCE
            .split("extern \"C\" __global__ void ")
            .skip(1)
            .map(|s| s.split('(').next().unwrap_or(""))
            .collect();
        assert_eq!(defined, NAMES.to_vec());
    }
}

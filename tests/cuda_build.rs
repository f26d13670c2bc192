//! The CUDA build on a machine without a GPU: every kernel source compiles with NVRTC
//! (a pip wheel provides `libnvrtc` here), and a missing GPU is an error, not a panic.
#![cfg(feature = "cuda")]

mod common;

use common::Project;
use pipe::backend::native::gpu::{kernels, libs};

fn nvrtc_or_skip() -> bool {
    match libs::load(&[libs::NVRTC]) {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("PIPE_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                panic!("PIPE_REQUIRE_NVRTC=1 but: {e:#}");
            }
            eprintln!("SKIPPED: no libnvrtc to compile the kernels with: {e:#}");
            false
        }
    }
}

#[test]
fn every_kernel_compiles_to_a_cubin_for_ampere_and_hopper() {
    if !nvrtc_or_skip() {
        return;
    }
    // A cache of its own, named to the call (setting PIPE_KERNEL_CACHE would change the
    // environment under the other test's threads).
    let cache = tempfile::tempdir().unwrap();
    for (major, minor) in [(8, 0), (9, 0)] {
        let bin = kernels::cubin_in(major, minor, cache.path()).expect("the kernels compile");
        assert_eq!(&bin[..4], b"\x7fELF", "a CUBIN is an ELF image");
        for name in kernels::NAMES {
            assert!(
                bin.windows(name.len()).any(|w| w == name.as_bytes()),
                "{name} is in the sm_{major}{minor} CUBIN"
            );
        }
        // A second call is served from the cache, byte for byte.
        let files = std::fs::read_dir(cache.path()).unwrap().count();
        assert_eq!(kernels::cubin_in(major, minor, cache.path()).unwrap(), bin);
        assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), files);
    }
}

#[test]
fn without_a_driver_the_cuda_model_is_an_error_naming_the_library() {
    if libs::find(&libs::WANTED[0], &libs::search_dirs()).is_ok() {
        eprintln!("SKIPPED: this machine has a CUDA driver");
        return;
    }
    let p = Project::new();
    let text = "[networks.n]\ninput = [8, 8, 3]\nclasses = 3\nlayers = [\n  { conv2d = { filters = 4, kernel = 3 } },\n  { flatten = {} },\n  { dense = \"$classes\" },\n  { softmax = {} },\n]\n\n[stages.ingest]\nformat = \"synthetic\"\n";
    let path = p.manifest("g.toml", text);
    let m = pipe::manifest::load(&path, &[], p.path()).unwrap_or_else(|e| panic!("{e}"));
    let g = pipe::nn::expand(&m.library, "n", None).unwrap().graph;
    let err = match pipe::backend::build_with(
        &g,
        0,
        pipe::backend::DeviceKind::Cuda,
        pipe::backend::BackendKind::Native,
    ) {
        Ok(_) => panic!("a CUDA model without a driver"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("the CUDA driver (libcuda.so.1 or libcuda.so) was not found"),
        "{err}"
    );
    assert!(
        err.contains("/usr/local/cuda") || err.contains("looked in"),
        "{err}"
    );
    assert!(!pipe::backend::cuda_available());
}

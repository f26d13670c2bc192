//! The native backend's memory plan: once the arenas exist, a training step allocates
//! nothing of its own (a counting global allocator watches every thread). The `gemm` crate
//! allocates its packing buffers inside each product, which pipe cannot change without
//! patching it; those are not counted.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use pipe::backend::native::NativeModel;
use pipe::backend::{Model, Optimizer};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !pipe::backend::native::cpu::in_gemm() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !pipe::backend::native::cpu::in_gemm() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_native_training_step_allocates_nothing_after_the_first() {
    let p = common::Project::new();
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("pipelines/networks/mini_googlenet.toml"),
    )
    .unwrap()
        + "\n[stages.ingest]\nformat = \"synthetic\"\n";
    let path = p.manifest("m.toml", &text);
    let m = pipe::manifest::load(&path, &[], p.path()).unwrap();
    let g = pipe::nn::expand(&m.library, "mini_googlenet", None)
        .unwrap()
        .graph;
    let n = 8;
    let x: Vec<f32> = (0..n * 32 * 32 * 3)
        .map(|i| (i % 255) as f32 / 255.0)
        .collect();
    let y: Vec<i64> = (0..n as i64).collect();
    let mut m = NativeModel::new(&g, 1).unwrap();
    for opt in [
        Optimizer::Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
        },
        Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
        },
    ] {
        // Warm-up: the arenas and one im2col workspace per worker thread.
        for s in 0..3 {
            m.train_step(&x, &y, &opt, 1e-3, s).unwrap();
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for s in 3..6 {
            m.train_step(&x, &y, &opt, 1e-3, s).unwrap();
        }
        let during = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(during, 0, "{during} allocations in 3 training steps");
    }
    // A smaller batch reuses the same arenas.
    let sgd = Optimizer::Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    m.train_step(&x[..4 * 3072], &y[..4], &sgd, 1e-3, 9)
        .unwrap();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    m.train_step(&x[..4 * 3072], &y[..4], &sgd, 1e-3, 10)
        .unwrap();
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed) - before, 0);
}

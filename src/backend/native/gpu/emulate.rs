//! Our CUDA kernels, run on the CPU and checked against the CPU path's kernels.
//!
//! `kernels.cu` is plain CUDA C++ with no device intrinsics beyond a handful (thread and
//! block indices, `__syncthreads`, shared memory, `atomicAdd`, `__int_as_float`), so a
//! small shim lets a host C++20 compiler build it unchanged. The harness runs a launch
//! like the GPU does: the grid's blocks one after another, each block's threads as real
//! threads (a `std::barrier` for `__syncthreads`, `static` for `__shared__`, atomics for
//! `atomicAdd`), and it takes its arguments the way `cuLaunchKernel` does — an array of
//! pointers to values. The tests launch through the GPU path's own typed launchers
//! ([`launch`]), with the emulator as their [`Launcher`]: so they check each kernel's
//! index arithmetic, its accumulate flags, its ties, and each launcher's argument list
//! (types, order, the 72-byte pool struct, packed by [`launch::pack_args`]) and launch
//! shape against the CPU kernels that the finite-difference tests check, all without a
//! GPU. Grid-stride launches here use blocks of 64 threads, at most 3 of them, so the
//! kernels' loops wrap.
//!
//! The harness needs `c++` (g++ 11+ or clang 14+); without it the tests say so and skip,
//! unless `PIPE_REQUIRE_CXX=1` (the test command sets it).

use std::ffi::{c_char, c_void, CString};
use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::super::cpu::pool;
use super::super::cpu::{elementwise as ew, loss, Out, Ptr, Workspaces};
use super::super::plan::View;
use super::super::shared::{ConvGeom, PoolGeom};
use super::device;
use super::kernels;
use super::launch::{self, Arg, DMat, Launcher, PoolArg};
use crate::nn::graph::{pad_before, Padding};

const SHIM: &str = r#"
#include <atomic>
#include <barrier>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <math.h>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>
#include <algorithm>
struct dim3 { unsigned x = 1, y = 1, z = 1; };
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static std::barrier<>* block_barrier = nullptr;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
static inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
static inline float __int_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
using std::min;
using std::max;
#include "kernels.cu"
template <typename... A, std::size_t... I>
static void call(void (*f)(A...), void** a, std::index_sequence<I...>) {
    f(*static_cast<std::remove_reference_t<A>*>(a[I])...);
}
template <typename... A>
static std::function<void(void**)> wrap(void (*f)(A...)) {
    return [f](void** a) { call(f, a, std::index_sequence_for<A...>{}); };
}
static const std::map<std::string, std::function<void(void**)>>& table() {
    static const std::map<std::string, std::function<void(void**)>> t = {
        TABLE
    };
    return t;
}
extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned bx, unsigned by, void** args) {
    // One launch at a time (the grid, the block and the barrier are process-wide), as on
    // one stream.
    static std::mutex one_at_a_time;
    std::lock_guard<std::mutex> guard(one_at_a_time);
    auto it = table().find(name);
    if (it == table().end()) return 1;
    gridDim = {gx, gy, 1};
    blockDim = {bx, by, 1};
    for (unsigned y = 0; y < gy; ++y) {
        for (unsigned x = 0; x < gx; ++x) {
            std::barrier<> bar(bx * by);
            block_barrier = &bar;
            std::vector<std::thread> ts;
            for (unsigned ty = 0; ty < by; ++ty) {
                for (unsigned tx = 0; tx < bx; ++tx) {
                    ts.emplace_back([&, tx, ty] {
                        threadIdx = {tx, ty, 1};
                        blockIdx = {x, y, 1};
                        it->second(args);
                    });
                }
            }
            for (auto& t : ts) t.join();
        }
    }
    return 0;
}
"#;

type Launch = unsafe extern "C" fn(*const c_char, u32, u32, u32, u32, *mut *mut c_void) -> i32;

/// The compiled harness, or why there is none.
fn harness() -> Result<Launch, String> {
    static H: OnceLock<Result<usize, String>> = OnceLock::new();
    let h = H.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pipe-kernel-emu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("kernels.cu"), kernels::SOURCE).map_err(|e| e.to_string())?;
        let table: Vec<String> = kernels::NAMES
            .iter()
            .map(|n| format!("{{\"{n}\", wrap({n})}}"))
            .collect();
        std::fs::write(
            dir.join("harness.cpp"),
            SHIM.replace("TABLE", &table.join(",\n")),
        )
        .map_err(|e| e.to_string())?;
        let lib = dir.join("libemu.so");
        let out = std::process::Command::new("c++")
            .args(["-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-o"])
            .arg(&lib)
            .arg(dir.join("harness.cpp"))
            .output()
            .map_err(|e| format!("cannot run c++: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "c++ could not build the kernel harness:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let c = CString::new(lib.to_string_lossy().as_bytes()).expect("no NUL");
        // SAFETY: a library we just built; kept loaded for the process.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW) };
        if handle.is_null() {
            return Err("dlopen of the kernel harness failed".into());
        }
        let sym = CString::new("emu_launch").expect("no NUL");
        // SAFETY: a loaded library and a NUL-terminated symbol name.
        let f = unsafe { libc::dlsym(handle, sym.as_ptr()) };
        if f.is_null() {
            return Err("emu_launch not found in the harness".into());
        }
        Ok(f as usize)
    });
    match h {
        // SAFETY: the address of `emu_launch`, whose C signature is `Launch`.
        Ok(f) => Ok(unsafe { std::mem::transmute::<usize, Launch>(*f) }),
        Err(e) => Err(e.clone()),
    }
}

/// A CPU kernel's gradient destination in a test's own vector.
fn out(ptr: Ptr<f32>, v: View, acc: bool) -> Out<f32> {
    Out {
        ptr,
        dst: crate::backend::native::walk::Dst { v, acc },
    }
}

/// The harness, or None after saying why the test skips.
fn emu() -> Option<Emu> {
    match harness() {
        Ok(f) => Some(Emu(f)),
        Err(e) => {
            if std::env::var("PIPE_REQUIRE_CXX").is_ok_and(|v| v == "1") {
                panic!("PIPE_REQUIRE_CXX=1 but: {e}");
            }
            eprintln!("SKIPPED: no C++ compiler for the kernel emulator: {e}");
            None
        }
    }
}

/// The emulator as the launchers' [`Launcher`]. Device addresses are host addresses here:
/// the tests pass pointers into their own live buffers.
struct Emu(Launch);

impl Launcher for Emu {
    fn max_blocks(&self) -> u32 {
        3
    }

    fn threads(&self) -> u32 {
        64
    }

    fn launch(
        &self,
        name: &'static str,
        grid: (u32, u32),
        block: (u32, u32),
        args: &[Arg],
    ) -> anyhow::Result<()> {
        let c = CString::new(name)?;
        launch::with_packed(args, |ptrs| {
            // SAFETY: the harness reads each argument by its kernel's C type from its slot
            // (the launchers pack them by the signature); the buffers the pointers name
            // outlive the call.
            let rc = unsafe {
                (self.0)(
                    c.as_ptr(),
                    grid.0,
                    grid.1,
                    block.0,
                    block.1,
                    ptrs.as_mut_ptr(),
                )
            };
            anyhow::ensure!(rc == 0, "no kernel {name}");
            Ok(())
        })
    }
}

/// A host buffer as a device matrix of `c` values per row, row stride `ld`.
fn dm(v: &mut [f32], ld: usize, c: usize) -> DMat {
    DMat {
        ptr: v.as_mut_ptr() as u64,
        ld,
        c,
    }
}

/// A host buffer as a device address.
fn addr<T>(v: &mut [T]) -> u64 {
    v.as_mut_ptr() as u64
}

fn rand_vec(rng: &mut ChaCha8Rng, n: usize, ties: bool) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v: f32 = rng.random_range(-2.0..2.0);
            if ties {
                (v * 2.0).round() / 2.0
            } else {
                v
            }
        })
        .collect()
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())),
            "{what}: element {i}: gpu {x} vs cpu {y}"
        );
    }
}

fn geom(h: usize, w: usize, k: usize, s: usize, pad: Padding) -> ConvGeom {
    let out = |i: usize| match pad {
        Padding::Same => i.div_ceil(s),
        _ => (i - k) / s + 1,
    };
    ConvGeom {
        h,
        w,
        cin: 0,
        oh: out(h),
        ow: out(w),
        cout: 0,
        kh: k,
        kw: k,
        sh: s,
        sw: s,
        pt: pad_before(h, k, s, pad),
        pl: pad_before(w, k, s, pad),
    }
}

#[test]
fn pools_match_the_cpu_kernels_ties_padding_and_strides_included() {
    let Some(f) = emu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (n, c, ld) = (2, 5, 8); // input rows strided: channels 0..5 of 8
    for (h, w, k, s, pad) in [
        (7, 6, 3, 2, Padding::Same),
        (8, 8, 3, 2, Padding::Same),
        (7, 6, 2, 2, Padding::Valid),
        (5, 5, 3, 1, Padding::Same),
    ] {
        let g = geom(h, w, k, s, pad);
        let pg = PoolGeom::from(&g);
        let arg = PoolArg::new(&pg, n, c);
        let xv = View {
            off: 0,
            ld,
            c,
            hw: h * w,
        };
        let yv = View {
            off: 0,
            ld: c,
            c,
            hw: g.oh * g.ow,
        };
        let mut x = rand_vec(&mut rng, n * h * w * ld, true);
        let what = format!("{h}x{w} k{k} s{s} {pad:?}");
        for (fwd, bwd) in [
            ("maxpool_forward", "maxpool_backward"),
            ("avgpool_forward", "avgpool_backward"),
        ] {
            let max = fwd.starts_with("max");
            let (mut yg, mut yc) = (vec![0f32; n * yv.hw * c], vec![0f32; n * yv.hw * c]);
            let (xm, ym) = (dm(&mut x, ld, c), dm(&mut yg, c, c));
            if max {
                launch::maxpool_forward(&f, xm, ym, arg).unwrap();
            } else {
                launch::avgpool_forward(&f, xm, ym, arg).unwrap();
            }
            let (xp, ycp) = (Ptr(x.as_mut_ptr()), Ptr(yc.as_mut_ptr()));
            if max {
                // SAFETY: the views lie in this test's own vectors, which nothing else touches.
                unsafe { pool::maxpool_forward(xp, xv, ycp, yv, &pg, n) };
            } else {
                // SAFETY: the views lie in this test's own vectors, which nothing else touches.
                unsafe { pool::avgpool_forward(xp, xv, ycp, yv, &pg, n) };
            }
            close(&yg, &yc, 1e-6, &format!("{fwd} {what}"));
            // Backward into a strided dx, overwriting and accumulating.
            let mut dy = rand_vec(&mut rng, yc.len(), false);
            for acc in [false, true] {
                let start = rand_vec(&mut rng, n * h * w * ld, false);
                let (mut dxg, mut dxc) = (start.clone(), start.clone());
                let dxv = View {
                    off: 0,
                    ld,
                    c,
                    hw: h * w,
                };
                let (dym, dxm) = (dm(&mut dy, c, c), dm(&mut dxg, ld, c));
                if max {
                    let (xm, ym) = (dm(&mut x, ld, c), dm(&mut yc, c, c));
                    launch::maxpool_backward(&f, xm, ym, dym, dxm, arg, acc).unwrap();
                    // SAFETY: the views lie in this test's own vectors, which nothing else touches.
                    unsafe {
                        pool::maxpool_backward(
                            Ptr(x.as_mut_ptr()),
                            xv,
                            Ptr(yc.as_mut_ptr()),
                            yv,
                            Ptr(dy.as_mut_ptr()),
                            yv,
                            out(Ptr(dxc.as_mut_ptr()), dxv, acc),
                            &pg,
                            n,
                            &Workspaces::default(),
                        )
                    };
                } else {
                    launch::avgpool_backward(&f, dym, dxm, arg, acc).unwrap();
                    // SAFETY: the views lie in this test's own vectors, which nothing else touches.
                    unsafe {
                        pool::avgpool_backward(
                            Ptr(dy.as_mut_ptr()),
                            yv,
                            out(Ptr(dxc.as_mut_ptr()), dxv, acc),
                            &pg,
                            n,
                        )
                    };
                }
                // Channels past c (the stride's gap) are untouched by both.
                close(&dxg, &dxc, 1e-5, &format!("{bwd} {what} acc={acc}"));
            }
        }
    }
    // Global average pooling.
    let (hw, c, ld) = (12, 7, 9);
    let mut x = rand_vec(&mut rng, n * hw * ld, false);
    let xv = View { off: 0, ld, c, hw };
    let yv = View {
        off: 0,
        ld: c,
        c,
        hw: 1,
    };
    let (mut yg, mut yc) = (vec![0f32; n * c], vec![0f32; n * c]);
    launch::global_avgpool_forward(&f, dm(&mut x, ld, c), dm(&mut yg, c, c), n, hw).unwrap();
    // SAFETY: the views lie in this test's own vectors, which nothing else touches.
    unsafe { pool::global_avgpool_forward(Ptr(x.as_mut_ptr()), xv, Ptr(yc.as_mut_ptr()), yv, n) };
    close(&yg, &yc, 1e-6, "global_avgpool_forward");
    let mut dy = rand_vec(&mut rng, n * c, false);
    let start = rand_vec(&mut rng, n * hw * ld, false);
    let (mut dxg, mut dxc) = (start.clone(), start);
    let (dym, dxm) = (dm(&mut dy, c, c), dm(&mut dxg, ld, c));
    launch::global_avgpool_backward(&f, dym, dxm, n, hw, true).unwrap();
    // SAFETY: the views lie in this test's own vectors, which nothing else touches.
    unsafe {
        pool::global_avgpool_backward(
            Ptr(dy.as_mut_ptr()),
            yv,
            out(Ptr(dxc.as_mut_ptr()), xv, true),
            n,
        )
    };
    close(&dxg, &dxc, 1e-6, "global_avgpool_backward");
}

#[test]
fn loss_bias_and_optimizer_kernels_match_the_cpu() {
    let Some(f) = emu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    // Softmax + cross-entropy over strided logits, with a tie for the arg-max.
    let (n, k, ld) = (9, 5, 6);
    let mut x = rand_vec(&mut rng, n * ld, false);
    x[3 * ld + 1] = 3.0;
    x[3 * ld + 4] = 3.0;
    let labels: Vec<i64> = (0..n).map(|i| (i * 7 % k) as i64).collect();
    let mut lab32: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
    let (mut dg, mut dc) = (vec![0f32; n * ld], vec![0f32; n * ld]);
    let mut stats = vec![0f32; 2];
    let plain = crate::backend::Targets::plain(&labels);
    let sgd = crate::backend::Optimizer::Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    let mut hyp = device::hyper(&sgd, 0.1, 1.0, &plain).to_vec();
    let (xm, dgm) = (dm(&mut x, ld, k), dm(&mut dg, ld, k));
    let (lp, sp, hp) = (addr(&mut lab32), addr(&mut stats), addr(&mut hyp));
    launch::softmax_cross_entropy(&f, xm, (lp, lp), n, dgm, hp, sp).unwrap();
    let v = View {
        off: 0,
        ld,
        c: k,
        hw: 1,
    };
    // SAFETY: both views lie in their live vectors, which nothing else touches.
    let (ce, correct) = unsafe {
        loss::softmax_cross_entropy(
            Ptr(x.as_mut_ptr()),
            v,
            &crate::backend::Targets::plain(&labels),
            (Ptr(dc.as_mut_ptr()), v),
        )
    };
    close(&dg, &dc, 1e-6, "dlogits");
    assert!(
        (stats[0] / n as f32 - ce).abs() < 1e-5,
        "loss {} vs {ce}",
        stats[0] / n as f32
    );
    assert_eq!(stats[1] as usize, correct);
    // Row 3's label (1) ties with class 4: no credit, on the GPU as on the CPU.
    assert_eq!(labels[3], 1);
    let strict = (0..n)
        .filter(|&r| crate::backend::predicts(&x[r * ld..r * ld + k], labels[r] as usize))
        .count();
    let first_max = (0..n)
        .filter(|&r| crate::backend::argmax(&x[r * ld..r * ld + k]) == labels[r] as usize)
        .count();
    assert_eq!((correct, first_max), (strict, strict + 1));
    // The stats accumulate over launches (read and reset by the host per tick).
    launch::softmax_cross_entropy(&f, xm, (lp, lp), n, dgm, hp, sp).unwrap();
    assert_eq!(stats[1] as usize, 2 * correct);
    // Mixed (the batch rolled by one, lambda below and above a half) and smoothed targets.
    let rolled: Vec<i64> = (0..n).map(|i| labels[(i + n - 1) % n]).collect();
    let mut rol32: Vec<i32> = rolled.iter().map(|&l| l as i32).collect();
    for (lambda, eps) in [(0.3, 0.1), (0.8, 0.0), (1.0, 0.2)] {
        let targets = crate::backend::Targets {
            labels: &labels,
            mix: Some((&rolled, lambda)),
            smoothing: eps,
        };
        let mut hyp = device::hyper(&sgd, 0.1, 1.0, &targets).to_vec();
        let mut stats = vec![0f32; 2];
        let (mut dg, mut dc) = (vec![0f32; n * ld], vec![0f32; n * ld]);
        let (hp, sp, rp) = (addr(&mut hyp), addr(&mut stats), addr(&mut rol32));
        launch::softmax_cross_entropy(&f, xm, (lp, rp), n, dm(&mut dg, ld, k), hp, sp).unwrap();
        // SAFETY: both views lie in their live vectors, which nothing else touches.
        let (ce, correct) = unsafe {
            loss::softmax_cross_entropy(Ptr(x.as_mut_ptr()), v, &targets, (Ptr(dc.as_mut_ptr()), v))
        };
        close(
            &dg,
            &dc,
            1e-6,
            &format!("dlogits, lambda {lambda}, smoothing {eps}"),
        );
        assert!(
            (stats[0] / n as f32 - ce).abs() < 1e-5,
            "loss {} vs {ce}",
            stats[0] / n as f32
        );
        assert_eq!(stats[1] as usize, correct);
    }

    // Bias gradients: column sums of a strided matrix, with the production launch shape.
    for (rows, c, ld) in [(3000, 70, 96), (17, 3, 3), (1, 40, 40)] {
        let mut dy = rand_vec(&mut rng, rows * ld, false);
        let mut out = vec![0f32; c];
        launch::bias_backward(&f, dm(&mut dy, ld, c), addr(&mut out), rows).unwrap();
        let want: Vec<f32> = (0..c)
            .map(|j| (0..rows).map(|r| dy[r * ld + j] as f64).sum::<f64>() as f32)
            .collect();
        close(&out, &want, 1e-4, &format!("bias_backward {rows}x{c}"));
    }

    // SGD (plain and Nesterov) and Adam against Optimizer::update, on step 3.
    let len = 1000;
    let (lr, t) = (0.01, 3.0f64);
    for opt in [
        crate::backend::Optimizer::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
        crate::backend::Optimizer::Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
        },
        crate::backend::Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
        },
        crate::backend::Optimizer::Sgd {
            momentum: 0.85,
            nesterov: true,
            weight_decay: 5e-4,
        },
        crate::backend::Optimizer::Adamw {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.05,
        },
    ] {
        let w0 = rand_vec(&mut rng, len, false);
        let mut g = rand_vec(&mut rng, len, false);
        let m0 = rand_vec(&mut rng, len, false);
        let v0: Vec<f32> = rand_vec(&mut rng, len, false)
            .iter()
            .map(|x| x * x)
            .collect();
        let (mut wg, mut mg, mut vg) = (w0.clone(), m0.clone(), v0.clone());
        let (mut wc, mut mc, mut vc) = (w0, m0, v0);
        let mut hyper = device::hyper(&opt, lr, t, &crate::backend::Targets::plain(&[])).to_vec();
        let (wp, gp, mp, vp, hp) = (
            addr(&mut wg),
            addr(&mut g),
            addr(&mut mg),
            addr(&mut vg),
            addr(&mut hyper),
        );
        match opt {
            crate::backend::Optimizer::Sgd { nesterov, .. } => {
                launch::sgd_update(&f, wp, gp, mp, len, hp, nesterov)
            }
            crate::backend::Optimizer::Adam { beta2, .. }
            | crate::backend::Optimizer::Adamw { beta2, .. } => {
                launch::adam_update(&f, wp, gp, mp, vp, len, hp, beta2 as f32)
            }
        }
        .unwrap();
        opt.update(lr, t, &mut wc, &g, &mut mc, &mut vc);
        close(&wg, &wc, 1e-6, &format!("{opt:?} weights"));
        close(&mg, &mc, 1e-6, &format!("{opt:?} first moment"));
        close(&vg, &vc, 1e-6, &format!("{opt:?} second moment"));
    }
    // The moving average: e += (1 - decay) (x - e), as the CPU's.
    let (decay, len) = (0.99, 777);
    let e0 = rand_vec(&mut rng, len, false);
    let mut x = rand_vec(&mut rng, len, false);
    let mut eg = e0.clone();
    launch::ema_update(&f, addr(&mut eg), addr(&mut x), len, (1.0 - decay) as f32).unwrap();
    let mut ec = crate::backend::params::Ema {
        params: vec![e0],
        ..Default::default()
    };
    ec.update(decay, &[x.clone()], &[], &[]);
    close(&eg, &ec.params[0], 1e-6, "ema_update");
    // L2: g += 2 * l2 * w, as the CPU's penalty gradient.
    let mut w = rand_vec(&mut rng, 300, false);
    let g0 = rand_vec(&mut rng, 300, false);
    let (mut gg, mut gc) = (g0.clone(), g0);
    launch::l2_backward(&f, addr(&mut w), addr(&mut gg), 300, 5e-4).unwrap();
    loss::l2_penalty(&w, 5e-4, &mut gc);
    close(&gg, &gc, 1e-6, "l2_backward");
    // Running statistics of a single-row batch norm.
    let (mut mean, mut var) = (vec![0.5f32, -1.0], vec![2.0f32, 1.0]);
    let mut bm = vec![1.5f32, 3.0];
    let (mp, vp, bp) = (addr(&mut mean), addr(&mut var), addr(&mut bm));
    launch::batchnorm_running_single(&f, mp, vp, bp, 2, 0.9).unwrap();
    close(
        &mean,
        &[0.9 * 0.5 + 0.1 * 1.5, -0.9 + 0.1 * 3.0],
        1e-6,
        "running mean",
    );
    close(&var, &[1.8, 0.9], 1e-6, "running variance");
}

#[test]
fn elementwise_kernels_match_the_cpu_in_place_and_strided() {
    let Some(f) = emu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (rows, c, ldx, ldy) = (37, 6, 8, 11);
    let xv = View {
        off: 0,
        ld: ldx,
        c,
        hw: 1,
    };
    let yv = View {
        off: 0,
        ld: ldy,
        c,
        hw: 1,
    };
    let mut x = rand_vec(&mut rng, rows * ldx, true);
    // Matrices over buffers of the x and y shapes.
    let mx = |v: &mut [f32]| dm(v, ldx, c);
    let my = |v: &mut [f32]| dm(v, ldy, c);
    // relu / elu forward.
    for (name, alpha) in [("relu_forward", None), ("elu_forward", Some(0.7f32))] {
        let start = rand_vec(&mut rng, rows * ldy, false);
        let (mut yg, mut yc) = (start.clone(), start);
        if let Some(a) = alpha {
            launch::elu_forward(&f, mx(&mut x), my(&mut yg), rows, a).unwrap();
            // SAFETY: the views lie in this test's own vectors, which nothing else touches.
            unsafe {
                ew::elu_forward(
                    Ptr(x.as_mut_ptr()),
                    xv,
                    Ptr(yc.as_mut_ptr()),
                    yv,
                    rows,
                    a as f64,
                )
            };
        } else {
            launch::relu_forward(&f, mx(&mut x), my(&mut yg), rows).unwrap();
            // SAFETY: the views lie in this test's own vectors, which nothing else touches.
            unsafe { ew::relu_forward(Ptr(x.as_mut_ptr()), xv, Ptr(yc.as_mut_ptr()), yv, rows) };
        }
        close(&yg, &yc, 1e-6, name);
    }
    // relu / elu / dropout backward, accumulating and in place.
    let mut y = rand_vec(&mut rng, rows * ldy, true);
    let mut dy = rand_vec(&mut rng, rows * ldy, false);
    let mut mask: Vec<f32> = (0..rows * c)
        .map(|i| if i % 3 == 0 { 0.0 } else { 2.0 })
        .collect();
    for acc in [false, true] {
        let start = rand_vec(&mut rng, rows * ldx, false);
        let (mut dg, mut dc) = (start.clone(), start.clone());
        launch::relu_backward(&f, my(&mut y), my(&mut dy), mx(&mut dg), rows, acc).unwrap();
        // SAFETY: the views lie in this test's own vectors, which nothing else touches.
        unsafe {
            ew::relu_backward(
                Ptr(y.as_mut_ptr()),
                yv,
                Ptr(dy.as_mut_ptr()),
                yv,
                out(Ptr(dc.as_mut_ptr()), xv, acc),
                rows,
            )
        };
        close(&dg, &dc, 1e-6, "relu_backward");
        let (mut dg, mut dc) = (start.clone(), start.clone());
        launch::elu_backward(&f, mx(&mut x), my(&mut dy), mx(&mut dg), rows, 0.7, acc).unwrap();
        // SAFETY: the views lie in this test's own vectors, which nothing else touches.
        unsafe {
            ew::elu_backward(
                Ptr(x.as_mut_ptr()),
                xv,
                Ptr(dy.as_mut_ptr()),
                yv,
                out(Ptr(dc.as_mut_ptr()), xv, acc),
                rows,
                0.7f32 as f64,
            )
        };
        close(&dg, &dc, 1e-5, "elu_backward");
        let (mut dg, mut dc) = (start.clone(), start.clone());
        let mp = addr(&mut mask);
        launch::dropout_backward(&f, mp, my(&mut dy), mx(&mut dg), rows, acc).unwrap();
        // SAFETY: the views lie in this test's own vectors, which nothing else touches.
        unsafe {
            ew::dropout_backward(
                Ptr(mask.as_mut_ptr()),
                Ptr(dy.as_mut_ptr()),
                yv,
                out(Ptr(dc.as_mut_ptr()), xv, acc),
                rows,
            )
        };
        close(&dg, &dc, 1e-6, "dropout_backward");
        // copy_rows (a concat slice, an add's fan-out).
        let (mut dg, mut dc) = (start.clone(), start);
        launch::copy_rows(&f, my(&mut dy), mx(&mut dg), rows, acc).unwrap();
        // SAFETY: the views lie in this test's own vectors, which nothing else touches.
        unsafe {
            ew::copy_rows(
                Ptr(dy.as_mut_ptr()),
                yv,
                out(Ptr(dc.as_mut_ptr()), xv, acc),
                rows,
            )
        };
        close(&dg, &dc, 1e-6, "copy_rows");
    }
    // In place: the fused batch-norm relu masks its own gradient (dx == dy).
    let mut d_inplace = dy.clone();
    let d = my(&mut d_inplace);
    launch::relu_backward(&f, my(&mut y), d, d, rows, false).unwrap();
    for r in 0..rows {
        for j in 0..c {
            let i = r * ldy + j;
            let want = if y[i] > 0.0 { dy[i] } else { 0.0 };
            assert_eq!(d_inplace[i], want, "in-place relu_backward at {r},{j}");
        }
    }
    // dropout forward, add forward.
    let (mut yg, mut yc) = (vec![0f32; rows * ldy], vec![0f32; rows * ldy]);
    let mp = addr(&mut mask);
    launch::dropout_forward(&f, mx(&mut x), mp, my(&mut yg), rows).unwrap();
    // SAFETY: the views lie in this test's own vectors, which nothing else touches.
    unsafe {
        ew::dropout_forward(
            Ptr(x.as_mut_ptr()),
            xv,
            Ptr(mask.as_mut_ptr()),
            Ptr(yc.as_mut_ptr()),
            yv,
            rows,
        )
    };
    close(&yg, &yc, 1e-6, "dropout_forward");
    let mut b = rand_vec(&mut rng, rows * ldy, false);
    let (mut yg, mut yc) = (vec![0f32; rows * ldy], vec![0f32; rows * ldy]);
    launch::add_forward(&f, mx(&mut x), my(&mut b), my(&mut yg), rows).unwrap();
    // SAFETY: the views lie in this test's own vectors, which nothing else touches.
    unsafe {
        ew::add_forward(
            (Ptr(x.as_mut_ptr()), xv),
            (Ptr(b.as_mut_ptr()), yv),
            (Ptr(yc.as_mut_ptr()), yv),
            rows,
        )
    };
    close(&yg, &yc, 1e-6, "add_forward");
    // bias forward: y += b per column.
    let mut bias = rand_vec(&mut rng, c, false);
    let mut yb = b.clone();
    launch::bias_forward(&f, my(&mut yb), addr(&mut bias), rows).unwrap();
    for r in 0..rows {
        for j in 0..ldy {
            let want = if j < c {
                b[r * ldy + j] + bias[j]
            } else {
                b[r * ldy + j]
            };
            assert!(
                (yb[r * ldy + j] - want).abs() < 1e-6,
                "bias_forward at {r},{j}"
            );
        }
    }
    // Mid-network softmax, forward and backward.
    let (mut sg, mut sc) = (vec![0f32; rows * ldy], vec![0f32; rows * ldy]);
    launch::softmax_forward(&f, mx(&mut x), my(&mut sg), rows).unwrap();
    // SAFETY: the views lie in this test's own vectors, which nothing else touches.
    unsafe { ew::softmax_forward(Ptr(x.as_mut_ptr()), xv, Ptr(sc.as_mut_ptr()), yv, rows) };
    close(&sg, &sc, 1e-6, "softmax_forward");
    let start = rand_vec(&mut rng, rows * ldx, false);
    let (mut dg, mut dc) = (start.clone(), start);
    launch::softmax_backward(&f, my(&mut sc), my(&mut dy), mx(&mut dg), rows, true).unwrap();
    // SAFETY: the views lie in this test's own vectors, which nothing else touches.
    unsafe {
        ew::softmax_backward(
            Ptr(sc.as_mut_ptr()),
            yv,
            Ptr(dy.as_mut_ptr()),
            yv,
            out(Ptr(dc.as_mut_ptr()), xv, true),
            rows,
        )
    };
    close(&dg, &dc, 1e-5, "softmax_backward");
}

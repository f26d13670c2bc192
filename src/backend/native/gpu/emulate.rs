//! Our CUDA kernels, run on the CPU and checked against the CPU path's kernels.
//!
//! `kernels.cu` is plain CUDA C++ with no device intrinsics beyond a handful (thread and
//! block indices, `__syncthreads`, shared memory, `atomicAdd`, `__int_as_float`), so a
//! small shim lets a host C++20 compiler build it unchanged. The harness runs a launch
//! like the GPU does: the grid's blocks one after another, each block's threads as real
//! threads (a `std::barrier` for `__syncthreads`, `static` for `__shared__`, atomics for
//! `atomicAdd`), and it takes its arguments the way `cuLaunchKernel` does — an array of
//! pointers to values — packed by the same [`pack_args`] as the GPU path. So these tests
//! check each kernel's index arithmetic, its accumulate flags, its ties, its argument list
//! (types, order, the 72-byte pool struct) and its launch shape against the CPU kernels
//! that the finite-difference tests check, all without a GPU.
//!
//! The harness needs `c++` (g++ 11+ or clang 14+); without it the tests say so and skip,
//! unless `PIPE_REQUIRE_CXX=1` (the test command sets it).

use std::ffi::{c_char, c_void, CString};
use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::super::cpu::pool;
use super::super::cpu::{elementwise as ew, loss, Ptr, Workspaces};
use super::super::plan::View;
use super::super::shared::{ConvGeom, PoolGeom};
use super::device::{bias_grid, pack_args, Arg, PoolArg};
use super::kernels;
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

/// The harness, or None after saying why the test skips.
fn emu() -> Option<Launch> {
    match harness() {
        Ok(f) => Some(f),
        Err(e) => {
            if std::env::var("PIPE_REQUIRE_CXX").is_ok_and(|v| v == "1") {
                panic!("PIPE_REQUIRE_CXX=1 but: {e}");
            }
            eprintln!("SKIPPED: no C++ compiler for the kernel emulator: {e}");
            None
        }
    }
}

fn launch(f: Launch, name: &str, grid: (u32, u32), block: (u32, u32), args: &[Arg]) {
    let mut vals = pack_args(args);
    let mut ptrs: Vec<*mut c_void> = vals.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
    let c = CString::new(name).expect("no NUL");
    // SAFETY: the harness reads each argument by its kernel's C type from its slot; the
    // buffers the pointers name outlive the call.
    let rc = unsafe {
        f(
            c.as_ptr(),
            grid.0,
            grid.1,
            block.0,
            block.1,
            ptrs.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "no kernel {name}");
}

/// An elementwise launch: 3 blocks of 64 threads, so grid-stride loops wrap.
fn ew_launch(f: Launch, name: &str, args: &[Arg]) {
    launch(f, name, (3, 1), (64, 1), args);
}

fn p(v: &mut [f32]) -> Arg {
    Arg::P(v.as_mut_ptr() as u64)
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
        let arg = || Arg::Pool(PoolArg::new(&g, n, c));
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
            let (mut yg, mut yc) = (vec![0f32; n * yv.hw * c], vec![0f32; n * yv.hw * c]);
            ew_launch(
                f,
                fwd,
                &[
                    p(&mut x),
                    Arg::I(ld as i64),
                    p(&mut yg),
                    Arg::I(c as i64),
                    arg(),
                ],
            );
            let (xp, ycp) = (Ptr(x.as_mut_ptr()), Ptr(yc.as_mut_ptr()));
            if fwd.starts_with("max") {
                pool::maxpool_forward(xp, xv, ycp, yv, &pg, n);
            } else {
                pool::avgpool_forward(xp, xv, ycp, yv, &pg, n);
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
                let a = Arg::B(acc as i32);
                if bwd.starts_with("max") {
                    ew_launch(
                        f,
                        bwd,
                        &[
                            p(&mut x),
                            Arg::I(ld as i64),
                            p(&mut yc),
                            Arg::I(c as i64),
                            p(&mut dy),
                            Arg::I(c as i64),
                            p(&mut dxg),
                            Arg::I(ld as i64),
                            arg(),
                            a,
                        ],
                    );
                    pool::maxpool_backward(
                        Ptr(x.as_mut_ptr()),
                        xv,
                        Ptr(yc.as_mut_ptr()),
                        yv,
                        Ptr(dy.as_mut_ptr()),
                        yv,
                        (Ptr(dxc.as_mut_ptr()), dxv, acc),
                        &pg,
                        n,
                        &Workspaces::default(),
                    );
                } else {
                    ew_launch(
                        f,
                        bwd,
                        &[
                            p(&mut dy),
                            Arg::I(c as i64),
                            p(&mut dxg),
                            Arg::I(ld as i64),
                            arg(),
                            a,
                        ],
                    );
                    pool::avgpool_backward(
                        Ptr(dy.as_mut_ptr()),
                        yv,
                        (Ptr(dxc.as_mut_ptr()), dxv, acc),
                        &pg,
                        n,
                    );
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
    ew_launch(
        f,
        "global_avgpool_forward",
        &[
            p(&mut x),
            Arg::I(ld as i64),
            p(&mut yg),
            Arg::I(c as i64),
            Arg::I(n as i64),
            Arg::I(hw as i64),
            Arg::I(c as i64),
        ],
    );
    pool::global_avgpool_forward(Ptr(x.as_mut_ptr()), xv, Ptr(yc.as_mut_ptr()), yv, n);
    close(&yg, &yc, 1e-6, "global_avgpool_forward");
    let mut dy = rand_vec(&mut rng, n * c, false);
    let start = rand_vec(&mut rng, n * hw * ld, false);
    let (mut dxg, mut dxc) = (start.clone(), start);
    ew_launch(
        f,
        "global_avgpool_backward",
        &[
            p(&mut dy),
            Arg::I(c as i64),
            p(&mut dxg),
            Arg::I(ld as i64),
            Arg::I(n as i64),
            Arg::I(hw as i64),
            Arg::I(c as i64),
            Arg::B(1),
        ],
    );
    pool::global_avgpool_backward(
        Ptr(dy.as_mut_ptr()),
        yv,
        (Ptr(dxc.as_mut_ptr()), xv, true),
        n,
    );
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
    ew_launch(
        f,
        "softmax_cross_entropy",
        &[
            p(&mut x),
            Arg::I(ld as i64),
            Arg::P(lab32.as_mut_ptr() as u64),
            Arg::I(n as i64),
            Arg::I(k as i64),
            p(&mut dg),
            Arg::I(ld as i64),
            p(&mut stats),
        ],
    );
    let v = View {
        off: 0,
        ld,
        c: k,
        hw: 1,
    };
    let (ce, correct) =
        loss::softmax_cross_entropy(Ptr(x.as_mut_ptr()), v, &labels, (Ptr(dc.as_mut_ptr()), v));
    close(&dg, &dc, 1e-6, "dlogits");
    assert!(
        (stats[0] / n as f32 - ce).abs() < 1e-5,
        "loss {} vs {ce}",
        stats[0] / n as f32
    );
    assert_eq!(stats[1] as usize, correct);
    // The stats accumulate over launches (read and reset by the host per tick).
    ew_launch(
        f,
        "softmax_cross_entropy",
        &[
            p(&mut x),
            Arg::I(ld as i64),
            Arg::P(lab32.as_mut_ptr() as u64),
            Arg::I(n as i64),
            Arg::I(k as i64),
            p(&mut dg),
            Arg::I(ld as i64),
            p(&mut stats),
        ],
    );
    assert_eq!(stats[1] as usize, 2 * correct);

    // Bias gradients: column sums of a strided matrix, with the production launch shape.
    for (rows, c, ld) in [(3000, 70, 96), (17, 3, 3), (1, 40, 40)] {
        let mut dy = rand_vec(&mut rng, rows * ld, false);
        let mut out = vec![0f32; c];
        let (grid, block) = bias_grid(rows, c);
        launch(
            f,
            "bias_backward",
            grid,
            block,
            &[
                p(&mut dy),
                Arg::I(ld as i64),
                p(&mut out),
                Arg::I(rows as i64),
                Arg::I(c as i64),
            ],
        );
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
        },
        crate::backend::Optimizer::Sgd {
            momentum: 0.9,
            nesterov: true,
        },
        crate::backend::Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
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
        let lr_t = match opt {
            crate::backend::Optimizer::Adam { beta1, beta2, .. } => {
                lr * (1.0 - beta2.powf(t)).sqrt() / (1.0 - beta1.powf(t))
            }
            _ => lr,
        };
        let mut hyper = vec![lr as f32, lr_t as f32];
        match opt {
            crate::backend::Optimizer::Sgd { momentum, nesterov } => ew_launch(
                f,
                "sgd_update",
                &[
                    p(&mut wg),
                    p(&mut g),
                    p(&mut mg),
                    Arg::I(len as i64),
                    p(&mut hyper),
                    Arg::F(momentum as f32),
                    Arg::B(nesterov as i32),
                ],
            ),
            crate::backend::Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            } => ew_launch(
                f,
                "adam_update",
                &[
                    p(&mut wg),
                    p(&mut g),
                    p(&mut mg),
                    p(&mut vg),
                    Arg::I(len as i64),
                    p(&mut hyper),
                    Arg::F(beta1 as f32),
                    Arg::F(beta2 as f32),
                    Arg::F(epsilon as f32),
                ],
            ),
        }
        opt.update(lr, t, &mut wc, &g, &mut mc, &mut vc);
        close(&wg, &wc, 1e-6, &format!("{opt:?} weights"));
        close(&mg, &mc, 1e-6, &format!("{opt:?} first moment"));
        close(&vg, &vc, 1e-6, &format!("{opt:?} second moment"));
    }
    // L2: g += 2 * l2 * w, as the CPU's penalty gradient.
    let mut w = rand_vec(&mut rng, 300, false);
    let g0 = rand_vec(&mut rng, 300, false);
    let (mut gg, mut gc) = (g0.clone(), g0);
    ew_launch(
        f,
        "l2_backward",
        &[p(&mut w), p(&mut gg), Arg::I(300), Arg::F(5e-4)],
    );
    loss::l2_penalty(&w, 5e-4, &mut gc);
    close(&gg, &gc, 1e-6, "l2_backward");
    // Running statistics of a single-row batch norm.
    let (mut mean, mut var) = (vec![0.5f32, -1.0], vec![2.0f32, 1.0]);
    let mut bm = vec![1.5f32, 3.0];
    ew_launch(
        f,
        "batchnorm_running_single",
        &[
            p(&mut mean),
            p(&mut var),
            p(&mut bm),
            Arg::I(2),
            Arg::F(0.9),
        ],
    );
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
    let (lx, ly) = (|| Arg::I(8), || Arg::I(11));
    // relu / elu forward.
    for (name, alpha) in [("relu_forward", None), ("elu_forward", Some(0.7f32))] {
        let start = rand_vec(&mut rng, rows * ldy, false);
        let (mut yg, mut yc) = (start.clone(), start);
        let mut args = vec![
            p(&mut x),
            lx(),
            p(&mut yg),
            ly(),
            Arg::I(rows as i64),
            Arg::I(c as i64),
        ];
        if let Some(a) = alpha {
            args.push(Arg::F(a));
            ew_launch(f, name, &args);
            ew::elu_forward(
                Ptr(x.as_mut_ptr()),
                xv,
                Ptr(yc.as_mut_ptr()),
                yv,
                rows,
                a as f64,
            );
        } else {
            ew_launch(f, name, &args);
            ew::relu_forward(Ptr(x.as_mut_ptr()), xv, Ptr(yc.as_mut_ptr()), yv, rows);
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
        let a = || Arg::B(acc as i32);
        let (mut dg, mut dc) = (start.clone(), start.clone());
        ew_launch(
            f,
            "relu_backward",
            &[
                p(&mut y),
                ly(),
                p(&mut dy),
                ly(),
                p(&mut dg),
                lx(),
                Arg::I(rows as i64),
                Arg::I(c as i64),
                a(),
            ],
        );
        ew::relu_backward(
            Ptr(y.as_mut_ptr()),
            yv,
            Ptr(dy.as_mut_ptr()),
            yv,
            (Ptr(dc.as_mut_ptr()), xv, acc),
            rows,
        );
        close(&dg, &dc, 1e-6, "relu_backward");
        let (mut dg, mut dc) = (start.clone(), start.clone());
        ew_launch(
            f,
            "elu_backward",
            &[
                p(&mut x),
                lx(),
                p(&mut dy),
                ly(),
                p(&mut dg),
                lx(),
                Arg::I(rows as i64),
                Arg::I(c as i64),
                Arg::F(0.7),
                a(),
            ],
        );
        ew::elu_backward(
            Ptr(x.as_mut_ptr()),
            xv,
            Ptr(dy.as_mut_ptr()),
            yv,
            (Ptr(dc.as_mut_ptr()), xv, acc),
            rows,
            0.7f32 as f64,
        );
        close(&dg, &dc, 1e-5, "elu_backward");
        let (mut dg, mut dc) = (start.clone(), start.clone());
        ew_launch(
            f,
            "dropout_backward",
            &[
                p(&mut mask),
                p(&mut dy),
                ly(),
                p(&mut dg),
                lx(),
                Arg::I(rows as i64),
                Arg::I(c as i64),
                a(),
            ],
        );
        ew::dropout_backward(
            Ptr(mask.as_mut_ptr()),
            Ptr(dy.as_mut_ptr()),
            yv,
            (Ptr(dc.as_mut_ptr()), xv, acc),
            rows,
        );
        close(&dg, &dc, 1e-6, "dropout_backward");
        // copy_rows (a concat slice, an add's fan-out).
        let (mut dg, mut dc) = (start.clone(), start);
        ew_launch(
            f,
            "copy_rows",
            &[
                p(&mut dy),
                ly(),
                p(&mut dg),
                lx(),
                Arg::I(rows as i64),
                Arg::I(c as i64),
                a(),
            ],
        );
        ew::copy_rows(
            Ptr(dy.as_mut_ptr()),
            yv,
            (Ptr(dc.as_mut_ptr()), xv, acc),
            rows,
        );
        close(&dg, &dc, 1e-6, "copy_rows");
    }
    // In place: the fused batch-norm relu masks its own gradient (dx == dy).
    let mut d_inplace = dy.clone();
    let ptr = Arg::P(d_inplace.as_mut_ptr() as u64);
    let ptr2 = Arg::P(d_inplace.as_mut_ptr() as u64);
    ew_launch(
        f,
        "relu_backward",
        &[
            p(&mut y),
            ly(),
            ptr,
            ly(),
            ptr2,
            ly(),
            Arg::I(rows as i64),
            Arg::I(c as i64),
            Arg::B(0),
        ],
    );
    for r in 0..rows {
        for j in 0..c {
            let i = r * ldy + j;
            let want = if y[i] > 0.0 { dy[i] } else { 0.0 };
            assert_eq!(d_inplace[i], want, "in-place relu_backward at {r},{j}");
        }
    }
    // dropout forward, add forward.
    let (mut yg, mut yc) = (vec![0f32; rows * ldy], vec![0f32; rows * ldy]);
    ew_launch(
        f,
        "dropout_forward",
        &[
            p(&mut x),
            lx(),
            p(&mut mask),
            p(&mut yg),
            ly(),
            Arg::I(rows as i64),
            Arg::I(c as i64),
        ],
    );
    ew::dropout_forward(
        Ptr(x.as_mut_ptr()),
        xv,
        Ptr(mask.as_mut_ptr()),
        Ptr(yc.as_mut_ptr()),
        yv,
        rows,
    );
    close(&yg, &yc, 1e-6, "dropout_forward");
    let mut b = rand_vec(&mut rng, rows * ldy, false);
    let (mut yg, mut yc) = (vec![0f32; rows * ldy], vec![0f32; rows * ldy]);
    ew_launch(
        f,
        "add_forward",
        &[
            p(&mut x),
            lx(),
            p(&mut b),
            ly(),
            p(&mut yg),
            ly(),
            Arg::I(rows as i64),
            Arg::I(c as i64),
        ],
    );
    ew::add_forward(
        (Ptr(x.as_mut_ptr()), xv),
        (Ptr(b.as_mut_ptr()), yv),
        (Ptr(yc.as_mut_ptr()), yv),
        rows,
    );
    close(&yg, &yc, 1e-6, "add_forward");
    // bias forward: y += b per column.
    let mut bias = rand_vec(&mut rng, c, false);
    let mut yb = b.clone();
    ew_launch(
        f,
        "bias_forward",
        &[
            p(&mut yb),
            ly(),
            p(&mut bias),
            Arg::I(rows as i64),
            Arg::I(c as i64),
        ],
    );
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
    ew_launch(
        f,
        "softmax_forward",
        &[
            p(&mut x),
            lx(),
            p(&mut sg),
            ly(),
            Arg::I(rows as i64),
            Arg::I(c as i64),
        ],
    );
    ew::softmax_forward(Ptr(x.as_mut_ptr()), xv, Ptr(sc.as_mut_ptr()), yv, rows);
    close(&sg, &sc, 1e-6, "softmax_forward");
    let start = rand_vec(&mut rng, rows * ldx, false);
    let (mut dg, mut dc) = (start.clone(), start);
    ew_launch(
        f,
        "softmax_backward",
        &[
            p(&mut sc),
            ly(),
            p(&mut dy),
            ly(),
            p(&mut dg),
            lx(),
            Arg::I(rows as i64),
            Arg::I(c as i64),
            Arg::B(1),
        ],
    );
    ew::softmax_backward(
        Ptr(sc.as_mut_ptr()),
        yv,
        Ptr(dy.as_mut_ptr()),
        yv,
        (Ptr(dc.as_mut_ptr()), xv, true),
        rows,
    );
    close(&dg, &dc, 1e-5, "softmax_backward");
}

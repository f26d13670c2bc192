//! CPU kernels of the native backend: one function per op and direction, on NHWC views
//! into the arena. Activations are matrices: an image batch (N, H, W, C) is N*H*W rows of C
//! values, a flat batch (N, F) is N rows of F; a row starts every `ld` values, so a branch
//! of a concat is a plain view with the concat's row stride.
//!
//! Work is split over images in a fixed number of parts ([`parts`]), never by thread, so
//! every sum (weight gradients, batch-norm statistics) is added in the same order whatever
//! the thread count: results are bit-identical from run to run and machine to machine of
//! the same instruction set.
//!
//! # Safety
//!
//! The kernels read and write rows of the two arenas through [`Ptr`]s that a kernel's
//! threads share (each thread touching its own rows), so every kernel that takes one is
//! an `unsafe fn` under one contract: each view lies inside the arena its pointer points
//! into, for every row the kernel touches; while it runs no other thread or reference
//! touches the rows it writes; an output aliases an input only where the kernel's doc says
//! so (an in-place op). The walk's views of a planned arena meet it (`device`).

pub mod conv;
pub mod dense;
pub mod device;
pub mod elementwise;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod winograd;

use std::fmt::Debug;
use std::ops::{AddAssign, MulAssign, SubAssign};
use std::sync::Mutex;

use super::plan::View;
use super::walk::Dst;

/// The element types the kernels run in: f32 to train, f64 for gradient checks.
pub trait Real:
    num_traits::Float
    + num_traits::FromPrimitive
    + Send
    + Sync
    + Default
    + Debug
    + AddAssign
    + SubAssign
    + MulAssign
    + std::iter::Sum
    + 'static
{
}
impl Real for f32 {}
impl Real for f64 {}

/// What a convolution adds to its product, row by row while the rows are still in cache:
/// `y = relu?(y + bias)`. Inference folds a following batch norm into the kernel and this
/// bias ([`device`]), so conv, batch norm and relu are one pass over `y`.
#[derive(Clone, Copy)]
pub struct Epilogue<'a, T> {
    /// Added to every output row (`cout` values).
    pub bias: Option<&'a [T]>,
    /// Then `max(y, 0)`.
    pub relu: bool,
}

/// Convert an f64 constant.
pub fn r<T: Real>(x: f64) -> T {
    T::from_f64(x).expect("f64 converts to the element type")
}

/// Image parts each batch is split into; weight-gradient partial sums exist per part.
pub const PARTS: usize = 8;

/// The vector width our kernels are compiled for at run time ([`simd`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// No vector extension beyond the baseline (SSE2 on x86-64).
    Baseline,
    /// AVX2 and FMA: 256-bit vectors.
    Avx2,
    /// AVX-512 F/BW/DQ/VL and FMA: 512-bit vectors.
    Avx512,
}

impl SimdLevel {
    /// The name `PIPE_SIMD` takes.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Baseline => "baseline",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// Vector width in bits.
    pub fn bits(self) -> usize {
        match self {
            SimdLevel::Baseline => 128,
            SimdLevel::Avx2 => 256,
            SimdLevel::Avx512 => 512,
        }
    }
}

/// The widest level this CPU has.
pub fn cpu_simd_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return SimdLevel::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Baseline
}

/// `PIPE_SIMD` as a level (`avx512`, `avx2`, `baseline`), or the error naming it.
fn requested_simd() -> Result<Option<SimdLevel>, String> {
    match std::env::var("PIPE_SIMD") {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(None),
            "avx512" => Ok(Some(SimdLevel::Avx512)),
            "avx2" => Ok(Some(SimdLevel::Avx2)),
            "baseline" | "sse2" | "none" => Ok(Some(SimdLevel::Baseline)),
            other => Err(format!(
                "PIPE_SIMD={other}: expected avx512, avx2, baseline or auto"
            )),
        },
    }
}

/// The level our kernels use: the CPU's widest, capped by `PIPE_SIMD` (read once).
pub fn simd_level() -> SimdLevel {
    static LEVEL: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cpu = cpu_simd_level();
        match requested_simd() {
            Ok(Some(cap)) => cap.min(cpu),
            _ => cpu,
        }
    })
}

/// The vector width of the `gemm` crate's products: AVX-512 when this build has its
/// `x86-v4` kernels (feature `avx512`, on by default) and the CPU has it, else AVX2+FMA
/// where the CPU has them. Capped at build time only: `gemm` has no run-time switch.
pub fn gemm_simd_level() -> SimdLevel {
    let cpu = cpu_simd_level();
    if cfg!(feature = "avx512") {
        cpu
    } else {
        cpu.min(SimdLevel::Avx2)
    }
}

/// Check the native CPU kernels' environment (`PIPE_SIMD`, `PIPE_WINOGRAD`): a value
/// they do not know is an error naming it, not a silent default.
pub fn check_env() -> Result<(), String> {
    requested_simd()?;
    match std::env::var("PIPE_WINOGRAD").as_deref() {
        Err(_) | Ok("0") | Ok("1") | Ok("") => Ok(()),
        Ok(v) => Err(format!(
            "PIPE_WINOGRAD={v}: expected 0 (off) or 1 (on, the default)"
        )),
    }
}

/// Whether 3x3 stride-1 convolutions use Winograd's F(2x2, 3x3) ([`winograd`]); off with
/// `PIPE_WINOGRAD=0` (read once), to measure against the im2col path.
pub fn winograd_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("PIPE_WINOGRAD").as_deref() != Ok("0"))
}

/// Bytes of one core's L2 cache, read once from sysfs (1 MiB where it says nothing).
pub fn l2_bytes() -> usize {
    static L2: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *L2.get_or_init(|| cache_bytes(2).unwrap_or(1 << 20))
}

/// Size of cpu0's level-`level` data or unified cache, from sysfs.
pub fn cache_bytes(level: usize) -> Option<usize> {
    let base = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    std::fs::read_dir(base).ok()?.flatten().find_map(|e| {
        let read = |f: &str| std::fs::read_to_string(e.path().join(f)).ok();
        let lvl: usize = read("level")?.trim().parse().ok()?;
        let kind = read("type")?;
        if lvl != level || kind.trim() == "Instruction" {
            return None;
        }
        let size = read("size")?;
        let size = size.trim();
        let (num, mult) = match size.strip_suffix('K') {
            Some(n) => (n, 1 << 10),
            None => match size.strip_suffix('M') {
                Some(n) => (n, 1 << 20),
                None => (size, 1),
            },
        };
        num.parse::<usize>().ok().map(|n| n * mult)
    })
}

/// Run `f` compiled for the vectors of [`simd_level`] (AVX-512, else AVX2+FMA, else the
/// baseline), chosen at run time: `f` is inlined into a function with those target
/// features, so its loops vectorise for them. Call it around a task's whole loop nest.
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        match simd_level() {
            // SAFETY: the CPU has every feature the function is compiled for
            // (simd_level never exceeds cpu_simd_level).
            SimdLevel::Avx512 => return unsafe { with_avx512(f) },
            // SAFETY: as above.
            SimdLevel::Avx2 => return unsafe { with_avx2(f) },
            SimdLevel::Baseline => {}
        }
    }
    f()
}

/// # Safety
/// The CPU supports AVX-512 F/BW/DQ/VL and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Number of parts for a batch of `n` images.
pub fn parts(n: usize) -> usize {
    n.clamp(1, PARTS)
}

/// Images `[lo, hi)` of part `p` of `parts` over `n` images.
pub fn part_range(n: usize, p: usize, parts: usize) -> (usize, usize) {
    (p * n / parts, (p + 1) * n / parts)
}

/// A raw arena pointer shared by the threads of one kernel; each thread touches rows no
/// other thread touches.
#[derive(Clone, Copy, Debug)]
pub struct Ptr<T>(pub *mut T);
// SAFETY: kernels hand each thread disjoint rows of the pointed-to arena.
unsafe impl<T> Send for Ptr<T> {}
// SAFETY: as above; shared reads never overlap a concurrent write.
unsafe impl<T> Sync for Ptr<T> {}

/// Where a kernel writes a gradient: a pointer into an arena and the walk's [`Dst`] (the
/// view, and whether to add into it or overwrite it).
#[derive(Clone, Copy, Debug)]
pub struct Out<T> {
    /// The arena.
    pub ptr: Ptr<T>,
    /// The view in it, and whether to accumulate.
    pub dst: Dst,
}

impl<T> Out<T> {
    /// (pointer, view, accumulate): what the loops inside a kernel take apart.
    pub fn parts(self) -> (Ptr<T>, View, bool) {
        (self.ptr, self.dst.v, self.dst.acc)
    }
}

// SAFETY: a matrix operand is only read, by the task it was made for.
unsafe impl<T> Send for Mat<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Mat<T> {}

impl<T> Ptr<T> {
    /// Row `r` of view `v`, read-only.
    ///
    /// # Safety
    /// The row lies inside the arena and no thread writes it meanwhile.
    #[inline]
    pub unsafe fn row<'a>(self, v: View, r: usize) -> &'a [T] {
        // SAFETY: the caller guarantees the row is in bounds and not written concurrently.
        unsafe { std::slice::from_raw_parts(self.0.add(v.off + r * v.ld), v.c) }
    }

    /// Row `r` of view `v`, writable.
    ///
    /// # Safety
    /// The row lies inside the arena and no other reference to it is alive.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn row_mut<'a>(self, v: View, r: usize) -> &'a mut [T] {
        // SAFETY: the caller guarantees exclusive access to this row.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(v.off + r * v.ld), v.c) }
    }

    /// Address of row `r` of view `v`.
    #[inline]
    pub fn at(self, v: View, r: usize) -> *mut T {
        self.0.wrapping_add(v.off + r * v.ld)
    }
}

/// The first `rows` rows of view `v` of `buf`, packed.
pub fn packed_rows<T: Copy>(buf: &[T], v: View, rows: usize) -> Vec<T> {
    (0..rows)
        .flat_map(|r| {
            buf[v.off + r * v.ld..v.off + r * v.ld + v.c]
                .iter()
                .copied()
        })
        .collect()
}

/// A strided matrix operand of [`gemm`]: element (i, j) at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub struct Mat<T> {
    /// First element.
    pub ptr: *const T,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

thread_local! {
    static IN_GEMM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is inside a `gemm` crate call, which allocates its packing buffers
/// itself: a test's counting allocator uses it to check that the rest of a training step
/// allocates nothing.
pub fn in_gemm() -> bool {
    IN_GEMM.with(|f| f.get())
}

/// `dst (m x n) = [dst +] lhs (m x k) * rhs (k x n)`, single-threaded (callers run many of
/// these at once, one per image part).
///
/// # Safety
/// Every element the strides reach is inside a live allocation, and `dst` does not overlap
/// `lhs`, `rhs` or memory another thread uses meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: (i, j) is inside dst by the caller's contract.
                    unsafe { *dst.add(i * dst_rs + j) = T::zero() };
                }
            }
        }
        return;
    }
    IN_GEMM.with(|f| f.set(true));
    // SAFETY: forwarded contract; gemm reads/writes exactly the strided elements.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.ptr,
            rhs.cs as isize,
            rhs.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    };
    IN_GEMM.with(|f| f.set(false));
}

/// Scratch buffers lent to parallel tasks and given back, so a step allocates only until
/// every task has had one once.
#[derive(Debug, Default)]
pub struct Workspaces<T> {
    free: Mutex<Vec<Vec<T>>>,
}

impl<T: Real> Workspaces<T> {
    /// Run `f` with a buffer of at least `len` zero-or-stale values.
    pub fn with<R>(&self, len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
        // The smallest free buffer that is long enough, else the longest (grown): tasks
        // asking for different sizes each find theirs, and a step stops allocating once
        // every size has been asked for.
        let mut buf = {
            let mut free = self.free.lock().expect("workspace lock");
            let fit = (0..free.len())
                .filter(|&i| free[i].len() >= len)
                .min_by_key(|&i| free[i].len())
                .or_else(|| (0..free.len()).max_by_key(|&i| free[i].len()));
            fit.map(|i| free.swap_remove(i)).unwrap_or_default()
        };
        if buf.len() < len {
            buf.resize(len, T::zero());
        }
        let out = f(&mut buf[..len]);
        self.free.lock().expect("workspace lock").push(buf);
        out
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.free
            .lock()
            .expect("workspace lock")
            .iter()
            .map(|b| b.capacity() * std::mem::size_of::<T>())
            .sum()
    }
}

/// Sum the partial gradients of `parts` image parts into `out`, in part order (fixed, so
/// the result does not depend on threads). Part `p`'s values start at `p * stride + offset`.
pub fn reduce_parts<T: Real>(
    partials: &[T],
    stride: usize,
    offset: usize,
    parts: usize,
    out: &mut [T],
) {
    use rayon::prelude::*;
    out.par_chunks_mut(4096).enumerate().for_each(|(ci, o)| {
        simd(
            #[inline(always)]
            || {
                let base = offset + ci * 4096;
                o.copy_from_slice(&partials[base..base + o.len()]);
                for p in 1..parts {
                    let src = &partials[p * stride + base..p * stride + base + o.len()];
                    for (a, b) in o.iter_mut().zip(src) {
                        *a += *b;
                    }
                }
            },
        )
    });
}

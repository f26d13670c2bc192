//! CPU kernels of the native backend: one function per op and direction, on NHWC views
//! into the arena. Activations are matrices: an image batch (N, H, W, C) is N*H*W rows of C
//! values, a flat batch (N, F) is N rows of F; a row starts every `ld` values, so a branch
//! of a concat is a plain view with the concat's row stride.
//!
//! Work is split over images in a fixed number of parts ([`parts`]), never by thread, so
//! every sum (weight gradients, batch-norm statistics) is added in the same order whatever
//! the thread count: results are bit-identical from run to run and machine to machine of
//! the same instruction set.

pub mod conv;
pub mod dense;
pub mod device;
pub mod elementwise;
pub mod loss;
pub mod norm;
pub mod pool;

use std::fmt::Debug;
use std::ops::{AddAssign, MulAssign, SubAssign};
use std::sync::Mutex;

use super::plan::View;

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

/// Convert an f64 constant.
pub fn r<T: Real>(x: f64) -> T {
    T::from_f64(x).expect("f64 converts to the element type")
}

/// Image parts each batch is split into; weight-gradient partial sums exist per part.
pub const PARTS: usize = 8;

/// Run `f` compiled for the widest vectors this CPU has (AVX-512, else AVX2+FMA, else the
/// baseline), chosen at run time: `f` is inlined into a function with those target
/// features, so its loops vectorise for them. Call it around a task's whole loop nest.
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has every feature the function is compiled for.
            return unsafe { with_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { with_avx2(f) };
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
        let mut buf = self
            .free
            .lock()
            .expect("workspace lock")
            .pop()
            .unwrap_or_default();
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
        simd(|| {
            let base = offset + ci * 4096;
            o.copy_from_slice(&partials[base..base + o.len()]);
            for p in 1..parts {
                let src = &partials[p * stride + base..p * stride + base + o.len()];
                for (a, b) in o.iter_mut().zip(src) {
                    *a += *b;
                }
            }
        })
    });
}

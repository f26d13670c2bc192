//! Row-wise ops on (rows, C) views: `relu`, `elu`, `dropout`, `add`, the copies of
//! `concat` (for inputs not written in place) and `flatten`, and a mid-network `softmax`.
//! Any of them may run in place (`y` the same view as `x`): each element is read before it
//! is written.

use rayon::prelude::*;

use super::{Out, Ptr, Real};
use crate::backend::native::plan::View;

/// Rows per task.
const ROWS: usize = 256;

/// Run `f(row)` for every row in `[0, rows)`, rows split over tasks.
pub fn par_rows(rows: usize, f: impl Fn(usize) + Sync + Send) {
    (0..rows.div_ceil(ROWS)).into_par_iter().for_each(|b| {
        super::simd(
            #[inline(always)]
            || {
                for r in b * ROWS..((b + 1) * ROWS).min(rows) {
                    f(r)
                }
            },
        )
    });
}

/// `out[i] = f(out[i] if acc, a[i], b[i])` over two input views and an output view that
/// may be either input.
///
/// # Safety
/// The views lie in live arenas for `rows` rows, the output aliases an input only as the
/// very same view, and no other thread touches these rows meanwhile.
unsafe fn zip_rows<T: Real>(
    rows: usize,
    a: (Ptr<T>, View),
    b: (Ptr<T>, View),
    out: (Ptr<T>, View, bool),
    f: impl Fn(T, T) -> T + Sync + Send,
) {
    let c = out.1.c;
    par_rows(rows, |r| {
        let (pa, pb, po) = (a.0.at(a.1, r), b.0.at(b.1, r), out.0.at(out.1, r));
        for ch in 0..c {
            // SAFETY: ch < c on rows in bounds (caller's contract); element-wise read-
            // before-write makes an aliased output fine.
            unsafe {
                let v = f(*pa.add(ch), *pb.add(ch));
                if out.2 {
                    *po.add(ch) += v;
                } else {
                    *po.add(ch) = v;
                }
            }
        }
    });
}

/// `y = max(x, 0)`.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn relu_forward<T: Real>(x: Ptr<T>, xv: View, y: Ptr<T>, yv: View, rows: usize) {
    // SAFETY: arena views of `rows` rows; in place only as the same view.
    unsafe {
        zip_rows(rows, (x, xv), (x, xv), (y, yv, false), |v, _| {
            v.max(T::zero())
        })
    }
}

/// `dx [+]= dy * (y > 0)` (from the output, so it also works in place).
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn relu_backward<T: Real>(
    y: Ptr<T>,
    yv: View,
    dy: Ptr<T>,
    dyv: View,
    dx: Out<T>,
    rows: usize,
) {
    let dx = dx.parts();
    // SAFETY: as above.
    unsafe {
        zip_rows(rows, (y, yv), (dy, dyv), dx, |y, d| {
            if y > T::zero() {
                d
            } else {
                T::zero()
            }
        })
    }
}

/// `y = x if x > 0 else alpha * (exp(x) - 1)`.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn elu_forward<T: Real>(
    x: Ptr<T>,
    xv: View,
    y: Ptr<T>,
    yv: View,
    rows: usize,
    alpha: f64,
) {
    let a = super::r::<T>(alpha);
    // SAFETY: as above.
    unsafe {
        zip_rows(rows, (x, xv), (x, xv), (y, yv, false), |v, _| {
            if v > T::zero() {
                v
            } else {
                a * (v.exp() - T::one())
            }
        })
    }
}

/// `dx [+]= dy if x > 0 else dy * alpha * exp(x)`.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
#[allow(clippy::too_many_arguments)]
pub unsafe fn elu_backward<T: Real>(
    x: Ptr<T>,
    xv: View,
    dy: Ptr<T>,
    dyv: View,
    dx: Out<T>,
    rows: usize,
    alpha: f64,
) {
    let dx = dx.parts();
    let a = super::r::<T>(alpha);
    // SAFETY: as above.
    unsafe {
        zip_rows(rows, (x, xv), (dy, dyv), dx, |x, d| {
            if x > T::zero() {
                d
            } else {
                d * a * x.exp()
            }
        })
    }
}

/// `y = x * mask` (the mask holds 0 or 1/keep, row-major (rows, C)).
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn dropout_forward<T: Real>(
    x: Ptr<T>,
    xv: View,
    mask: Ptr<T>,
    y: Ptr<T>,
    yv: View,
    rows: usize,
) {
    let mv = View {
        off: 0,
        ld: xv.c,
        c: xv.c,
        hw: 1,
    };
    // SAFETY: the mask holds rows*C values; as above otherwise.
    unsafe { zip_rows(rows, (x, xv), (mask, mv), (y, yv, false), |v, m| v * m) }
}

/// `dx [+]= dy * mask`.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn dropout_backward<T: Real>(
    mask: Ptr<T>,
    dy: Ptr<T>,
    dyv: View,
    dx: Out<T>,
    rows: usize,
) {
    let dx = dx.parts();
    let mv = View {
        off: 0,
        ld: dyv.c,
        c: dyv.c,
        hw: 1,
    };
    // SAFETY: as above.
    unsafe { zip_rows(rows, (dy, dyv), (mask, mv), dx, |d, m| d * m) }
}

/// `y [+]= x` (a copy, or an accumulation of a gradient).
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn copy_rows<T: Real>(x: Ptr<T>, xv: View, y: Out<T>, rows: usize) {
    let y = y.parts();
    // SAFETY: as above.
    unsafe { zip_rows(rows, (x, xv), (x, xv), y, |v, _| v) }
}

/// `y = a + b`.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn add_forward<T: Real>(
    a: (Ptr<T>, View),
    b: (Ptr<T>, View),
    y: (Ptr<T>, View),
    rows: usize,
) {
    // SAFETY: as above.
    unsafe { zip_rows(rows, a, b, (y.0, y.1, false), |u, v| u + v) }
}

/// Copy between views of different row shapes with the same values per image (flatten:
/// (n*hw, C) -> (n, hw*C) and its backward).
///
/// # Safety
/// `src` holds `n` images of `sv`, `dst` `n` images of `dv`, with the same number of values
/// per image; they do not overlap.
pub unsafe fn reshape_rows<T: Real>(src: Ptr<T>, sv: View, dst: Out<T>, n: usize) {
    let (dp, dv, acc) = dst.parts();
    (0..n).into_par_iter().for_each(|b| {
        let mut i = 0;
        for r in b * sv.hw..(b + 1) * sv.hw {
            // SAFETY: image b's rows; each value lands on (b, i) of the destination.
            let s = unsafe { src.row(sv, r) };
            for v in s {
                let (dr, dc) = (b * dv.hw + i / dv.c, i % dv.c);
                let d = unsafe { &mut dp.row_mut(dv, dr)[dc] };
                if acc {
                    *d += *v;
                } else {
                    *d = *v;
                }
                i += 1;
            }
        }
    });
}

/// Mid-network softmax forward: `y = exp(x - max) / sum` per row.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn softmax_forward<T: Real>(x: Ptr<T>, xv: View, y: Ptr<T>, yv: View, rows: usize) {
    par_rows(rows, |r| {
        // SAFETY: this row belongs to this task; x and y are different nodes.
        let (xr, yr) = unsafe { (x.row(xv, r), y.row_mut(yv, r)) };
        let m = xr.iter().copied().fold(T::neg_infinity(), T::max);
        let mut z = T::zero();
        for (o, v) in yr.iter_mut().zip(xr) {
            *o = (*v - m).exp();
            z += *o;
        }
        yr.iter_mut().for_each(|o| *o = *o / z);
    });
}

/// Mid-network softmax backward: `dx [+]= y * (dy - sum(dy * y))` per row.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn softmax_backward<T: Real>(
    y: Ptr<T>,
    yv: View,
    dy: Ptr<T>,
    dyv: View,
    dx: Out<T>,
    rows: usize,
) {
    let (dxp, dxv, acc) = dx.parts();
    par_rows(rows, |r| {
        // SAFETY: row r belongs to this task; dx is another node's gradient.
        let (yr, dr, out) = unsafe { (y.row(yv, r), dy.row(dyv, r), dxp.row_mut(dxv, r)) };
        let s: T = yr.iter().zip(dr).map(|(a, b)| *a * *b).sum();
        for ((o, yv), d) in out.iter_mut().zip(yr).zip(dr) {
            let g = *yv * (*d - s);
            if acc {
                *o += g;
            } else {
                *o = g;
            }
        }
    });
}

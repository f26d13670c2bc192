//! `maxpool`, `avgpool` and `global_avgpool`, forward and backward, one image per task.
//! Max pooling ignores padded taps (as padding with -inf does); its backward shares each
//! output's gradient equally among the taps holding the maximum (a subgradient, as the
//! dfdx backend computes it; PyTorch gives it all to one tap). Ties are common: a 3x3/1
//! pool over a 3x3/2 pool's output sees one source value in neighbouring taps. Average pooling over `same`
//! padding averages the valid taps only.

use rayon::prelude::*;

use super::{Out, Ptr, Real};
use crate::backend::native::plan::View;
use crate::backend::native::shared::PoolGeom;

impl PoolGeom {
    /// The valid input rows and columns under output position (oy, ox).
    fn window(&self, oy: usize, ox: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let y0 = (oy * self.sh) as isize - self.pt as isize;
        let x0 = (ox * self.sw) as isize - self.pl as isize;
        let clip = |a: isize, k: usize, n: usize| {
            (a.max(0) as usize).min(n)..((a + k as isize).max(0) as usize).min(n)
        };
        (clip(y0, self.kh, self.h), clip(x0, self.kw, self.w))
    }

    /// Input rows (within the image) under output position (oy, ox).
    fn taps(&self, oy: usize, ox: usize) -> impl Iterator<Item = usize> + '_ {
        let (ys, xs) = self.window(oy, ox);
        ys.flat_map(move |iy| xs.clone().map(move |ix| iy * self.w + ix))
    }
}

/// Max pooling forward: `y[b, oy, ox, c] = max over the window of x[b, iy, ix, c]`.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn maxpool_forward<T: Real>(
    x: Ptr<T>,
    xv: View,
    y: Ptr<T>,
    yv: View,
    g: &PoolGeom,
    n: usize,
) {
    let (ihw, ohw) = (g.h * g.w, g.oh * g.ow);
    (0..n).into_par_iter().for_each(|b| {
        super::simd(
            #[inline(always)]
            || {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        // SAFETY: each image's rows belong to one task; x is only read.
                        let out = unsafe { y.row_mut(yv, b * ohw + oy * g.ow + ox) };
                        out.fill(super::r(-1e30));
                        let (ys, xs) = g.window(oy, ox);
                        for iy in ys {
                            for ix in xs.clone() {
                                max_row(out, unsafe { x.row(xv, b * ihw + iy * g.w + ix) });
                            }
                        }
                    }
                }
            },
        )
    });
}

/// Max pooling backward: `dx [+]= dy / ties` at each tap of a window equal to its output.
/// `ws` lends each image's task 2*C values (tie counts and shares).
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
#[allow(clippy::too_many_arguments)]
pub unsafe fn maxpool_backward<T: Real>(
    x: Ptr<T>,
    xv: View,
    y: Ptr<T>,
    yv: View,
    dy: Ptr<T>,
    dyv: View,
    dx: Out<T>,
    g: &PoolGeom,
    n: usize,
    ws: &super::Workspaces<T>,
) {
    let dx = dx.parts();
    let (ihw, ohw) = (g.h * g.w, g.oh * g.ow);
    let (dxp, dxv, acc) = dx;
    let c = yv.c;
    (0..n).into_par_iter().for_each(|b| {
        // The loops run inside `simd` (inside the workspace's closure, not around it, or
        // they would be compiled in `with`, without the wide vectors).
        ws.with(2 * c, |buf| {
            super::simd(
                #[inline(always)]
                || {
                    if !acc {
                        for r in b * ihw..(b + 1) * ihw {
                            // SAFETY: image b of dx belongs to this task.
                            unsafe { dxp.row_mut(dxv, r) }.fill(T::zero());
                        }
                    }
                    let (count, share) = buf.split_at_mut(c);
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            let o = b * ohw + oy * g.ow + ox;
                            // SAFETY: x, y, dy are only read; image b of dx is this task's.
                            let (yr, dr) = unsafe { (y.row(yv, o), dy.row(dyv, o)) };
                            count.fill(T::zero());
                            let (ys, xs) = g.window(oy, ox);
                            for iy in ys.clone() {
                                for ix in xs.clone() {
                                    let xr = unsafe { x.row(xv, b * ihw + iy * g.w + ix) };
                                    count_row(count, xr, yr);
                                }
                            }
                            share_row(share, dr, count);
                            for iy in ys {
                                for ix in xs.clone() {
                                    let t = b * ihw + iy * g.w + ix;
                                    let xr = unsafe { x.row(xv, t) };
                                    let d = unsafe { dxp.row_mut(dxv, t) };
                                    route_row(d, xr, yr, share);
                                }
                            }
                        }
                    }
                },
            );
        })
    });
}

/// Average pooling forward: `y = sum over the window's valid taps of x / their count`.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn avgpool_forward<T: Real>(
    x: Ptr<T>,
    xv: View,
    y: Ptr<T>,
    yv: View,
    g: &PoolGeom,
    n: usize,
) {
    let (ihw, ohw) = (g.h * g.w, g.oh * g.ow);
    (0..n).into_par_iter().for_each(|b| {
        super::simd(
            #[inline(always)]
            || {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        // SAFETY: image b of y belongs to this task; x is only read.
                        let out = unsafe { y.row_mut(yv, b * ohw + oy * g.ow + ox) };
                        out.fill(T::zero());
                        let mut count = 0usize;
                        for t in g.taps(oy, ox) {
                            count += 1;
                            for (o, v) in out.iter_mut().zip(unsafe { x.row(xv, b * ihw + t) }) {
                                *o += *v;
                            }
                        }
                        let inv = super::r::<T>(1.0 / count.max(1) as f64);
                        out.iter_mut().for_each(|o| *o *= inv);
                    }
                }
            },
        )
    });
}

/// Average pooling backward: `dx [+]= dy / count` at every valid tap of each window.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn avgpool_backward<T: Real>(dy: Ptr<T>, dyv: View, dx: Out<T>, g: &PoolGeom, n: usize) {
    let dx = dx.parts();
    let (ihw, ohw) = (g.h * g.w, g.oh * g.ow);
    let (dxp, dxv, acc) = dx;
    (0..n).into_par_iter().for_each(|b| {
        super::simd(
            #[inline(always)]
            || {
                if !acc {
                    for r in b * ihw..(b + 1) * ihw {
                        // SAFETY: image b of dx belongs to this task.
                        unsafe { dxp.row_mut(dxv, r) }.fill(T::zero());
                    }
                }
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let count = g.taps(oy, ox).count();
                        let inv = super::r::<T>(1.0 / count.max(1) as f64);
                        // SAFETY: dy is only read; image b of dx is this task's.
                        let dr = unsafe { dy.row(dyv, b * ohw + oy * g.ow + ox) };
                        for t in g.taps(oy, ox) {
                            let d = unsafe { dxp.row_mut(dxv, b * ihw + t) };
                            for (a, v) in d.iter_mut().zip(dr) {
                                *a += *v * inv;
                            }
                        }
                    }
                }
            },
        )
    });
}

/// Global average pooling forward: (n*hw, C) -> (n, C), the mean over each image's rows.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn global_avgpool_forward<T: Real>(x: Ptr<T>, xv: View, y: Ptr<T>, yv: View, n: usize) {
    let inv = super::r::<T>(1.0 / xv.hw as f64);
    (0..n).into_par_iter().for_each(|b| {
        super::simd(
            #[inline(always)]
            || {
                // SAFETY: row b of y belongs to this task; x is only read.
                let out = unsafe { y.row_mut(yv, b) };
                out.fill(T::zero());
                for r in b * xv.hw..(b + 1) * xv.hw {
                    for (o, v) in out.iter_mut().zip(unsafe { x.row(xv, r) }) {
                        *o += *v;
                    }
                }
                out.iter_mut().for_each(|o| *o *= inv);
            },
        )
    });
}

/// Global average pooling backward: `dx[b, r, c] [+]= dy[b, c] / hw`.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn global_avgpool_backward<T: Real>(dy: Ptr<T>, dyv: View, dx: Out<T>, n: usize) {
    let (dxp, dxv, acc) = dx.parts();
    let inv = super::r::<T>(1.0 / dxv.hw as f64);
    (0..n).into_par_iter().for_each(|b| {
        super::simd(
            #[inline(always)]
            || {
                // SAFETY: dy is only read; image b of dx is this task's.
                let dr = unsafe { dy.row(dyv, b) };
                for r in b * dxv.hw..(b + 1) * dxv.hw {
                    let d = unsafe { dxp.row_mut(dxv, r) };
                    for (a, v) in d.iter_mut().zip(dr) {
                        if acc {
                            *a += *v * inv;
                        } else {
                            *a = *v * inv;
                        }
                    }
                }
            },
        )
    });
}

// The row functions below take their rows as slice arguments, so the compiler knows the
// row written does not alias the rows read, and vectorises each loop.

/// `out = max(out, src)`, element by element.
#[inline(always)]
fn max_row<T: Real>(out: &mut [T], src: &[T]) {
    let src = &src[..out.len()];
    for (o, v) in out.iter_mut().zip(src) {
        *o = if *v > *o { *v } else { *o };
    }
}

/// `count += (x == y)`, element by element: the taps holding the maximum.
#[inline(always)]
fn count_row<T: Real>(count: &mut [T], x: &[T], y: &[T]) {
    let (x, y) = (&x[..count.len()], &y[..count.len()]);
    for ((k, xv), yv) in count.iter_mut().zip(x).zip(y) {
        *k += if *xv == *yv { T::one() } else { T::zero() };
    }
}

/// `share = dy / count`, element by element.
#[inline(always)]
fn share_row<T: Real>(share: &mut [T], dy: &[T], count: &[T]) {
    let (dy, count) = (&dy[..share.len()], &count[..share.len()]);
    for ((s, d), k) in share.iter_mut().zip(dy).zip(count) {
        *s = *d / *k;
    }
}

/// `dx += share` where `x == y` (the tap held the maximum), element by element.
#[inline(always)]
fn route_row<T: Real>(dx: &mut [T], x: &[T], y: &[T], share: &[T]) {
    let n = dx.len();
    let (x, y, share) = (&x[..n], &y[..n], &share[..n]);
    for (((a, xv), yv), s) in dx.iter_mut().zip(x).zip(y).zip(share) {
        *a += if *xv == *yv { *s } else { T::zero() };
    }
}

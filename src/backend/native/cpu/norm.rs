//! `batchnorm` over the channels of (rows, C): training (batch statistics) and inference
//! (running statistics), and its backward. Sums run over fixed blocks of rows, then the
//! blocks in order, so they do not depend on the thread count.

use rayon::prelude::*;

use super::{Ptr, Real};
use crate::backend::native::plan::View;

/// Rows per block of a batch-norm sum.
const BLOCK: usize = 256;

/// Number of blocks for `rows` rows.
pub fn blocks(rows: usize) -> usize {
    rows.div_ceil(BLOCK).max(1)
}

/// Per-channel sums of `f(row, channel)` over rows, in f64, by fixed blocks then in block
/// order. `scratch` holds `blocks(rows) * c * lanes` values. (f64: a channel whose values
/// are all equal must get exactly that value as its mean, or the normalised zeros turn
/// into rounding noise that a following relu lets through.)
fn block_sums<const L: usize>(
    rows: usize,
    c: usize,
    scratch: &mut [f64],
    out: &mut [[f64; L]],
    f: impl Fn(usize, &mut [f64]) + Sync,
) {
    let nb = blocks(rows);
    scratch[..nb * c * L]
        .par_chunks_mut(c * L)
        .enumerate()
        .for_each(|(b, acc)| {
            super::simd(
                #[inline(always)]
                || {
                    acc.fill(0.0);
                    for r in b * BLOCK..((b + 1) * BLOCK).min(rows) {
                        f(r, acc);
                    }
                },
            )
        });
    for o in out.iter_mut() {
        *o = [0.0; L];
    }
    for b in 0..nb {
        let acc = &scratch[b * c * L..(b + 1) * c * L];
        for l in 0..L {
            for ch in 0..c {
                out[ch][l] += acc[l * c + ch];
            }
        }
    }
}

/// Training forward: `y = (x - mean) / sqrt(var + eps) * gamma + beta` with the batch's
/// biased mean and variance over the `rows` rows of `x` (rows, C). Returns them in `mean`
/// and `var`, and 1/sqrt(var + eps) in `inv_std`. With `relu`, `y = max(y, 0)` in the
/// same pass (a following in-place relu, fused).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_train<T: Real>(
    x: Ptr<T>,
    xv: View,
    y: Ptr<T>,
    yv: View,
    rows: usize,
    gamma: &[T],
    beta: &[T],
    eps: f64,
    mean: &mut [T],
    var: &mut [T],
    inv_std: &mut [T],
    scratch: &mut [f64],
    sums: &mut [[f64; 2]],
    relu: bool,
) {
    let c = xv.c;
    let inv_n = 1.0 / rows as f64;
    let s1 = &mut sums[..c];
    // SAFETY (all closures): rows of x are only read here.
    block_sums::<2>(
        rows,
        c,
        scratch,
        s1,
        #[inline(always)]
        |r, acc| {
            for (a, v) in acc.iter_mut().zip(unsafe { x.row(xv, r) }) {
                *a += v.to_f64().unwrap_or(f64::NAN);
            }
        },
    );
    for ch in 0..c {
        mean[ch] = super::r(s1[ch][0] * inv_n);
    }
    let m: &[T] = mean;
    block_sums::<2>(
        rows,
        c,
        scratch,
        s1,
        #[inline(always)]
        |r, acc| {
            for ((a, v), mu) in acc.iter_mut().zip(unsafe { x.row(xv, r) }).zip(m) {
                let d = (*v - *mu).to_f64().unwrap_or(f64::NAN);
                *a += d * d;
            }
        },
    );
    for ch in 0..c {
        var[ch] = super::r(s1[ch][0] * inv_n);
        inv_std[ch] = T::one() / (var[ch] + super::r(eps)).sqrt();
    }
    normalize(x, xv, y, yv, rows, (mean, inv_std, gamma, beta), relu);
}

/// Inference forward with running statistics (and `relu` as in training).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_infer<T: Real>(
    x: Ptr<T>,
    xv: View,
    y: Ptr<T>,
    yv: View,
    rows: usize,
    gamma: &[T],
    beta: &[T],
    eps: f64,
    running_mean: &[T],
    running_var: &[T],
    inv_std: &mut [T],
    relu: bool,
) {
    for (i, v) in inv_std.iter_mut().zip(running_var) {
        *i = T::one() / (*v + super::r(eps)).sqrt();
    }
    normalize(
        x,
        xv,
        y,
        yv,
        rows,
        (running_mean, inv_std, gamma, beta),
        relu,
    );
}

#[allow(clippy::too_many_arguments)]
/// `y = (x - mean) * inv_std * gamma + beta`, then `max(y, 0)` with `relu`.
fn normalize<T: Real>(
    x: Ptr<T>,
    xv: View,
    y: Ptr<T>,
    yv: View,
    rows: usize,
    (mean, inv_std, gamma, beta): (&[T], &[T], &[T], &[T]),
    relu: bool,
) {
    (0..blocks(rows)).into_par_iter().for_each(|b| {
        super::simd(
            #[inline(always)]
            || {
                for r in b * BLOCK..((b + 1) * BLOCK).min(rows) {
                    // SAFETY: each block's rows belong to one task; x is read before y is written
                    // element by element, so x == y (in place) is fine.
                    let xr = unsafe { x.row(xv, r) }.as_ptr();
                    let yr = unsafe { y.row_mut(yv, r) };
                    for (ch, o) in yr.iter_mut().enumerate() {
                        // SAFETY: ch < c, the row's length.
                        let v = unsafe { *xr.add(ch) };
                        let n = (v - mean[ch]) * inv_std[ch] * gamma[ch] + beta[ch];
                        *o = if relu && n <= T::zero() { T::zero() } else { n };
                    }
                }
            },
        )
    });
}

/// Backward of the training forward:
/// `dgamma = sum(dy * xhat)`, `dbeta = sum(dy)`, where with a fused relu `dy` is first
/// masked by `relu_out > 0` (the fused output, read from `relu_out`);
/// `dx [+]= gamma * inv_std * (dy - dbeta/N - xhat * dgamma/N)` with `xhat` recomputed
/// from `x`, `mean` and `inv_std`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward<T: Real>(
    x: Ptr<T>,
    xv: View,
    dy: Ptr<T>,
    dyv: View,
    dx: Option<(Ptr<T>, View, bool)>,
    rows: usize,
    gamma: &[T],
    mean: &[T],
    inv_std: &[T],
    dgamma: &mut [T],
    dbeta: &mut [T],
    scratch: &mut [f64],
    sums: &mut [[f64; 2]],
    relu_out: Option<(Ptr<T>, View)>,
) {
    let c = xv.c;
    let s = &mut sums[..c];
    // Row r of the fused relu's output, when there is one (only read).
    // SAFETY: rows of the fused output lie in the arena and nobody writes them here.
    let relu_row = |r: usize| relu_out.map(|(yp, yv)| unsafe { yp.row(yv, r) });
    block_sums::<2>(
        rows,
        c,
        scratch,
        s,
        #[inline(always)]
        |r, acc| {
            // SAFETY: rows of x and dy are only read here.
            let (xr, dr) = unsafe { (x.row(xv, r), dy.row(dyv, r)) };
            let (a0, a1) = acc.split_at_mut(c);
            // Equal lengths up front, and the relu mask chosen outside the loop, so the loop
            // vectorises.
            let (xr, dr, m, is) = (&xr[..c], &dr[..c], &mean[..c], &inv_std[..c]);
            let (a0, a1) = (&mut a0[..c], &mut a1[..c]);
            let f = |v: T| v.to_f64().unwrap_or(f64::NAN);
            match relu_row(r) {
                Some(yr) => {
                    let yr = &yr[..c];
                    for ch in 0..c {
                        let d = if yr[ch] > T::zero() {
                            dr[ch]
                        } else {
                            T::zero()
                        };
                        let xhat = (xr[ch] - m[ch]) * is[ch];
                        a0[ch] += f(d);
                        a1[ch] += f(d * xhat);
                    }
                }
                None => {
                    for ch in 0..c {
                        let d = dr[ch];
                        let xhat = (xr[ch] - m[ch]) * is[ch];
                        a0[ch] += f(d);
                        a1[ch] += f(d * xhat);
                    }
                }
            }
        },
    );
    for ch in 0..c {
        dbeta[ch] = super::r(s[ch][0]);
        dgamma[ch] = super::r(s[ch][1]);
    }
    let Some((dxp, dxv, acc)) = dx else { return };
    let inv_n = super::r::<T>(1.0 / rows as f64);
    let (db, dg): (&[T], &[T]) = (dbeta, dgamma);
    (0..blocks(rows)).into_par_iter().for_each(|b| {
        super::simd(
            #[inline(always)]
            || {
                for r in b * BLOCK..((b + 1) * BLOCK).min(rows) {
                    // SAFETY: x and dy rows are read; this block's rows of dx belong to this task.
                    // dx may be dy itself (in place): each element is read before it is written.
                    let xr = unsafe { x.row(xv, r) };
                    let yr = relu_row(r);
                    let dr = unsafe { dy.row(dyv, r) }.as_ptr();
                    let out = unsafe { dxp.row_mut(dxv, r) };
                    let grad = |ch: usize, d: T| {
                        let xhat = (xr[ch] - mean[ch]) * inv_std[ch];
                        gamma[ch] * inv_std[ch] * (d - db[ch] * inv_n - xhat * dg[ch] * inv_n)
                    };
                    // The four cases outside the loop, so each vectorises.
                    // SAFETY (each `dr.add(ch)`): ch < c; dy's element is read before dx's is
                    // written.
                    match (yr, acc) {
                        (Some(y), true) => (0..c).for_each(|ch| {
                            let d = unsafe { *dr.add(ch) };
                            out[ch] += grad(ch, if y[ch] > T::zero() { d } else { T::zero() });
                        }),
                        (Some(y), false) => (0..c).for_each(|ch| {
                            let d = unsafe { *dr.add(ch) };
                            out[ch] = grad(ch, if y[ch] > T::zero() { d } else { T::zero() });
                        }),
                        (None, true) => {
                            (0..c).for_each(|ch| out[ch] += grad(ch, unsafe { *dr.add(ch) }))
                        }
                        (None, false) => {
                            (0..c).for_each(|ch| out[ch] = grad(ch, unsafe { *dr.add(ch) }))
                        }
                    }
                }
            },
        )
    });
}

//! `batchnorm` over the channels of (rows, C): training (batch statistics) and inference
//! (running statistics), and its backward. Sums run over fixed blocks of rows, then the
//! blocks in order, so they do not depend on the thread count.

use rayon::prelude::*;

use super::{Out, Ptr, Real};
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
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
#[allow(clippy::too_many_arguments)]
pub unsafe fn batchnorm_forward_train<T: Real>(
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
        |r, acc| sum_row(unsafe { x.row(xv, r) }, &mut acc[..c]),
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
        |r, acc| square_sum_row(unsafe { x.row(xv, r) }, m, &mut acc[..c]),
    );
    for ch in 0..c {
        var[ch] = super::r(s1[ch][0] * inv_n);
        inv_std[ch] = T::one() / (var[ch] + super::r(eps)).sqrt();
    }
    normalize(x, xv, y, yv, rows, (mean, inv_std, gamma, beta), relu);
}

/// Inference forward with running statistics (and `relu` as in training).
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
#[allow(clippy::too_many_arguments)]
pub unsafe fn batchnorm_forward_infer<T: Real>(
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
    coef: (&[T], &[T], &[T], &[T]),
    relu: bool,
) {
    (0..blocks(rows)).into_par_iter().for_each(|b| {
        super::simd(
            #[inline(always)]
            || {
                for r in b * BLOCK..((b + 1) * BLOCK).min(rows) {
                    // SAFETY: each block's rows belong to one task; x is only read, and when
                    // it is y itself (in place) the row is handed over once, as `io`.
                    unsafe {
                        if x.at(xv, r) == y.at(yv, r) {
                            normalize_row(None, y.row_mut(yv, r), coef, relu);
                        } else {
                            normalize_row(Some(x.row(xv, r)), y.row_mut(yv, r), coef, relu);
                        }
                    }
                }
            },
        )
    });
}

/// Backward of the training forward:
/// `dgamma = sum(dy * xhat)`, `dbeta = sum(dy)`, where with a fused relu (`relu` =
/// `Some(beta)`) `dy` is first masked by the fused output being positive. That mask is
/// recomputed from `x` exactly as the forward computed it (`xhat * gamma + beta > 0`, the
/// same operations in the same order), so the output is not read again: two passes over
/// `x` and `dy`, one write of `dx`.
/// `dx [+]= gamma * inv_std * (dy - dbeta/N - xhat * dgamma/N)` with `xhat` recomputed
/// from `x`, `mean` and `inv_std`, as `a * dy + b * (x - mean) + c` with per-channel
/// coefficients (worked out in f64 once, into `coef`: 3 * C values).
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
#[allow(clippy::too_many_arguments)]
pub unsafe fn batchnorm_backward<T: Real>(
    x: Ptr<T>,
    xv: View,
    dy: Ptr<T>,
    dyv: View,
    dx: Option<Out<T>>,
    rows: usize,
    gamma: &[T],
    mean: &[T],
    inv_std: &[T],
    dgamma: &mut [T],
    dbeta: &mut [T],
    scratch: &mut [f64],
    sums: &mut [[f64; 2]],
    coef: &mut [T],
    relu: Option<&[T]>,
) {
    let dx = dx.map(Out::parts);
    let c = xv.c;
    let s = &mut sums[..c];
    let (m, is, ga) = (&mean[..c], &inv_std[..c], &gamma[..c]);
    block_sums::<2>(
        rows,
        c,
        scratch,
        s,
        #[inline(always)]
        |r, acc| {
            let (a0, a1) = acc.split_at_mut(c);
            // SAFETY: rows of x and dy are only read here.
            let (xr, dr) = unsafe { (x.row(xv, r), dy.row(dyv, r)) };
            backward_sums_row(xr, dr, (m, is, ga, relu), a0, a1);
        },
    );
    for ch in 0..c {
        dbeta[ch] = super::r(s[ch][0]);
        dgamma[ch] = super::r(s[ch][1]);
    }
    let Some((dxp, dxv, acc)) = dx else { return };
    // dx = gamma*is*dy - gamma*is*dbeta/N - gamma*is²*dgamma/N * (x - mean)
    //    = ca*dy + cb*(x - mean) + cc, the coefficients per channel worked out in f64.
    let inv_n = 1.0 / rows as f64;
    let f = |v: T| v.to_f64().unwrap_or(f64::NAN);
    let (ca, rest) = coef[..3 * c].split_at_mut(c);
    let (cb, cc) = rest.split_at_mut(c);
    for ch in 0..c {
        let a = f(gamma[ch]) * f(inv_std[ch]);
        ca[ch] = super::r(a);
        cb[ch] = super::r(-a * f(inv_std[ch]) * s[ch][1] * inv_n);
        cc[ch] = super::r(-a * s[ch][0] * inv_n);
    }
    let (ca, cb, cc): (&[T], &[T], &[T]) = (ca, cb, cc);
    (0..blocks(rows)).into_par_iter().for_each(|b| {
        super::simd(
            #[inline(always)]
            || {
                for r in b * BLOCK..((b + 1) * BLOCK).min(rows) {
                    // SAFETY: x and dy rows are read; this block's rows of dx belong to
                    // this task. When dx is dy itself (in place), the row is handed over
                    // once, as `io`.
                    unsafe {
                        let xr = x.row(xv, r);
                        let out = dxp.row_mut(dxv, r);
                        let dr = (dy.at(dyv, r) != dxp.at(dxv, r)).then(|| dy.row(dyv, r));
                        backward_dx_row(xr, dr, out, acc, (m, is, ga, relu), (ca, cb, cc));
                    }
                }
            },
        )
    });
}

/// A batch norm's `(mean, inv_std, gamma, beta)`; `beta` only with a fused relu (to
/// recompute its mask).
type Coefs<'a, T> = (&'a [T], &'a [T], &'a [T], Option<&'a [T]>);

// The row functions below take every row as a slice argument, so the compiler knows that
// what they write does not alias what they read and vectorises their loops (rows reached
// through raw arena pointers inside one loop body are not vectorised). Each is inlined
// into its caller's `simd` function.

/// `acc += x` (in f64), channel by channel.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexed over equal lengths: vectorises
fn sum_row<T: Real>(x: &[T], acc: &mut [f64]) {
    let n = acc.len();
    let x = &x[..n];
    for ch in 0..n {
        acc[ch] += x[ch].to_f64().unwrap_or(f64::NAN);
    }
}

/// `acc += (x - m)²` (in f64), channel by channel.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexed over equal lengths: vectorises
fn square_sum_row<T: Real>(x: &[T], m: &[T], acc: &mut [f64]) {
    let n = acc.len();
    let (x, m) = (&x[..n], &m[..n]);
    for ch in 0..n {
        let d = (x[ch] - m[ch]).to_f64().unwrap_or(f64::NAN);
        acc[ch] += d * d;
    }
}

/// `y = (x - mean) * inv_std * gamma + beta`, then `max(y, 0)` with `relu`; `x` is `io`
/// itself when it is `None` (in place).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexed over equal lengths: vectorises
fn normalize_row<T: Real>(
    x: Option<&[T]>,
    io: &mut [T],
    (mean, inv_std, gamma, beta): (&[T], &[T], &[T], &[T]),
    relu: bool,
) {
    let n = io.len();
    let (mean, inv_std, gamma, beta) = (&mean[..n], &inv_std[..n], &gamma[..n], &beta[..n]);
    let f = |v: T, ch: usize| {
        let y = (v - mean[ch]) * inv_std[ch] * gamma[ch] + beta[ch];
        if relu && y <= T::zero() {
            T::zero()
        } else {
            y
        }
    };
    match x {
        Some(x) => {
            let x = &x[..n];
            for ch in 0..n {
                io[ch] = f(x[ch], ch);
            }
        }
        None => {
            for ch in 0..n {
                io[ch] = f(io[ch], ch);
            }
        }
    }
}

/// Batch-norm backward's sums of one row: `a0 += d`, `a1 += d * xhat` (in f64), with
/// `d = dy`, masked where the fused relu's output was zero (`beta` given: recomputed as
/// the forward computed it).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexed over equal lengths: vectorises
fn backward_sums_row<T: Real>(
    x: &[T],
    dy: &[T],
    (mean, inv_std, gamma, beta): Coefs<'_, T>,
    a0: &mut [f64],
    a1: &mut [f64],
) {
    let n = a0.len();
    let (x, dy, mean, inv_std, gamma) = (&x[..n], &dy[..n], &mean[..n], &inv_std[..n], &gamma[..n]);
    let a1 = &mut a1[..n];
    let f = |v: T| v.to_f64().unwrap_or(f64::NAN);
    match beta {
        Some(beta) => {
            let beta = &beta[..n];
            for ch in 0..n {
                let xhat = (x[ch] - mean[ch]) * inv_std[ch];
                let d = if xhat * gamma[ch] + beta[ch] > T::zero() {
                    dy[ch]
                } else {
                    T::zero()
                };
                a0[ch] += f(d);
                a1[ch] += f(d * xhat);
            }
        }
        None => {
            for ch in 0..n {
                let xhat = (x[ch] - mean[ch]) * inv_std[ch];
                a0[ch] += f(dy[ch]);
                a1[ch] += f(dy[ch] * xhat);
            }
        }
    }
}

/// Batch-norm backward's input gradient of one row:
/// `out [+]= ca * d + (cb * (x - mean) + cc)`, `d` as in [`backward_sums_row`]; `dy` is
/// `out` itself when it is `None` (in place).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexed over equal lengths: vectorises
fn backward_dx_row<T: Real>(
    x: &[T],
    dy: Option<&[T]>,
    out: &mut [T],
    acc: bool,
    (mean, inv_std, gamma, beta): Coefs<'_, T>,
    (ca, cb, cc): (&[T], &[T], &[T]),
) {
    let n = out.len();
    let (x, mean, inv_std, gamma) = (&x[..n], &mean[..n], &inv_std[..n], &gamma[..n]);
    let (ca, cb, cc) = (&ca[..n], &cb[..n], &cc[..n]);
    // Each case its own loop (the mask, the accumulation and where dy is chosen outside
    // the loops), so each vectorises.
    macro_rules! run {
        ($dy:expr, $masked:expr, $acc:expr) => {
            for ch in 0..n {
                let xc = x[ch] - mean[ch];
                let d = $dy(&*out, ch);
                let d = match $masked {
                    Some(beta) => {
                        let beta: &[T] = beta;
                        if xc * inv_std[ch] * gamma[ch] + beta[ch] > T::zero() {
                            d
                        } else {
                            T::zero()
                        }
                    }
                    None => d,
                };
                let v = ca[ch] * d + (cb[ch] * xc + cc[ch]);
                out[ch] = if $acc { out[ch] + v } else { v };
            }
        };
    }
    let (dy, beta) = (dy.map(|d| &d[..n]), beta.map(|b| &b[..n]));
    match (dy, beta, acc) {
        (Some(dy), Some(b), true) => run!(|_: &[T], ch: usize| dy[ch], Some(b), true),
        (Some(dy), Some(b), false) => run!(|_: &[T], ch: usize| dy[ch], Some(b), false),
        (Some(dy), None, true) => run!(|_: &[T], ch: usize| dy[ch], None::<&[T]>, true),
        (Some(dy), None, false) => run!(|_: &[T], ch: usize| dy[ch], None::<&[T]>, false),
        (None, Some(b), true) => run!(|o: &[T], ch: usize| o[ch], Some(b), true),
        (None, Some(b), false) => run!(|o: &[T], ch: usize| o[ch], Some(b), false),
        (None, None, true) => run!(|o: &[T], ch: usize| o[ch], None::<&[T]>, true),
        (None, None, false) => run!(|o: &[T], ch: usize| o[ch], None::<&[T]>, false),
    }
}

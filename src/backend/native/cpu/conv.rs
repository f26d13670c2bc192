//! `conv2d`, forward and backward: a 1x1 stride-1 convolution is one matrix product per
//! image part; any other is im2col over a few images at a time (a workspace of bounded
//! size), then a product with the (kh*kw*cin, cout) kernel.

use rayon::prelude::*;

use super::{gemm, part_range, parts, Mat, Ptr, Real, Workspaces};
use crate::backend::native::plan::View;
use crate::backend::native::shared::ConvGeom;

/// Values an im2col chunk aims at (128K: 512 KB in f32, inside L2), at least 16 rows.
const COL_CAP: usize = 1 << 17;

impl ConvGeom {
    /// Output rows per im2col chunk (the workspace stays in the core's L2 cache).
    fn chunk(&self) -> usize {
        (COL_CAP / self.k().max(1)).max(16)
    }
}

/// im2col of output rows `[r0, r1)` (row = (b*oh + oy)*ow + ox): `col` is (r1-r0,
/// kh*kw*cin), column `(ky*kw + kx)*cin + ci`, zero where the window leaves the image.
///
/// # Safety
/// `x` holds the images of these rows (view `xv`), and no thread writes them meanwhile.
unsafe fn im2col<T: Real>(x: Ptr<T>, xv: View, g: &ConvGeom, r0: usize, r1: usize, col: &mut [T]) {
    let k = g.k();
    let ohw = g.oh * g.ow;
    for (row, o) in (r0..r1).enumerate() {
        let (b, oy, ox) = (o / ohw, o % ohw / g.ow, o % g.ow);
        {
            {
                let dst = &mut col[row * k..(row + 1) * k];
                for ky in 0..g.kh {
                    let iy = (oy * g.sh + ky) as isize - g.pt as isize;
                    for kx in 0..g.kw {
                        let ix = (ox * g.sw + kx) as isize - g.pl as isize;
                        let d = &mut dst[(ky * g.kw + kx) * g.cin..(ky * g.kw + kx + 1) * g.cin];
                        if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                            let r = (b * g.h + iy as usize) * g.w + ix as usize;
                            // SAFETY: r is a row of image b < b1 (caller's contract).
                            d.copy_from_slice(unsafe { x.row(xv, r) });
                        } else {
                            d.fill(T::zero());
                        }
                    }
                }
            }
        }
    }
}

/// col2im: add every im2col row of `dcol` (output rows `[r0, r1)`) back into the input
/// rows it was gathered from.
///
/// # Safety
/// `dx` holds the images of these rows (view `dxv`), and only this thread touches them.
unsafe fn col2im_add<T: Real>(
    dcol: &[T],
    dx: Ptr<T>,
    dxv: View,
    g: &ConvGeom,
    r0: usize,
    r1: usize,
) {
    let k = g.k();
    let ohw = g.oh * g.ow;
    for (row, o) in (r0..r1).enumerate() {
        let (b, oy, ox) = (o / ohw, o % ohw / g.ow, o % g.ow);
        {
            {
                let src = &dcol[row * k..(row + 1) * k];
                for ky in 0..g.kh {
                    let iy = (oy * g.sh + ky) as isize - g.pt as isize;
                    if iy < 0 || iy as usize >= g.h {
                        continue;
                    }
                    for kx in 0..g.kw {
                        let ix = (ox * g.sw + kx) as isize - g.pl as isize;
                        if ix < 0 || ix as usize >= g.w {
                            continue;
                        }
                        let r = (b * g.h + iy as usize) * g.w + ix as usize;
                        // SAFETY: r is a row of image b in [b0, b1), owned by this thread.
                        let d = unsafe { dx.row_mut(dxv, r) };
                        let s = &src[(ky * g.kw + kx) * g.cin..(ky * g.kw + kx + 1) * g.cin];
                        for (a, v) in d.iter_mut().zip(s) {
                            *a += *v;
                        }
                    }
                }
            }
        }
    }
}

/// Forward: `y (n*oh*ow, cout) = im2col(x) (n*oh*ow, kh*kw*cin) . w (kh*kw*cin, cout) + b`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward<T: Real>(
    x: Ptr<T>,
    xv: View,
    w: &[T],
    bias: Option<&[T]>,
    y: Ptr<T>,
    yv: View,
    g: &ConvGeom,
    n: usize,
    ws: &Workspaces<T>,
) {
    let np = parts(n);
    let k = g.k();
    let ohw = g.oh * g.ow;
    let wm = Mat {
        ptr: w.as_ptr(),
        rs: g.cout,
        cs: 1,
    };
    (0..np).into_par_iter().for_each(|p| {
        let (lo, hi) = part_range(n, p, np);
        let start_rows = |r0: usize, r1: usize| {
            if let Some(b) = bias {
                for r in r0..r1 {
                    // SAFETY: rows of this part's images belong to this task.
                    unsafe { y.row_mut(yv, r) }.copy_from_slice(b);
                }
            }
        };
        if g.pointwise() {
            start_rows(lo * ohw, hi * ohw);
            // SAFETY: this part's rows of x and y; y does not overlap x (different nodes).
            unsafe {
                gemm(
                    (hi - lo) * ohw,
                    g.cout,
                    k,
                    y.at(yv, lo * ohw),
                    yv.ld,
                    bias.is_some(),
                    Mat {
                        ptr: x.at(xv, lo * ohw),
                        rs: xv.ld,
                        cs: 1,
                    },
                    wm,
                )
            };
            return;
        }
        let chunk = g.chunk();
        let (lo, hi) = (lo * ohw, hi * ohw);
        ws.with(chunk.min(hi - lo) * k, |col| {
            let mut r0 = lo;
            while r0 < hi {
                let r1 = (r0 + chunk).min(hi);
                let rows = r1 - r0;
                // SAFETY: the images of rows [r0, r1) exist and are only read.
                unsafe { im2col(x, xv, g, r0, r1, col) };
                start_rows(r0, r1);
                // SAFETY: this task's rows of y; col is a private workspace.
                unsafe {
                    gemm(
                        rows,
                        g.cout,
                        k,
                        y.at(yv, r0),
                        yv.ld,
                        bias.is_some(),
                        Mat {
                            ptr: col.as_ptr(),
                            rs: k,
                            cs: 1,
                        },
                        wm,
                    )
                };
                r0 = r1;
            }
        });
    });
}

/// Backward: `dw = im2col(x)^T . dy`, `db = sum of dy rows`, and (unless `dx` is `None`)
/// `dx [+]= col2im(dy . w^T)`. `partials` holds `parts(n) * (len(w) + cout)` values: one
/// weight and bias gradient per image part, summed afterwards in part order.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<T: Real>(
    x: Ptr<T>,
    xv: View,
    w: &[T],
    dy: Ptr<T>,
    dyv: View,
    dx: Option<(Ptr<T>, View, bool)>,
    g: &ConvGeom,
    n: usize,
    partials: &mut [T],
    ws: &Workspaces<T>,
) {
    let np = parts(n);
    let k = g.k();
    let ohw = g.oh * g.ow;
    let plen = k * g.cout + g.cout;
    let wt = Mat {
        ptr: w.as_ptr(),
        rs: 1,
        cs: g.cout,
    };
    partials[..np * plen]
        .par_chunks_mut(plen)
        .enumerate()
        .for_each(|(p, part)| {
            let (lo, hi) = part_range(n, p, np);
            let (dw, db) = part.split_at_mut(k * g.cout);
            db.fill(T::zero());
            for r in lo * ohw..hi * ohw {
                // SAFETY: rows of dy are only read.
                let d = unsafe { dy.row(dyv, r) };
                for (a, v) in db.iter_mut().zip(d) {
                    *a += *v;
                }
            }
            if g.pointwise() {
                let rows = (hi - lo) * ohw;
                // SAFETY: dw is this part's partial; x and dy rows are only read.
                unsafe {
                    gemm(
                        k,
                        g.cout,
                        rows,
                        dw.as_mut_ptr(),
                        g.cout,
                        false,
                        Mat {
                            ptr: x.at(xv, lo * ohw),
                            rs: 1,
                            cs: xv.ld,
                        },
                        Mat {
                            ptr: dy.at(dyv, lo * ohw),
                            rs: dyv.ld,
                            cs: 1,
                        },
                    )
                };
                if let Some((dxp, dxv, acc)) = dx {
                    // SAFETY: this part's rows of dx belong to this task.
                    unsafe {
                        gemm(
                            rows,
                            g.cin,
                            g.cout,
                            dxp.at(dxv, lo * ohw),
                            dxv.ld,
                            acc,
                            Mat {
                                ptr: dy.at(dyv, lo * ohw),
                                rs: dyv.ld,
                                cs: 1,
                            },
                            wt,
                        )
                    };
                }
                return;
            }
            if let Some((dxp, dxv, false)) = dx {
                for r in lo * g.h * g.w..hi * g.h * g.w {
                    // SAFETY: this part's images of dx belong to this task.
                    unsafe { dxp.row_mut(dxv, r) }.fill(T::zero());
                }
            }
            let chunk = g.chunk();
            let (lo, hi) = (lo * ohw, hi * ohw);
            let cols = chunk.min(hi - lo) * k;
            ws.with(2 * cols, |buf| {
                let (col, dcol) = buf.split_at_mut(cols);
                let mut r0 = lo;
                while r0 < hi {
                    let r1 = (r0 + chunk).min(hi);
                    let rows = r1 - r0;
                    // SAFETY: the images of rows [r0, r1) of x are only read.
                    unsafe { im2col(x, xv, g, r0, r1, col) };
                    // SAFETY: dw is this part's partial; col is private.
                    unsafe {
                        gemm(
                            k,
                            g.cout,
                            rows,
                            dw.as_mut_ptr(),
                            g.cout,
                            r0 != lo,
                            Mat {
                                ptr: col.as_ptr(),
                                rs: 1,
                                cs: k,
                            },
                            Mat {
                                ptr: dy.at(dyv, r0),
                                rs: dyv.ld,
                                cs: 1,
                            },
                        )
                    };
                    if let Some((dxp, dxv, _)) = dx {
                        // SAFETY: dcol is private; dy rows are only read.
                        unsafe {
                            gemm(
                                rows,
                                k,
                                g.cout,
                                dcol.as_mut_ptr(),
                                k,
                                false,
                                Mat {
                                    ptr: dy.at(dyv, r0),
                                    rs: dyv.ld,
                                    cs: 1,
                                },
                                wt,
                            )
                        };
                        // SAFETY: rows [r0, r1) fall in this part's images of dx.
                        unsafe { col2im_add(dcol, dxp, dxv, g, r0, r1) };
                    }
                    r0 = r1;
                }
            });
        });
}

//! `conv2d`, forward and backward: a 1x1 stride-1 convolution is one matrix product per
//! image part; any other is im2col over a few images at a time (a workspace of bounded
//! size), then a product with the (kh*kw*cin, cout) kernel.

use rayon::prelude::*;

use super::{gemm, part_range, parts, Epilogue, Mat, Out, Ptr, Real, Workspaces};
use crate::backend::native::plan::View;
use crate::backend::native::shared::ConvGeom;

impl ConvGeom {
    /// Output rows per im2col chunk: the chunk's im2col rows fill half of the core's L2
    /// cache (read at run time; 512 KB of f32 on a 1 MiB L2), at least 16 rows.
    fn chunk(&self) -> usize {
        let values = super::l2_bytes() / 2 / std::mem::size_of::<f32>();
        (values / self.k().max(1)).max(16)
    }
}

/// Gather rows `[r0, r1)` of `col` ((r1-r0, kh*kw*width)): for row `r` and tap `(ky, kx)`,
/// the `width` values at `col[(r - r0), (ky*kw + kx)*width..]` are row `at(r, ky, kx)` of
/// `src` (view `sv`), or zeros where `at` gives `None` (outside the image). im2col and
/// [`gather_dy`] are this with their own `at`.
///
/// # Safety
/// Every row `at` gives is a row of `src` that no thread writes meanwhile.
#[inline(always)]
unsafe fn gather_taps<T: Real>(
    src: Ptr<T>,
    sv: View,
    (kh, kw, width): (usize, usize, usize),
    r0: usize,
    r1: usize,
    col: &mut [T],
    at: impl Fn(usize, usize, usize) -> Option<usize>,
) {
    let k = kh * kw * width;
    // Rows `s, s + 1, ...` of a dense view are one run of values: a window row wholly
    // inside the image is then one copy of kw*width values (a few values per tap, as a
    // 3-channel input has, cost a call each).
    let dense = sv.ld == width;
    for (row, r) in (r0..r1).enumerate() {
        let dst = &mut col[row * k..(row + 1) * k];
        for ky in 0..kh {
            if dense {
                if let (Some(s0), Some(s1)) = (at(r, ky, 0), at(r, ky, kw - 1)) {
                    if s1 == s0 + kw - 1 {
                        let d = &mut dst[ky * kw * width..(ky + 1) * kw * width];
                        // SAFETY: rows s0..=s1 are rows of src (the caller's contract), one
                        // run of kw*width values in a dense view.
                        d.copy_from_slice(unsafe {
                            std::slice::from_raw_parts(src.at(sv, s0), kw * width)
                        });
                        continue;
                    }
                }
            }
            for kx in 0..kw {
                let d = &mut dst[(ky * kw + kx) * width..(ky * kw + kx + 1) * width];
                match at(r, ky, kx) {
                    // SAFETY: the caller's contract.
                    Some(s) => d.copy_from_slice(unsafe { src.row(sv, s) }),
                    None => d.fill(T::zero()),
                }
            }
        }
    }
}

/// im2col of output rows `[r0, r1)` (row = (b*oh + oy)*ow + ox): `col` is (r1-r0,
/// kh*kw*cin), column `(ky*kw + kx)*cin + ci`, zero where the window leaves the image.
///
/// # Safety
/// `x` holds the images of these rows (view `xv`), and no thread writes them meanwhile.
unsafe fn im2col<T: Real>(x: Ptr<T>, xv: View, g: &ConvGeom, r0: usize, r1: usize, col: &mut [T]) {
    let ohw = g.oh * g.ow;
    // SAFETY: the rows named are rows of image b (caller's contract).
    unsafe {
        gather_taps(x, xv, (g.kh, g.kw, g.cin), r0, r1, col, |o, ky, kx| {
            let (b, oy, ox) = (o / ohw, o % ohw / g.ow, o % g.ow);
            let iy = (oy * g.sh + ky) as isize - g.pt as isize;
            let ix = (ox * g.sw + kx) as isize - g.pl as isize;
            (iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w)
                .then(|| (b * g.h + iy as usize) * g.w + ix as usize)
        })
    }
}

/// `acc += v`, element by element (slices as arguments: the compiler knows they do not
/// alias, and vectorises the loop).
#[inline(always)]
fn add_row<T: Real>(acc: &mut [T], v: &[T]) {
    let v = &v[..acc.len()];
    for (a, v) in acc.iter_mut().zip(v) {
        *a += *v;
    }
}

/// col2im: add every im2col row of `dcol` (output rows `[r0, r1)`) back into the input
/// rows it was gathered from.
///
/// # Safety
/// `dx` holds the images of these rows (view `dxv`), and only this thread touches them.
#[inline(always)]
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
                        add_row(d, s);
                    }
                }
            }
        }
    }
}

/// Output rows per product of a 1x1 convolution, so the epilogue finds them in cache.
const POINTWISE_ROWS: usize = 512;

/// Apply `epi` to rows `[r0, r1)` of `y`.
///
/// # Safety
/// Those rows belong to the calling task.
unsafe fn finish_rows<T: Real>(y: Ptr<T>, yv: View, r0: usize, r1: usize, epi: Epilogue<'_, T>) {
    if epi.bias.is_none() && !epi.relu {
        return;
    }
    super::simd(
        #[inline(always)]
        || {
            for r in r0..r1 {
                // SAFETY: the caller's rows.
                let row = unsafe { y.row_mut(yv, r) };
                match (epi.bias, epi.relu) {
                    (Some(b), true) => row
                        .iter_mut()
                        .zip(b)
                        .for_each(|(v, b)| *v = (*v + *b).max(T::zero())),
                    (Some(b), false) => row.iter_mut().zip(b).for_each(|(v, b)| *v += *b),
                    (None, _) => row.iter_mut().for_each(|v| *v = v.max(T::zero())),
                }
            }
        },
    );
}

/// Forward: `y (n*oh*ow, cout) = epi(im2col(x) (n*oh*ow, kh*kw*cin) . w (kh*kw*cin, cout))`
/// ([`Epilogue`]: `+ bias`, then relu); 3x3 `same` stride-1 convolutions by Winograd
/// ([`super::winograd`]).
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv2d_forward<T: Real>(
    x: Ptr<T>,
    xv: View,
    w: &[T],
    epi: Epilogue<'_, T>,
    y: Ptr<T>,
    yv: View,
    g: &ConvGeom,
    n: usize,
    ws: &Workspaces<T>,
) {
    let np = parts(n);
    if super::winograd::applies(g) {
        ws.with(super::winograd::kernel_len(g), |u| {
            super::winograd::winograd_kernel(w, g.cin, g.cout, false, u, ws);
            let u: &[T] = u;
            (0..np).into_par_iter().for_each(|p| {
                let part = part_range(n, p, np);
                // SAFETY: this part's images of x (read) and y (written); different nodes.
                unsafe {
                    super::winograd::winograd_conv2d(
                        x,
                        xv,
                        u,
                        (g.cin, g.cout),
                        (g.h, g.w),
                        y,
                        yv,
                        part,
                        epi,
                        false,
                        ws,
                    )
                };
            });
        });
        return;
    }
    conv2d_forward_im2col(x, xv, w, epi, y, yv, g, n, ws);
}

/// [`conv2d_forward`] without Winograd: a 1x1 stride-1 convolution as one product per
/// chunk of rows, any other by im2col.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv2d_forward_im2col<T: Real>(
    x: Ptr<T>,
    xv: View,
    w: &[T],
    epi: Epilogue<'_, T>,
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
        let (lo, hi) = (lo * ohw, hi * ohw);
        if g.pointwise() {
            let mut r0 = lo;
            while r0 < hi {
                let r1 = (r0 + POINTWISE_ROWS).min(hi);
                // SAFETY: this part's rows of x and y; y does not overlap x (different
                // nodes); the epilogue's rows are this task's.
                unsafe {
                    gemm(
                        r1 - r0,
                        g.cout,
                        k,
                        y.at(yv, r0),
                        yv.ld,
                        false,
                        Mat {
                            ptr: x.at(xv, r0),
                            rs: xv.ld,
                            cs: 1,
                        },
                        wm,
                    );
                    finish_rows(y, yv, r0, r1, epi);
                }
                r0 = r1;
            }
            return;
        }
        let chunk = g.chunk();
        ws.with(chunk.min(hi - lo) * k, |col| {
            let mut r0 = lo;
            while r0 < hi {
                let r1 = (r0 + chunk).min(hi);
                let rows = r1 - r0;
                // SAFETY: the images of rows [r0, r1) exist and are only read.
                unsafe { im2col(x, xv, g, r0, r1, col) };
                // SAFETY: this task's rows of y; col is a private workspace.
                unsafe {
                    gemm(
                        rows,
                        g.cout,
                        k,
                        y.at(yv, r0),
                        yv.ld,
                        false,
                        Mat {
                            ptr: col.as_ptr(),
                            rs: k,
                            cs: 1,
                        },
                        wm,
                    );
                    finish_rows(y, yv, r0, r1, epi);
                }
                r0 = r1;
            }
        });
    });
}

/// Backward: `dw = im2col(x)^T . dy` (or, for the convolutions of [`gathers_dy`], from
/// `x` and the gathered `dy`), `db = sum of dy rows`, and (unless `dx` is `None`)
/// `dx [+]= col2im(dy . w^T)`. 3x3 `same` stride-1 convolutions run both by Winograd:
/// `dx` by F(2x2, 3x3) with the turned kernel, `dw` and `db` by F(3x3, 2x2)
/// ([`super::winograd::winograd_kernel_grad`]). `partials` holds
/// `parts(n) * (len(w) + cout)` values: one weight and bias gradient per image part,
/// summed afterwards in part order.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv2d_backward<T: Real>(
    x: Ptr<T>,
    xv: View,
    w: &[T],
    dy: Ptr<T>,
    dyv: View,
    dx: Option<Out<T>>,
    g: &ConvGeom,
    n: usize,
    partials: &mut [T],
    ws: &Workspaces<T>,
) {
    let dx = dx.map(Out::parts);
    // The input gradient of a 3x3 `same` convolution is the `same` convolution of dy with
    // the turned kernel: Winograd computes it, and the im2col loop below only the weights'.
    let wino = dx.is_some() && super::winograd::applies(g);
    ws.with(
        if wino {
            super::winograd::kernel_len(g)
        } else {
            0
        },
        |u| {
            if wino {
                super::winograd::winograd_kernel(w, g.cin, g.cout, true, u, ws);
            }
            let u: &[T] = u;
            conv2d_backward_parts(x, xv, w, dy, dyv, dx, g, n, partials, ws, wino.then_some(u));
        },
    );
}

/// [`conv2d_backward`]'s work per image part; `wino`: the turned kernel's Winograd
/// transform, when the input gradient is computed by Winograd.
#[allow(clippy::too_many_arguments)]
fn conv2d_backward_parts<T: Real>(
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
    wino: Option<&[T]>,
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
            // The kernel gradient by Winograd (the 3x3 `same` stride-1 convolutions of
            // `winograd::applies`, whose input gradient is Winograd's too) sums db as it
            // reads dy.
            let wino_grad = super::winograd::applies(g);
            if !wino_grad {
                db.fill(T::zero());
                super::simd(
                    #[inline(always)]
                    || {
                        for r in lo * ohw..hi * ohw {
                            // SAFETY: rows of dy are only read.
                            add_row(db, unsafe { dy.row(dyv, r) });
                        }
                    },
                );
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
            let dx = match (dx, wino) {
                (Some((dxp, dxv, acc)), Some(u)) => {
                    // SAFETY: this part's images of dy (read) and dx (written).
                    unsafe {
                        super::winograd::winograd_conv2d(
                            dy,
                            dyv,
                            u,
                            (g.cout, g.cin),
                            (g.h, g.w),
                            dxp,
                            dxv,
                            (lo, hi),
                            Epilogue {
                                bias: None,
                                relu: false,
                            },
                            acc,
                            ws,
                        )
                    };
                    None
                }
                (dx, _) => dx,
            };
            if wino_grad {
                debug_assert!(dx.is_none(), "the input gradient is Winograd's too");
                // SAFETY: this part's images of x and dy, only read; dw is its partial.
                unsafe {
                    super::winograd::winograd_kernel_grad(
                        x,
                        xv,
                        dy,
                        dyv,
                        (g.cin, g.cout),
                        (g.h, g.w),
                        (lo, hi),
                        dw,
                        db,
                        ws,
                    )
                };
                return;
            }
            if dx.is_none() && gathers_dy(g) {
                // SAFETY: this part's images of x and dy, only read; dw is its partial.
                unsafe { kernel_grad_gathering_dy(x, xv, dy, dyv, g, (lo, hi), dw, ws) };
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
                        super::simd(
                            #[inline(always)]
                            || {
                                // SAFETY: rows [r0, r1) fall in this part's images of dx.
                                unsafe { col2im_add(dcol, dxp, dxv, g, r0, r1) }
                            },
                        );
                    }
                    r0 = r1;
                }
            });
        });
}

/// Whether the kernel gradient is better taken by gathering `dy` ([`gather_dy`]:
/// kh*kw*cout values per row) than `x` (im2col: kh*kw*cin): stride 1, the output the
/// input's size, fewer output channels than input ones (and no input gradient left to
/// compute by col2im, which needs im2col's layout).
fn gathers_dy(g: &ConvGeom) -> bool {
    g.sh == 1 && g.sw == 1 && g.oh == g.h && g.ow == g.w && g.cout < g.cin && !g.pointwise()
}

/// The transpose of im2col for a stride-1 convolution whose output is its input's size:
/// for input rows `[r0, r1)` (row = (b*h + iy)*w + ix), `col` is (r1-r0, kh*kw*cout),
/// column `(ky*kw + kx)*cout + co` the gradient `dy` of the output that read this input
/// pixel through tap (ky, kx), zero where that output lies outside the image.
///
/// # Safety
/// `dy` holds the images of these rows (view `dyv`), and no thread writes them meanwhile.
unsafe fn gather_dy<T: Real>(
    dy: Ptr<T>,
    dyv: View,
    g: &ConvGeom,
    r0: usize,
    r1: usize,
    col: &mut [T],
) {
    let hw = g.h * g.w;
    // SAFETY: the rows named are rows of image b (caller's contract).
    unsafe {
        gather_taps(dy, dyv, (g.kh, g.kw, g.cout), r0, r1, col, |q, ky, kx| {
            let (b, iy, ix) = (q / hw, q % hw / g.w, q % g.w);
            let oy = (iy + g.pt) as isize - ky as isize;
            let ox = (ix + g.pl) as isize - kx as isize;
            (oy >= 0 && ox >= 0 && (oy as usize) < g.oh && (ox as usize) < g.ow)
                .then(|| (b * g.oh + oy as usize) * g.ow + ox as usize)
        })
    }
}

/// Kernel gradient of images `[lo, hi)` into `dw` (kh*kw*cin, cout), for the
/// convolutions of [`gathers_dy`]: `dw[t][ci][co] = Σ_q x[q][ci] * col[q][t][co]` over the
/// input rows `q`, `col` = [`gather_dy`], as products (cin, kh*kw*cout) over chunks of rows
/// (the wide side is now kh*kw*cout, so the products run on full-width micro-kernels),
/// then put into `dw`'s (kh*kw, cin, cout) order.
///
/// # Safety
/// The images `[lo, hi)` of `x` and `dy` are only read.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_grad_gathering_dy<T: Real>(
    x: Ptr<T>,
    xv: View,
    dy: Ptr<T>,
    dyv: View,
    g: &ConvGeom,
    (lo, hi): (usize, usize),
    dw: &mut [T],
    ws: &Workspaces<T>,
) {
    let taps = g.kh * g.kw;
    let kc = taps * g.cout;
    let hw = g.h * g.w;
    let (lo, hi) = (lo * hw, hi * hw);
    if lo == hi {
        dw.fill(T::zero());
        return;
    }
    // Rows per chunk: the chunk's gathered rows fill half of L2, as im2col's do.
    let chunk = (super::l2_bytes() / 2 / std::mem::size_of::<f32>() / kc).max(16);
    let cols = chunk.min(hi - lo) * kc;
    ws.with(cols + g.cin * kc, |buf| {
        let (col, t) = buf.split_at_mut(cols);
        let mut r0 = lo;
        while r0 < hi {
            let r1 = (r0 + chunk).min(hi);
            // SAFETY: the images of rows [r0, r1) of dy are only read.
            unsafe { gather_dy(dy, dyv, g, r0, r1, col) };
            // SAFETY: t and col are private; rows [r0, r1) of x are only read.
            unsafe {
                gemm(
                    g.cin,
                    kc,
                    r1 - r0,
                    t.as_mut_ptr(),
                    kc,
                    r0 != lo,
                    Mat {
                        ptr: x.at(xv, r0),
                        rs: 1,
                        cs: xv.ld,
                    },
                    Mat {
                        ptr: col.as_ptr(),
                        rs: kc,
                        cs: 1,
                    },
                )
            };
            r0 = r1;
        }
        // t is (cin, taps, cout); dw is (taps, cin, cout).
        for ci in 0..g.cin {
            for tp in 0..taps {
                dw[(tp * g.cin + ci) * g.cout..(tp * g.cin + ci + 1) * g.cout]
                    .copy_from_slice(&t[(ci * taps + tp) * g.cout..(ci * taps + tp + 1) * g.cout]);
            }
        }
    });
}

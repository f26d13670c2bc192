//! `dense`: `y (n, out) = x (n, in) . w (in, out) + b`, and its backward. Batches are small
//! here (n rows), so each product is one call.

use super::{gemm, Mat, Out, Ptr, Real};
use crate::backend::native::plan::View;

/// Forward.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn dense_forward<T: Real>(
    x: Ptr<T>,
    xv: View,
    w: &[T],
    bias: Option<&[T]>,
    y: Ptr<T>,
    yv: View,
    n: usize,
) {
    if let Some(b) = bias {
        for r in 0..n {
            // SAFETY: rows of y for this batch; single-threaded.
            unsafe { y.row_mut(yv, r) }.copy_from_slice(b);
        }
    }
    // SAFETY: x (n, in) and y (n, out) are distinct arena views; w is (in, out).
    unsafe {
        gemm(
            n,
            yv.c,
            xv.c,
            y.at(yv, 0),
            yv.ld,
            bias.is_some(),
            Mat {
                ptr: x.at(xv, 0),
                rs: xv.ld,
                cs: 1,
            },
            Mat {
                ptr: w.as_ptr(),
                rs: yv.c,
                cs: 1,
            },
        )
    }
}

/// Backward: `dw = x^T . dy`, `db = sum of dy rows`, `dx [+]= dy . w^T`.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
#[allow(clippy::too_many_arguments)]
pub unsafe fn dense_backward<T: Real>(
    x: Ptr<T>,
    xv: View,
    w: &[T],
    dy: Ptr<T>,
    dyv: View,
    dx: Option<Out<T>>,
    n: usize,
    dw: &mut [T],
    db: Option<&mut [T]>,
) {
    let dx = dx.map(Out::parts);
    let (fin, fout) = (xv.c, dyv.c);
    // SAFETY: dw is (in, out), owned here; x and dy rows are only read.
    unsafe {
        gemm(
            fin,
            fout,
            n,
            dw.as_mut_ptr(),
            fout,
            false,
            Mat {
                ptr: x.at(xv, 0),
                rs: 1,
                cs: xv.ld,
            },
            Mat {
                ptr: dy.at(dyv, 0),
                rs: dyv.ld,
                cs: 1,
            },
        )
    };
    if let Some(db) = db {
        db.fill(T::zero());
        for r in 0..n {
            // SAFETY: rows of dy are only read.
            for (a, v) in db.iter_mut().zip(unsafe { dy.row(dyv, r) }) {
                *a += *v;
            }
        }
    }
    if let Some((dxp, dxv, acc)) = dx {
        // SAFETY: dx is another node's gradient view of n rows.
        unsafe {
            gemm(
                n,
                fin,
                fout,
                dxp.at(dxv, 0),
                dxv.ld,
                acc,
                Mat {
                    ptr: dy.at(dyv, 0),
                    rs: dyv.ld,
                    cs: 1,
                },
                Mat {
                    ptr: w.as_ptr(),
                    rs: 1,
                    cs: fout,
                },
            )
        }
    }
}

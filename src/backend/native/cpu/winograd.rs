//! `conv2d` for 3x3, stride-1, `same`-padded convolutions by Winograd's F(2x2, 3x3): each
//! 2x2 block of outputs (a tile) comes from its 4x4 input patch with 16 multiplies per
//! (input, output) channel pair instead of 36, 2.25x fewer. Per chunk of tiles:
//!
//! - the input transform `V = Bᵀ d B` of every patch, laid out as 16 matrices
//!   `V[ξ]` (tiles, cin);
//! - 16 products `M[ξ] = V[ξ] . U[ξ]` with the transformed kernel `U = G g Gᵀ`,
//!   `U[ξ]` (cin, cout);
//! - the output transform `Y = Aᵀ M A` of each tile, the epilogue (bias, relu) or the
//!   accumulation applied as its 2x2 outputs are written.
//!
//! The backward pass's input gradient is the same convolution of `dy` with the kernel
//! turned by 180 degrees and its channels swapped (`same` padding of 1 on every side is
//! its own transpose), so it runs here too. Chunks are a fixed number of tiles and
//! products are single-threaded per image part, so results do not depend on the thread
//! count. In f32 the outputs differ from the direct product's by about 1e-6 relative
//! (measured in `tests/native.rs`).

use super::{gemm, r, Epilogue, Mat, Ptr, Real, Workspaces};
use crate::backend::native::plan::View;
use crate::backend::native::shared::ConvGeom;

/// Whether `g` is a convolution this module computes: 3x3, stride 1, one cell of padding
/// on every side (output size = input size), and channels enough for the products to pay
/// for the transforms.
pub fn applies(g: &ConvGeom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.sh == 1
        && g.sw == 1
        && g.pt == 1
        && g.pl == 1
        && g.oh == g.h
        && g.ow == g.w
        && g.cin >= 8
        && g.cout >= 8
        && super::winograd_enabled()
}

/// Values of the transformed kernel: 16 x cin x cout.
pub fn kernel_len(g: &ConvGeom) -> usize {
    16 * g.cin * g.cout
}

/// `U = G g Gᵀ` of kernel `w` (3, 3, cin, cout), into `u` as 16 matrices (cin, cout).
/// With `turned`, of the kernel the input gradient needs: `w'[ky][kx][co][ci] =
/// w[2-ky][2-kx][ci][co]`, so `u` is 16 matrices (cout, cin).
///
/// Shapes: `w` 9*cin*cout, `u` 16*cin*cout.
#[allow(clippy::needless_range_loop)] // the transform reads best with its indices
pub fn winograd_kernel<T: Real>(w: &[T], cin: usize, cout: usize, turned: bool, u: &mut [T]) {
    let half = r::<T>(0.5);
    let (rows, cols) = if turned { (cout, cin) } else { (cin, cout) };
    for a in 0..rows {
        for b in 0..cols {
            // g[ky][kx] of the (row a, column b) channel pair.
            let g = |ky: usize, kx: usize| {
                if turned {
                    w[((2 - ky) * 3 + (2 - kx)) * cin * cout + b * cout + a]
                } else {
                    w[(ky * 3 + kx) * cin * cout + a * cout + b]
                }
            };
            // t = G g (4 x 3).
            let mut t = [[T::zero(); 3]; 4];
            for kx in 0..3 {
                let (g0, g1, g2) = (g(0, kx), g(1, kx), g(2, kx));
                t[0][kx] = g0;
                t[1][kx] = (g0 + g1 + g2) * half;
                t[2][kx] = (g0 - g1 + g2) * half;
                t[3][kx] = g2;
            }
            // U = t Gᵀ (4 x 4).
            for (i, ti) in t.iter().enumerate() {
                let v = [
                    ti[0],
                    (ti[0] + ti[1] + ti[2]) * half,
                    (ti[0] - ti[1] + ti[2]) * half,
                    ti[2],
                ];
                for (j, v) in v.into_iter().enumerate() {
                    u[((i * 4 + j) * rows + a) * cols + b] = v;
                }
            }
        }
    }
}

/// Tiles per chunk: the chunk's 16 input and 16 product matrices fill about half of L2.
fn chunk_tiles(cin: usize, cout: usize) -> usize {
    let values = super::l2_bytes() / 2 / std::mem::size_of::<f32>();
    (values / (16 * (cin + cout))).clamp(32, 1024)
}

/// `y (rows of images [lo, hi), cout) = epi(conv3x3_same(x (rows, cin), u))`, or
/// `y += conv(...)` with `acc` (then `epi` must be empty). `u` is [`winograd_kernel`]'s
/// transform (16, cin, cout); `h`, `w` the image size (input and output).
///
/// # Safety
/// The rows of images `[lo, hi)` of `x` are only read, those of `y` belong to the caller,
/// and `x` and `y` do not overlap.
#[allow(clippy::too_many_arguments)]
pub unsafe fn winograd_conv2d<T: Real>(
    x: Ptr<T>,
    xv: View,
    u: &[T],
    (cin, cout): (usize, usize),
    (h, w): (usize, usize),
    y: Ptr<T>,
    yv: View,
    (lo, hi): (usize, usize),
    epi: Epilogue<'_, T>,
    acc: bool,
    ws: &Workspaces<T>,
) {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let per_image = th * tw;
    let tiles = (hi - lo) * per_image;
    if tiles == 0 {
        return;
    }
    let chunk = chunk_tiles(cin, cout).min(tiles);
    ws.with(16 * chunk * (cin + cout) + 17 * cin + 8 * cout, |buf| {
        let (v, rest) = buf.split_at_mut(16 * chunk * cin);
        let (m, rest) = rest.split_at_mut(16 * chunk * cout);
        let (q, rest) = rest.split_at_mut(16 * cin);
        let (rr, zero) = rest.split_at_mut(8 * cout);
        zero.fill(T::zero());
        let zero: &[T] = zero;
        let mut t0 = 0;
        while t0 < tiles {
            let t1 = (t0 + chunk).min(tiles);
            let nt = t1 - t0;
            // Input transform: V[ξ][t][ci].
            super::simd(
                #[inline(always)]
                || {
                    for t in t0..t1 {
                        let (b, ty, tx) = (lo + t / per_image, t % per_image / tw, t % tw);
                        let row = |dy: usize, dx: usize| -> &[T] {
                            let (iy, ix) = ((2 * ty + dy) as isize - 1, (2 * tx + dx) as isize - 1);
                            if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                zero
                            } else {
                                // SAFETY: a row of image b, only read (caller's contract).
                                unsafe { x.row(xv, (b * h + iy as usize) * w + ix as usize) }
                            }
                        };
                        let d: [[&[T]; 4]; 4] =
                            std::array::from_fn(|i| std::array::from_fn(|j| &row(i, j)[..cin]));
                        let tt = t - t0;
                        let mut parts = v.chunks_exact_mut(chunk * cin);
                        let mut dst: [&mut [T]; 16] = std::array::from_fn(|_| {
                            let s = parts.next().expect("16 matrices");
                            &mut s[tt * cin..(tt + 1) * cin]
                        });
                        input_transform(&d, &mut dst, q);
                    }
                },
            );
            // The 16 products.
            for xi in 0..16 {
                // SAFETY: m, v and u are private or read-only buffers of these sizes.
                unsafe {
                    gemm(
                        nt,
                        cout,
                        cin,
                        m.as_mut_ptr().add(xi * chunk * cout),
                        cout,
                        false,
                        Mat {
                            ptr: v.as_ptr().add(xi * chunk * cin),
                            rs: cin,
                            cs: 1,
                        },
                        Mat {
                            ptr: u.as_ptr().add(xi * cin * cout),
                            rs: cout,
                            cs: 1,
                        },
                    )
                };
            }
            // Output transform and write.
            super::simd(
                #[inline(always)]
                || {
                    for t in t0..t1 {
                        let (b, ty, tx) = (lo + t / per_image, t % per_image / tw, t % tw);
                        let tt = t - t0;
                        let mm: [&[T]; 16] = std::array::from_fn(|xi| {
                            &m[(xi * chunk + tt) * cout..(xi * chunk + tt + 1) * cout]
                        });
                        output_rows(&mm, rr, cout);
                        for (a, bx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                            let (oy, ox) = (2 * ty + a, 2 * tx + bx);
                            if oy >= h || ox >= w {
                                continue;
                            }
                            // SAFETY: a row of image b of y, the caller's.
                            let out = unsafe { y.row_mut(yv, (b * h + oy) * w + ox) };
                            output_pixel(rr, cout, a, bx, &mut out[..cout], epi, acc);
                        }
                    }
                },
            );
            t0 = t1;
        }
    });
}

/// `out = a - b`, element by element.
#[inline(always)]
fn sub<T: Real>(a: &[T], b: &[T], out: &mut [T]) {
    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
        *o = *a - *b;
    }
}

/// `out = a + b`, element by element.
#[inline(always)]
fn add<T: Real>(a: &[T], b: &[T], out: &mut [T]) {
    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
        *o = *a + *b;
    }
}

/// `V = Bᵀ d B` of one tile's 4x4 patch `d` (each a row of `cin` values) into the tile's
/// rows of the 16 matrices `v`; `q` (16 * cin) holds `Bᵀ d`. Every step is one
/// element-wise pass over `cin` values, so each vectorises.
#[inline(always)]
fn input_transform<T: Real>(d: &[[&[T]; 4]; 4], v: &mut [&mut [T]; 16], q: &mut [T]) {
    let cin = d[0][0].len();
    // Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]] over the rows.
    let mut qs = q.chunks_exact_mut(cin);
    let qrow: [&mut [T]; 16] = std::array::from_fn(|_| qs.next().expect("16 rows"));
    for j in 0..4 {
        sub(d[0][j], d[2][j], qrow[j]);
        add(d[1][j], d[2][j], qrow[4 + j]);
        sub(d[2][j], d[1][j], qrow[8 + j]);
        sub(d[1][j], d[3][j], qrow[12 + j]);
    }
    // ... then B over the columns.
    for i in 0..4 {
        let (q0, q1, q2, q3) = (
            &*qrow[4 * i],
            &*qrow[4 * i + 1],
            &*qrow[4 * i + 2],
            &*qrow[4 * i + 3],
        );
        sub(q0, q2, v[4 * i]);
        add(q1, q2, v[4 * i + 1]);
        sub(q2, q1, v[4 * i + 2]);
        sub(q1, q3, v[4 * i + 3]);
    }
}

/// `Aᵀ M` of one tile's 16 product rows `m` into `r` (8 rows of `cout`): row `j` is
/// `m0j + m1j + m2j`, row `4 + j` is `m1j - m2j - m3j`.
#[inline(always)]
fn output_rows<T: Real>(m: &[&[T]; 16], r: &mut [T], cout: usize) {
    let (top, bottom) = r.split_at_mut(4 * cout);
    for j in 0..4 {
        let (m0, m1, m2, m3) = (m[j], m[4 + j], m[8 + j], m[12 + j]);
        let t = &mut top[j * cout..(j + 1) * cout];
        for (((o, a), b), c) in t.iter_mut().zip(m0).zip(m1).zip(m2) {
            *o = *a + *b + *c;
        }
        let u = &mut bottom[j * cout..(j + 1) * cout];
        for (((o, a), b), c) in u.iter_mut().zip(m1).zip(m2).zip(m3) {
            *o = *a - *b - *c;
        }
    }
}

/// Output `(a, bx)` of a tile's 2x2 block, `(Aᵀ M A)[a][bx]`, from [`output_rows`]'s `r`,
/// into `out`: set through `epi`, or added with `acc`.
#[inline(always)]
fn output_pixel<T: Real>(
    r: &[T],
    cout: usize,
    a: usize,
    bx: usize,
    out: &mut [T],
    epi: Epilogue<'_, T>,
    acc: bool,
) {
    let row = |j: usize| &r[(4 * a + j) * cout..(4 * a + j + 1) * cout];
    // A over the columns: (r0 + r1 + r2) or (r1 - r2 - r3).
    let (p, q, s, sign) = if bx == 0 {
        (row(0), row(1), row(2), T::one())
    } else {
        (row(1), row(2), row(3), -T::one())
    };
    let it = out.iter_mut().zip(p).zip(q).zip(s);
    if acc {
        for (((o, p), q), s) in it {
            *o += *p + sign * (*q + *s);
        }
        return;
    }
    match epi.bias {
        Some(bias) => {
            if epi.relu {
                for ((((o, p), q), s), b) in it.zip(bias) {
                    *o = (*p + sign * (*q + *s) + *b).max(T::zero());
                }
            } else {
                for ((((o, p), q), s), b) in it.zip(bias) {
                    *o = *p + sign * (*q + *s) + *b;
                }
            }
        }
        None => {
            if epi.relu {
                for (((o, p), q), s) in it {
                    *o = (*p + sign * (*q + *s)).max(T::zero());
                }
            } else {
                for (((o, p), q), s) in it {
                    *o = *p + sign * (*q + *s);
                }
            }
        }
    }
}

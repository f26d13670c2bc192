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
//! The transforms run a tile at a time, one vector register of channels at a time (16 with
//! AVX-512, else 8), the whole patch in registers.
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
    // Channels per register block of the transforms.
    let lanes = if super::simd_level() == super::SimdLevel::Avx512 {
        16
    } else {
        8
    };
    // The 16 matrices lie one cache line more apart than their size: a tile's 16 rows are
    // written (and its 16 products read) together, and at strides of a multiple of 4 KiB
    // they would all fall in the same L1 set.
    let (vs, ms) = (chunk * cin + 16, chunk * cout + 16);
    ws.with(16 * (vs + ms) + cin + cout, |buf| {
        let (v, rest) = buf.split_at_mut(16 * vs);
        let (m, rest) = rest.split_at_mut(16 * ms);
        let (zero, sink) = rest.split_at_mut(cin);
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
                        // The patch's 16 rows (the zero row outside the image), and the
                        // tile's row in each of the 16 matrices.
                        let tt = t - t0;
                        let mut src = [zero.as_ptr(); 16];
                        let mut dst = [std::ptr::null_mut(); 16];
                        for k in 0..16 {
                            let (iy, ix) =
                                ((2 * ty + k / 4) as isize - 1, (2 * tx + k % 4) as isize - 1);
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                src[k] = x.at(xv, (b * h + iy as usize) * w + ix as usize);
                            }
                            dst[k] = v[k * vs + tt * cin..].as_mut_ptr();
                        }
                        // SAFETY: every pointer has cin values: rows of image b of x (only
                        // read, caller's contract), the zero row, or this tile's row of a
                        // private matrix.
                        unsafe {
                            transform_channels(
                                cin,
                                lanes,
                                #[inline(always)]
                                |c, l| input_tile(&src, &dst, c, l),
                            )
                        };
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
                        m.as_mut_ptr().add(xi * ms),
                        cout,
                        false,
                        Mat {
                            ptr: v.as_ptr().add(xi * vs),
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
                        let mut src = [std::ptr::null(); 16];
                        for (k, p) in src.iter_mut().enumerate() {
                            *p = m[k * ms + tt * cout..].as_ptr();
                        }
                        // The tile's four output pixels; `sink` (scratch) for those outside
                        // the image.
                        let mut dst = [sink.as_mut_ptr(); 4];
                        for (k, p) in dst.iter_mut().enumerate() {
                            let (oy, ox) = (2 * ty + k / 2, 2 * tx + k % 2);
                            if oy < h && ox < w {
                                *p = y.at(yv, (b * h + oy) * w + ox);
                            }
                        }
                        // SAFETY: every pointer has cout values: this tile's rows of the
                        // private products, rows of image b of y (the caller's, distinct
                        // pixels) or the private sink.
                        unsafe {
                            transform_channels(
                                cout,
                                lanes,
                                #[inline(always)]
                                |c, l| output_tile(&src, &dst, c, l, epi, acc),
                            )
                        };
                    }
                },
            );
            t0 = t1;
        }
    });
}

/// Run `f(c, l)` over the channel blocks `[c, c + l)` of `n` channels: blocks of `lanes`
/// (one vector register: 16 with AVX-512, else 8), then single channels.
#[inline(always)]
fn transform_channels(n: usize, lanes: usize, mut f: impl FnMut(usize, usize)) {
    let mut c = 0;
    while c + lanes <= n {
        f(c, lanes);
        c += lanes;
    }
    while c < n {
        f(c, 1);
        c += 1;
    }
}

/// `L` values at `p`.
///
/// # Safety
/// `p` points at `L` readable values.
#[inline(always)]
unsafe fn vld<T: Real, const L: usize>(p: *const T) -> [T; L] {
    // SAFETY: the caller's contract; [T; L] has T's alignment, read unaligned anyway.
    unsafe { p.cast::<[T; L]>().read_unaligned() }
}

/// Store `L` values at `p`.
///
/// # Safety
/// `p` points at `L` writable values no one else uses meanwhile.
#[inline(always)]
unsafe fn vst<T: Real, const L: usize>(p: *mut T, v: [T; L]) {
    // SAFETY: the caller's contract.
    unsafe { p.cast::<[T; L]>().write_unaligned(v) }
}

/// `a + b`, lane by lane.
#[inline(always)]
fn vadd<T: Real, const L: usize>(a: [T; L], b: [T; L]) -> [T; L] {
    let mut o = a;
    for l in 0..L {
        o[l] = a[l] + b[l];
    }
    o
}

/// `a - b`, lane by lane.
#[inline(always)]
fn vsub<T: Real, const L: usize>(a: [T; L], b: [T; L]) -> [T; L] {
    let mut o = a;
    for l in 0..L {
        o[l] = a[l] - b[l];
    }
    o
}

/// [`input_tile_l`] for `lanes` channels at `c` (16, 8 or 1).
///
/// # Safety
/// As [`input_tile_l`].
#[inline(always)]
unsafe fn input_tile<T: Real>(src: &[*const T; 16], dst: &[*mut T; 16], c: usize, lanes: usize) {
    // SAFETY: forwarded.
    unsafe {
        match lanes {
            16 => input_tile_l::<T, 16>(src, dst, c),
            8 => input_tile_l::<T, 8>(src, dst, c),
            _ => input_tile_l::<T, 1>(src, dst, c),
        }
    }
}

/// `V = Bᵀ d B` of channels `[c, c + L)` of one tile: `src` the 4x4 patch's rows
/// (row-major), `dst` the tile's rows of the 16 matrices, with
/// Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]. The whole patch stays
/// in registers: 16 loads, 32 additions, 16 stores per block.
///
/// # Safety
/// Every pointer has `c + L` values; `dst`'s are written by this task only.
#[inline(always)]
unsafe fn input_tile_l<T: Real, const L: usize>(
    src: &[*const T; 16],
    dst: &[*mut T; 16],
    c: usize,
) {
    // SAFETY (all loads and stores): the caller's contract. (Macros, not closures: a
    // closure is not always inlined, and outside the `simd` function it would lose the
    // wide vectors.)
    macro_rules! d {
        ($i:expr, $j:expr) => {
            unsafe { vld::<T, L>(src[$i * 4 + $j].add(c)) }
        };
    }
    // Bᵀ over the rows, column by column: (q0j, q1j, q2j, q3j).
    macro_rules! col {
        ($j:expr) => {{
            let (d0, d1, d2, d3) = (d!(0, $j), d!(1, $j), d!(2, $j), d!(3, $j));
            (vsub(d0, d2), vadd(d1, d2), vsub(d2, d1), vsub(d1, d3))
        }};
    }
    let (q00, q10, q20, q30) = col!(0);
    let (q01, q11, q21, q31) = col!(1);
    let (q02, q12, q22, q32) = col!(2);
    let (q03, q13, q23, q33) = col!(3);
    // ... then B over the columns, row by row.
    macro_rules! row {
        ($i:expr, $a:expr, $b:expr, $cc:expr, $dd:expr) => {
            unsafe {
                vst(dst[4 * $i].add(c), vsub($a, $cc));
                vst(dst[4 * $i + 1].add(c), vadd($b, $cc));
                vst(dst[4 * $i + 2].add(c), vsub($cc, $b));
                vst(dst[4 * $i + 3].add(c), vsub($b, $dd));
            }
        };
    }
    row!(0, q00, q01, q02, q03);
    row!(1, q10, q11, q12, q13);
    row!(2, q20, q21, q22, q23);
    row!(3, q30, q31, q32, q33);
}

/// [`output_tile_l`] for `lanes` channels at `c` (16, 8 or 1).
///
/// # Safety
/// As [`output_tile_l`].
#[inline(always)]
unsafe fn output_tile<T: Real>(
    src: &[*const T; 16],
    dst: &[*mut T; 4],
    c: usize,
    lanes: usize,
    epi: Epilogue<'_, T>,
    acc: bool,
) {
    // SAFETY: forwarded.
    unsafe {
        match lanes {
            16 => output_tile_l::<T, 16>(src, dst, c, epi, acc),
            8 => output_tile_l::<T, 8>(src, dst, c, epi, acc),
            _ => output_tile_l::<T, 1>(src, dst, c, epi, acc),
        }
    }
}

/// `Y = Aᵀ M A` of channels `[c, c + L)` of one tile: `src` its 16 product rows
/// (row-major 4x4), `dst` its 2x2 output pixels (row-major), with
/// Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]; set through `epi`, or added to with `acc`.
///
/// # Safety
/// Every pointer has `c + L` values (and the epilogue's bias, if any); `dst`'s are
/// distinct and written by this task only.
#[inline(always)]
unsafe fn output_tile_l<T: Real, const L: usize>(
    src: &[*const T; 16],
    dst: &[*mut T; 4],
    c: usize,
    epi: Epilogue<'_, T>,
    acc: bool,
) {
    // SAFETY (all loads and stores): the caller's contract. (Macros, as in
    // `input_tile_l`.)
    macro_rules! m {
        ($i:expr, $j:expr) => {
            unsafe { vld::<T, L>(src[$i * 4 + $j].add(c)) }
        };
    }
    // Aᵀ M: top row j = m0j + m1j + m2j, bottom row j = m1j - m2j - m3j.
    macro_rules! col {
        ($j:expr) => {{
            let (m0, m1, m2, m3) = (m!(0, $j), m!(1, $j), m!(2, $j), m!(3, $j));
            (vadd(vadd(m0, m1), m2), vsub(vsub(m1, m2), m3))
        }};
    }
    let (t0, b0) = col!(0);
    let (t1, b1) = col!(1);
    let (t2, b2) = col!(2);
    let (t3, b3) = col!(3);
    // ... then A over the columns: r0 + (r1 + r2), r1 - (r2 + r3).
    let ys = [
        vadd(t0, vadd(t1, t2)),
        vsub(t1, vadd(t2, t3)),
        vadd(b0, vadd(b1, b2)),
        vsub(b1, vadd(b2, b3)),
    ];
    let bias = epi.bias.map(|b| {
        let b = &b[c..c + L];
        // SAFETY: b has L values.
        unsafe { vld::<T, L>(b.as_ptr()) }
    });
    for (k, mut y) in ys.into_iter().enumerate() {
        // SAFETY: dst[k] has c + L values (caller's contract).
        let p = unsafe { dst[k].add(c) };
        if acc {
            // SAFETY: as above.
            unsafe { vst(p, vadd(vld::<T, L>(p), y)) };
            continue;
        }
        if let Some(b) = bias {
            y = vadd(y, b);
        }
        if epi.relu {
            for v in y.iter_mut() {
                *v = v.max(T::zero());
            }
        }
        // SAFETY: as above.
        unsafe { vst(p, y) };
    }
}

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
//! its own transpose), so it runs here too. So does its kernel gradient, by F(3x3, 2x2):
//! the 3x3 correlation of each 4x4 input patch with its tile's 2x2 output gradient, 16
//! multiplies per channel pair and tile instead of 36 ([`winograd_kernel_grad`]; the
//! same input transform, and its 16 products summed over the tiles before one output
//! transform per channel pair). Chunks are a fixed number of tiles and
//! products are single-threaded per image part, so results do not depend on the thread
//! count. In f32 the outputs and the kernel gradient differ from the exact sums by a few
//! 1e-7 relative, as the direct products' do (measured in `tests/native.rs`).

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
/// w[2-ky][2-kx][ci][co]`, so `u` is 16 matrices (cout, cin). Rows of `u` in parallel,
/// each row's values as vector loops (the same operations in the same order per value
/// whatever the thread count).
///
/// Shapes: `w` 9*cin*cout, `u` 16*cin*cout.
pub fn winograd_kernel<T: Real>(
    w: &[T],
    cin: usize,
    cout: usize,
    turned: bool,
    u: &mut [T],
    ws: &Workspaces<T>,
) {
    use rayon::prelude::*;
    let (rows, cols) = if turned { (cout, cin) } else { (cin, cout) };
    let (w, u) = (&w[..9 * cin * cout], &mut u[..16 * cin * cout]);
    // u as 16*rows rows of `cols` values.
    let (up, uv) = (
        Ptr(u.as_mut_ptr()),
        View {
            off: 0,
            ld: cols,
            c: cols,
            hw: 1,
        },
    );
    // Rows per task.
    const ROWS: usize = 8;
    (0..rows.div_ceil(ROWS)).into_par_iter().for_each(|task| {
        ws.with(21 * cols, |buf| {
            let (g, t) = buf.split_at_mut(9 * cols);
            for a in task * ROWS..((task + 1) * ROWS).min(rows) {
                // g[ky][kx] of row a: 9 rows of `cols` values.
                for tap in 0..9 {
                    let gr = &mut g[tap * cols..(tap + 1) * cols];
                    if turned {
                        let src = &w[(8 - tap) * cin * cout..];
                        for (b, v) in gr.iter_mut().enumerate() {
                            *v = src[b * cout + a];
                        }
                    } else {
                        gr.copy_from_slice(&w[tap * cin * cout + a * cout..][..cols]);
                    }
                }
                let out: [&mut [T]; 16] = std::array::from_fn(|xi| {
                    // SAFETY: row a of matrix xi of u: rows of different (xi, a) do not
                    // overlap, and each a belongs to one task.
                    unsafe { up.row_mut(uv, xi * rows + a) }
                });
                super::simd(
                    #[inline(always)]
                    || kernel_transform_rows(g, t, out, cols),
                );
            }
        })
    });
}

/// The 16 rows `U[ξ][a]` of one row `a` from its 9 kernel rows `g` (tap-major, `cols`
/// values each): `t = G g` over the taps' rows (into `t`, 12 rows), then `U = t Gᵀ`, with
/// `G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]`.
#[inline(always)]
fn kernel_transform_rows<T: Real>(g: &[T], t: &mut [T], out: [&mut [T]; 16], cols: usize) {
    let half = r::<T>(0.5);
    for i in 0..4 {
        for kx in 0..3 {
            let (g0, g1, g2) = (
                &g[kx * cols..][..cols],
                &g[(3 + kx) * cols..][..cols],
                &g[(6 + kx) * cols..][..cols],
            );
            g_combination(&mut t[(i * 3 + kx) * cols..][..cols], g0, g1, g2, i, half);
        }
    }
    for (xi, o) in out.into_iter().enumerate() {
        let (i, j) = (xi / 4, xi % 4);
        let ti = &t[i * 3 * cols..(i + 1) * 3 * cols];
        let (t0, t1, t2) = (&ti[..cols], &ti[cols..2 * cols], &ti[2 * cols..]);
        g_combination(o, t0, t1, t2, j, half);
    }
}

/// Row `k` of `G` applied to three rows: `a`, `(a + b + c) / 2`, `(a - b + c) / 2` or `c`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexed over equal lengths: vectorises
fn g_combination<T: Real>(out: &mut [T], a: &[T], b: &[T], c: &[T], k: usize, half: T) {
    let n = out.len();
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    match k {
        0 => out.copy_from_slice(a),
        1 => {
            for q in 0..n {
                out[q] = (a[q] + b[q] + c[q]) * half;
            }
        }
        2 => {
            for q in 0..n {
                out[q] = (a[q] - b[q] + c[q]) * half;
            }
        }
        _ => out.copy_from_slice(c),
    }
}

/// 2x2 tiles of an h x w image: per tile row, and per image (row-major, the last row and
/// column overhanging an odd size).
fn tile_grid(h: usize, w: usize) -> (usize, usize) {
    let tw = w.div_ceil(2);
    (tw, h.div_ceil(2) * tw)
}

/// Channels per register block of the transforms: one vector register of f32.
fn lanes() -> usize {
    if super::simd_level() == super::SimdLevel::Avx512 {
        16
    } else {
        8
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
    let (tw, per_image) = tile_grid(h, w);
    let tiles = (hi - lo) * per_image;
    if tiles == 0 {
        return;
    }
    let chunk = chunk_tiles(cin, cout).min(tiles);
    let lanes = lanes();
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
            // SAFETY: the caller's contract (images [lo, hi) of x are only read); v is
            // private, 16 matrices `vs` apart of at least `nt` rows of cin.
            unsafe { input_transform(x, xv, cin, (h, w), lo, (t0, t1), zero, v, vs, lanes) };
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

/// The input transform `V = Bᵀ d B` of tiles `[t0, t1)` (tile `t` of images from `lo`
/// on: image `lo + t / per_image`, row-major tiles of 2x2 outputs) into `v`: 16 matrices
/// `vs` values apart, tile `t`'s row `t - t0` of `cin` values in each. The patch's rows
/// outside the image read `zero` (`cin` zeros).
///
/// # Safety
/// The rows of the named images of `x` exist (view `xv`) and are only read; `v` holds
/// `16 * vs` values, `vs >= (t1 - t0) * cin`.
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform<T: Real>(
    x: Ptr<T>,
    xv: View,
    cin: usize,
    (h, w): (usize, usize),
    lo: usize,
    (t0, t1): (usize, usize),
    zero: &[T],
    v: &mut [T],
    vs: usize,
    lanes: usize,
) {
    let (tw, per_image) = tile_grid(h, w);
    super::simd(
        #[inline(always)]
        || {
            for t in t0..t1 {
                let (b, ty, tx) = (lo + t / per_image, t % per_image / tw, t % tw);
                // The patch's 16 rows (the zero row outside the image), and the tile's row
                // in each of the 16 matrices.
                let tt = t - t0;
                let mut src = [zero.as_ptr(); 16];
                let mut dst = [std::ptr::null_mut(); 16];
                for k in 0..16 {
                    let (iy, ix) = ((2 * ty + k / 4) as isize - 1, (2 * tx + k % 4) as isize - 1);
                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                        src[k] = x.at(xv, (b * h + iy as usize) * w + ix as usize);
                    }
                    dst[k] = v[k * vs + tt * cin..].as_mut_ptr();
                }
                // SAFETY: every pointer has cin values: rows of image b of x (only read,
                // the caller's contract), the zero row, or this tile's row of a private
                // matrix.
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

/// `a * b`, lane by lane.
#[inline(always)]
fn vmul<T: Real, const L: usize>(a: [T; L], b: [T; L]) -> [T; L] {
    let mut o = a;
    for l in 0..L {
        o[l] = a[l] * b[l];
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

/// Kernel gradient of a 3x3 `same` stride-1 convolution by Winograd's F(3x3, 2x2), over
/// images `[lo, hi)`: `dw[ky][kx][ci][co] = Σ x[oy+ky-1][ox+kx-1][ci] * dy[oy][ox][co]`,
/// summed over output pixels. Per 2x2 tile of `dy` and its 4x4 patch of `x`, that sum is
/// the 3x3 correlation of the patch with the tile, `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, so
/// over all tiles:
///
/// - the patches' transform `V = Bᵀ d B` ([`input_transform`], the forward's),
///   16 matrices (tiles, cin) per chunk of tiles;
/// - the `dy` tiles' transform `U = G g Gᵀ` ([`dy_tile_l`]), 16 matrices (tiles, cout);
/// - 16 products summed over the chunks, `M[ξ] (cin, cout) += V[ξ]ᵀ . U[ξ]`: 16
///   multiplies per tile and channel pair instead of 36;
/// - once at the end, `dw = Aᵀ M A` for every channel pair ([`kernel_grad_tile_l`]).
///
/// The bias gradient `db`, the sum of `dy` over the pixels, is taken as the tiles are read.
///
/// With the forward's `Bᵀ` (points 0, 1, -1, ∞), `G = [[1, 0], [1, 1], [1, -1], [0, 1]]`
/// and `Aᵀ = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, -1]]`: the halves and
/// the sign are in `Aᵀ`, applied once to the summed `M`, so the per-tile transforms are
/// additions only.
///
/// Shapes: `x` and `dy` rows of images `[lo, hi)` (h*w rows each, cin and cout values),
/// `dw` 9*cin*cout, `(3, 3, cin, cout)`; `db` cout.
///
/// # Safety
/// The rows of images `[lo, hi)` of `x` and `dy` are only read.
#[allow(clippy::too_many_arguments)]
pub unsafe fn winograd_kernel_grad<T: Real>(
    x: Ptr<T>,
    xv: View,
    dy: Ptr<T>,
    dyv: View,
    (cin, cout): (usize, usize),
    (h, w): (usize, usize),
    (lo, hi): (usize, usize),
    dw: &mut [T],
    db: &mut [T],
    ws: &Workspaces<T>,
) {
    let (tw, per_image) = tile_grid(h, w);
    let tiles = (hi - lo) * per_image;
    let (dw, db) = (&mut dw[..9 * cin * cout], &mut db[..cout]);
    db.fill(T::zero());
    if tiles == 0 {
        dw.fill(T::zero());
        return;
    }
    let chunk = chunk_tiles(cin, cout).min(tiles);
    let lanes = lanes();
    // As in `winograd_conv2d`, the 16 matrices of a kind a cache line more than their
    // size apart.
    let (vs, us) = (chunk * cin + 16, chunk * cout + 16);
    let mlen = 16 * cin * cout;
    let zlen = cin.max(cout);
    ws.with(16 * (vs + us) + mlen + zlen, |buf| {
        let (v, rest) = buf.split_at_mut(16 * vs);
        let (u, rest) = rest.split_at_mut(16 * us);
        let (m, zero) = rest.split_at_mut(mlen);
        zero.fill(T::zero());
        let zero: &[T] = zero;
        let mut t0 = 0;
        while t0 < tiles {
            let t1 = (t0 + chunk).min(tiles);
            let nt = t1 - t0;
            // SAFETY: images [lo, hi) of x are only read (the caller's contract); v is
            // private, 16 matrices vs apart of nt rows of cin.
            unsafe { input_transform(x, xv, cin, (h, w), lo, (t0, t1), zero, v, vs, lanes) };
            // The dy tiles' transform: U[ξ][t][co].
            super::simd(
                #[inline(always)]
                || {
                    for t in t0..t1 {
                        let (b, ty, tx) = (lo + t / per_image, t % per_image / tw, t % tw);
                        let tt = t - t0;
                        // The tile's 2x2 rows of dy (the zero row outside the image).
                        let mut src = [zero.as_ptr(); 4];
                        for (k, p) in src.iter_mut().enumerate() {
                            let (oy, ox) = (2 * ty + k / 2, 2 * tx + k % 2);
                            if oy < h && ox < w {
                                *p = dy.at(dyv, (b * h + oy) * w + ox);
                            }
                        }
                        let mut dst = [std::ptr::null_mut(); 16];
                        for (k, p) in dst.iter_mut().enumerate() {
                            *p = u[k * us + tt * cout..].as_mut_ptr();
                        }
                        // SAFETY: every pointer has cout values: rows of image b of dy
                        // (only read), the zero row, or this tile's row of a private
                        // matrix.
                        unsafe {
                            transform_channels(
                                cout,
                                lanes,
                                #[inline(always)]
                                |c, l| match l {
                                    16 => dy_tile_l::<T, 16>(&src, &dst, db, c),
                                    8 => dy_tile_l::<T, 8>(&src, &dst, db, c),
                                    _ => dy_tile_l::<T, 1>(&src, &dst, db, c),
                                },
                            )
                        };
                    }
                },
            );
            // The 16 products, summed over the chunks.
            for xi in 0..16 {
                // SAFETY: m, v and u are private buffers of these sizes.
                unsafe {
                    gemm(
                        cin,
                        cout,
                        nt,
                        m.as_mut_ptr().add(xi * cin * cout),
                        cout,
                        t0 != 0,
                        Mat {
                            ptr: v.as_ptr().add(xi * vs),
                            rs: 1,
                            cs: cin,
                        },
                        Mat {
                            ptr: u.as_ptr().add(xi * us),
                            rs: cout,
                            cs: 1,
                        },
                    )
                };
            }
            t0 = t1;
        }
        // dw = Aᵀ M A, channel pair by channel pair.
        let m: &[T] = m;
        super::simd(
            #[inline(always)]
            || {
                for ci in 0..cin {
                    let mut src = [std::ptr::null(); 16];
                    for (k, p) in src.iter_mut().enumerate() {
                        *p = m[(k * cin + ci) * cout..].as_ptr();
                    }
                    let mut dst = [std::ptr::null_mut(); 9];
                    for (k, p) in dst.iter_mut().enumerate() {
                        *p = dw[(k * cin + ci) * cout..].as_mut_ptr();
                    }
                    // SAFETY: every pointer has cout values: row ci of the 16 private
                    // products, and of the 9 taps of dw.
                    unsafe {
                        transform_channels(
                            cout,
                            lanes,
                            #[inline(always)]
                            |c, l| match l {
                                16 => kernel_grad_tile_l::<T, 16>(&src, &dst, c),
                                8 => kernel_grad_tile_l::<T, 8>(&src, &dst, c),
                                _ => kernel_grad_tile_l::<T, 1>(&src, &dst, c),
                            },
                        )
                    };
                }
            },
        );
    });
}

/// `U = G g Gᵀ` of channels `[c, c + L)` of one 2x2 tile `g` of `dy` (`src`, row-major),
/// with `G = [[1, 0], [1, 1], [1, -1], [0, 1]]`, into the tile's rows of the 16 matrices
/// (`dst`, row-major 4x4): 4 loads, 12 additions, 16 stores per block. The bias gradient
/// `db` gets the tile's sum, `g00 + g01 + g10 + g11` (which `U[1][1]` is).
///
/// # Safety
/// Every pointer has `c + L` values; `dst`'s are written by this task only.
#[inline(always)]
unsafe fn dy_tile_l<T: Real, const L: usize>(
    src: &[*const T; 4],
    dst: &[*mut T; 16],
    db: &mut [T],
    c: usize,
) {
    // SAFETY (all loads and stores): the caller's contract. (Macros, as in
    // `input_tile_l`.)
    macro_rules! g {
        ($k:expr) => {
            unsafe { vld::<T, L>(src[$k].add(c)) }
        };
    }
    let (g00, g01, g10, g11) = (g!(0), g!(1), g!(2), g!(3));
    // G over the rows, (g0j, g0j + g1j, g0j - g1j, g1j) for columns j = 0, 1, then over
    // the columns, row by row.
    macro_rules! row {
        ($i:expr, $a:expr, $b:expr) => {{
            let (a, b) = ($a, $b);
            unsafe {
                vst(dst[4 * $i].add(c), a);
                vst(dst[4 * $i + 1].add(c), vadd(a, b));
                vst(dst[4 * $i + 2].add(c), vsub(a, b));
                vst(dst[4 * $i + 3].add(c), b);
            }
        }};
    }
    row!(0, g00, g01);
    let (s0, s1) = (vadd(g00, g10), vadd(g01, g11));
    row!(1, s0, s1);
    let db = &mut db[c..c + L];
    // SAFETY: db has L values from c.
    unsafe {
        vst(
            db.as_mut_ptr(),
            vadd(vld::<T, L>(db.as_ptr()), vadd(s0, s1)),
        )
    };
    row!(2, vsub(g00, g10), vsub(g01, g11));
    row!(3, g10, g11);
}

/// `dw = Aᵀ M A` of channels `[c, c + L)` of one input channel: `src` its 16 summed
/// products (row-major 4x4), `dst` its 9 taps (row-major 3x3), with
/// `Aᵀ = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, -1]]`.
///
/// # Safety
/// Every pointer has `c + L` values; `dst`'s are written by this task only.
#[inline(always)]
unsafe fn kernel_grad_tile_l<T: Real, const L: usize>(
    src: &[*const T; 16],
    dst: &[*mut T; 9],
    c: usize,
) {
    let half = [r::<T>(0.5); L];
    // SAFETY (all loads and stores): the caller's contract. (Macros, as in
    // `input_tile_l`.)
    macro_rules! m {
        ($i:expr, $j:expr) => {
            unsafe { vld::<T, L>(src[4 * $i + $j].add(c)) }
        };
    }
    // Aᵀ applied to four values: (a + (b + c)/2, (b - c)/2, (b + c)/2 - d).
    macro_rules! at {
        ($a:expr, $b:expr, $c:expr, $d:expr) => {{
            let s = vmul(vadd($b, $c), half);
            (vadd($a, s), vmul(vsub($b, $c), half), vsub(s, $d))
        }};
    }
    // Aᵀ M, column by column ...
    let (t00, t10, t20) = at!(m!(0, 0), m!(1, 0), m!(2, 0), m!(3, 0));
    let (t01, t11, t21) = at!(m!(0, 1), m!(1, 1), m!(2, 1), m!(3, 1));
    let (t02, t12, t22) = at!(m!(0, 2), m!(1, 2), m!(2, 2), m!(3, 2));
    let (t03, t13, t23) = at!(m!(0, 3), m!(1, 3), m!(2, 3), m!(3, 3));
    // ... then A over the columns, row by row.
    macro_rules! row {
        ($i:expr, $a:expr, $b:expr, $c:expr, $d:expr) => {{
            let (o0, o1, o2) = at!($a, $b, $c, $d);
            unsafe {
                vst(dst[3 * $i].add(c), o0);
                vst(dst[3 * $i + 1].add(c), o1);
                vst(dst[3 * $i + 2].add(c), o2);
            }
        }};
    }
    row!(0, t00, t01, t02, t03);
    row!(1, t10, t11, t12, t13);
    row!(2, t20, t21, t22, t23);
}

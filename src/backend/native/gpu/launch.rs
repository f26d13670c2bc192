//! One typed launcher per kernel of `kernels.cu`, named after it: each takes the kernel's
//! operands as typed values (device addresses, [`DMat`] views, row counts, [`PoolArg`]),
//! computes the launch shape, packs the arguments in the order and C types of the kernel's
//! signature ([`pack_args`]) and launches through a [`Launcher`]: the CUDA driver in
//! `device.rs`, or the CPU emulator in the tests (`emulate.rs`), so the emulator checks
//! the launchers' argument lists and grids as well as the kernels. A unit test below
//! checks every launcher's packed argument types against the parameter list that
//! `kernels.cu` declares.
//!
//! Matrices are the planner's views (see `kernels.cu`): `rows` rows of `c` floats, row r at
//! `ptr + 4 * r * ld`. Kernels over several matrices take one `c`, the output's.

use std::ffi::c_void;

use anyhow::Result;

use super::super::plan::View;
use super::super::shared::PoolGeom;

/// A kernel argument: a value copied into the launch.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    /// A device address (`float*`, `const float*`, `const int*`).
    P(u64),
    /// An `i64` (`long long`).
    I(i64),
    /// A `float`.
    F(f32),
    /// An `int` (flags).
    B(i32),
    /// A `struct Pool`.
    Pool(PoolArg),
}

/// Mirrors `struct Pool` in kernels.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PoolArg {
    n: i64,
    h: i64,
    w: i64,
    c: i64,
    oh: i64,
    ow: i64,
    kh: i32,
    kw: i32,
    sh: i32,
    sw: i32,
    pt: i32,
    pl: i32,
}

impl PoolArg {
    /// The pool geometry of a window op over `n` images of `c` channels.
    pub fn new(g: &PoolGeom, n: usize, c: usize) -> PoolArg {
        PoolArg {
            n: n as i64,
            h: g.h as i64,
            w: g.w as i64,
            c: c as i64,
            oh: g.oh as i64,
            ow: g.ow as i64,
            kh: g.kh as i32,
            kw: g.kw as i32,
            sh: g.sh as i32,
            sw: g.sw as i32,
            pt: g.pt as i32,
            pl: g.pl as i32,
        }
    }

    /// Output values: n * oh * ow * c.
    fn outputs(&self) -> usize {
        (self.n * self.oh * self.ow * self.c) as usize
    }

    /// Input values: n * h * w * c.
    fn inputs(&self) -> usize {
        (self.n * self.h * self.w * self.c) as usize
    }
}

/// Each argument's bytes in its own slot, as `cuLaunchKernel` takes them (an array of
/// pointers to the values; the driver copies each by the size the kernel declares).
pub fn pack_args(args: &[Arg]) -> Vec<[u8; 128]> {
    const _: () = assert!(std::mem::size_of::<PoolArg>() <= 128);
    let mut vals: Vec<[u8; 128]> = Vec::with_capacity(args.len());
    for a in args {
        let mut b = [0u8; 128];
        match a {
            Arg::P(v) => b[..8].copy_from_slice(&v.to_ne_bytes()),
            Arg::I(v) => b[..8].copy_from_slice(&v.to_ne_bytes()),
            Arg::F(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            Arg::B(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
            Arg::Pool(p) => {
                // SAFETY: PoolArg is repr(C) plain integers, 72 bytes (<= 128, checked).
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        (p as *const PoolArg).cast::<u8>(),
                        std::mem::size_of::<PoolArg>(),
                    )
                };
                b[..bytes.len()].copy_from_slice(bytes);
            }
        }
        vals.push(b);
    }
    vals
}

/// Run `f` on `args` packed by [`pack_args`]: one pointer per argument, to its slot (what
/// `cuLaunchKernel` takes as `kernelParams`). The slots live until `f` returns.
pub fn with_packed<R>(args: &[Arg], f: impl FnOnce(&mut [*mut c_void]) -> R) -> R {
    let mut vals = pack_args(args);
    let mut ptrs: Vec<*mut c_void> = vals.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
    f(&mut ptrs)
}

/// Where kernels run.
pub trait Launcher {
    /// The most blocks a grid-stride launch uses (the loops cover the rest).
    fn max_blocks(&self) -> u32;

    /// Threads per block of a grid-stride launch.
    fn threads(&self) -> u32 {
        256
    }

    /// Launch kernel `name` on `grid` blocks of `block` threads. `args` match the kernel's
    /// C parameters in number, order and type: the launchers of this module build them
    /// from the signature, and the signature test checks them against `kernels.cu`.
    fn launch(
        &self,
        name: &'static str,
        grid: (u32, u32),
        block: (u32, u32),
        args: &[Arg],
    ) -> Result<()>;
}

/// A strided matrix of floats in device memory: row r at `ptr + 4 * r * ld`, `c` values
/// per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DMat {
    /// Address of row 0, column 0.
    pub ptr: u64,
    /// Row stride, in floats.
    pub ld: usize,
    /// Values per row.
    pub c: usize,
}

impl DMat {
    /// View `v` of the float arena at `base`.
    pub fn at(base: u64, v: View) -> DMat {
        DMat {
            ptr: base + 4 * v.off as u64,
            ld: v.ld,
            c: v.c,
        }
    }

    fn p(self) -> Arg {
        Arg::P(self.ptr)
    }

    fn ld(self) -> Arg {
        Arg::I(self.ld as i64)
    }
}

fn i(x: usize) -> Arg {
    Arg::I(x as i64)
}

fn flag(b: bool) -> Arg {
    Arg::B(b as i32)
}

/// A grid-stride launch over `total` items (none when `total` is 0).
fn grid_stride(l: &dyn Launcher, name: &'static str, total: usize, args: &[Arg]) -> Result<()> {
    if total == 0 {
        return Ok(());
    }
    let t = l.threads();
    let blocks = total
        .div_ceil(t as usize)
        .min(l.max_blocks() as usize)
        .max(1) as u32;
    l.launch(name, (blocks, 1), (t, 1), args)
}

/// The `c` of an op over several matrices: the output's, which the inputs share.
fn same_c(out: DMat, ins: &[DMat]) -> usize {
    debug_assert!(ins.iter().all(|m| m.c == out.c), "operands of one width");
    out.c
}

/// `relu_forward(const float* x, i64 ldx, float* y, i64 ldy, i64 rows, i64 c)`:
/// y (rows, c) = max(x (rows, c), 0).
pub fn relu_forward(l: &dyn Launcher, x: DMat, y: DMat, rows: usize) -> Result<()> {
    let c = same_c(y, &[x]);
    let args = [x.p(), x.ld(), y.p(), y.ld(), i(rows), i(c)];
    grid_stride(l, "relu_forward", rows * c, &args)
}

/// `relu_backward(const float* y, i64 ldy, const float* dy, i64 lddy, float* dx, i64 lddx,
/// i64 rows, i64 c, int acc)`: dx (rows, c) [+]= dy (rows, c) * (y (rows, c) > 0).
pub fn relu_backward(
    l: &dyn Launcher,
    y: DMat,
    dy: DMat,
    dx: DMat,
    rows: usize,
    acc: bool,
) -> Result<()> {
    let c = same_c(dx, &[y, dy]);
    let args = [
        y.p(),
        y.ld(),
        dy.p(),
        dy.ld(),
        dx.p(),
        dx.ld(),
        i(rows),
        i(c),
        flag(acc),
    ];
    grid_stride(l, "relu_backward", rows * c, &args)
}

/// `elu_forward(const float* x, i64 ldx, float* y, i64 ldy, i64 rows, i64 c, float alpha)`:
/// y (rows, c) = x > 0 ? x : alpha * (exp(x) - 1).
pub fn elu_forward(l: &dyn Launcher, x: DMat, y: DMat, rows: usize, alpha: f32) -> Result<()> {
    let c = same_c(y, &[x]);
    let args = [x.p(), x.ld(), y.p(), y.ld(), i(rows), i(c), Arg::F(alpha)];
    grid_stride(l, "elu_forward", rows * c, &args)
}

/// `elu_backward(const float* x, i64 ldx, const float* dy, i64 lddy, float* dx, i64 lddx,
/// i64 rows, i64 c, float alpha, int acc)`: dx (rows, c) [+]= x > 0 ? dy : dy * alpha * exp(x).
pub fn elu_backward(
    l: &dyn Launcher,
    x: DMat,
    dy: DMat,
    dx: DMat,
    rows: usize,
    alpha: f32,
    acc: bool,
) -> Result<()> {
    let c = same_c(dx, &[x, dy]);
    let args = [
        x.p(),
        x.ld(),
        dy.p(),
        dy.ld(),
        dx.p(),
        dx.ld(),
        i(rows),
        i(c),
        Arg::F(alpha),
        flag(acc),
    ];
    grid_stride(l, "elu_backward", rows * c, &args)
}

/// `dropout_forward(const float* x, i64 ldx, const float* mask, float* y, i64 ldy, i64 rows,
/// i64 c)`: y (rows, c) = x (rows, c) * mask (rows, c, packed).
pub fn dropout_forward(l: &dyn Launcher, x: DMat, mask: u64, y: DMat, rows: usize) -> Result<()> {
    let c = same_c(y, &[x]);
    let args = [x.p(), x.ld(), Arg::P(mask), y.p(), y.ld(), i(rows), i(c)];
    grid_stride(l, "dropout_forward", rows * c, &args)
}

/// `dropout_backward(const float* mask, const float* dy, i64 lddy, float* dx, i64 lddx,
/// i64 rows, i64 c, int acc)`: dx (rows, c) [+]= dy (rows, c) * mask (rows, c, packed).
pub fn dropout_backward(
    l: &dyn Launcher,
    mask: u64,
    dy: DMat,
    dx: DMat,
    rows: usize,
    acc: bool,
) -> Result<()> {
    let c = same_c(dx, &[dy]);
    let args = [
        Arg::P(mask),
        dy.p(),
        dy.ld(),
        dx.p(),
        dx.ld(),
        i(rows),
        i(c),
        flag(acc),
    ];
    grid_stride(l, "dropout_backward", rows * c, &args)
}

/// `copy_rows(const float* src, i64 lds, float* dst, i64 ldd, i64 rows, i64 c, int acc)`:
/// dst (rows, c) [+]= src (rows, c).
pub fn copy_rows(l: &dyn Launcher, src: DMat, dst: DMat, rows: usize, acc: bool) -> Result<()> {
    let c = same_c(dst, &[src]);
    let args = [
        src.p(),
        src.ld(),
        dst.p(),
        dst.ld(),
        i(rows),
        i(c),
        flag(acc),
    ];
    grid_stride(l, "copy_rows", rows * c, &args)
}

/// `add_forward(const float* a, i64 lda, const float* b, i64 ldb, float* y, i64 ldy, i64 rows,
/// i64 c)`: y (rows, c) = a (rows, c) + b (rows, c).
pub fn add_forward(l: &dyn Launcher, a: DMat, b: DMat, y: DMat, rows: usize) -> Result<()> {
    let c = same_c(y, &[a, b]);
    let args = [a.p(), a.ld(), b.p(), b.ld(), y.p(), y.ld(), i(rows), i(c)];
    grid_stride(l, "add_forward", rows * c, &args)
}

/// `bias_forward(float* y, i64 ldy, const float* bias, i64 rows, i64 c)`:
/// y (rows, c) += bias (c).
pub fn bias_forward(l: &dyn Launcher, y: DMat, bias: u64, rows: usize) -> Result<()> {
    let args = [y.p(), y.ld(), Arg::P(bias), i(rows), i(y.c)];
    grid_stride(l, "bias_forward", rows * y.c, &args)
}

/// Launch shape of `bias_backward` for `rows` x `c`: (grid, block). The kernel needs
/// blocks of (32, 8) threads.
pub fn bias_grid(rows: usize, c: usize) -> ((u32, u32), (u32, u32)) {
    let gy = (rows.div_ceil(8 * 64) as u32).clamp(1, 128);
    ((c.div_ceil(32) as u32, gy), (32, 8))
}

/// `bias_backward(const float* dy, i64 lddy, float* dbias, i64 rows, i64 c)`:
/// dbias (c) += column sums of dy (rows, c) (by atomicAdd: zero dbias first).
pub fn bias_backward(l: &dyn Launcher, dy: DMat, dbias: u64, rows: usize) -> Result<()> {
    let (grid, block) = bias_grid(rows, dy.c);
    let args = [dy.p(), dy.ld(), Arg::P(dbias), i(rows), i(dy.c)];
    l.launch("bias_backward", grid, block, &args)
}

/// `maxpool_forward(const float* x, i64 ldx, float* y, i64 ldy, Pool g)`:
/// y (n*oh*ow, c) = max over each window's valid taps of x (n*h*w, c).
pub fn maxpool_forward(l: &dyn Launcher, x: DMat, y: DMat, g: PoolArg) -> Result<()> {
    let args = [x.p(), x.ld(), y.p(), y.ld(), Arg::Pool(g)];
    grid_stride(l, "maxpool_forward", g.outputs(), &args)
}

/// `maxpool_backward(const float* x, i64 ldx, const float* y, i64 ldy, const float* dy,
/// i64 lddy, float* dx, i64 lddx, Pool g, int acc)`: dx (n*h*w, c) [+]= each window's
/// dy (n*oh*ow, c) shared among the taps equal to its max y (n*oh*ow, c).
pub fn maxpool_backward(
    l: &dyn Launcher,
    x: DMat,
    y: DMat,
    dy: DMat,
    dx: DMat,
    g: PoolArg,
    acc: bool,
) -> Result<()> {
    let args = [
        x.p(),
        x.ld(),
        y.p(),
        y.ld(),
        dy.p(),
        dy.ld(),
        dx.p(),
        dx.ld(),
        Arg::Pool(g),
        flag(acc),
    ];
    grid_stride(l, "maxpool_backward", g.inputs(), &args)
}

/// `avgpool_forward(const float* x, i64 ldx, float* y, i64 ldy, Pool g)`:
/// y (n*oh*ow, c) = mean of each window's valid taps of x (n*h*w, c).
pub fn avgpool_forward(l: &dyn Launcher, x: DMat, y: DMat, g: PoolArg) -> Result<()> {
    let args = [x.p(), x.ld(), y.p(), y.ld(), Arg::Pool(g)];
    grid_stride(l, "avgpool_forward", g.outputs(), &args)
}

/// `avgpool_backward(const float* dy, i64 lddy, float* dx, i64 lddx, Pool g, int acc)`:
/// dx (n*h*w, c) [+]= sum over covering windows of dy (n*oh*ow, c) / valid taps.
pub fn avgpool_backward(l: &dyn Launcher, dy: DMat, dx: DMat, g: PoolArg, acc: bool) -> Result<()> {
    let args = [dy.p(), dy.ld(), dx.p(), dx.ld(), Arg::Pool(g), flag(acc)];
    grid_stride(l, "avgpool_backward", g.inputs(), &args)
}

/// `global_avgpool_forward(const float* x, i64 ldx, float* y, i64 ldy, i64 n, i64 hw, i64 c)`:
/// y (n, c) = mean over the hw rows of each image of x (n*hw, c).
pub fn global_avgpool_forward(
    l: &dyn Launcher,
    x: DMat,
    y: DMat,
    n: usize,
    hw: usize,
) -> Result<()> {
    let c = same_c(y, &[x]);
    let args = [x.p(), x.ld(), y.p(), y.ld(), i(n), i(hw), i(c)];
    grid_stride(l, "global_avgpool_forward", n * c, &args)
}

/// `global_avgpool_backward(const float* dy, i64 lddy, float* dx, i64 lddx, i64 n, i64 hw,
/// i64 c, int acc)`: dx (n*hw, c) [+]= dy (n, c) / hw.
pub fn global_avgpool_backward(
    l: &dyn Launcher,
    dy: DMat,
    dx: DMat,
    n: usize,
    hw: usize,
    acc: bool,
) -> Result<()> {
    let c = same_c(dx, &[dy]);
    let args = [
        dy.p(),
        dy.ld(),
        dx.p(),
        dx.ld(),
        i(n),
        i(hw),
        i(c),
        flag(acc),
    ];
    grid_stride(l, "global_avgpool_backward", n * hw * c, &args)
}

/// `softmax_forward(const float* x, i64 ldx, float* y, i64 ldy, i64 rows, i64 c)`:
/// y (rows, c) = exp(x - max) / sum per row of x (rows, c); one thread per row.
pub fn softmax_forward(l: &dyn Launcher, x: DMat, y: DMat, rows: usize) -> Result<()> {
    let c = same_c(y, &[x]);
    let args = [x.p(), x.ld(), y.p(), y.ld(), i(rows), i(c)];
    grid_stride(l, "softmax_forward", rows, &args)
}

/// `softmax_backward(const float* y, i64 ldy, const float* dy, i64 lddy, float* dx, i64 lddx,
/// i64 rows, i64 c, int acc)`: dx (rows, c) [+]= y * (dy - sum(dy * y)); one thread per row.
pub fn softmax_backward(
    l: &dyn Launcher,
    y: DMat,
    dy: DMat,
    dx: DMat,
    rows: usize,
    acc: bool,
) -> Result<()> {
    let c = same_c(dx, &[y, dy]);
    let args = [
        y.p(),
        y.ld(),
        dy.p(),
        dy.ld(),
        dx.p(),
        dx.ld(),
        i(rows),
        i(c),
        flag(acc),
    ];
    grid_stride(l, "softmax_backward", rows, &args)
}

/// `softmax_cross_entropy(const float* x, i64 ldx, const int* labels, const int* labels2, i64 n,
/// i64 k, float* dx, i64 lddx, const float* hyper, float* stats)`: for logits x (n, k) and
/// labels, labels2 (n) as int32, with lambda at hyper[5] and label smoothing at hyper[6],
/// dx (n, k) = (softmax - target) / n; stats[0] += summed cross-entropy, stats[1] += correct.
#[allow(clippy::too_many_arguments)]
pub fn softmax_cross_entropy(
    l: &dyn Launcher,
    x: DMat,
    (labels, labels2): (u64, u64),
    n: usize,
    dx: DMat,
    hyper: u64,
    stats: u64,
) -> Result<()> {
    let k = same_c(dx, &[x]);
    let args = [
        x.p(),
        x.ld(),
        Arg::P(labels),
        Arg::P(labels2),
        i(n),
        i(k),
        dx.p(),
        dx.ld(),
        Arg::P(hyper),
        Arg::P(stats),
    ];
    grid_stride(l, "softmax_cross_entropy", n, &args)
}

/// `batchnorm_running_single(float* mean, float* var, const float* batch_mean, i64 c,
/// float m)`: mean (c) = m * mean + (1 - m) * batch_mean (c); var (c) = m * var.
pub fn batchnorm_running_single(
    l: &dyn Launcher,
    mean: u64,
    var: u64,
    batch_mean: u64,
    c: usize,
    m: f32,
) -> Result<()> {
    let args = [
        Arg::P(mean),
        Arg::P(var),
        Arg::P(batch_mean),
        i(c),
        Arg::F(m),
    ];
    grid_stride(l, "batchnorm_running_single", c, &args)
}

/// `l2_backward(const float* w, float* g, i64 len, float l2)`: g (len) += 2 * l2 * w (len).
pub fn l2_backward(l: &dyn Launcher, w: u64, g: u64, len: usize, l2: f32) -> Result<()> {
    let args = [Arg::P(w), Arg::P(g), i(len), Arg::F(l2)];
    grid_stride(l, "l2_backward", len, &args)
}

/// `sgd_update(float* w, const float* g, float* v, i64 len, const float* hyper, int nesterov)`:
/// over w, g, v (len), with the learning rate at hyper[0], the decay's keep factor at
/// hyper[2] and the momentum at hyper[3].
pub fn sgd_update(
    l: &dyn Launcher,
    w: u64,
    g: u64,
    v: u64,
    len: usize,
    hyper: u64,
    nesterov: bool,
) -> Result<()> {
    let args = [
        Arg::P(w),
        Arg::P(g),
        Arg::P(v),
        i(len),
        Arg::P(hyper),
        flag(nesterov),
    ];
    grid_stride(l, "sgd_update", len, &args)
}

/// `adam_update(float* w, const float* g, float* m, float* v, i64 len, const float* hyper,
/// float b2)`: over w, g, m, v (len), with the bias-corrected rate at hyper[1], the decay's
/// keep factor at hyper[2], beta1 at hyper[3] and epsilon at hyper[4].
#[allow(clippy::too_many_arguments)]
pub fn adam_update(
    l: &dyn Launcher,
    w: u64,
    g: u64,
    m: u64,
    v: u64,
    len: usize,
    hyper: u64,
    b2: f32,
) -> Result<()> {
    let args = [
        Arg::P(w),
        Arg::P(g),
        Arg::P(m),
        Arg::P(v),
        i(len),
        Arg::P(hyper),
        Arg::F(b2),
    ];
    grid_stride(l, "adam_update", len, &args)
}

/// `ema_update(float* e, const float* x, i64 len, float wt)`: e (len) += wt * (x - e).
pub fn ema_update(l: &dyn Launcher, e: u64, x: u64, len: usize, wt: f32) -> Result<()> {
    let args = [Arg::P(e), Arg::P(x), i(len), Arg::F(wt)];
    grid_stride(l, "ema_update", len, &args)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::super::kernels;
    use super::*;

    /// The C type class of a kernel parameter, or of a packed argument.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Ty {
        Ptr,
        I64,
        Int,
        Float,
        Pool,
    }

    fn ty_of_arg(a: &Arg) -> Ty {
        match a {
            Arg::P(_) => Ty::Ptr,
            Arg::I(_) => Ty::I64,
            Arg::B(_) => Ty::Int,
            Arg::F(_) => Ty::Float,
            Arg::Pool(_) => Ty::Pool,
        }
    }

    fn ty_of_param(p: &str) -> Ty {
        let p = p.trim();
        if p.contains('*') {
            return Ty::Ptr;
        }
        match p.split_whitespace().next() {
            Some("i64") => Ty::I64,
            Some("int") => Ty::Int,
            Some("float") => Ty::Float,
            Some("Pool") => Ty::Pool,
            other => panic!("unknown parameter type {other:?} in `{p}`"),
        }
    }

    /// Every `extern "C" __global__ void name(...)` in kernels.cu with its parameter types.
    fn signatures() -> Vec<(String, Vec<Ty>)> {
        kernels::SOURCE
            .split("extern \"C\" __global__ void ")
            .skip(1)
            .map(|s| {
                let (name, rest) = s.split_once('(').expect("a parameter list");
                let params = rest.split_once(')').expect("a closed parameter list").0;
                let tys = params.split(',').map(ty_of_param).collect();
                (name.trim().to_string(), tys)
            })
            .collect()
    }

    /// A launch: (kernel, grid, block, argument types).
    type Call = (&'static str, (u32, u32), (u32, u32), Vec<Ty>);

    /// Records launches instead of running them.
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<Call>>,
    }

    impl Launcher for Recorder {
        fn max_blocks(&self) -> u32 {
            5
        }
        fn launch(
            &self,
            name: &'static str,
            grid: (u32, u32),
            block: (u32, u32),
            args: &[Arg],
        ) -> Result<()> {
            let tys = args.iter().map(ty_of_arg).collect();
            self.calls.borrow_mut().push((name, grid, block, tys));
            Ok(())
        }
    }

    /// Call launcher `$f` with a [`Recorder`] and these arguments: (its name, what it
    /// launched).
    macro_rules! launched {
        ($f:ident($($a:expr),* $(,)?)) => {{
            let r = Recorder::default();
            $f(&r, $($a),*).expect("recorded");
            let mut calls = r.calls.into_inner();
            assert_eq!(calls.len(), 1, "{} launches once", stringify!($f));
            (stringify!($f), calls.pop().expect("one call"))
        }};
    }

    #[test]
    fn every_launcher_packs_its_kernels_c_signature() {
        let m = DMat {
            ptr: 0x1000,
            ld: 7,
            c: 5,
        };
        let g = PoolArg::new(
            &PoolGeom {
                h: 6,
                w: 6,
                oh: 3,
                ow: 3,
                kh: 2,
                kw: 2,
                sh: 2,
                sw: 2,
                pt: 0,
                pl: 0,
            },
            2,
            5,
        );
        let (p, rows) = (0x2000u64, 300);
        let all = [
            launched!(relu_forward(m, m, rows)),
            launched!(relu_backward(m, m, m, rows, true)),
            launched!(elu_forward(m, m, rows, 0.5)),
            launched!(elu_backward(m, m, m, rows, 0.5, false)),
            launched!(dropout_forward(m, p, m, rows)),
            launched!(dropout_backward(p, m, m, rows, true)),
            launched!(copy_rows(m, m, rows, false)),
            launched!(add_forward(m, m, m, rows)),
            launched!(bias_forward(m, p, rows)),
            launched!(bias_backward(m, p, rows)),
            launched!(maxpool_forward(m, m, g)),
            launched!(maxpool_backward(m, m, m, m, g, true)),
            launched!(avgpool_forward(m, m, g)),
            launched!(avgpool_backward(m, m, g, false)),
            launched!(global_avgpool_forward(m, m, 2, 9)),
            launched!(global_avgpool_backward(m, m, 2, 9, true)),
            launched!(softmax_forward(m, m, rows)),
            launched!(softmax_backward(m, m, m, rows, false)),
            launched!(softmax_cross_entropy(m, (p, p), 4, m, p, p)),
            launched!(batchnorm_running_single(p, p, p, 5, 0.9)),
            launched!(l2_backward(p, p, 100, 1e-4)),
            launched!(sgd_update(p, p, p, 100, p, true)),
            launched!(adam_update(p, p, p, p, 100, p, 0.999)),
            launched!(ema_update(p, p, 100, 1e-3)),
        ];
        let sigs = signatures();
        assert_eq!(
            sigs.len(),
            kernels::NAMES.len(),
            "kernels parsed from the source"
        );
        assert_eq!(all.len(), sigs.len(), "one launcher per kernel");
        for (name, tys) in &sigs {
            let hits: Vec<_> = all.iter().filter(|(_, c)| c.0 == name).collect();
            assert_eq!(hits.len(), 1, "one launcher launches {name}");
            let (launcher, (_, grid, block, args)) = hits[0];
            assert_eq!(launcher, name, "the launcher of {name} is named after it");
            assert_eq!(args, tys, "{name}: packed arguments vs its C parameters");
            if name == "bias_backward" {
                assert_eq!(*block, (32, 8), "bias_backward's block shape");
            } else {
                assert_eq!(*block, (256, 1), "{name}: a grid-stride block");
                assert!(
                    grid.0 >= 1 && grid.0 <= 5 && grid.1 == 1,
                    "{name}: {grid:?}"
                );
            }
        }
    }

    #[test]
    fn the_signature_parser_sees_the_pool_struct_and_flags() {
        let sigs = signatures();
        let get = |n: &str| sigs.iter().find(|s| s.0 == n).expect("a kernel").1.clone();
        use Ty::*;
        assert_eq!(get("avgpool_backward"), [Ptr, I64, Ptr, I64, Pool, Int]);
        assert_eq!(get("l2_backward"), [Ptr, Ptr, I64, Float]);
    }

    #[test]
    fn empty_launches_are_skipped() {
        let r = Recorder::default();
        let m = DMat {
            ptr: 0,
            ld: 4,
            c: 4,
        };
        relu_forward(&r, m, m, 0).expect("nothing to launch");
        assert!(r.calls.borrow().is_empty());
    }
}

//! cuDNN for the GPU device: the descriptors of conv and batch-norm nodes for one batch
//! size, the measured choice of conv algorithms, and one safe wrapper per cuDNN call a
//! step makes (`conv_forward`, ..., `batchnorm_backward`), taking device addresses.
//! Conv kernels live on the device as (cout, kh, kw, cin), cuDNN's NHWC filter layout
//! ([`hwio_to_ohwi`] and back).

use std::ffi::c_void;

use anyhow::{anyhow, bail, Result};
use cudarc::cudnn::sys as dnn;

use super::super::plan::View;
use super::super::shared::ConvGeom;

/// A cuDNN status as a result, naming the call.
pub(super) fn ck(s: dnn::cudnnStatus_t, what: &str) -> Result<()> {
    if s == dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        Ok(())
    } else {
        bail!("cuDNN {what}: {s:?}")
    }
}

/// cuDNN descriptors of one conv node for one batch size, with the measured algorithms.
pub(super) struct ConvDescs {
    x: dnn::cudnnTensorDescriptor_t,
    y: dnn::cudnnTensorDescriptor_t,
    w: dnn::cudnnFilterDescriptor_t,
    /// One convolution descriptor per direction, each set to the math type (TF32 or FMA)
    /// its measured algorithm was found with.
    conv: [dnn::cudnnConvolutionDescriptor_t; 3],
    fwd: dnn::cudnnConvolutionFwdAlgo_t,
    bwd_data: dnn::cudnnConvolutionBwdDataAlgo_t,
    bwd_filter: dnn::cudnnConvolutionBwdFilterAlgo_t,
}

impl Drop for ConvDescs {
    fn drop(&mut self) {
        // SAFETY: created by this model, destroyed once, not used after.
        unsafe {
            dnn::cudnnDestroyTensorDescriptor(self.x);
            dnn::cudnnDestroyTensorDescriptor(self.y);
            dnn::cudnnDestroyFilterDescriptor(self.w);
            for c in self.conv {
                dnn::cudnnDestroyConvolutionDescriptor(c);
            }
        }
    }
}

/// cuDNN descriptors of one batch-norm node for one batch size.
pub(super) struct BnDescs {
    x: dnn::cudnnTensorDescriptor_t,
    y: dnn::cudnnTensorDescriptor_t,
    stats: dnn::cudnnTensorDescriptor_t,
}

impl Drop for BnDescs {
    fn drop(&mut self) {
        // SAFETY: created by this model, destroyed once, not used after.
        unsafe {
            dnn::cudnnDestroyTensorDescriptor(self.x);
            dnn::cudnnDestroyTensorDescriptor(self.y);
            dnn::cudnnDestroyTensorDescriptor(self.stats);
        }
    }
}

/// The device buffers a conv's algorithms are measured on.
pub(super) struct ConvBufs {
    /// Input.
    pub x: u64,
    /// Kernel (cout, kh, kw, cin).
    pub w: u64,
    /// Output.
    pub y: u64,
    /// Output gradient.
    pub dy: u64,
    /// Input gradient (none for the network's input).
    pub dx: Option<u64>,
    /// Kernel gradient.
    pub dw: u64,
}

impl ConvDescs {
    /// The descriptors of a conv over `n` images from view `xv` to view `yv`, and the
    /// fastest algorithm of each direction, measured on `b` with the `scratch` workspace
    /// (address, bytes): (descriptors, workspace bytes the algorithms need).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn measure(
        h: dnn::cudnnHandle_t,
        g: &ConvGeom,
        n: usize,
        (xv, yv): (View, View),
        tf32: bool,
        b: &ConvBufs,
        scratch: (u64, usize),
    ) -> Result<(ConvDescs, usize)> {
        let x = tensor(n, g.h, g.w, xv)?;
        let y = tensor(n, g.oh, g.ow, yv)?;
        let w = filter(g)?;
        let c = [
            convolution(g, tf32)?,
            convolution(g, tf32)?,
            convolution(g, tf32)?,
        ];
        let (fwd, m1) = find_fwd(h, x, b.x, w, b.w, c[0], y, b.y, scratch)?;
        let (bwd_data, m2) = match b.dx {
            Some(dx) => find_bwd_data(h, w, b.w, y, b.dy, c[1], x, dx, scratch)?,
            None => (
                dnn::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
                0,
            ),
        };
        let (bwd_filter, m3) = find_bwd_filter(h, x, b.x, y, b.dy, c[2], w, b.dw, scratch)?;
        let d = ConvDescs {
            x,
            y,
            w,
            conv: c,
            fwd,
            bwd_data,
            bwd_filter,
        };
        Ok((d, m1.max(m2).max(m3)))
    }
}

impl BnDescs {
    /// The descriptors of a batch norm over `n` images of `h x w` from view `xv` to `yv`.
    pub(super) fn new(n: usize, h: usize, w: usize, xv: View, yv: View) -> Result<BnDescs> {
        let x = tensor(n, h, w, xv)?;
        let y = tensor(n, h, w, yv)?;
        let mut stats: dnn::cudnnTensorDescriptor_t = std::ptr::null_mut();
        // SAFETY: out-pointer to a descriptor, then derived from a valid one.
        unsafe {
            ck(
                dnn::cudnnCreateTensorDescriptor(&mut stats),
                "tensor descriptor",
            )?;
            ck(
                dnn::cudnnDeriveBNTensorDescriptor(stats, x, BN_MODE),
                "batch-norm descriptor",
            )?;
        }
        Ok(BnDescs { x, y, stats })
    }
}

/// cuDNN's host-side scaling factors (alpha, beta).
static ONE: f32 = 1.0;
static ZERO: f32 = 0.0;

/// A host scaling factor: 1 (`alpha`; `beta` to add into the output) or 0 (`beta` to
/// overwrite it).
fn scale(one: bool) -> *const c_void {
    let v: &'static f32 = if one { &ONE } else { &ZERO };
    (v as *const f32).cast()
}

/// A device address as cuDNN's untyped pointer.
fn vp(p: u64) -> *mut c_void {
    p as *mut c_void
}

/// `y = conv(x, w)` with the measured forward algorithm; `ws` is the workspace (address,
/// bytes), at least what [`ConvDescs::measure`] asked for.
pub(super) fn conv_forward(
    h: dnn::cudnnHandle_t,
    d: &ConvDescs,
    (x, w, y): (u64, u64, u64),
    (ws, ws_bytes): (u64, usize),
) -> Result<()> {
    // SAFETY: the descriptors were made for these buffers' shapes; the workspace holds
    // what the algorithm was measured with.
    let s = unsafe {
        dnn::cudnnConvolutionForward(
            h,
            scale(true),
            d.x,
            vp(x),
            d.w,
            vp(w),
            d.conv[0],
            d.fwd,
            vp(ws),
            ws_bytes,
            scale(false),
            d.y,
            vp(y),
        )
    };
    ck(s, "convolution forward")
}

/// `dw = conv_filter_grad(x, dy)` (overwritten), with the measured algorithm.
pub(super) fn conv_backward_filter(
    h: dnn::cudnnHandle_t,
    d: &ConvDescs,
    (x, dy, dw): (u64, u64, u64),
    (ws, ws_bytes): (u64, usize),
) -> Result<()> {
    // SAFETY: as for the forward.
    let s = unsafe {
        dnn::cudnnConvolutionBackwardFilter(
            h,
            scale(true),
            d.x,
            vp(x),
            d.y,
            vp(dy),
            d.conv[2],
            d.bwd_filter,
            vp(ws),
            ws_bytes,
            scale(false),
            d.w,
            vp(dw),
        )
    };
    ck(s, "convolution backward filter")
}

/// `dx [+]= conv_data_grad(w, dy)` (`acc`: add into dx), with the measured algorithm.
pub(super) fn conv_backward_data(
    h: dnn::cudnnHandle_t,
    d: &ConvDescs,
    (w, dy, dx): (u64, u64, u64),
    acc: bool,
    (ws, ws_bytes): (u64, usize),
) -> Result<()> {
    // SAFETY: as for the forward.
    let s = unsafe {
        dnn::cudnnConvolutionBackwardData(
            h,
            scale(true),
            d.w,
            vp(w),
            d.y,
            vp(dy),
            d.conv[1],
            d.bwd_data,
            vp(ws),
            ws_bytes,
            scale(acc),
            d.x,
            vp(dx),
        )
    };
    ck(s, "convolution backward data")
}

/// Training batch norm `y = bn(x)` with `(gamma, beta)`: the running `(mean, var)` move by
/// `factor` towards the batch's, which are saved as `(mean, inverse std)` for the backward.
#[allow(clippy::too_many_arguments)]
pub(super) fn batchnorm_forward_training(
    h: dnn::cudnnHandle_t,
    d: &BnDescs,
    (x, y): (u64, u64),
    (gamma, beta): (u64, u64),
    factor: f64,
    (mean, var): (u64, u64),
    epsilon: f64,
    (save_mean, save_inv): (u64, u64),
) -> Result<()> {
    // SAFETY: the descriptors were made for these buffers; the statistics hold c floats.
    let s = unsafe {
        dnn::cudnnBatchNormalizationForwardTraining(
            h,
            BN_MODE,
            scale(true),
            scale(false),
            d.x,
            vp(x),
            d.y,
            vp(y),
            d.stats,
            vp(gamma),
            vp(beta),
            factor,
            vp(mean),
            vp(var),
            epsilon,
            vp(save_mean),
            vp(save_inv),
        )
    };
    ck(s, "batch norm forward")
}

/// Inference batch norm `y = bn(x)` with `(gamma, beta)` and the running `(mean, var)`.
pub(super) fn batchnorm_forward_inference(
    h: dnn::cudnnHandle_t,
    d: &BnDescs,
    (x, y): (u64, u64),
    (gamma, beta): (u64, u64),
    (mean, var): (u64, u64),
    epsilon: f64,
) -> Result<()> {
    // SAFETY: as in training.
    let s = unsafe {
        dnn::cudnnBatchNormalizationForwardInference(
            h,
            BN_MODE,
            scale(true),
            scale(false),
            d.x,
            vp(x),
            d.y,
            vp(y),
            d.stats,
            vp(gamma),
            vp(beta),
            vp(mean),
            vp(var),
            epsilon,
        )
    };
    ck(s, "batch norm inference")
}

/// Backward of the training batch norm: `dx [+]=` (`acc`) from `dy`, and `(dgamma, dbeta)`
/// (overwritten), with the statistics saved by the forward.
#[allow(clippy::too_many_arguments)]
pub(super) fn batchnorm_backward(
    h: dnn::cudnnHandle_t,
    d: &BnDescs,
    (x, dy, dx): (u64, u64, u64),
    acc: bool,
    gamma: u64,
    (dgamma, dbeta): (u64, u64),
    epsilon: f64,
    (save_mean, save_inv): (u64, u64),
) -> Result<()> {
    // SAFETY: as in the forward; the saved statistics come from this step's forward.
    let s = unsafe {
        dnn::cudnnBatchNormalizationBackward(
            h,
            BN_MODE,
            scale(true),
            scale(acc),
            scale(true),
            scale(false),
            d.x,
            vp(x),
            d.y,
            vp(dy),
            d.x,
            vp(dx),
            d.stats,
            vp(gamma),
            vp(dgamma),
            vp(dbeta),
            epsilon,
            vp(save_mean),
            vp(save_inv),
        )
    };
    ck(s, "batch norm backward")
}

const BN_MODE: dnn::cudnnBatchNormMode_t = dnn::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL;

/// Whether cuDNN's symmetric padding (pad_before on both sides) gives the graph's output
/// size: cuDNN computes `(i + 2p - k) / s + 1`.
pub(super) fn symmetric(g: &ConvGeom) -> bool {
    let o =
        |i: usize, k: usize, s: usize, p: usize| (i + 2 * p >= k).then(|| (i + 2 * p - k) / s + 1);
    o(g.h, g.kh, g.sh, g.pt) == Some(g.oh) && o(g.w, g.kw, g.sw, g.pl) == Some(g.ow)
}

/// An NHWC tensor descriptor for `n` images of `h x w` over a view (pixel stride `ld`).
fn tensor(n: usize, h: usize, w: usize, v: View) -> Result<dnn::cudnnTensorDescriptor_t> {
    let mut d: dnn::cudnnTensorDescriptor_t = std::ptr::null_mut();
    let i = |x: usize| x as i32;
    // SAFETY: out-pointer, then a plain setter on the new descriptor.
    unsafe {
        ck(
            dnn::cudnnCreateTensorDescriptor(&mut d),
            "tensor descriptor",
        )?;
        ck(
            dnn::cudnnSetTensor4dDescriptorEx(
                d,
                dnn::cudnnDataType_t::CUDNN_DATA_FLOAT,
                i(n),
                i(v.c),
                i(h),
                i(w),
                i(h * w * v.ld),
                1,
                i(w * v.ld),
                i(v.ld),
            ),
            "tensor shape",
        )?;
    }
    Ok(d)
}

fn filter(g: &ConvGeom) -> Result<dnn::cudnnFilterDescriptor_t> {
    let mut d: dnn::cudnnFilterDescriptor_t = std::ptr::null_mut();
    // SAFETY: out-pointer, then a plain setter on the new descriptor.
    unsafe {
        ck(
            dnn::cudnnCreateFilterDescriptor(&mut d),
            "filter descriptor",
        )?;
        ck(
            dnn::cudnnSetFilter4dDescriptor(
                d,
                dnn::cudnnDataType_t::CUDNN_DATA_FLOAT,
                dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
                g.cout as i32,
                g.cin as i32,
                g.kh as i32,
                g.kw as i32,
            ),
            "filter shape",
        )?;
    }
    Ok(d)
}

fn convolution(g: &ConvGeom, tf32: bool) -> Result<dnn::cudnnConvolutionDescriptor_t> {
    let mut d: dnn::cudnnConvolutionDescriptor_t = std::ptr::null_mut();
    // SAFETY: out-pointer, then plain setters on the new descriptor.
    unsafe {
        ck(
            dnn::cudnnCreateConvolutionDescriptor(&mut d),
            "convolution descriptor",
        )?;
        ck(
            dnn::cudnnSetConvolution2dDescriptor(
                d,
                g.pt as i32,
                g.pl as i32,
                g.sh as i32,
                g.sw as i32,
                1,
                1,
                dnn::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                dnn::cudnnDataType_t::CUDNN_DATA_FLOAT,
            ),
            "convolution shape",
        )?;
        let math = if tf32 {
            dnn::cudnnMathType_t::CUDNN_DEFAULT_MATH
        } else {
            dnn::cudnnMathType_t::CUDNN_FMA_MATH
        };
        ck(dnn::cudnnSetConvolutionMathType(d, math), "math type")?;
    }
    Ok(d)
}

macro_rules! find_algo {
    ($name:ident, $find:ident, $perf:ty, $algo:ty, $what:literal,
     ($d1:ident, $p1:ident: $t1:ty), ($d2:ident, $p2:ident: $t2:ty), ($d3:ident, $p3:ident: $t3:ty)) => {
        /// Measure every algorithm cuDNN offers for this shape and take the fastest that
        /// succeeds: (algorithm, workspace bytes).
        #[allow(clippy::too_many_arguments)]
        fn $name(
            h: dnn::cudnnHandle_t,
            $d1: $t1,
            $p1: u64,
            $d2: $t2,
            $p2: u64,
            conv: dnn::cudnnConvolutionDescriptor_t,
            $d3: $t3,
            $p3: u64,
            (ws, ws_bytes): (u64, usize),
        ) -> Result<($algo, usize)> {
            // SAFETY: a plain C struct (status, algorithm, time, memory, enums whose 0 is a
            // valid value), filled by cuDNN below.
            let mut perf: [$perf; 16] = unsafe { std::mem::zeroed() };
            let mut got = 0i32;
            // SAFETY: descriptors and buffers of matching shapes; `perf` holds 16 results;
            // the workspace holds `ws_bytes`.
            unsafe {
                ck(
                    dnn::$find(
                        h,
                        $d1,
                        $p1 as *const c_void,
                        $d2,
                        $p2 as *const c_void,
                        conv,
                        $d3,
                        $p3 as *mut c_void,
                        16,
                        &mut got,
                        perf.as_mut_ptr(),
                        ws as *mut c_void,
                        ws_bytes,
                    ),
                    $what,
                )?;
            }
            let best = perf[..got.max(0) as usize]
                .iter()
                .find(|p| p.status == dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS);
            if let Some(p) = best {
                // SAFETY: a live descriptor; the math type cuDNN measured the algorithm with.
                unsafe {
                    ck(
                        dnn::cudnnSetConvolutionMathType(conv, p.mathType),
                        "math type",
                    )?
                };
            }
            best.map(|p| (p.algo, p.memory)).ok_or_else(|| {
                anyhow!("cuDNN has no {} algorithm for this shape and layout", $what)
            })
        }
    };
}

find_algo!(
    find_fwd,
    cudnnFindConvolutionForwardAlgorithmEx,
    dnn::cudnnConvolutionFwdAlgoPerf_t,
    dnn::cudnnConvolutionFwdAlgo_t,
    "convolution forward",
    (x, xp: dnn::cudnnTensorDescriptor_t),
    (w, wp: dnn::cudnnFilterDescriptor_t),
    (y, yp: dnn::cudnnTensorDescriptor_t)
);
find_algo!(
    find_bwd_data,
    cudnnFindConvolutionBackwardDataAlgorithmEx,
    dnn::cudnnConvolutionBwdDataAlgoPerf_t,
    dnn::cudnnConvolutionBwdDataAlgo_t,
    "convolution backward-data",
    (w, wp: dnn::cudnnFilterDescriptor_t),
    (dy, dyp: dnn::cudnnTensorDescriptor_t),
    (dx, dxp: dnn::cudnnTensorDescriptor_t)
);
find_algo!(
    find_bwd_filter,
    cudnnFindConvolutionBackwardFilterAlgorithmEx,
    dnn::cudnnConvolutionBwdFilterAlgoPerf_t,
    dnn::cudnnConvolutionBwdFilterAlgo_t,
    "convolution backward-filter",
    (x, xp: dnn::cudnnTensorDescriptor_t),
    (dy, dyp: dnn::cudnnTensorDescriptor_t),
    (dw, dwp: dnn::cudnnFilterDescriptor_t)
);

/// (kh, kw, cin, cout) -> (cout, kh, kw, cin).
pub(super) fn hwio_to_ohwi(v: &[f32], [kh, kw, ci, co]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for y in 0..kh {
        for x in 0..kw {
            for i in 0..ci {
                for o in 0..co {
                    out[((o * kh + y) * kw + x) * ci + i] = v[((y * kw + x) * ci + i) * co + o];
                }
            }
        }
    }
    out
}

/// (cout, kh, kw, cin) -> (kh, kw, cin, cout).
pub(super) fn ohwi_to_hwio(v: &[f32], [kh, kw, ci, co]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for y in 0..kh {
        for x in 0..kw {
            for i in 0..ci {
                for o in 0..co {
                    out[((y * kw + x) * ci + i) * co + o] = v[((o * kh + y) * kw + x) * ci + i];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_layouts_round_trip() {
        let s = [3, 2, 4, 5];
        let v: Vec<f32> = (0..120).map(|x| x as f32).collect();
        let o = hwio_to_ohwi(&v, s);
        assert_ne!(o, v);
        // (y=0, x=1, i=2, o=3): hwio ((0*2+1)*4+2)*5+3 = 33, ohwi ((3*3+0)*2+1)*4+2 = 78.
        assert_eq!(o[78], v[33]);
        assert_eq!(ohwi_to_hwio(&o, s), v);
    }
}

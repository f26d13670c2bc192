//! The native model on a CUDA GPU: the planner's graph run by cuDNN (convolutions, batch
//! norm), cuBLAS (dense layers) and our NVRTC kernels (everything else).
//!
//! Everything a step touches lives on the device, in buffers sized once per batch shape:
//! the planner's activation and gradient arenas (the same [`MemoryPlan`] as the CPU path, so
//! concat slices are strided descriptors and relu/dropout run in place), parameters,
//! gradients and optimizer moments as flat buffers, batch-norm statistics, one cuDNN
//! workspace. Per step the host uploads the batch, labels, dropout masks and the learning
//! rate from pinned buffers (asynchronously, double-buffered) and launches the step, which
//! after its first eager run is replayed as a captured CUDA graph. Loss and accuracy add up
//! on the device and are read by [`Model::take_stats`]. Parameters come back to the host
//! only for [`Model::state`].
//!
//! - `buffers`: device and pinned host allocations;
//! - `setup`: building the model, planning per batch capacity, cuDNN descriptors per
//!   batch size, loading the kernels;
//! - `staging`: a batch's upload through the pinned buffers;
//! - `ops`: the walk's [`Kernels`] on cuDNN, cuBLAS and our kernels;
//! - `step`: the training step, eager or replayed as a captured CUDA graph;
//! - `model`: the [`Model`] interface.
//!
//! Conv kernels are kept on the device as (cout, kh, kw, cin) (cuDNN's NHWC filter
//! layout) and transposed to and from the state's (kh, kw, cin, cout).

mod buffers;
mod model;
mod ops;
mod setup;
mod staging;
mod step;

use buffers::{DevBuf, Pinned};
use ops::Gpu;
use setup::Module;
#[cfg(test)]
pub(crate) use step::hyper;

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::cudnn::sys as dnn;
use cudarc::driver::{result as drv, sys as drv_sys, CudaContext, CudaGraph, CudaStream};

use super::cudnn::{self, ck, hwio_to_ohwi, ohwi_to_hwio, symmetric, BnDescs, ConvBufs, ConvDescs};
use super::launch::{self, DMat, Launcher, PoolArg};
use super::{kernels, libs};
use crate::backend::native::plan::{self, MemoryPlan, View};
use crate::backend::native::shared::{
    dims, fill_dropout_masks, softmax_rows, ConvGeom, Network, PoolGeom,
};
use crate::backend::native::walk::{self, Arena, Dst, Kernels, ParamNode, Pass};
use crate::backend::params::{self, Role};
use crate::backend::{Model, Optimizer, State, StepStats, Targets};

/// The moving average's device buffers.
struct EmaBufs {
    params: DevBuf,
    bn_mean: DevBuf,
    bn_var: DevBuf,
}

/// Floats in the `hyper` buffer ([`step::hyper`]).
const HYPER: usize = 7;
use crate::nn::graph::{Graph, Op};

/// Find and open the libraries, then the first GPU: an error (never a panic) when any
/// part is missing.
pub fn open_gpu() -> Result<Arc<CudaContext>> {
    libs::load(&libs::WANTED)?;
    let count = drv::device::get_count()
        .map_err(|e| anyhow!("the CUDA driver is present but does not start: {e:?}"))?;
    if count < 1 {
        bail!("the CUDA driver found no GPU");
    }
    CudaContext::new(0).map_err(|e| anyhow!("opening GPU 0: {e:?}"))
}

/// Whether a GPU is usable (libraries present, a device visible).
pub fn available() -> bool {
    libs::load(&libs::WANTED).is_ok()
        && drv::init().is_ok()
        && drv::device::get_count().is_ok_and(|c| c > 0)
}

fn dk<T>(r: std::result::Result<T, drv::DriverError>, what: &str) -> Result<T> {
    r.map_err(|e| anyhow!("CUDA {what}: {e:?}"))
}

/// Everything shaped by the batch size `n`.
struct Shaped {
    conv: HashMap<usize, ConvDescs>,
    bn: HashMap<usize, BnDescs>,
    graph: Option<CudaGraph>,
    eager_runs: usize,
}

/// The native model on a GPU.
pub struct CudaModel {
    dnn: dnn::cudnnHandle_t,
    k: Module,
    net: Network,
    /// Offsets of each parameter in the flat buffers, and the total.
    poff: Vec<usize>,
    plen: usize,
    params: DevBuf,
    grads: DevBuf,
    m: DevBuf,
    v: DevBuf,
    /// Running mean and variance, saved batch mean and inverse std, per BN node (offsets).
    boff: Vec<usize>,
    bn_mean: DevBuf,
    bn_var: DevBuf,
    save_mean: DevBuf,
    save_inv: DevBuf,
    plan: Option<MemoryPlan>,
    act: DevBuf,
    grad: DevBuf,
    /// Where a batch norm writes dx when its input has no gradient.
    sink: DevBuf,
    labels: DevBuf,
    /// The mixed-in labels (the labels themselves when nothing is mixed).
    labels2: DevBuf,
    /// [cross-entropy sum, correct] since the last read.
    stats: DevBuf,
    /// The step's rates ([`step::hyper`]).
    hyper: DevBuf,
    /// The moving average of the weights and batch-norm statistics (`ema`), in the
    /// layouts of `params`, `bn_mean` and `bn_var`.
    ema: Option<EmaBufs>,
    workspace: DevBuf,
    blas_ws: DevBuf,
    pinned: [Pinned; 2],
    slot: usize,
    shaped: HashMap<usize, Shaped>,
    written: Vec<bool>,
    step: u64,
    examples: usize,
    tf32: bool,
    use_graphs: bool,
    /// Notes for whoever watches the run ([`Model::take_notes`]).
    notes: Vec<String>,
    /// `PIPE_CUDA_SYNC=1`: synchronise after every layer (debugging; no graphs).
    debug_sync: bool,
    /// The optimizer the captured graphs were built with.
    graph_opt: Option<Optimizer>,
    // Last, so they drop after every buffer and descriptor (fields drop in order).
    blas: CudaBlas,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
}

impl CudaModel {
    fn cu(&self) -> drv_sys::CUstream {
        self.stream.cu_stream()
    }

    fn zero(&self, b: &DevBuf, floats: usize) -> Result<()> {
        if floats == 0 {
            return Ok(());
        }
        // SAFETY: `b` holds at least `floats` floats; the stream is ours.
        dk(
            unsafe { drv::memset_d8_async(b.ptr, 0, 4 * floats, self.cu()) },
            "memset",
        )
    }

    fn sync(&self) -> Result<()> {
        dk(self.stream.synchronize(), "synchronising the stream")
    }

    fn upload<T: Copy>(&self, dst: u64, src: &[T]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: `dst` has room for `src` (callers size it from the same layout); the
        // copy is synchronous on the host side (pageable memory), then the stream syncs.
        dk(
            unsafe { drv::memcpy_htod_async(dst, src, self.cu()) },
            "upload",
        )?;
        self.sync()
    }

    fn download(&self, src: u64, n: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; n];
        if n > 0 {
            self.sync()?;
            // SAFETY: `src` holds `n` floats; `out` is a live host buffer of `n` floats.
            dk(unsafe { drv::memcpy_dtoh_sync(&mut out, src) }, "download")?;
        }
        Ok(out)
    }

    fn is_conv_kernel(&self, p: usize) -> Option<[usize; 4]> {
        let s = &self.net.layout.params[p];
        (s.role == Role::Kernel && s.shape.len() == 4)
            .then(|| [s.shape[0], s.shape[1], s.shape[2], s.shape[3]])
    }

    fn upload_parts(&mut self, parts: &params::StateParts) -> Result<()> {
        for (p, off) in self.poff.clone().into_iter().enumerate() {
            let shape = self.is_conv_kernel(p);
            let prep = |v: &[f32]| match shape {
                Some(s) => hwio_to_ohwi(v, s),
                None => v.to_vec(),
            };
            self.upload(self.params.f(off), &prep(&parts.params[p]))?;
            self.upload(self.m.f(off), &prep(&parts.m[p]))?;
            self.upload(self.v.f(off), &prep(&parts.v[p]))?;
        }
        for (b, off) in self.boff.clone().into_iter().enumerate() {
            self.upload(self.bn_mean.f(off), &parts.bn_mean[b])?;
            self.upload(self.bn_var.f(off), &parts.bn_var[b])?;
        }
        self.ema = match &parts.ema {
            None => None,
            Some(e) => {
                let bufs = EmaBufs {
                    params: DevBuf::new(self.params.bytes)?,
                    bn_mean: DevBuf::new(self.bn_mean.bytes)?,
                    bn_var: DevBuf::new(self.bn_var.bytes)?,
                };
                for (p, off) in self.poff.clone().into_iter().enumerate() {
                    let v = match self.is_conv_kernel(p) {
                        Some(s) => hwio_to_ohwi(&e.params[p], s),
                        None => e.params[p].clone(),
                    };
                    self.upload(bufs.params.f(off), &v)?;
                }
                for (b, off) in self.boff.clone().into_iter().enumerate() {
                    self.upload(bufs.bn_mean.f(off), &e.bn_mean[b])?;
                    self.upload(bufs.bn_var.f(off), &e.bn_var[b])?;
                }
                Some(bufs)
            }
        };
        self.step = parts.step;
        Ok(())
    }

    fn download_flat(&self, buf: &DevBuf) -> Result<Vec<Vec<f32>>> {
        let all = self.download(buf.ptr, self.plen)?;
        Ok((0..self.net.layout.params.len())
            .map(|p| {
                let v = &all[self.poff[p]..self.poff[p] + self.net.layout.params[p].len()];
                match self.is_conv_kernel(p) {
                    Some(s) => ohwi_to_hwio(v, s),
                    None => v.to_vec(),
                }
            })
            .collect())
    }
}

impl Drop for CudaModel {
    fn drop(&mut self) {
        // Free on this model's context after its queued work, then release cuDNN; the
        // buffers drop after this (fields), the context last (held by `ctx`'s Arc).
        let _ = self.ctx.bind_to_thread();
        let _ = self.stream.synchronize();
        self.shaped.clear();
        // SAFETY: the handle was created in `new` and is destroyed once, here.
        unsafe { dnn::cudnnDestroy(self.dnn) };
    }
}

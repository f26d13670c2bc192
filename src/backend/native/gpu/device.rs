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
//! Conv kernels are kept on the device as (cout, kh, kw, cin) (cuDNN's NHWC filter
//! layout) and transposed to and from the state's (kh, kw, cin, cout).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::cudnn::sys as dnn;
use cudarc::driver::{result as drv, sys as drv_sys, CudaContext, CudaGraph, CudaStream};

use super::super::plan::{self, MemoryPlan, View};
use super::super::shared::{dims, fill_dropout_masks, softmax_rows, ConvGeom, Network, PoolGeom};
use super::super::walk::{self, Arena, Dst, Kernels, ParamNode, Pass};
use super::cudnn::{self, ck, hwio_to_ohwi, ohwi_to_hwio, symmetric, BnDescs, ConvBufs, ConvDescs};
use super::launch::{self, DMat, Launcher, PoolArg};
use super::{kernels, libs};
use crate::backend::params::{self, Role};
use crate::backend::{Model, Optimizer, State, StepStats};
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

/// A raw device allocation, freed on drop.
struct DevBuf {
    ptr: u64,
    bytes: usize,
}

impl DevBuf {
    fn new(bytes: usize) -> Result<Self> {
        let ptr = if bytes == 0 {
            0
        } else {
            // SAFETY: the context is current on this thread (bound when the model was built).
            dk(
                unsafe { drv::malloc_sync(bytes) },
                "allocating device memory",
            )?
        };
        Ok(DevBuf { ptr, bytes })
    }
    /// Address of float `i`.
    fn f(&self, i: usize) -> u64 {
        self.ptr + 4 * i as u64
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if self.ptr != 0 {
            // SAFETY: allocated by malloc_sync and freed once, here.
            let _ = unsafe { drv::free_sync(self.ptr) };
        }
    }
}

/// Page-locked host memory for asynchronous uploads, freed on drop.
struct Pinned {
    ptr: *mut u8,
    bytes: usize,
    /// Recorded after the upload that last read this buffer.
    done: drv_sys::CUevent,
}

impl Pinned {
    fn new(bytes: usize) -> Result<Self> {
        // SAFETY: a plain page-locked allocation of `bytes` (at least 1) bytes.
        let ptr = dk(
            unsafe { drv::malloc_host(bytes.max(1), 0) },
            "allocating pinned memory",
        )?;
        let done = dk(
            drv::event::create(drv_sys::CUevent_flags::CU_EVENT_DISABLE_TIMING),
            "creating an event",
        )?;
        Ok(Pinned {
            ptr: ptr.cast(),
            bytes,
            done,
        })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_host / event::create, released once here.
        unsafe {
            let _ = drv::event::synchronize(self.done);
            let _ = drv::event::destroy(self.done);
            let _ = drv::free_host(self.ptr.cast());
        }
    }
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
    /// [cross-entropy sum, correct] since the last read.
    stats: DevBuf,
    /// [lr, Adam's bias-corrected lr].
    hyper: DevBuf,
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
    /// Build on GPU 0 with the shared initial values.
    pub fn new(graph: &Graph, seed: u64) -> Result<Self> {
        let ctx = open_gpu()?;
        dk(ctx.bind_to_thread(), "binding the context")?;
        // SAFETY: no cudarc-managed allocations exist yet; we synchronise by hand.
        unsafe { ctx.disable_event_tracking() };
        let stream = dk(ctx.new_stream(), "creating a stream")?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| anyhow!("cuBLAS: {e:?}"))?;
        // A workspace of our own, so cuBLAS allocates nothing while a step is captured.
        let blas_ws = DevBuf::new(32 << 20)?;
        // SAFETY: a live handle and a device buffer that lives as long as the model.
        unsafe {
            blas_sys::cublasSetWorkspace_v2(
                *blas.handle(),
                blas_ws.ptr as *mut c_void,
                blas_ws.bytes,
            )
        }
        .result()
        .map_err(|e| anyhow!("cuBLAS workspace: {e:?}"))?;
        let mut handle: dnn::cudnnHandle_t = std::ptr::null_mut();
        // SAFETY: an out-pointer to a handle; the stream outlives the handle (both ours).
        unsafe {
            ck(dnn::cudnnCreate(&mut handle), "create")?;
            ck(
                dnn::cudnnSetStream(handle, stream.cu_stream() as dnn::cudaStream_t),
                "set stream",
            )?;
        }
        let (major, minor) = dk(ctx.compute_capability(), "compute capability")?;
        let cubin = kernels::cubin(major, minor)?;
        let k = load_kernels(&cubin, &ctx)?;

        let net = Network::new(graph)?;
        for (i, nd) in graph.nodes.iter().enumerate() {
            if let Op::BatchNorm { epsilon, .. } = nd.op {
                if epsilon < 1e-5 {
                    bail!(
                        "layer {}: cuDNN's batch norm needs epsilon >= 1e-5, the manifest gives {epsilon}",
                        nd.name
                    );
                }
            }
            if matches!(nd.op, Op::Conv2d { .. }) {
                let g = net.conv_geom(i);
                if !symmetric(&g) {
                    bail!(
                        "layer {}: padding \"same\" with stride {}x{} pads unevenly here, which cuDNN cannot; use padding = \"valid\" or stride 1 on the GPU",
                        nd.name, g.sh, g.sw
                    );
                }
            }
        }
        let values = params::init_values(&net.layout, seed);
        let mut poff = Vec::new();
        let mut plen = 0;
        for p in &net.layout.params {
            poff.push(plen);
            plen += p.len();
        }
        let mut boff = Vec::new();
        let mut blen = 0;
        for b in &net.layout.bns {
            boff.push(blen);
            blen += b.channels;
        }
        let mut model = CudaModel {
            params: DevBuf::new(4 * plen)?,
            grads: DevBuf::new(4 * plen)?,
            m: DevBuf::new(4 * plen)?,
            v: DevBuf::new(4 * plen)?,
            bn_mean: DevBuf::new(4 * blen)?,
            bn_var: DevBuf::new(4 * blen)?,
            save_mean: DevBuf::new(4 * blen)?,
            save_inv: DevBuf::new(4 * blen)?,
            stats: DevBuf::new(8)?,
            hyper: DevBuf::new(8)?,
            act: DevBuf::new(0)?,
            grad: DevBuf::new(0)?,
            sink: DevBuf::new(0)?,
            labels: DevBuf::new(0)?,
            workspace: DevBuf::new(0)?,
            pinned: [Pinned::new(0)?, Pinned::new(0)?],
            slot: 0,
            blas_ws,
            ctx,
            stream,
            blas,
            dnn: handle,
            k,
            written: vec![false; graph.nodes.len()],
            net,
            poff,
            plen,
            boff,
            plan: None,
            shaped: HashMap::new(),
            step: 0,
            examples: 0,
            tf32: std::env::var("PIPE_CUDA_TF32").map_or(true, |v| v != "0"),
            notes: Vec::new(),
            use_graphs: std::env::var("PIPE_CUDA_GRAPHS").map_or(true, |v| v != "0")
                && std::env::var("PIPE_CUDA_SYNC").map_or(true, |v| v != "1"),
            debug_sync: std::env::var("PIPE_CUDA_SYNC").is_ok_and(|v| v == "1"),
            graph_opt: None,
        };
        let parts = params::StateParts {
            m: values.iter().map(|p| vec![0.0; p.len()]).collect(),
            v: values.iter().map(|p| vec![0.0; p.len()]).collect(),
            bn_mean: model
                .net
                .layout
                .bns
                .iter()
                .map(|b| vec![0.0; b.channels])
                .collect(),
            bn_var: model
                .net
                .layout
                .bns
                .iter()
                .map(|b| vec![1.0; b.channels])
                .collect(),
            params: values
                .into_iter()
                .map(|v| v.into_iter().map(|x| x as f32).collect())
                .collect(),
            step: 0,
        };
        model.upload_parts(&parts)?;
        model.zero(&model.stats, 2)?;
        Ok(model)
    }

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

    /// Plan for batches of up to `n` (replanned when `n` exceeds the capacity).
    fn ensure_plan(&mut self, n: usize) -> Result<()> {
        if self.plan.as_ref().is_some_and(|p| p.cap >= n) {
            return Ok(());
        }
        self.sync()?;
        self.shaped.clear();
        let p = plan::plan(&self.net.graph, &self.net.infos, n, false);
        self.act = DevBuf::new(4 * p.act_len)?;
        self.grad = DevBuf::new(4 * p.grad_len)?;
        let sink = self
            .net
            .graph
            .nodes
            .iter()
            .filter(|nd| matches!(nd.op, Op::BatchNorm { .. }))
            .map(|nd| self.net.infos[nd.inputs[0]].shape.numel() * n)
            .max()
            .unwrap_or(0);
        self.sink = DevBuf::new(4 * sink)?;
        self.labels = DevBuf::new(4 * n)?;
        let masks: usize = (0..self.net.graph.nodes.len())
            .filter(|&i| p.mask[i].is_some())
            .map(|i| self.net.infos[i].shape.numel() * n)
            .sum();
        let bytes = 4 * (self.net.infos[0].shape.numel() * n + n + masks + 2);
        self.pinned = [Pinned::new(bytes)?, Pinned::new(bytes)?];
        self.plan = Some(p);
        Ok(())
    }

    /// Descriptors and measured algorithms for batch size `n` (built once per size).
    fn ensure_shaped(&mut self, n: usize) -> Result<()> {
        if self.shaped.contains_key(&n) {
            return Ok(());
        }
        let plan = self.plan.take().expect("planned");
        let r = self.build_shaped(&plan, n);
        self.plan = Some(plan);
        let s = r?;
        self.shaped.insert(n, s);
        Ok(())
    }

    fn build_shaped(&mut self, plan: &MemoryPlan, n: usize) -> Result<Shaped> {
        let mut conv = HashMap::new();
        let mut bn = HashMap::new();
        // Measuring needs room: a generous scratch workspace, freed afterwards.
        let (free, _) = dk(self.ctx.mem_get_info(), "memory info")?;
        let trial = (free / 4).min(1 << 30);
        let scratch = DevBuf::new(trial)?;
        let mut need = self.workspace.bytes;
        for i in 0..self.net.graph.nodes.len() {
            let nd = &self.net.graph.nodes[i];
            match nd.op {
                Op::Conv2d { .. } => {
                    let g = self.net.conv_geom(i);
                    let kp = self.net.params[i].kernel();
                    let bufs = ConvBufs {
                        x: self.act.f(plan.act[nd.inputs[0]].off),
                        w: self.params.f(self.poff[kp]),
                        y: self.act.f(plan.act[i].off),
                        dy: self.grad.f(plan.grad[i].expect("conv gradient").off),
                        dx: plan.grad[nd.inputs[0]].map(|v| self.grad.f(v.off)),
                        dw: self.grads.f(self.poff[kp]),
                    };
                    let views = (plan.act[nd.inputs[0]], plan.act[i]);
                    let ws = (scratch.ptr, scratch.bytes);
                    let (d, m) = ConvDescs::measure(self.dnn, &g, n, views, self.tf32, &bufs, ws)
                        .with_context(|| format!("layer {}", nd.name))?;
                    need = need.max(m);
                    conv.insert(i, d);
                }
                Op::BatchNorm { .. } => {
                    let (h, w, _) = dims(self.net.infos[i].shape);
                    let (xv, yv) = (plan.act[nd.inputs[0]], plan.act[i]);
                    bn.insert(i, BnDescs::new(n, h, w, xv, yv)?);
                }
                _ => {}
            }
        }
        drop(scratch);
        if need > self.workspace.bytes {
            self.sync()?;
            self.workspace = DevBuf::new(need)?;
            // A new workspace address invalidates graphs captured for other sizes.
            for s in self.shaped.values_mut() {
                s.graph = None;
                s.eager_runs = 0;
            }
        }
        Ok(Shaped {
            conv,
            bn,
            graph: None,
            eager_runs: 0,
        })
    }

    /// With `PIPE_CUDA_SYNC=1`: wait for the device after each layer, so an asynchronous
    /// failure names the layer and direction it came from (graphs are off in that mode).
    fn debug_check(&self, direction: &str, i: usize) -> Result<()> {
        if !self.debug_sync {
            return Ok(());
        }
        let nd = &self.net.graph.nodes[i];
        self.sync()
            .with_context(|| format!("{direction} of layer `{}` ({})", nd.name, nd.op.name()))
    }

    /// Row-major `C (m x n) = alpha * C + op(A) op(B)` expressed for column-major cuBLAS:
    /// the caller passes the column-major view (C^T = B^T A^T), see `Gpu::dense_forward`.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        beta: f32,
        c: u64,
        ldc: usize,
    ) -> Result<()> {
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let alpha = 1f32;
        // SAFETY: a, b, c are device pointers into our buffers with the given leading
        // dimensions; alpha and beta are host scalars (cuBLAS's default pointer mode).
        unsafe {
            blas::sgemm(
                *self.blas.handle(),
                op(ta),
                op(tb),
                m as i32,
                n as i32,
                k as i32,
                &alpha,
                a as *const f32,
                lda as i32,
                b as *const f32,
                ldb as i32,
                &beta,
                c as *mut f32,
                ldc as i32,
            )
        }
        .map_err(|e| anyhow!("cuBLAS sgemm: {e:?}"))
    }

    /// The device part of a training step (what a CUDA graph captures): forward, loss,
    /// backward, L2 and the optimizer update.
    fn device_step(
        &mut self,
        plan: &MemoryPlan,
        sh: &Shaped,
        n: usize,
        opt: &Optimizer,
    ) -> Result<()> {
        let mut written = std::mem::take(&mut self.written);
        let r = self.train_walk(plan, sh, n, opt, &mut written);
        self.written = written;
        r
    }

    fn train_walk(
        &self,
        plan: &MemoryPlan,
        sh: &Shaped,
        n: usize,
        opt: &Optimizer,
        written: &mut [bool],
    ) -> Result<()> {
        let mut gpu = Gpu { m: self, sh };
        walk::train_pass(&self.net, plan, &mut gpu, n, written)?;
        let (w, g, m, v) = (self.params.ptr, self.grads.ptr, self.m.ptr, self.v.ptr);
        let (len, hyper) = (self.plen, self.hyper.ptr);
        match *opt {
            Optimizer::Sgd { momentum, nesterov } => {
                launch::sgd_update(self, w, g, m, len, hyper, momentum as f32, nesterov)
            }
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            } => {
                let b = (beta1 as f32, beta2 as f32, epsilon as f32);
                launch::adam_update(self, w, g, m, v, len, hyper, b)
            }
        }
    }

    /// Copy a batch, its labels, dropout masks and the rates into the next pinned slot and
    /// start their upload (the host returns at once; the stream orders it before the step).
    fn stage_batch(
        &mut self,
        images: &[f32],
        labels: &[i64],
        hyper: [f32; 2],
        dropout_seed: Option<u64>,
    ) -> Result<()> {
        let plan = self.plan.as_ref().expect("planned");
        let n = labels.len();
        let slot = self.slot;
        self.slot ^= 1;
        let pin = &self.pinned[slot];
        // SAFETY: the event marks the end of the last upload that read this slot.
        dk(
            unsafe { drv::event::synchronize(pin.done) },
            "waiting for an upload",
        )?;
        let floats = pin.bytes / 4;
        // SAFETY: the slot holds `floats` f32s (sized for the plan's capacity) and no
        // upload reads it now (waited above).
        let buf = unsafe { std::slice::from_raw_parts_mut(pin.ptr.cast::<f32>(), floats) };
        // (start in the slot, floats, device destination) of each upload.
        let mut copies: Vec<(usize, usize, u64)> = Vec::new();
        let mut place = |count: usize, dst: u64| -> usize {
            let start = copies.last().map_or(0, |&(s, c, _)| s + c);
            copies.push((start, count, dst));
            start
        };
        let at = place(images.len(), self.act.f(plan.act[0].off));
        buf[at..at + images.len()].copy_from_slice(images);
        let at = place(n, self.labels.ptr);
        for (b, &l) in buf[at..at + n].iter_mut().zip(labels) {
            *b = f32::from_bits(l as i32 as u32);
        }
        let at = place(2, self.hyper.ptr);
        buf[at..at + 2].copy_from_slice(&hyper);
        if let Some(seed) = dropout_seed {
            // The same masks as the CPU path and the dfdx backend.
            let (graph, infos) = (&self.net.graph, &self.net.infos);
            fill_dropout_masks(graph, infos, n, seed, buf, |i, len| {
                place(len, self.act.f(plan.mask[i].expect("dropout has a mask")))
            });
        }
        for (start, count, dst) in copies {
            // SAFETY: pinned source range inside the slot; destination sized by the plan.
            dk(
                unsafe { drv::memcpy_htod_async(dst, &buf[start..start + count], self.cu()) },
                "uploading a batch",
            )?;
        }
        // SAFETY: a live event on our stream.
        dk(
            unsafe { drv::event::record(pin.done, self.cu()) },
            "recording an event",
        )?;
        Ok(())
    }
}

impl Launcher for CudaModel {
    fn max_blocks(&self) -> u32 {
        self.k.max_blocks
    }

    fn launch(
        &self,
        name: &'static str,
        grid: (u32, u32),
        block: (u32, u32),
        args: &[launch::Arg],
    ) -> Result<()> {
        let f = *self
            .k
            .funcs
            .get(name)
            .ok_or_else(|| anyhow!("no kernel {name}"))?;
        launch::with_packed(args, |ptrs| {
            let (grid, block) = ((grid.0, grid.1, 1), (block.0, block.1, 1));
            // SAFETY: `f` is from our module; `args` match its C signature (the typed
            // launchers' contract); the slots live until the launch returns (it copies).
            let r = unsafe { drv::launch_kernel(f, grid, block, 0, self.cu(), ptrs) };
            dk(r, name)
        })
    }
}

/// The GPU device for one pass: the model's buffers and the descriptors for one batch
/// size. Conv and batch norm run in cuDNN, dense in cuBLAS, the rest in our kernels.
struct Gpu<'a> {
    m: &'a CudaModel,
    sh: &'a Shaped,
}

impl Gpu<'_> {
    /// View `v` of the activation arena.
    fn a(&self, v: View) -> DMat {
        DMat::at(self.m.act.ptr, v)
    }

    /// View `v` of the gradient arena.
    fn g(&self, v: View) -> DMat {
        DMat::at(self.m.grad.ptr, v)
    }

    /// The cuDNN workspace: (address, bytes).
    fn ws(&self) -> (u64, usize) {
        (self.m.workspace.ptr, self.m.workspace.bytes)
    }

    /// Address of parameter `p`.
    fn param(&self, p: usize) -> u64 {
        self.m.params.f(self.m.poff[p])
    }

    /// Address of parameter `p`'s gradient.
    fn dparam(&self, p: usize) -> u64 {
        self.m.grads.f(self.m.poff[p])
    }

    /// The batch-norm statistics at offset `off`: (running mean, running var, saved mean,
    /// saved inverse std).
    fn stats(&self, off: usize) -> [u64; 4] {
        let m = self.m;
        [
            m.bn_mean.f(off),
            m.bn_var.f(off),
            m.save_mean.f(off),
            m.save_inv.f(off),
        ]
    }
}

impl Kernels for Gpu<'_> {
    type Error = anyhow::Error;

    fn end_node(&mut self, pass: Pass, i: usize, _dx: Option<View>, _n: usize) -> Result<()> {
        self.m.debug_check(pass.name(), i)
    }

    fn zero_param_grads(&mut self) -> Result<()> {
        self.m.zero(&self.m.grads, self.m.plen)
    }

    fn softmax_cross_entropy(&mut self, x: View, dx: View, n: usize) -> Result<()> {
        let m = self.m;
        launch::softmax_cross_entropy(m, self.a(x), m.labels.ptr, n, self.g(dx), m.stats.ptr)
    }

    fn l2_backward(&mut self, param: usize, l2: f64) -> Result<()> {
        let len = self.m.net.layout.params[param].len();
        launch::l2_backward(
            self.m,
            self.param(param),
            self.dparam(param),
            len,
            l2 as f32,
        )
    }

    fn conv2d_forward(
        &mut self,
        node: ParamNode,
        _g: &ConvGeom,
        x: View,
        y: View,
        n: usize,
    ) -> Result<()> {
        let (m, d) = (self.m, &self.sh.conv[&node.i]);
        let w = self.param(node.params.kernel());
        let (xp, yp) = (m.act.f(x.off), m.act.f(y.off));
        cudnn::conv_forward(m.dnn, d, (xp, w, yp), self.ws())?;
        if let Some(b) = node.params.bias {
            launch::bias_forward(m, self.a(y), self.param(b), y.rows(n))?;
        }
        Ok(())
    }

    fn conv2d_backward(
        &mut self,
        node: ParamNode,
        _g: &ConvGeom,
        x: View,
        dy: View,
        dx: Option<Dst>,
        n: usize,
    ) -> Result<()> {
        let (m, d) = (self.m, &self.sh.conv[&node.i]);
        let kp = node.params.kernel();
        let (xp, dyp) = (m.act.f(x.off), m.grad.f(dy.off));
        cudnn::conv_backward_filter(m.dnn, d, (xp, dyp, self.dparam(kp)), self.ws())?;
        if let Some(dx) = dx {
            let (w, dxp) = (self.param(kp), m.grad.f(dx.v.off));
            cudnn::conv_backward_data(m.dnn, d, (w, dyp, dxp), dx.acc, self.ws())?;
        }
        if let Some(b) = node.params.bias {
            launch::bias_backward(m, self.g(dy), self.dparam(b), dy.rows(n))?;
        }
        Ok(())
    }

    fn batchnorm_forward_train(
        &mut self,
        node: ParamNode,
        x: View,
        y: View,
        rows: usize,
        epsilon: f64,
        momentum: f64,
        relu: bool,
    ) -> Result<()> {
        let (m, d) = (self.m, &self.sh.bn[&node.i]);
        let (gi, bi, k) = node.params.batchnorm();
        let [mean, var, save_mean, save_inv] = self.stats(m.boff[k]);
        // One value per channel (a batch of one flat vector): cuDNN's unbiased variance
        // would divide by zero; the CPU folds in variance 0. Same here, below.
        let single = rows == 1;
        let factor = if single { 0.0 } else { 1.0 - momentum };
        let (xp, yp) = (m.act.f(x.off), m.act.f(y.off));
        let (g, b) = (self.param(gi), self.param(bi));
        let (running, saved) = ((mean, var), (save_mean, save_inv));
        cudnn::batchnorm_forward_training(
            m.dnn,
            d,
            (xp, yp),
            (g, b),
            factor,
            running,
            epsilon,
            saved,
        )?;
        if single {
            launch::batchnorm_running_single(m, mean, var, save_mean, y.c, momentum as f32)?;
        }
        if relu {
            launch::relu_forward(m, self.a(y), self.a(y), rows)?;
        }
        Ok(())
    }

    fn batchnorm_forward_infer(
        &mut self,
        node: ParamNode,
        x: View,
        y: View,
        rows: usize,
        epsilon: f64,
        relu: bool,
    ) -> Result<()> {
        let (m, d) = (self.m, &self.sh.bn[&node.i]);
        let (gi, bi, k) = node.params.batchnorm();
        let [mean, var, _, _] = self.stats(m.boff[k]);
        let (xp, yp) = (m.act.f(x.off), m.act.f(y.off));
        let (g, b) = (self.param(gi), self.param(bi));
        cudnn::batchnorm_forward_inference(m.dnn, d, (xp, yp), (g, b), (mean, var), epsilon)?;
        if relu {
            launch::relu_forward(m, self.a(y), self.a(y), rows)?;
        }
        Ok(())
    }

    fn batchnorm_backward(
        &mut self,
        node: ParamNode,
        x: View,
        y: View,
        dy: View,
        dx: Option<Dst>,
        rows: usize,
        epsilon: f64,
        relu: bool,
    ) -> Result<()> {
        let (m, d) = (self.m, &self.sh.bn[&node.i]);
        if relu {
            // dy *= (y > 0), in place: the relu's gradient is this node's.
            launch::relu_backward(m, self.a(y), self.g(dy), self.g(dy), rows, false)?;
        }
        let (gi, bi, k) = node.params.batchnorm();
        let [_, _, save_mean, save_inv] = self.stats(m.boff[k]);
        // Without an input gradient, dx goes to the sink.
        let (dxp, acc) = match dx {
            Some(dx) => (m.grad.f(dx.v.off), dx.acc),
            None => (m.sink.ptr, false),
        };
        let (xp, dyp) = (m.act.f(x.off), m.grad.f(dy.off));
        let (g, dg, db) = (self.param(gi), self.dparam(gi), self.dparam(bi));
        let saved = (save_mean, save_inv);
        let bufs = (xp, dyp, dxp);
        cudnn::batchnorm_backward(m.dnn, d, bufs, acc, g, (dg, db), epsilon, saved)
    }

    fn relu_forward(&mut self, x: View, y: View, rows: usize) -> Result<()> {
        launch::relu_forward(self.m, self.a(x), self.a(y), rows)
    }

    fn relu_backward(&mut self, y: View, dy: View, dx: Dst, rows: usize) -> Result<()> {
        let (y, dy, dxm) = (self.a(y), self.g(dy), self.g(dx.v));
        launch::relu_backward(self.m, y, dy, dxm, rows, dx.acc)
    }

    fn elu_forward(&mut self, x: View, y: View, rows: usize, alpha: f64) -> Result<()> {
        launch::elu_forward(self.m, self.a(x), self.a(y), rows, alpha as f32)
    }

    fn elu_backward(&mut self, x: View, dy: View, dx: Dst, rows: usize, alpha: f64) -> Result<()> {
        let (x, dy, dxm) = (self.a(x), self.g(dy), self.g(dx.v));
        launch::elu_backward(self.m, x, dy, dxm, rows, alpha as f32, dx.acc)
    }

    fn maxpool_forward(&mut self, x: View, y: View, g: &PoolGeom, n: usize) -> Result<()> {
        let p = PoolArg::new(g, n, y.c);
        launch::maxpool_forward(self.m, self.a(x), self.a(y), p)
    }

    fn maxpool_backward(
        &mut self,
        x: View,
        y: View,
        dy: View,
        dx: Dst,
        g: &PoolGeom,
        n: usize,
    ) -> Result<()> {
        let p = PoolArg::new(g, n, y.c);
        let (x, y, dy, dxm) = (self.a(x), self.a(y), self.g(dy), self.g(dx.v));
        launch::maxpool_backward(self.m, x, y, dy, dxm, p, dx.acc)
    }

    fn avgpool_forward(&mut self, x: View, y: View, g: &PoolGeom, n: usize) -> Result<()> {
        let p = PoolArg::new(g, n, y.c);
        launch::avgpool_forward(self.m, self.a(x), self.a(y), p)
    }

    fn avgpool_backward(&mut self, dy: View, dx: Dst, g: &PoolGeom, n: usize) -> Result<()> {
        let p = PoolArg::new(g, n, dy.c);
        launch::avgpool_backward(self.m, self.g(dy), self.g(dx.v), p, dx.acc)
    }

    fn global_avgpool_forward(&mut self, x: View, y: View, n: usize) -> Result<()> {
        launch::global_avgpool_forward(self.m, self.a(x), self.a(y), n, x.hw)
    }

    fn global_avgpool_backward(&mut self, dy: View, dx: Dst, n: usize) -> Result<()> {
        let (dy, dxm) = (self.g(dy), self.g(dx.v));
        launch::global_avgpool_backward(self.m, dy, dxm, n, dx.v.hw, dx.acc)
    }

    fn dropout_forward(&mut self, x: View, mask: usize, y: View, rows: usize) -> Result<()> {
        let mask = self.m.act.f(mask);
        launch::dropout_forward(self.m, self.a(x), mask, self.a(y), rows)
    }

    fn dropout_backward(&mut self, mask: usize, dy: View, dx: Dst, rows: usize) -> Result<()> {
        let (mask, dy, dxm) = (self.m.act.f(mask), self.g(dy), self.g(dx.v));
        launch::dropout_backward(self.m, mask, dy, dxm, rows, dx.acc)
    }

    fn flatten_forward(&mut self, x: View, y: View, n: usize) -> Result<()> {
        // n rows of one image each: the input is packed (a flatten's input is its own).
        debug_assert_eq!(x.ld, x.c, "flatten reads a packed input");
        let len = x.hw * x.c;
        let src = DMat {
            ptr: self.m.act.f(x.off),
            ld: len,
            c: len,
        };
        launch::copy_rows(self.m, src, self.a(y), n, false)
    }

    fn flatten_backward(&mut self, dy: View, dx: Dst, n: usize) -> Result<()> {
        let len = dx.v.hw * dx.v.c;
        let dst = DMat {
            ptr: self.m.grad.f(dx.v.off),
            ld: len,
            c: len,
        };
        launch::copy_rows(self.m, self.g(dy), dst, n, dx.acc)
    }

    fn dense_forward(&mut self, node: ParamNode, x: View, y: View, n: usize) -> Result<()> {
        let m = self.m;
        let w = self.param(node.params.kernel());
        // Y (n x units) = X W: column-major Y^T = W^T X^T.
        m.gemm(
            false,
            false,
            y.c,
            n,
            x.c,
            w,
            y.c,
            m.act.f(x.off),
            x.ld,
            0.0,
            m.act.f(y.off),
            y.ld,
        )?;
        if let Some(b) = node.params.bias {
            launch::bias_forward(m, self.a(y), self.param(b), y.rows(n))?;
        }
        Ok(())
    }

    fn dense_backward(
        &mut self,
        node: ParamNode,
        x: View,
        dy: View,
        dx: Option<Dst>,
        n: usize,
    ) -> Result<()> {
        let m = self.m;
        let kp = node.params.kernel();
        let (cin, units) = (x.c, dy.c);
        let (xp, dyp) = (m.act.f(x.off), m.grad.f(dy.off));
        // dW (cin x units) = X^T dY: column-major dW^T = dY^T X.
        m.gemm(
            false,
            true,
            units,
            cin,
            n,
            dyp,
            dy.ld,
            xp,
            x.ld,
            0.0,
            self.dparam(kp),
            units,
        )?;
        if let Some(b) = node.params.bias {
            launch::bias_backward(m, self.g(dy), self.dparam(b), n)?;
        }
        if let Some(dx) = dx {
            // dX (n x cin) [+]= dY W^T: column-major dX^T = W dY^T.
            let (w, dxp) = (self.param(kp), m.grad.f(dx.v.off));
            let acc = if dx.acc { 1.0 } else { 0.0 };
            m.gemm(
                true, false, cin, n, units, w, units, dyp, dy.ld, acc, dxp, dx.v.ld,
            )?;
        }
        Ok(())
    }

    fn add_forward(&mut self, a: View, b: View, y: View, rows: usize) -> Result<()> {
        launch::add_forward(self.m, self.a(a), self.a(b), self.a(y), rows)
    }

    fn copy_rows(&mut self, arena: Arena, src: View, dst: Dst, rows: usize) -> Result<()> {
        let base = match arena {
            Arena::Act => self.m.act.ptr,
            Arena::Grad => self.m.grad.ptr,
        };
        let (s, d) = (DMat::at(base, src), DMat::at(base, dst.v));
        launch::copy_rows(self.m, s, d, rows, dst.acc)
    }

    fn softmax_forward(&mut self, x: View, y: View, rows: usize) -> Result<()> {
        launch::softmax_forward(self.m, self.a(x), self.a(y), rows)
    }

    fn softmax_backward(&mut self, y: View, dy: View, dx: Dst, rows: usize) -> Result<()> {
        let (y, dy, dxm) = (self.a(y), self.g(dy), self.g(dx.v));
        launch::softmax_backward(self.m, y, dy, dxm, rows, dx.acc)
    }
}

/// The loaded kernel module.
struct Module {
    funcs: HashMap<&'static str, drv_sys::CUfunction>,
    max_blocks: u32,
}

fn load_kernels(cubin: &[u8], ctx: &Arc<CudaContext>) -> Result<Module> {
    dk(ctx.bind_to_thread(), "binding the context")?;
    // SAFETY: a CUBIN image produced by NVRTC for this device's architecture; the module
    // stays loaded for the life of the process (its functions are kept in `Module`).
    let module = dk(
        unsafe { drv::module::load_data(cubin.as_ptr().cast()) },
        "loading the kernels",
    )?;
    let mut funcs = HashMap::new();
    for name in kernels::NAMES {
        let c = std::ffi::CString::new(name).expect("no NUL");
        // SAFETY: a loaded module and a NUL-terminated name.
        let f = dk(unsafe { drv::module::get_function(module, c) }, name)?;
        funcs.insert(name, f);
    }
    let sms = dk(
        ctx.attribute(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
        "SM count",
    )?;
    Ok(Module {
        funcs,
        max_blocks: (sms.max(1) as u32) * 8,
    })
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

impl Model for CudaModel {
    fn train_step(
        &mut self,
        images: &[f32],
        labels: &[i64],
        opt: &Optimizer,
        lr: f64,
        dropout_seed: u64,
    ) -> Result<StepStats> {
        let n = labels.len();
        let k = self.net.classes;
        if let Some(&l) = labels.iter().find(|&&l| l < 0 || l as usize >= k) {
            bail!("label {l} out of range for a network with {k} classes");
        }
        let px = self.net.infos[0].shape.numel();
        if images.len() != n * px {
            bail!(
                "the batch holds {} values, {n} images need {}",
                images.len(),
                n * px
            );
        }
        dk(self.ctx.bind_to_thread(), "binding the context")?;
        self.ensure_plan(n)?;
        self.ensure_shaped(n)?;
        self.step += 1;
        let t = self.step as f64;
        let lr_t = match *opt {
            Optimizer::Adam { beta1, beta2, .. } => {
                lr * (1.0 - beta2.powf(t)).sqrt() / (1.0 - beta1.powf(t))
            }
            Optimizer::Sgd { .. } => lr,
        };
        self.stage_batch(images, labels, [lr as f32, lr_t as f32], Some(dropout_seed))?;
        if self.graph_opt.as_ref() != Some(opt) {
            for s in self.shaped.values_mut() {
                s.graph = None;
                s.eager_runs = 0;
            }
            self.graph_opt = Some(opt.clone());
        }
        let plan = self.plan.take().expect("planned");
        let mut sh = self.shaped.remove(&n).expect("shaped");
        let r = self.run_step(&plan, &mut sh, n, opt);
        self.plan = Some(plan);
        self.shaped.insert(n, sh);
        r?;
        self.examples += n;
        Ok(StepStats {
            loss: f64::NAN,
            correct: 0,
        })
    }

    fn take_stats(&mut self) -> Result<Option<(f64, usize)>> {
        let s = self.download(self.stats.ptr, 2)?;
        self.zero(&self.stats, 2)?;
        let (sum, correct) = (s[0] as f64, s[1].round() as usize);
        if !sum.is_finite() {
            bail!("the loss is {sum} (diverged); lower the learning rate");
        }
        self.examples = 0;
        Ok(Some((sum, correct)))
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn predict(&mut self, images: &[f32], n: usize) -> Result<Vec<f32>> {
        let px = self.net.infos[0].shape.numel();
        if images.len() != n * px {
            bail!(
                "the batch holds {} values, {n} images need {}",
                images.len(),
                n * px
            );
        }
        dk(self.ctx.bind_to_thread(), "binding the context")?;
        let cap = self.plan.as_ref().map_or(n.clamp(1, 128), |p| p.cap);
        self.ensure_plan(cap)?;
        let softmax = self.net.ends_in_softmax();
        let mut out = Vec::with_capacity(n * self.net.classes);
        let mut b0 = 0;
        while b0 < n {
            let b1 = (b0 + cap).min(n);
            let m = b1 - b0;
            self.ensure_shaped(m)?;
            let zeros = vec![0i64; m];
            self.stage_batch(&images[b0 * px..b1 * px], &zeros, [0.0, 0.0], None)?;
            let plan = self.plan.take().expect("planned");
            let sh = self.shaped.remove(&m).expect("shaped");
            let r = walk::forward(&self.net, &plan, &mut Gpu { m: self, sh: &sh }, m, false);
            let lv = plan.act[self.net.last()];
            self.plan = Some(plan);
            self.shaped.insert(m, sh);
            r?;
            let raw = self.download(self.act.f(lv.off), m * lv.ld)?;
            let start = out.len();
            for row in raw.chunks(lv.ld) {
                out.extend_from_slice(&row[..self.net.classes]);
            }
            if softmax {
                softmax_rows(&mut out[start..], self.net.classes);
            }
            b0 = b1;
        }
        Ok(out)
    }

    fn state(&self) -> State {
        let get = || -> Result<params::StateParts> {
            let bn = |b: &DevBuf| -> Result<Vec<Vec<f32>>> {
                let all = self.download(
                    b.ptr,
                    self.boff.last().map_or(0, |o| {
                        o + self.net.layout.bns.last().map_or(0, |b| b.channels)
                    }),
                )?;
                Ok(self
                    .net
                    .layout
                    .bns
                    .iter()
                    .zip(&self.boff)
                    .map(|(s, &o)| all[o..o + s.channels].to_vec())
                    .collect())
            };
            Ok(params::StateParts {
                params: self.download_flat(&self.params)?,
                m: self.download_flat(&self.m)?,
                v: self.download_flat(&self.v)?,
                bn_mean: bn(&self.bn_mean)?,
                bn_var: bn(&self.bn_var)?,
                step: self.step,
            })
        };
        // The trait returns a state, not a result: a device failure here is fatal.
        let parts = get().unwrap_or_else(|e| panic!("reading the model back from the GPU: {e:#}"));
        self.net.layout.to_state(&parts)
    }

    fn load_state(&mut self, st: &State) -> Result<()> {
        let parts = self.net.layout.from_state(st)?;
        dk(self.ctx.bind_to_thread(), "binding the context")?;
        self.upload_parts(&parts)
    }

    fn classes(&self) -> usize {
        self.net.classes
    }

    fn device_bytes(&self) -> Option<usize> {
        let bufs = [
            &self.params,
            &self.grads,
            &self.m,
            &self.v,
            &self.bn_mean,
            &self.bn_var,
            &self.save_mean,
            &self.save_inv,
            &self.act,
            &self.grad,
            &self.sink,
            &self.labels,
            &self.stats,
            &self.hyper,
            &self.workspace,
            &self.blas_ws,
        ];
        Some(bufs.iter().map(|b| b.bytes).sum())
    }
}

impl CudaModel {
    /// Run the device part of a step: eagerly the first times for this batch size, then
    /// captured once as a CUDA graph and replayed.
    fn run_step(
        &mut self,
        plan: &MemoryPlan,
        sh: &mut Shaped,
        n: usize,
        opt: &Optimizer,
    ) -> Result<()> {
        if let Some(g) = &sh.graph {
            return dk(g.launch(), "replaying the step graph");
        }
        if !self.use_graphs || sh.eager_runs < 1 {
            sh.eager_runs += 1;
            return self.device_step(plan, sh, n, opt);
        }
        dk(
            self.stream
                .begin_capture(drv_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
            "starting a graph capture",
        )?;
        let captured = self.device_step(plan, sh, n, opt);
        let ended = self
            .stream
            .end_capture(drv_sys::CUgraphInstantiate_flags(0));
        match (captured, ended) {
            (Ok(()), Ok(Some(g))) => {
                dk(g.launch(), "launching the step graph")?;
                sh.graph = Some(g);
                Ok(())
            }
            (captured, ended) => {
                // Capture is an optimisation: report once and run this size eagerly.
                self.notes.push(format!(
                    "note: the training step could not be captured as a CUDA graph ({}); running it eagerly",
                    match (&captured, &ended) {
                        (Err(e), _) => format!("{e:#}"),
                        (_, Err(e)) => format!("{e:?}"),
                        _ => "empty graph".into(),
                    }
                ));
                self.use_graphs = false;
                self.device_step(plan, sh, n, opt)
            }
        }
    }
}

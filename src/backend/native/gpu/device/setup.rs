//! Building the model on the GPU, planning per batch capacity, cuDNN's descriptors per
//! batch size, and loading our kernels.

use super::*;

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
            hyper: DevBuf::new(4 * HYPER)?,
            ema: None,
            act: DevBuf::new(0)?,
            grad: DevBuf::new(0)?,
            sink: DevBuf::new(0)?,
            labels: DevBuf::new(0)?,
            labels2: DevBuf::new(0)?,
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
            ema: None,
        };
        model.upload_parts(&parts)?;
        model.zero(&model.stats, 2)?;
        Ok(model)
    }

    /// Plan for batches of up to `n` (replanned when `n` exceeds the capacity).
    pub(super) fn ensure_plan(&mut self, n: usize) -> Result<()> {
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
        self.labels2 = DevBuf::new(4 * n)?;
        let masks: usize = (0..self.net.graph.nodes.len())
            .filter(|&i| p.mask[i].is_some())
            .map(|i| self.net.infos[i].shape.numel() * n)
            .sum();
        let bytes = 4 * (self.net.infos[0].shape.numel() * n + 2 * n + masks + HYPER);
        self.pinned = [Pinned::new(bytes)?, Pinned::new(bytes)?];
        self.plan = Some(p);
        Ok(())
    }

    /// Descriptors and measured algorithms for batch size `n` (built once per size).
    pub(super) fn ensure_shaped(&mut self, n: usize) -> Result<()> {
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

    pub(super) fn build_shaped(&mut self, plan: &MemoryPlan, n: usize) -> Result<Shaped> {
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
}

/// The loaded kernel module.
pub(super) struct Module {
    pub(super) funcs: HashMap<&'static str, drv_sys::CUfunction>,
    pub(super) max_blocks: u32,
}

pub(super) fn load_kernels(cubin: &[u8], ctx: &Arc<CudaContext>) -> Result<Module> {
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

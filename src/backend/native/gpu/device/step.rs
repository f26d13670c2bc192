//! The training step on the device: the walk's training pass and the optimizer's update,
//! run eagerly the first time for each batch size and then captured as a CUDA graph and
//! replayed.

use super::*;

impl CudaModel {
    /// The device part of a training step (what a CUDA graph captures): forward, loss,
    /// backward, L2 and the optimizer update.
    pub(super) fn device_step(
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

    pub(super) fn train_walk(
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
            Optimizer::Sgd {
                momentum,
                nesterov,
                weight_decay: 0.0,
            } => launch::sgd_update(self, w, g, m, len, hyper, momentum as f32, nesterov),
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            } => {
                let b = (beta1 as f32, beta2 as f32, epsilon as f32);
                launch::adam_update(self, w, g, m, v, len, hyper, b)
            }
            Optimizer::Sgd { .. } | Optimizer::Adamw { .. } => Err(no_decoupled_decay()),
        }
    }
}

impl CudaModel {
    /// Run the device part of a step: eagerly the first times for this batch size, then
    /// captured once as a CUDA graph and replayed.
    pub(super) fn run_step(
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

/// What the GPU says of decoupled weight decay, which its update kernels do not have yet.
pub(super) fn no_decoupled_decay() -> anyhow::Error {
    anyhow::anyhow!(
        "the native CUDA backend has no decoupled weight decay yet (optimizer = \"adamw\", decoupled_weight_decay): train with device = \"cpu\""
    )
}

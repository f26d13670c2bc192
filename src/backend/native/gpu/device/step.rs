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
            Optimizer::Sgd { nesterov, .. } => {
                launch::sgd_update(self, w, g, m, len, hyper, nesterov)
            }
            Optimizer::Adam { beta2, .. } | Optimizer::Adamw { beta2, .. } => {
                launch::adam_update(self, w, g, m, v, len, hyper, beta2 as f32)
            }
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

/// The step's rates as the kernels read them from the device: lr, Adam's bias-corrected lr,
/// the decoupled decay's keep factor `1 - lr * weight_decay` (1 without), the momentum (SGD)
/// or beta1 (Adam, AdamW), epsilon (AdamW's times `sqrt(1 - beta2^t)`: torch's eps added to
/// the bias-corrected sqrt(v)), the weight of the labels (1 unless mixed) and label
/// smoothing — the same arithmetic as [`Optimizer::update`] and the CPU's loss.
pub(crate) fn hyper(opt: &Optimizer, lr: f64, t: f64, targets: &Targets<'_>) -> [f32; HYPER] {
    let (lr_t, eps) = match *opt {
        Optimizer::Sgd { .. } => (lr, 0.0),
        Optimizer::Adam {
            beta1,
            beta2,
            epsilon,
        } => (
            lr * (1.0 - beta2.powf(t)).sqrt() / (1.0 - beta1.powf(t)),
            epsilon,
        ),
        Optimizer::Adamw {
            beta1,
            beta2,
            epsilon,
            ..
        } => (
            lr * (1.0 - beta2.powf(t)).sqrt() / (1.0 - beta1.powf(t)),
            epsilon * (1.0 - beta2.powf(t)).sqrt(),
        ),
    };
    let keep = 1.0 - lr * opt.weight_decay();
    let lambda = targets.mix.map_or(1.0, |(_, l)| l);
    [
        lr,
        lr_t,
        keep,
        opt.momentum(),
        eps,
        lambda,
        targets.smoothing,
    ]
    .map(|v| v as f32)
}

//! The GPU model behind [`Model`]: steps, statistics, prediction, and its state on the
//! host.

use super::*;

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
            Optimizer::Sgd {
                weight_decay: 0.0, ..
            } => lr,
            Optimizer::Sgd { .. } | Optimizer::Adamw { .. } => {
                self.step -= 1;
                return Err(super::step::no_decoupled_decay());
            }
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
                ema: None,
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

    fn name(&self) -> &'static str {
        "native CUDA"
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

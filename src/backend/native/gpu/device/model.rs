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
        self.train_step_targets(images, &Targets::plain(labels), opt, lr, dropout_seed)
    }

    fn train_step_targets(
        &mut self,
        images: &[f32],
        targets: &Targets<'_>,
        opt: &Optimizer,
        lr: f64,
        dropout_seed: u64,
    ) -> Result<StepStats> {
        let labels = targets.labels;
        let n = labels.len();
        targets.check(self.net.classes)?;
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
        let hyper = super::step::hyper(opt, lr, self.step as f64, targets);
        let labels2 = targets.mix.map_or(labels, |(o, _)| o);
        self.stage_batch(images, (labels, labels2), hyper, Some(dropout_seed))?;
        // A captured step bakes in what the kernels take as arguments (Nesterov, beta2);
        // the rates, momentum included, are read from the device each replay.
        let key = opt.with_momentum(0.0);
        if self.graph_opt.as_ref() != Some(&key) {
            for s in self.shaped.values_mut() {
                s.graph = None;
                s.eager_runs = 0;
            }
            self.graph_opt = Some(key);
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
            let hyper = super::step::hyper(
                &Optimizer::Sgd {
                    momentum: 0.0,
                    nesterov: false,
                    weight_decay: 0.0,
                },
                0.0,
                1.0,
                &Targets::plain(&zeros),
            );
            self.stage_batch(&images[b0 * px..b1 * px], (&zeros, &zeros), hyper, None)?;
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
                ema: match &self.ema {
                    None => None,
                    Some(e) => Some(params::Ema {
                        params: self.download_flat(&e.params)?,
                        bn_mean: bn(&e.bn_mean)?,
                        bn_var: bn(&e.bn_var)?,
                    }),
                },
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

    fn ema_update(&mut self, decay: f64) -> Result<()> {
        dk(self.ctx.bind_to_thread(), "binding the context")?;
        match &self.ema {
            Some(e) => {
                let wt = (1.0 - decay) as f32;
                for (avg, cur) in [
                    (&e.params, &self.params),
                    (&e.bn_mean, &self.bn_mean),
                    (&e.bn_var, &self.bn_var),
                ] {
                    launch::ema_update(self, avg.ptr, cur.ptr, cur.bytes / 4, wt)?;
                }
            }
            None => {
                // The first average is the weights themselves (AveragedModel's first update).
                let bufs = EmaBufs {
                    params: DevBuf::new(self.params.bytes)?,
                    bn_mean: DevBuf::new(self.bn_mean.bytes)?,
                    bn_var: DevBuf::new(self.bn_var.bytes)?,
                };
                for (avg, cur) in [
                    (&bufs.params, &self.params),
                    (&bufs.bn_mean, &self.bn_mean),
                    (&bufs.bn_var, &self.bn_var),
                ] {
                    if cur.bytes > 0 {
                        // SAFETY: both allocations hold `cur.bytes` bytes; the copy is
                        // ordered on our stream after the step that wrote `cur`.
                        dk(
                            unsafe {
                                drv::memcpy_dtod_async(avg.ptr, cur.ptr, cur.bytes, self.cu())
                            },
                            "copying the weights into their average",
                        )?;
                    }
                }
                self.ema = Some(bufs);
            }
        }
        Ok(())
    }

    fn swap_ema(&mut self) -> Result<()> {
        let Some(e) = self.ema.as_mut() else {
            bail!("no moving average of the weights has been taken yet");
        };
        // The buffers trade places; a captured step holds the weights' addresses, so a
        // second swap, before the next step, puts them back.
        std::mem::swap(&mut e.params, &mut self.params);
        std::mem::swap(&mut e.bn_mean, &mut self.bn_mean);
        std::mem::swap(&mut e.bn_var, &mut self.bn_var);
        Ok(())
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

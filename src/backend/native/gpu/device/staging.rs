//! A batch's way to the device: copied into the next pinned slot and uploaded
//! asynchronously, ordered before the step on the stream.

use super::*;

impl CudaModel {
    /// Copy a batch, its labels (and mixed-in labels), dropout masks and the rates into the next pinned slot and
    /// start their upload (the host returns at once; the stream orders it before the step).
    pub(super) fn stage_batch(
        &mut self,
        images: &[f32],
        (labels, labels2): (&[i64], &[i64]),
        hyper: [f32; HYPER],
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
        let at = place(n, self.labels2.ptr);
        for (b, &l) in buf[at..at + n].iter_mut().zip(labels2) {
            *b = f32::from_bits(l as i32 as u32);
        }
        let at = place(HYPER, self.hyper.ptr);
        buf[at..at + HYPER].copy_from_slice(&hyper);
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

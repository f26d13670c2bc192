//! A trained model on new images (`pipe predict`). An image goes through what the
//! pipeline's images went through: decoded as the hdf5 stage decodes (JPEG/PNG, a
//! truncated JPEG refused), resized to the network's input with the hdf5 stage's filter
//! ([`prepare_image`], the same calls as the hdf5 stage), then the training mean
//! subtracted as training and evaluation subtract it; the model's probabilities come from
//! the same forward pass that evaluation uses.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::batches::subtract_mean;
use super::model::{average_into, mirror_images, softmax_rows, ModelArtifact, TrainingPlan};
use crate::backend::{DeviceKind, Model, NamedTensor};
use crate::data::decode::{decode_file_max, resize_to};
use crate::data::index::read_classes;
use crate::manifest::{BackendKind, ResizeFilter, Tta};
use crate::nn::graph::Op;

/// One class as predictions name it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassName {
    /// Integer label.
    pub label: usize,
    /// Class id (a WordNet id, a folder's name).
    pub id: String,
    /// Readable name (`words.txt`'s, else the id).
    pub name: String,
}

/// The pixels a model sees for image file `path` before normalisation: decoded to RGB
/// and resized to `(w, h)` with `filter` — what the hdf5 stage stores for that file.
pub fn prepare_image(
    path: &Path,
    (w, h): (u32, u32),
    filter: ResizeFilter,
    max_pixels: u64,
) -> Result<Vec<u8>> {
    let img = decode_file_max(path, max_pixels)?;
    Ok(resize_to(img, Some([w, h]), filter).into_raw())
}

/// A trained model ready to classify images.
pub struct Predictor {
    model: Box<dyn Model>,
    plan: TrainingPlan,
    mean: NamedTensor,
    /// The classes, by label.
    pub classes: Vec<ClassName>,
    /// Input (width, height).
    pub size: (u32, u32),
    /// The hdf5 stage's resize filter.
    pub filter: ResizeFilter,
    /// Test-time augmentation (`flip`: each image's probabilities averaged with its
    /// mirror's).
    pub tta: Tta,
}

impl Predictor {
    /// Load the model artifact `model_dir`, with the class names of the HDF5 artifact it
    /// was trained on (`data_dir`) and the hdf5 stage's resize filter.
    pub fn load(
        model_dir: &Path,
        data_dir: &Path,
        filter: ResizeFilter,
        device: DeviceKind,
    ) -> Result<Predictor> {
        let artifact = ModelArtifact::open(model_dir)?;
        let (model, mean) = artifact.load(device, Some(BackendKind::Native))?;
        let plan = artifact.plan;
        let (h, w) = match plan.graph.nodes.first().map(|n| &n.op) {
            Some(Op::Input { h, w, c: 3 }) => (*h as u32, *w as u32),
            other => bail!("the model's input is not an RGB image ({other:?})"),
        };
        let rows = read_classes(&data_dir.join("classes.csv"))
            .context("the model's data has no class list")?;
        let mut classes: Vec<ClassName> = rows
            .into_iter()
            .map(|r| ClassName {
                label: r.label as usize,
                name: if r.name.trim().is_empty() {
                    r.id.clone()
                } else {
                    r.name
                },
                id: r.id,
            })
            .collect();
        classes.sort_by_key(|c| c.label);
        let k = model.classes();
        if classes.len() != k {
            bail!(
                "the model outputs {k} classes but its data names {}",
                classes.len()
            );
        }
        Ok(Predictor {
            model,
            plan,
            mean,
            classes,
            size: (w, h),
            filter,
            tta: Tta::None,
        })
    }

    /// [`prepare_image`] at this model's input size and filter.
    pub fn prepare(&self, path: &Path) -> Result<Vec<u8>> {
        prepare_image(
            path,
            self.size,
            self.filter,
            crate::data::decode::MAX_PIXELS,
        )
    }

    /// Class probabilities of prepared images (`images[i]`: H*W*3 bytes), one row of
    /// `classes.len()` per image.
    pub fn predict(&mut self, images: &[Vec<u8>]) -> Result<Vec<f32>> {
        let px = (self.size.0 * self.size.1 * 3) as usize;
        let mut raw = vec![0f32; images.len() * px];
        for (dst, img) in raw.chunks_exact_mut(px).zip(images) {
            if img.len() != px {
                bail!("a prepared image has {} values, not {px}", img.len());
            }
            dst.iter_mut().zip(img).for_each(|(d, &v)| *d = v as f32);
        }
        let k = self.classes.len();
        let ends_in_softmax = matches!(
            self.plan.graph.nodes.last().map(|n| &n.op),
            Some(Op::Softmax)
        );
        let mean = &self.mean;
        let mut run = |mut x: Vec<f32>| -> Result<Vec<f32>> {
            x.chunks_exact_mut(px).for_each(|d| subtract_mean(d, mean));
            let mut out = self.model.predict(&x, images.len())?;
            if !ends_in_softmax {
                softmax_rows(&mut out, k);
            }
            Ok(out)
        };
        let mut out = run(raw.clone())?;
        if self.tta == Tta::Flip {
            // The image mirrored, then the mean subtracted (as the exported graph does).
            let (w, h) = (self.size.0 as usize, self.size.1 as usize);
            mirror_images(&mut raw, h, w);
            average_into(&mut out, &run(raw)?);
        }
        Ok(out)
    }
}

/// The `k` most probable classes of one row of probabilities, best first (ties: the lower
/// label first).
pub fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|a, b| row[*b].total_cmp(&row[*a]).then(a.cmp(b)));
    order.into_iter().take(k).map(|i| (i, row[i])).collect()
}

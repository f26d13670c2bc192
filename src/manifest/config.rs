//! Typed configuration of each stage kind, exactly as a user may write it.
//!
//! Defaults are filled here, so that the serialized form of a config is its *meaning*: the
//! engine hashes that form, so `seed = 42` written or left to the default gives one key.

use serde::{Deserialize, Serialize};

/// Dataset layouts `ingest` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IngestFormat {
    /// `tiny-imagenet-200/{train/<wnid>/images, val/images, val/val_annotations.txt, wnids.txt, words.txt}`.
    TinyImagenet,
    /// CIFAR-10 binary version: `data_batch_1..5.bin`, `test_batch.bin`, `batches.meta.txt`.
    Cifar10,
    /// `root/<class>/*.{jpg,jpeg,png}`.
    ImageFolder,
    /// Generated in the stage itself: real JPEGs with learnable class structure.
    Synthetic,
}

/// `kind = "ingest"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Dataset layout.
    pub format: IngestFormat,
    /// Dataset root (required except for `synthetic`); relative paths are relative to the
    /// project directory (the one holding `pipelines/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// `synthetic` only: number of classes (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
    /// `synthetic` only: train images per class (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_per_class: Option<usize>,
    /// `synthetic` only: val images per class (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_per_class: Option<usize>,
    /// `synthetic` only: `[width, height]` (default `[64, 64]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[u32; 2]>,
    /// `synthetic` only: generator seed (default: the pipeline seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// `kind = "split"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Images per class moved to the new split (exclusive with `test_fraction`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_per_class: Option<usize>,
    /// Fraction of each class moved to the new split (exclusive with `test_per_class`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_fraction: Option<f64>,
    /// Shuffle seed (default: the pipeline seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The split that is cut (default `train`).
    #[serde(default = "default_from_split")]
    pub from_split: String,
    /// The name of the new split (default `test`).
    #[serde(default = "default_to_split")]
    pub to_split: String,
}

fn default_from_split() -> String {
    "train".into()
}
fn default_to_split() -> String {
    "test".into()
}

/// What `hdf5` does with an image it cannot decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnBadImage {
    /// Stop the stage with an error naming the file (default).
    #[default]
    Error,
    /// Leave it out and report how many were skipped.
    Skip,
}

/// Resampling filter for `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeFilter {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear (OpenCV's default `INTER_LINEAR`, as the chapter's preprocessor uses).
    #[default]
    Bilinear,
    /// Catmull-Rom bicubic.
    Bicubic,
    /// Lanczos, window 3.
    Lanczos3,
}

/// `kind = "hdf5"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hdf5Config {
    /// Resize every image to `[width, height]`; without it all images must share one size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<[u32; 2]>,
    /// Resampling filter used with `size` (default `bilinear`).
    #[serde(default)]
    pub filter: ResizeFilter,
    /// `error` (default) or `skip`.
    #[serde(default)]
    pub on_bad_image: OnBadImage,
    /// Images per HDF5 chunk (default 64, one training batch).
    #[serde(default = "default_chunk")]
    pub chunk: usize,
}

fn default_chunk() -> usize {
    64
}

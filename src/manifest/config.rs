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

/// Optimizer of a training stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum.
    #[default]
    Sgd,
    /// Adam.
    Adam,
}

/// Learning-rate schedule of a training stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// `lr` throughout.
    #[default]
    Constant,
    /// `lr * (1 - epoch / epochs) ^ power` (the chapter's polynomial decay).
    Poly,
    /// `lr` until the first `steps` entry, then each entry's lr from its epoch on.
    Step,
}

/// Mean subtraction before the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MeanKind {
    /// Subtract the train split's mean R, G, B (`means.json`).
    #[default]
    Rgb,
    /// Subtract the train split's per-pixel mean image (the chapter's CIFAR-10 recipe).
    Pixel,
    /// Feed raw 0..255 values.
    None,
}

/// Random augmentation of training images (Keras `ImageDataGenerator` semantics, fill
/// `nearest`). All zero/false by default.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Horizontal shift, fraction of the width.
    #[serde(default)]
    pub width_shift: f64,
    /// Vertical shift, fraction of the height.
    #[serde(default)]
    pub height_shift: f64,
    /// Random horizontal flips.
    #[serde(default)]
    pub flip: bool,
    /// Rotation range in degrees (uniform in [-r, r]).
    #[serde(default)]
    pub rotation: f64,
    /// Zoom range: scale uniform in [1 - z, 1 + z], per axis.
    #[serde(default)]
    pub zoom: f64,
    /// Shear angle range in degrees.
    #[serde(default)]
    pub shear: f64,
}

/// `kind = "train"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The network (`[networks.<name>]`).
    pub network: String,
    /// Epochs to train.
    pub epochs: usize,
    /// Images per batch (default 64).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// `sgd` (default) or `adam`.
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Initial learning rate.
    pub lr: f64,
    /// SGD momentum (default 0.9).
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Nesterov momentum (default false).
    #[serde(default)]
    pub nesterov: bool,
    /// Adam beta1 (default 0.9).
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Adam beta2 (default 0.999).
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Adam epsilon (default 1e-7, Keras).
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    /// `constant` (default), `poly` or `step`.
    #[serde(default)]
    pub schedule: ScheduleKind,
    /// `poly` power (default 1: linear decay).
    #[serde(default = "default_power")]
    pub power: f64,
    /// `step`: `[[epoch, lr], ...]`, lr from that epoch on (epochs count from 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<(usize, f64)>,
    /// `rgb` (default), `pixel` or `none`.
    #[serde(default)]
    pub mean: MeanKind,
    /// Augmentation of training images.
    #[serde(default)]
    pub augment: AugmentConfig,
    /// Keep a checkpoint every N epochs (default 5; the last epoch is always kept).
    #[serde(default = "default_ckpt")]
    pub checkpoint_every: usize,
    /// Seed of initialisation, shuffling, augmentation and dropout (default: pipeline seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The split trained on (default `train`).
    #[serde(default = "default_from_split")]
    pub train_split: String,
    /// The split validated on each epoch (default `val` if present, else `test`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_split: Option<String>,
    /// `cpu`, `cuda` or `auto` (default: the pipeline's `device`).
    #[serde(default)]
    pub device: Option<DeviceSetting>,
    /// `native` or `dfdx` (default: the pipeline's `backend`, else `native`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
}

fn default_batch() -> usize {
    64
}
fn default_momentum() -> f64 {
    0.9
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_epsilon() -> f64 {
    1e-7
}
fn default_power() -> f64 {
    1.0
}
fn default_ckpt() -> usize {
    5
}

/// `kind = "lr-drop"` and `kind = "resume"`: continue training from a stage's state.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContinueConfig {
    /// `lr-drop`: the stage to continue (`"train"`); `resume`: a stage and epoch
    /// (`"train@25"`).
    pub from: String,
    /// The new (constant) learning rate.
    pub lr: f64,
    /// How many more epochs.
    pub epochs: usize,
    /// Optional new SGD momentum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// Optional new Nesterov flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nesterov: Option<bool>,
    /// Optional new checkpoint interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
    /// `cpu`, `cuda` or `auto` (default: the pipeline's `device`).
    #[serde(default)]
    pub device: Option<DeviceSetting>,
    /// `native` or `dfdx` (default: the pipeline's `backend`, else `native`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
}

/// `kind = "evaluate"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateConfig {
    /// The split to evaluate (default `test`).
    #[serde(default = "default_to_split")]
    pub split: String,
    /// Rank-k accuracies to report (default `[1, 5]`).
    #[serde(default = "default_top_k")]
    pub top_k: Vec<usize>,
    /// Images per forward pass (default 128).
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// `cpu`, `cuda` or `auto` (default: the pipeline's `device`).
    #[serde(default)]
    pub device: Option<DeviceSetting>,
    /// `native` or `dfdx` (default: the pipeline's `backend`, else `native`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
}

fn default_top_k() -> Vec<usize> {
    vec![1, 5]
}
fn default_eval_batch() -> usize {
    128
}

/// Which implementation trains and evaluates a model: what a manifest, the command line
/// and a built model all name (`backend::build_with` takes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Our own kernels (`src/backend/native`), the default.
    #[default]
    Native,
    /// dfdx 0.13 through its public API.
    Dfdx,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Native => "native",
            BackendKind::Dfdx => "dfdx",
        })
    }
}

/// Where a model computes: the device a [`DeviceSetting`] resolves to on this machine,
/// and what the command line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The CPU (all cores).
    #[default]
    Cpu,
    /// The first CUDA GPU (needs a build with the `cuda` feature).
    Cuda,
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        })
    }
}

/// Where training and evaluation compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceSetting {
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU (needs a build with CUDA support).
    Cuda,
    /// The GPU when this build can open one, else the CPU (default). Resolved when the
    /// manifest loads; the resolved device is part of the stage key.
    #[default]
    Auto,
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        })
    }
}

/// The format `kind = "export"` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// ONNX, opset 17 (`model.onnx`).
    #[default]
    Onnx,
}

/// `kind = "export"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// The file format (default `onnx`).
    #[serde(default)]
    pub format: ExportFormat,
}

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
    /// AdamW: Adam with decoupled weight decay (`torch.optim.AdamW`).
    Adamw,
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
    /// Per step: linear warmup over `warmup_epochs` from `lr * warmup_start_factor` to
    /// `lr`, then cosine decay towards `min_lr`, reached one step after the last
    /// (`torch.optim.lr_scheduler`'s `LinearLR` then `CosineAnnealingLR`).
    Cosine,
    /// Per step: `torch.optim.lr_scheduler.OneCycleLR` (cosine annealing, two phases) from
    /// `max_lr / div_factor` up to `max_lr` over `pct_start` of the steps, then down to
    /// `max_lr / div_factor / final_div_factor`; SGD's momentum (Adam's beta1) cycled
    /// inversely between `max_momentum` and `base_momentum`.
    Onecycle,
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
    /// Cutout: a square of `size` pixels, centred on a random pixel (clipped at the
    /// borders), set to the mean (0 after mean subtraction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutout: Option<CutoutConfig>,
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

/// `augment.cutout = { size = 8 }` (DeVries & Taylor, 2017).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CutoutConfig {
    /// Side of the square, in pixels.
    pub size: usize,
    /// Probability that an image gets one (default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub p: f64,
}

/// `mixup = { alpha = 0.2 }` / `cutmix = { alpha = 1.0 }`: λ ~ Beta(alpha, alpha) per
/// batch.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MixConfig {
    /// The Beta distribution's parameter.
    pub alpha: f64,
}

/// `ema = { decay = 0.999 }`: an exponential moving average of the weights and
/// batch-norm statistics, updated after every step.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmaConfig {
    /// `ema = decay * ema + (1 - decay) * weights`.
    pub decay: f64,
}

fn one() -> f64 {
    1.0
}
fn is_one(v: &f64) -> bool {
    *v == 1.0
}
fn is_zero(v: &f64) -> bool {
    *v == 0.0
}
fn is_false(v: &bool) -> bool {
    !*v
}
fn yes() -> bool {
    true
}
fn is_true(v: &bool) -> bool {
    *v
}
fn is_constant(s: &ScheduleKind) -> bool {
    *s == ScheduleKind::Constant
}
/// A float key's default and the test that leaves it out of the serialized config (so a
/// manifest that does not write it keeps its key).
macro_rules! float_default {
    ($($default:ident, $is_default:ident = $v:expr;)*) => {$(
        fn $default() -> f64 {
            $v
        }
        fn $is_default(v: &f64) -> bool {
            *v == $v
        }
    )*};
}

float_default! {
    default_warmup_start, is_default_warmup_start = 0.01;
    default_pct_start, is_default_pct_start = 0.3;
    default_div, is_default_div = 25.0;
    default_final_div, is_default_final_div = 1e4;
    default_base_mom, is_default_base_mom = 0.85;
    default_max_mom, is_default_max_mom = 0.95;
}

/// The keys of the per-step schedules, as `train` and the continuing stages both write
/// them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedKeys {
    /// The schedule.
    pub kind: ScheduleKind,
    /// Its lr (the peak for `cosine`; `onecycle`'s `max_lr` when that is not set).
    pub lr: f64,
    /// `poly` power.
    pub power: f64,
    /// See [`TrainConfig::warmup_epochs`].
    pub warmup_epochs: f64,
    /// See [`TrainConfig::warmup_start_factor`].
    pub warmup_start_factor: f64,
    /// See [`TrainConfig::min_lr`].
    pub min_lr: f64,
    /// See [`TrainConfig::max_lr`].
    pub max_lr: f64,
    /// See [`TrainConfig::pct_start`].
    pub pct_start: f64,
    /// See [`TrainConfig::div_factor`].
    pub div_factor: f64,
    /// See [`TrainConfig::final_div_factor`].
    pub final_div_factor: f64,
    /// See [`TrainConfig::cycle_momentum`].
    pub cycle_momentum: bool,
    /// See [`TrainConfig::base_momentum`].
    pub base_momentum: f64,
    /// See [`TrainConfig::max_momentum`].
    pub max_momentum: f64,
}

macro_rules! sched_keys {
    ($c:expr, $kind:expr, $power:expr) => {
        SchedKeys {
            kind: $kind,
            lr: $c.lr,
            power: $power,
            warmup_epochs: $c.warmup_epochs,
            warmup_start_factor: $c.warmup_start_factor,
            min_lr: $c.min_lr,
            max_lr: $c.max_lr.unwrap_or($c.lr),
            pct_start: $c.pct_start,
            div_factor: $c.div_factor,
            final_div_factor: $c.final_div_factor,
            cycle_momentum: $c.cycle_momentum,
            base_momentum: $c.base_momentum,
            max_momentum: $c.max_momentum,
        }
    };
}

/// Sets the keys of the schedules other than `$c.schedule` back to their defaults: what
/// the schedule does not read stays out of the stage's key (a base file's `cosine` warmup
/// under a derived `step`, a sweep over the schedule, trains once per real difference).
macro_rules! clear_unread_sched_keys {
    ($c:expr) => {
        if $c.schedule != ScheduleKind::Poly {
            $c.power = default_power();
        }
        if $c.schedule != ScheduleKind::Cosine {
            $c.warmup_epochs = 0.0;
            $c.warmup_start_factor = default_warmup_start();
            $c.min_lr = 0.0;
        }
        if $c.schedule != ScheduleKind::Onecycle {
            $c.max_lr = None;
            $c.pct_start = default_pct_start();
            $c.div_factor = default_div();
            $c.final_div_factor = default_final_div();
            $c.cycle_momentum = yes();
            $c.base_momentum = default_base_mom();
            $c.max_momentum = default_max_mom();
        }
    };
}

impl TrainConfig {
    /// Its schedule's keys.
    pub fn sched_keys(&self) -> SchedKeys {
        sched_keys!(self, self.schedule, self.power)
    }

    /// The keys of the other schedules back to their defaults (`steps` emptied unless
    /// the schedule is `step`): see [`clear_unread_sched_keys`].
    pub fn clear_unread_sched_keys(&mut self) {
        clear_unread_sched_keys!(self);
        if self.schedule != ScheduleKind::Step {
            self.steps.clear();
        }
    }
}

impl ContinueConfig {
    /// Its schedule's keys.
    pub fn sched_keys(&self) -> SchedKeys {
        sched_keys!(self, self.schedule, self.power)
    }

    /// The keys of the other schedules back to their defaults.
    pub fn clear_unread_sched_keys(&mut self) {
        clear_unread_sched_keys!(self);
    }
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
    /// `cosine`: epochs of linear warmup before the decay (default 0; fractions allowed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup_epochs: f64,
    /// `cosine`: the warmup's first lr as a fraction of `lr` (default 0.01).
    #[serde(
        default = "default_warmup_start",
        skip_serializing_if = "is_default_warmup_start"
    )]
    pub warmup_start_factor: f64,
    /// `cosine`: the floor the decay reaches one step after the last (default 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_lr: f64,
    /// `onecycle`: the peak lr (default: `lr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lr: Option<f64>,
    /// `onecycle`: the fraction of the steps spent rising (default 0.3).
    #[serde(
        default = "default_pct_start",
        skip_serializing_if = "is_default_pct_start"
    )]
    pub pct_start: f64,
    /// `onecycle`: the first lr is `max_lr / div_factor` (default 25).
    #[serde(default = "default_div", skip_serializing_if = "is_default_div")]
    pub div_factor: f64,
    /// `onecycle`: the last lr is the first over `final_div_factor` (default 1e4).
    #[serde(
        default = "default_final_div",
        skip_serializing_if = "is_default_final_div"
    )]
    pub final_div_factor: f64,
    /// `onecycle`: cycle SGD's momentum (Adam's beta1) inversely to the lr (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub cycle_momentum: bool,
    /// `onecycle`: the momentum at the peak lr (default 0.85).
    #[serde(
        default = "default_base_mom",
        skip_serializing_if = "is_default_base_mom"
    )]
    pub base_momentum: f64,
    /// `onecycle`: the momentum at the first and last step (default 0.95).
    #[serde(
        default = "default_max_mom",
        skip_serializing_if = "is_default_max_mom"
    )]
    pub max_momentum: f64,
    /// Label smoothing ε (default 0): the target is `(1 - ε) onehot + ε / classes`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// Decoupled weight decay (`adamw`: default 0.01; `sgd`: default 0, applied only with
    /// `decoupled_weight_decay = true`): `w -= lr * weight_decay * w` before each step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// SGD: apply `weight_decay` decoupled (SGDW) (default false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub decoupled_weight_decay: bool,
    /// Mixup of each batch with itself rolled by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixup: Option<MixConfig>,
    /// CutMix of each batch with itself rolled by one (with `mixup`: one or the other per
    /// batch, even odds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutmix: Option<MixConfig>,
    /// An exponential moving average of the weights: what is evaluated and exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<EmaConfig>,
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
    /// The new learning rate (the peak of a `cosine` or `onecycle` schedule).
    pub lr: f64,
    /// How many more epochs.
    pub epochs: usize,
    /// `constant` (default), `poly`, `cosine` or `onecycle`, over this segment's epochs
    /// (its first step is the schedule's first).
    #[serde(default, skip_serializing_if = "is_constant")]
    pub schedule: ScheduleKind,
    /// `poly` power (default 1).
    #[serde(default = "default_power", skip_serializing_if = "is_one")]
    pub power: f64,
    /// `cosine`: epochs of linear warmup before the decay (default 0; fractions allowed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup_epochs: f64,
    /// `cosine`: the warmup's first lr as a fraction of `lr` (default 0.01).
    #[serde(
        default = "default_warmup_start",
        skip_serializing_if = "is_default_warmup_start"
    )]
    pub warmup_start_factor: f64,
    /// `cosine`: the floor the decay reaches one step after the last (default 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_lr: f64,
    /// `onecycle`: the peak lr (default: `lr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lr: Option<f64>,
    /// `onecycle`: the fraction of the steps spent rising (default 0.3).
    #[serde(
        default = "default_pct_start",
        skip_serializing_if = "is_default_pct_start"
    )]
    pub pct_start: f64,
    /// `onecycle`: the first lr is `max_lr / div_factor` (default 25).
    #[serde(default = "default_div", skip_serializing_if = "is_default_div")]
    pub div_factor: f64,
    /// `onecycle`: the last lr is the first over `final_div_factor` (default 1e4).
    #[serde(
        default = "default_final_div",
        skip_serializing_if = "is_default_final_div"
    )]
    pub final_div_factor: f64,
    /// `onecycle`: cycle SGD's momentum (Adam's beta1) inversely to the lr (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub cycle_momentum: bool,
    /// `onecycle`: the momentum at the peak lr (default 0.85).
    #[serde(
        default = "default_base_mom",
        skip_serializing_if = "is_default_base_mom"
    )]
    pub base_momentum: f64,
    /// `onecycle`: the momentum at the first and last step (default 0.95).
    #[serde(
        default = "default_max_mom",
        skip_serializing_if = "is_default_max_mom"
    )]
    pub max_momentum: f64,
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
    /// Test-time augmentation: `none` (default) or `flip` (the mean of the class
    /// probabilities of each image and its mirror).
    #[serde(default, skip_serializing_if = "Tta::is_none")]
    pub tta: Tta,
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
            OptimizerKind::Adamw => "adamw",
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

/// Test-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tta {
    /// Each image once.
    #[default]
    None,
    /// The mean of the class probabilities of the image and its horizontal mirror.
    Flip,
}

impl Tta {
    /// `none`.
    pub fn is_none(&self) -> bool {
        *self == Tta::None
    }
}

impl std::fmt::Display for Tta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tta::None => "none",
            Tta::Flip => "flip",
        })
    }
}

/// `kind = "export"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// The file format (default `onnx`).
    #[serde(default)]
    pub format: ExportFormat,
    /// `flip`: the exported graph averages the class probabilities of each image and its
    /// mirror (default `none`).
    #[serde(default, skip_serializing_if = "Tta::is_none")]
    pub tta: Tta,
}

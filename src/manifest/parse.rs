//! One parser per stage kind: a stage table becomes a typed [`StageConfig`], with its
//! defaults filled and its values' ranges checked, every error located at the key.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use super::config::*;
use super::de;
use super::error::{self, ManifestError};
use super::model::{Resources, Stage, StageConfig, StageKind};
use super::network::Library;
use super::source::Origin;
use super::value::{Entry, Kind, SValue};

/// Whether `t` is a Slurm time limit: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`.
pub fn is_slurm_time(t: &str) -> bool {
    let num = |x: &str| !x.is_empty() && x.len() <= 4 && x.bytes().all(|b| b.is_ascii_digit());
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, t),
    };
    if days.is_some_and(|d| !num(d)) {
        return false;
    }
    let parts: Vec<&str> = rest.split(':').collect();
    !parts.is_empty() && parts.len() <= 3 && parts.iter().all(|p| num(p))
}

/// Whether `m` is a Slurm memory size: digits with an optional K, M, G or T.
pub fn is_slurm_mem(m: &str) -> bool {
    let digits = m.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && m.len() - digits.len() <= 1
}

/// Largest image side a manifest may ask for (a 4096x4096 RGB image is 48 MiB).
pub const MAX_IMAGE_SIDE: u32 = 4096;

/// The most epochs one training stage may ask for (a run of more would not end).
pub const MAX_EPOCHS: usize = 100_000;

/// The largest batch a stage may ask for.
pub const MAX_BATCH: usize = 65_536;

/// `epochs` within 1..=MAX_EPOCHS (zero is checked with the other positives).
fn check_epochs(epochs: usize, path: &str, at: Origin) -> Result<(), ManifestError> {
    if epochs > MAX_EPOCHS {
        return Err(ManifestError::new(format!(
            "`epochs` = {epochs} is more than the {MAX_EPOCHS} a stage may train"
        ))
        .at(at)
        .path(format!("{path}.epochs")));
    }
    Ok(())
}

fn check_image_size(
    [w, h]: [u32; 2],
    key: &str,
    path: &str,
    at: Origin,
) -> Result<(), ManifestError> {
    if w == 0 || h == 0 || w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(ManifestError::new(format!(
            "`{key}` = [{w}, {h}]: each side must be between 1 and {MAX_IMAGE_SIDE} pixels"
        ))
        .at(at)
        .path(format!("{path}.{key}")));
    }
    Ok(())
}

/// The "wrong type" error the loader gives wherever a value has the wrong shape: what was
/// expected, what was found, at the value, under its key path.
fn wrong_type(expected: &str, found: &SValue, path: impl Into<String>) -> ManifestError {
    ManifestError::new(format!(
        "wrong type: expected {expected}, found {}",
        found.kind.type_name()
    ))
    .at(found.origin.clone())
    .path(path.into())
}

/// What every stage parser needs: the stage's table and where it was written, the
/// pipeline-level defaults, and the inputs found so far.
struct StageCx<'a> {
    sname: &'a str,
    path: String,
    entry: &'a Entry,
    table: &'a IndexMap<String, Entry>,
    body: SValue,
    seed: u64,
    device: DeviceSetting,
    backend: Option<BackendKind>,
    library: &'a Library,
    project_dir: &'a Path,
    inputs: &'a mut Vec<String>,
    origins: &'a mut Vec<Origin>,
    kind: StageKind,
}

impl StageCx<'_> {
    /// Where key `k` of the stage was written (the stage's own key when absent).
    fn key_at(&self, k: &str) -> Origin {
        self.table
            .get(k)
            .map(|e| e.key_origin.clone())
            .unwrap_or_else(|| self.entry.key_origin.clone())
    }

    /// Where dotted key `a.b` of the stage was written: the inner key when `a` is a table
    /// that holds `b`, else `a`.
    fn dotted_at(&self, k: &str) -> Origin {
        match k.split_once('.') {
            Some((outer, inner)) => self
                .table
                .get(outer)
                .and_then(|e| e.value.get(inner))
                .map(|e| e.key_origin.clone())
                .unwrap_or_else(|| self.key_at(outer)),
            None => self.key_at(k),
        }
    }
}

/// `ingest`: dataset format and, for `synthetic`, what it generates.
fn parse_ingest(cx: &mut StageCx<'_>) -> Result<StageConfig, ManifestError> {
    let path = cx.path.clone();
    let sname = cx.sname;
    let entry = cx.entry;
    let seed = cx.seed;
    let body = cx.body.clone();
    let mut c: IngestConfig = de::from_svalue(&body, &path)?;
    let synthetic_keys = [
        ("classes", c.classes.is_some()),
        ("train_per_class", c.train_per_class.is_some()),
        ("val_per_class", c.val_per_class.is_some()),
        ("image_size", c.image_size.is_some()),
        ("seed", c.seed.is_some()),
    ];
    if c.format == IngestFormat::Synthetic {
        if c.root.is_some() {
            return Err(ManifestError::new(
                "`root` is not used by format = \"synthetic\" (it generates its data)",
            )
            .at(cx.key_at("root"))
            .path(format!("{path}.root")));
        }
        c.classes.get_or_insert(10);
        c.train_per_class.get_or_insert(100);
        c.val_per_class.get_or_insert(20);
        c.image_size.get_or_insert([64, 64]);
        c.seed.get_or_insert(seed);
        if let Some(sz) = c.image_size {
            check_image_size(sz, "image_size", &path, cx.key_at("image_size"))?;
        }
        for (k, v) in [
            ("classes", c.classes),
            ("train_per_class", c.train_per_class),
        ] {
            if v == Some(0) {
                return Err(ManifestError::new(format!("`{k}` must be > 0"))
                    .at(cx.key_at(k))
                    .path(format!("{path}.{k}")));
            }
        }
        // Generated images are listed before any is written: their count is bounded.
        let (k, t, v) = (
            c.classes.unwrap_or(0),
            c.train_per_class.unwrap_or(0),
            c.val_per_class.unwrap_or(0),
        );
        let total = t.checked_add(v).and_then(|per| per.checked_mul(k));
        if total.is_none_or(|n| n > MAX_SYNTHETIC) {
            let at = ["train_per_class", "val_per_class", "classes"]
                .into_iter()
                .find(|k| cx.table.contains_key(*k))
                .unwrap_or("classes");
            return Err(ManifestError::new(format!(
                "`classes` x (`train_per_class` + `val_per_class`) = {k} x ({t} + {v}) images is more than the {MAX_SYNTHETIC} a synthetic dataset may generate"
            ))
            .at(cx.key_at(at))
            .path(format!("{path}.{at}")));
        }
    } else {
        if c.root.is_none() {
            return Err(ManifestError::new(format!(
                "missing required key `root` (the dataset folder) in stage `{sname}`"
            ))
            .at(entry.key_origin.clone())
            .path(format!("{path}.root"))
            .help(format!(
                "set it in the manifest or with `--set {sname}.root=DIR`"
            )));
        }
        if let Some((k, _)) = synthetic_keys.iter().find(|(_, set)| *set) {
            return Err(ManifestError::new(format!(
                "`{k}` is only used by format = \"synthetic\""
            ))
            .at(cx.key_at(k))
            .path(format!("{path}.{k}")));
        }
    }
    if !cx.inputs.is_empty() {
        return Err(ManifestError::new("an ingest stage takes no input")
            .at(cx.origins[0].clone())
            .path(format!("{path}.input")));
    }
    Ok(StageConfig::Ingest(c))
}

/// `split`: which images move to which split.
fn parse_split(cx: &mut StageCx<'_>) -> Result<StageConfig, ManifestError> {
    let path = cx.path.clone();
    let sname = cx.sname;
    let entry = cx.entry;
    let seed = cx.seed;
    let body = cx.body.clone();
    let mut c: SplitConfig = de::from_svalue(&body, &path)?;
    match (c.test_per_class, c.test_fraction) {
        (Some(_), Some(_)) => {
            return Err(ManifestError::new(
                "`test_per_class` and `test_fraction` exclude each other",
            )
            .at(cx.key_at("test_fraction"))
            .path(format!("{path}.test_fraction")))
        }
        (None, None) => {
            return Err(ManifestError::new(format!(
                "stage `{sname}` needs `test_per_class` or `test_fraction`"
            ))
            .at(entry.key_origin.clone())
            .path(path))
        }
        (None, Some(f)) if !(f > 0.0 && f < 1.0) => {
            return Err(ManifestError::new(format!(
                "`test_fraction` must be between 0 and 1 (exclusive), got {f}"
            ))
            .at(cx.key_at("test_fraction"))
            .path(format!("{path}.test_fraction")))
        }
        (Some(0), None) => {
            return Err(ManifestError::new("`test_per_class` must be > 0")
                .at(cx.key_at("test_per_class"))
                .path(format!("{path}.test_per_class")))
        }
        _ => {}
    }
    check_split_name(cx, "from_split", &c.from_split)?;
    check_split_name(cx, "to_split", &c.to_split)?;
    if c.from_split == c.to_split {
        return Err(
            ManifestError::new("`from_split` and `to_split` must differ")
                .at(cx.key_at("to_split"))
                .path(format!("{path}.to_split")),
        );
    }
    c.seed.get_or_insert(seed);
    Ok(StageConfig::Split(c))
}

/// `hdf5`: image size, chunking, what to do with a bad image.
fn parse_hdf5(cx: &mut StageCx<'_>) -> Result<StageConfig, ManifestError> {
    let path = cx.path.clone();
    let body = cx.body.clone();
    let c: Hdf5Config = de::from_svalue(&body, &path)?;
    if c.chunk == 0 {
        return Err(ManifestError::new("`chunk` must be > 0")
            .at(cx.key_at("chunk"))
            .path(format!("{path}.chunk")));
    }
    if let Some(sz) = c.size {
        check_image_size(sz, "size", &path, cx.key_at("size"))?;
    }
    if let Some([w, h]) = c.size {
        if w == 0 || h == 0 {
            return Err(ManifestError::new("`size` must be [width, height] > 0")
                .at(cx.key_at("size"))
                .path(format!("{path}.size")));
        }
    }
    Ok(StageConfig::Hdf5(c))
}

/// `train`: the network, optimizer and schedule, their ranges.
fn parse_train(cx: &mut StageCx<'_>) -> Result<StageConfig, ManifestError> {
    let path = cx.path.clone();
    let seed = cx.seed;
    let device = cx.device;
    let backend = cx.backend;
    let library = cx.library;
    let body = cx.body.clone();
    Ok({
        let mut c: TrainConfig = de::from_svalue(&body, &path)?;
        check_split_name(cx, "train_split", &c.train_split)?;
        if let Some(v) = &c.val_split {
            check_split_name(cx, "val_split", v)?;
        }
        c.seed.get_or_insert(seed);
        // `auto` and the backend's default are resolved by the engine (it knows the
        // machine); the resolved values are what the stage's key covers.
        c.device = Some(c.device.unwrap_or(device));
        c.backend = c.backend.or(backend);
        let positive = [
            ("epochs", c.epochs as f64),
            ("batch_size", c.batch_size as f64),
            ("lr", c.lr),
            ("checkpoint_every", c.checkpoint_every as f64),
        ];
        if let Some((k, _)) = positive.iter().find(|(_, v)| *v <= 0.0) {
            return Err(ManifestError::new(format!("`{k}` must be > 0"))
                .at(cx.key_at(k))
                .path(format!("{path}.{k}")));
        }
        check_epochs(c.epochs, &path, cx.key_at("epochs"))?;
        if c.batch_size > MAX_BATCH {
            return Err(ManifestError::new(format!(
                "`batch_size` = {} is more than the {MAX_BATCH} a batch may hold",
                c.batch_size
            ))
            .at(cx.key_at("batch_size"))
            .path(format!("{path}.batch_size")));
        }
        let ranges: [(&str, f64, bool); 8] = [
            ("momentum", c.momentum, (0.0..1.0).contains(&c.momentum)),
            ("power", c.power, c.power >= 0.0),
            (
                "augment.width_shift",
                c.augment.width_shift,
                (0.0..=1.0).contains(&c.augment.width_shift),
            ),
            (
                "augment.height_shift",
                c.augment.height_shift,
                (0.0..=1.0).contains(&c.augment.height_shift),
            ),
            (
                "augment.zoom",
                c.augment.zoom,
                (0.0..=1.0).contains(&c.augment.zoom),
            ),
            (
                "augment.rotation",
                c.augment.rotation,
                c.augment.rotation.abs() <= 180.0,
            ),
            (
                "augment.shear",
                c.augment.shear,
                c.augment.shear.abs() <= 180.0,
            ),
            ("beta1", c.beta1, (0.0..1.0).contains(&c.beta1)),
        ];
        if let Some((k, v, _)) = ranges.iter().find(|(_, _, ok)| !ok) {
            let allowed = match *k {
                "momentum" | "beta1" => "in [0, 1)",
                "power" => ">= 0",
                "augment.rotation" | "augment.shear" => "at most 180 (degrees)",
                _ => "in [0, 1] (a fraction of the image)",
            };
            return Err(ManifestError::new(format!("`{k}` = {v} must be {allowed}"))
                .at(cx.dotted_at(k))
                .path(format!("{path}.{k}")));
        }
        check_schedule(cx, &c.sched_keys(), c.epochs)?;
        check_recipe(cx, &c)?;
        // What the stage's optimizer and schedule do not read stays out of its key: a
        // base file's SGD `momentum` under a derived Adam, a sweep over the optimizer or
        // the schedule, trains once per real difference.
        match c.optimizer {
            OptimizerKind::Sgd => {
                c.beta1 = 0.9;
                c.beta2 = 0.999;
                c.epsilon = 1e-7;
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                c.momentum = 0.9;
                c.nesterov = false;
            }
        }
        c.clear_unread_sched_keys();
        if c.schedule == ScheduleKind::Step && c.steps.is_empty() {
            return Err(ManifestError::new(
                "schedule = \"step\" needs `steps = [[epoch, lr], ...]`",
            )
            .at(cx.key_at("schedule"))
            .path(format!("{path}.steps")));
        }
        // Each step sets a usable lr from an epoch the stage trains, in order: one past
        // the last epoch, or given twice, would be silently passed over.
        let mut last: Option<usize> = None;
        let steps: &[(usize, f64)] = match c.schedule {
            ScheduleKind::Step => &c.steps,
            _ => &[],
        };
        for (i, &(at, lr)) in steps.iter().enumerate() {
            let why = if !(lr.is_finite() && lr > 0.0) {
                Some(format!("its lr {lr} must be > 0"))
            } else if at >= c.epochs {
                Some(format!(
                    "epoch {at} is past the stage's last, {} (epochs count from 0 here)",
                    c.epochs - 1
                ))
            } else if last.is_some_and(|l| at <= l) {
                Some(format!(
                    "epoch {at} does not come after the step before it ({})",
                    last.unwrap_or(0)
                ))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(key_error(
                    cx,
                    "steps",
                    format!("`steps` entry {} ([{at}, {lr}]): {why}", i + 1),
                ));
            }
            last = Some(at);
        }
        if !library.networks.contains_key(&c.network) {
            let mut e = ManifestError::new(format!("no network `{}` in this manifest", c.network))
                .at(cx.key_at("network"))
                .path(format!("{path}.network"));
            e.help = Some(
                match error::did_you_mean(&c.network, library.networks.keys().map(|k| k.as_str())) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!(
                        "networks: {}",
                        library
                            .networks
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            );
            return Err(e);
        }
        StageConfig::Train(Box::new(c))
    })
}

/// A manifest error at key `k` of the stage (dotted for a nested key).
/// A split's name: it is a file of the artifact (`<name>.csv`, `<name>.h5`), so letters,
/// digits, `_` and `-` only (no path, no dot), and not `classes` (the class list's file).
fn check_split_name(cx: &StageCx<'_>, k: &str, name: &str) -> Result<(), ManifestError> {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain && name != "classes" {
        return Ok(());
    }
    Err(key_error(
        cx,
        k,
        format!("`{k}` = {name:?} is not a split name: a split is a file of the artifact (`<name>.csv`, `<name>.h5`), so 1 to 64 letters, digits, `_` or `-`, and not `classes` (the class list's file)"),
    ))
}

/// The most images a synthetic ingest may generate.
const MAX_SYNTHETIC: usize = 100_000_000;

fn key_error(cx: &StageCx<'_>, k: &str, msg: String) -> ManifestError {
    ManifestError::new(msg)
        .at(cx.dotted_at(k))
        .path(format!("{}.{k}", cx.path))
}

/// The per-step schedules' keys: each within its range, whichever schedule the stage
/// uses (a key of another schedule is then set back to its default, out of the key).
fn check_schedule(cx: &StageCx<'_>, k: &SchedKeys, epochs: usize) -> Result<(), ManifestError> {
    let ranges: [(&str, f64, bool, &str); 9] = [
        (
            "warmup_epochs",
            k.warmup_epochs,
            k.warmup_epochs >= 0.0 && k.warmup_epochs < epochs as f64,
            "in [0, epochs)",
        ),
        (
            "warmup_start_factor",
            k.warmup_start_factor,
            k.warmup_start_factor > 0.0 && k.warmup_start_factor <= 1.0,
            "in (0, 1]",
        ),
        (
            "min_lr",
            k.min_lr,
            k.min_lr >= 0.0 && (k.kind != ScheduleKind::Cosine || k.min_lr < k.lr),
            "in [0, lr)",
        ),
        ("max_lr", k.max_lr, k.max_lr > 0.0, "> 0"),
        (
            "pct_start",
            k.pct_start,
            k.pct_start > 0.0 && k.pct_start < 1.0,
            "in (0, 1)",
        ),
        ("div_factor", k.div_factor, k.div_factor > 0.0, "> 0"),
        (
            "final_div_factor",
            k.final_div_factor,
            k.final_div_factor > 0.0,
            "> 0",
        ),
        (
            "base_momentum",
            k.base_momentum,
            (0.0..1.0).contains(&k.base_momentum),
            "in [0, 1)",
        ),
        (
            "max_momentum",
            k.max_momentum,
            (0.0..1.0).contains(&k.max_momentum) && k.max_momentum >= k.base_momentum,
            "in [base_momentum, 1)",
        ),
    ];
    if let Some((key, v, _, allowed)) = ranges.iter().find(|r| !r.2) {
        return Err(key_error(
            cx,
            key,
            format!("`{key}` = {v} must be {allowed}"),
        ));
    }
    Ok(())
}

/// Label smoothing, decoupled weight decay, mixup, CutMix, cutout and the moving average:
/// their ranges, the optimizer each goes with, and the engine that has them (the native
/// backend, CPU and CUDA; `backend = "dfdx"` refuses them here).
fn check_recipe(cx: &StageCx<'_>, c: &TrainConfig) -> Result<(), ManifestError> {
    let mut ranges: Vec<(&str, f64, bool, &str)> = vec![(
        "label_smoothing",
        c.label_smoothing,
        (0.0..1.0).contains(&c.label_smoothing),
        "in [0, 1)",
    )];
    if let Some(w) = c.weight_decay {
        ranges.push(("weight_decay", w, w >= 0.0, ">= 0"));
    }
    if let Some(m) = c.mixup {
        ranges.push(("mixup.alpha", m.alpha, m.alpha > 0.0, "> 0"));
    }
    if let Some(m) = c.cutmix {
        ranges.push(("cutmix.alpha", m.alpha, m.alpha > 0.0, "> 0"));
    }
    if let Some(e) = c.ema {
        ranges.push((
            "ema.decay",
            e.decay,
            e.decay > 0.0 && e.decay < 1.0,
            "in (0, 1)",
        ));
    }
    if let Some(k) = c.augment.cutout {
        ranges.push((
            "augment.cutout.size",
            k.size as f64,
            k.size >= 2,
            ">= 2 (pixels; the square spans size / 2 on each side of its centre, so 1 would cut nothing)",
        ));
        ranges.push((
            "augment.cutout.p",
            k.p,
            (0.0..=1.0).contains(&k.p),
            "in [0, 1]",
        ));
    }
    ranges.push(("beta2", c.beta2, (0.0..1.0).contains(&c.beta2), "in [0, 1)"));
    ranges.push((
        "epsilon",
        c.epsilon,
        c.epsilon.is_finite() && c.epsilon > 0.0,
        "> 0",
    ));
    if let Some((key, v, _, allowed)) = ranges.iter().find(|r| !r.2) {
        return Err(key_error(
            cx,
            key,
            format!("`{key}` = {v} must be {allowed}"),
        ));
    }
    match c.optimizer {
        OptimizerKind::Sgd if c.decoupled_weight_decay && c.weight_decay.is_none() => {
            return Err(key_error(
                cx,
                "decoupled_weight_decay",
                "`decoupled_weight_decay = true` needs `weight_decay` (the decay to decouple)"
                    .into(),
            ));
        }
        OptimizerKind::Sgd if c.weight_decay.is_some() && !c.decoupled_weight_decay => {
            return Err(key_error(
                cx,
                "weight_decay",
                "`weight_decay` with optimizer = \"sgd\" is decoupled weight decay: set `decoupled_weight_decay = true` (SGD's coupled decay is the layers' `l2`)".into(),
            ));
        }
        OptimizerKind::Adam if c.weight_decay.is_some() => {
            return Err(key_error(
                cx,
                "weight_decay",
                "optimizer = \"adam\" has no weight decay: use optimizer = \"adamw\" (decoupled), or the layers' `l2`".into(),
            ));
        }
        OptimizerKind::Adam | OptimizerKind::Adamw if c.decoupled_weight_decay => {
            return Err(key_error(
                cx,
                "decoupled_weight_decay",
                format!(
                    "`decoupled_weight_decay` is SGD's; optimizer = \"{}\" {}",
                    c.optimizer,
                    if c.optimizer == OptimizerKind::Adamw {
                        "always decouples its `weight_decay`"
                    } else {
                        "has none: use \"adamw\""
                    }
                ),
            ));
        }
        _ => {}
    }
    // What only the native backend has.
    let used: Vec<&str> = [
        ("label_smoothing", c.label_smoothing != 0.0),
        ("mixup", c.mixup.is_some()),
        ("cutmix", c.cutmix.is_some()),
        ("ema", c.ema.is_some()),
        ("optimizer", c.optimizer == OptimizerKind::Adamw),
        ("decoupled_weight_decay", c.decoupled_weight_decay),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(k, _)| k)
    .collect();
    if let (Some(key), Some(BackendKind::Dfdx)) = (used.first(), c.backend) {
        let what = if *key == "optimizer" {
            "optimizer = \"adamw\"".to_string()
        } else {
            format!("`{key}`")
        };
        return Err(key_error(
            cx,
            key,
            format!("{what} is trained by the native backend; the dfdx backend does not have it: set backend = \"native\" for this stage"),
        ));
    }
    Ok(())
}

/// `lr-drop` and `resume`: what is continued (a stage, `stage@epoch` or a file).
fn parse_continue(cx: &mut StageCx<'_>) -> Result<StageConfig, ManifestError> {
    let path = cx.path.clone();
    let entry = cx.entry;
    let device = cx.device;
    let backend = cx.backend;
    let project_dir = cx.project_dir;
    let kind = cx.kind;
    let body = cx.body.clone();
    Ok({
        let mut c: ContinueConfig = de::from_svalue(&body, &path)?;
        // `auto` and the backend's default are resolved by the engine (it knows the
        // machine); the resolved values are what the stage's key covers.
        c.device = Some(c.device.unwrap_or(device));
        c.backend = c.backend.or(backend);
        if let Some(m) = c.momentum.filter(|m| !(0.0..1.0).contains(m)) {
            return Err(
                ManifestError::new(format!("`momentum` = {m} must be in [0, 1)"))
                    .at(cx.key_at("momentum"))
                    .path(format!("{path}.momentum")),
            );
        }
        if c.lr <= 0.0 || c.epochs == 0 || c.checkpoint_every == Some(0) {
            let k = match (c.epochs, c.checkpoint_every) {
                (0, _) => "epochs",
                (_, Some(0)) => "checkpoint_every",
                _ => "lr",
            };
            return Err(ManifestError::new(format!("`{k}` must be > 0"))
                .at(cx.key_at(k))
                .path(format!("{path}.{k}")));
        }
        check_epochs(c.epochs, &path, cx.key_at("epochs"))?;
        if c.schedule == ScheduleKind::Step {
            return Err(ManifestError::new(format!(
                "a {kind} stage takes schedule = \"constant\", \"poly\", \"cosine\" or \"onecycle\" over its own epochs, not \"step\" (its epochs are one step; start another {kind} stage for another lr)"
            ))
            .at(cx.key_at("schedule"))
            .path(format!("{path}.schedule")));
        }
        if c.power < 0.0 {
            return Err(key_error(
                cx,
                "power",
                format!("`power` = {} must be >= 0", c.power),
            ));
        }
        check_schedule(cx, &c.sched_keys(), c.epochs)?;
        // As for `train`: what the schedule does not read stays out of the key.
        c.clear_unread_sched_keys();
        let from_file = kind == StageKind::Resume && !c.from.contains('@');
        if from_file && cx.inputs.len() != 1 {
            return Err(ManifestError::new(
                "a resume stage that starts from a checkpoint file reads the data with `input = \"<hdf5 stage>\"`",
            )
            .at(entry.key_origin.clone())
            .path(format!("{path}.input")));
        }
        if !from_file && !cx.inputs.is_empty() {
            return Err(ManifestError::new(format!(
                "a {kind} stage names what it continues with `from`, not `input`"
            ))
            .at(cx.origins[0].clone())
            .path(format!("{path}.input")));
        }
        let from_origin = cx
            .table
            .get("from")
            .map(|e| e.value.origin.clone())
            .unwrap_or_else(|| entry.key_origin.clone());
        if from_file {
            let file = if Path::new(&c.from).is_absolute() {
                PathBuf::from(&c.from)
            } else {
                project_dir.join(&c.from)
            };
            // Only a regular file (or a link to one) is read: a FIFO or a device named
            // like a checkpoint would never end.
            if let Ok(md) = std::fs::metadata(&file) {
                if !md.is_file() {
                    return Err(ManifestError::new(format!(
                        "`from` names {}, which is {}, not a regular file: a checkpoint is a file pipe wrote",
                        file.display(),
                        if md.is_dir() {
                            "a folder"
                        } else if std::os::unix::fs::FileTypeExt::is_fifo(&md.file_type()) {
                            "a FIFO"
                        } else {
                            "a device or socket"
                        }
                    ))
                    .at(from_origin.clone())
                    .path(format!("{path}.from")));
                }
            }
            let bytes = std::fs::read(&file).map_err(|e| {
                ManifestError::new(format!(
                    "`from` must be \"<stage>@<epoch>\" or a checkpoint file; cannot read {}: {e}",
                    file.display()
                ))
                .at(from_origin.clone())
                .path(format!("{path}.from"))
            })?;
            let hash = blake3::hash(&bytes).to_hex().to_string();
            StageConfig::Resume {
                stage: String::new(),
                at: 0,
                file: Some((file, hash)),
                config: c,
            }
        } else if kind == StageKind::Resume {
            let Some((stage, epoch)) = c.from.split_once('@') else {
                return Err(ManifestError::new(format!(
                    "`from` must be \"<stage>@<epoch>\" (e.g. \"train@25\"), got \"{}\"",
                    c.from
                ))
                .at(from_origin)
                .path(format!("{path}.from")));
            };
            let Ok(at) = epoch.parse::<usize>() else {
                return Err(
                    ManifestError::new(format!("`{epoch}` is not an epoch number"))
                        .at(from_origin)
                        .path(format!("{path}.from")),
                );
            };
            cx.inputs.push(stage.to_string());
            cx.origins.push(from_origin);
            StageConfig::Resume {
                stage: stage.to_string(),
                at,
                file: None,
                config: c,
            }
        } else {
            cx.inputs.push(c.from.clone());
            cx.origins.push(from_origin);
            StageConfig::LrDrop(c)
        }
    })
}

/// `evaluate`: split, ranks, batch size.
fn parse_evaluate(cx: &mut StageCx<'_>) -> Result<StageConfig, ManifestError> {
    let path = cx.path.clone();
    let device = cx.device;
    let backend = cx.backend;
    let body = cx.body.clone();
    let mut c: EvaluateConfig = de::from_svalue(&body, &path)?;
    check_split_name(cx, "split", &c.split)?;
    // `auto` and the backend's default are resolved by the engine (it knows the
    // machine); the resolved values are what the stage's key covers.
    c.device = Some(c.device.unwrap_or(device));
    c.backend = c.backend.or(backend);
    if c.top_k.is_empty() || c.top_k.contains(&0) || c.top_k.windows(2).any(|w| w[0] >= w[1]) {
        return Err(ManifestError::new(format!(
            "`top_k` must list ranks >= 1, each once, in increasing order (e.g. [1, 5]), got {:?}",
            c.top_k
        ))
        .at(cx.key_at("top_k"))
        .path(format!("{path}.top_k")));
    }
    if c.batch_size > MAX_BATCH {
        return Err(ManifestError::new(format!(
            "`batch_size` = {} is more than the {MAX_BATCH} a batch may hold",
            c.batch_size
        ))
        .at(cx.key_at("batch_size"))
        .path(format!("{path}.batch_size")));
    }
    if c.batch_size == 0 {
        return Err(ManifestError::new("`batch_size` must be > 0")
            .at(cx.key_at("batch_size"))
            .path(format!("{path}.batch_size")));
    }
    Ok(StageConfig::Evaluate(c))
}

/// `export`: the format.
fn parse_export(cx: &mut StageCx<'_>) -> Result<StageConfig, ManifestError> {
    let path = cx.path.clone();
    let body = cx.body.clone();
    let c: ExportConfig = de::from_svalue(&body, &path)?;
    Ok(StageConfig::Export(c))
}

pub(crate) fn parse_stage(
    sname: &str,
    entry: &Entry,
    seed: u64,
    (device, backend): (DeviceSetting, Option<BackendKind>),
    library: &Library,
    project_dir: &Path,
) -> Result<(Stage, Vec<Origin>), ManifestError> {
    let path = format!("stages.{sname}");
    let mut table = match &entry.value.kind {
        Kind::Table(t) => t.clone(),
        _ => {
            return Err(wrong_type("a stage table", &entry.value, path));
        }
    };
    let known = || StageKind::ALL.map(StageKind::as_str);
    let keys: IndexMap<String, Origin> = table
        .iter()
        .map(|(k, e)| (k.clone(), e.key_origin.clone()))
        .collect();
    let kind = match table.shift_remove("kind") {
        Some(k) => match k.value.as_str() {
            Some(s) => match StageKind::parse(s) {
                Some(kind) => kind,
                None => {
                    let mut e = ManifestError::new(format!("unknown stage kind `{s}`"))
                        .at(k.value.origin.clone())
                        .path(format!("{path}.kind"));
                    e.help = Some(match error::did_you_mean(s, known()) {
                        Some(m) => format!("did you mean `{m}`?"),
                        None => format!("known kinds: {}", known().join(", ")),
                    });
                    return Err(e);
                }
            },
            None => return Err(wrong_type("a string", &k.value, format!("{path}.kind"))),
        },
        None => match StageKind::parse(sname) {
            Some(kind) => kind,
            None => {
                return Err(ManifestError::new(format!(
                    "missing required key `kind` in stage `{sname}`"
                ))
                .at(entry.key_origin.clone())
                .path(path)
                .help(format!("one of: {}", known().join(", "))))
            }
        },
    };
    let mut inputs = Vec::new();
    let mut origins = Vec::new();
    for key in ["input", "inputs"] {
        if let Some(e) = table.shift_remove(key) {
            let kp = format!("{path}.{key}");
            let items: Vec<&SValue> = match &e.value.kind {
                Kind::Str(_) => vec![&e.value],
                Kind::Array(a) => a.iter().collect(),
                _ => {
                    return Err(wrong_type("a stage name or a list of them", &e.value, kp));
                }
            };
            for it in items {
                match it.as_str() {
                    Some(s) => {
                        inputs.push(s.to_string());
                        origins.push(it.origin.clone());
                    }
                    None => return Err(wrong_type("a stage name", it, kp)),
                }
            }
        }
    }
    let resources = match table.shift_remove("resources") {
        None => Resources::default(),
        Some(e) => {
            let rp = format!("{path}.resources");
            let r: Resources = de::from_svalue(&e.value, &rp)?;
            let field = |k: &str| match &e.value.kind {
                Kind::Table(t) => t.get(k).map(|x| x.value.origin.clone()),
                _ => None,
            };
            if let Some(m) = r.mem.as_deref().filter(|m| !is_slurm_mem(m)) {
                return Err(ManifestError::new(format!(
                    "`mem` must be a size like \"32G\" or \"500M\", got \"{m}\""
                ))
                .at(field("mem").unwrap_or(e.value.origin.clone()))
                .path(format!("{rp}.mem")));
            }
            if let Some(t) = r.time.as_deref().filter(|t| !is_slurm_time(t)) {
                return Err(ManifestError::new(format!(
                    "`time` must be a Slurm time limit like \"12:00:00\" or \"1-00:00:00\", got \"{t}\""
                ))
                .at(field("time").unwrap_or(e.value.origin.clone()))
                .path(format!("{rp}.time")));
            }
            r
        }
    };
    let body = SValue {
        kind: Kind::Table(table.clone()),
        origin: entry.value.origin.clone(),
    };
    let mut cx = StageCx {
        sname,
        path: path.clone(),
        entry,
        table: &table,
        body,
        seed,
        device,
        backend,
        library,
        project_dir,
        inputs: &mut inputs,
        origins: &mut origins,
        kind,
    };
    let config = match kind {
        StageKind::Ingest => parse_ingest(&mut cx)?,
        StageKind::Split => parse_split(&mut cx)?,
        StageKind::Hdf5 => parse_hdf5(&mut cx)?,
        StageKind::Train => parse_train(&mut cx)?,
        StageKind::LrDrop | StageKind::Resume => parse_continue(&mut cx)?,
        StageKind::Evaluate => parse_evaluate(&mut cx)?,
        StageKind::Export => parse_export(&mut cx)?,
    };
    if matches!(
        config,
        StageConfig::Split(_)
            | StageConfig::Hdf5(_)
            | StageConfig::Train(_)
            | StageConfig::Evaluate(_)
            | StageConfig::Export(_)
    ) && inputs.len() != 1
    {
        let e = ManifestError::new(format!(
            "a {kind} stage reads exactly one input (`input = \"<stage>\"`), found {}",
            inputs.len()
        ))
        .path(format!("{path}.input"));
        return Err(match origins.get(1) {
            Some(o) => e.at(o.clone()),
            None => e.at(entry.key_origin.clone()),
        });
    }
    Ok((
        Stage {
            name: sname.to_string(),
            inputs,
            config,
            origin: entry.key_origin.clone(),
            keys,
            resources,
        },
        origins,
    ))
}

//! Sweeps: one manifest, many experiments. A `[sweep]` table turns a manifest into a set of
//! *points*, each the manifest with some keys overridden (any key `--set` accepts):
//!
//! ```toml
//! [sweep.grid]                    # a cross product, the last key varying fastest
//! "train.lr" = [1e-3, 1e-2, 5e-3]
//! "blocks.conv_module.defaults.act" = ["relu", "elu"]
//!
//! [sweep.zip]                     # paired lists of one length
//! "train.lr" = [1e-3, 1e-2]
//! "drop.lr" = [1e-4, 1e-3]
//!
//! [sweep.random]                  # samples drawn from a seed
//! samples = 8
//! seed = 1
//! "train.lr" = { log_uniform = [1e-4, 1e-1] }
//! "train.batch_size" = { choice = [32, 64] }
//!
//! [sweep.halving]                 # successive halving over training segments
//! rungs = ["train", "drop1", "drop2"]
//! metric = "val.acc"
//! eta = 3
//! ```
//!
//! Grid, zip and random combine as a cross product. Every point is typed and checked when
//! the manifest loads, so a bad value in the seventh point is an error, at its place in the
//! `[sweep]` table, before the first point runs. A point is a [`Pipeline`] named
//! `<sweep>@<id>`, its id made of the values it sets (`mini_lr@lr=5e-3`).

use std::collections::BTreeSet;
use std::path::Path;

use indexmap::IndexMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::error::{did_you_mean, ManifestError};
use super::model::Pipeline;
use super::source::Origin;
use super::value::{Entry, Kind, SValue};

/// The most points a sweep may have unless `max_points` says more.
pub const DEFAULT_MAX_POINTS: usize = 1000;

/// The most `max_points` may allow: every point is a typed pipeline held in memory (and a
/// row in every table), so a sweep is bounded before anything is expanded.
pub const MAX_POINTS_CEILING: usize = 100_000;

/// One swept key and the values it takes (grid and zip).
#[derive(Debug, Clone)]
pub struct Axis {
    /// The key, as `--set` takes it (`train.lr`).
    pub key: String,
    /// Where the key was written in `[sweep]`.
    pub origin: Origin,
    /// Its values, each with its place in the file.
    pub values: Vec<SValue>,
}

/// How a random key is drawn.
#[derive(Debug, Clone)]
pub enum Dist {
    /// One of these values, each as likely.
    Choice(Vec<SValue>),
    /// Uniform in `[lo, hi]`.
    Uniform(f64, f64),
    /// `exp` of uniform in `[ln lo, ln hi]`.
    LogUniform(f64, f64),
    /// A whole number in `[lo, hi]`, each as likely.
    IntUniform(i64, i64),
}

/// `[sweep.random]`.
#[derive(Debug, Clone)]
pub struct RandomSpec {
    /// How many points to draw.
    pub samples: usize,
    /// The draws' seed.
    pub seed: u64,
    /// Each key and how it is drawn.
    pub keys: Vec<(String, Origin, Dist)>,
}

/// Whether a higher or a lower metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    /// Higher is better (accuracy).
    Max,
    /// Lower is better (loss).
    Min,
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Goal::Max => "max",
            Goal::Min => "min",
        })
    }
}

/// What halving compares: a rung's last epoch's validation or training accuracy or loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Metric {
    /// `val.acc`.
    #[serde(rename = "val.acc")]
    ValAcc,
    /// `val.loss`.
    #[serde(rename = "val.loss")]
    ValLoss,
    /// `train.acc`.
    #[serde(rename = "train.acc")]
    TrainAcc,
    /// `train.loss`.
    #[serde(rename = "train.loss")]
    TrainLoss,
}

impl Metric {
    /// Every metric, as written.
    pub const ALL: [Metric; 4] = [
        Metric::ValAcc,
        Metric::ValLoss,
        Metric::TrainAcc,
        Metric::TrainLoss,
    ];

    /// As written in a manifest (`val.acc`).
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::ValAcc => "val.acc",
            Metric::ValLoss => "val.loss",
            Metric::TrainAcc => "train.acc",
            Metric::TrainLoss => "train.loss",
        }
    }

    /// The metric written `s`, if it is one.
    pub fn parse(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether it is better high (accuracy) or low (loss), unless the manifest says.
    pub fn default_goal(self) -> Goal {
        match self {
            Metric::ValLoss | Metric::TrainLoss => Goal::Min,
            Metric::ValAcc | Metric::TrainAcc => Goal::Max,
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// `[sweep.halving]`: successive halving over training segments.
#[derive(Debug, Clone)]
pub struct Halving {
    /// The training stages after which points are compared, in order.
    pub rungs: Vec<String>,
    /// What is compared of a rung's last epoch.
    pub metric: Metric,
    /// Better is higher or lower.
    pub goal: Goal,
    /// After each rung the best ⌈n/η⌉ of n live points go on.
    pub eta: usize,
}

/// The `[sweep]` table, parsed.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    /// Cross-product keys.
    pub grid: Vec<Axis>,
    /// Paired keys.
    pub zip: Vec<Axis>,
    /// Random keys.
    pub random: Option<RandomSpec>,
    /// Successive halving, with where its rungs were written.
    pub halving: Option<(Halving, Vec<Origin>)>,
    /// The most points it may have.
    pub max_points: usize,
    /// Where `[sweep]` was written.
    pub origin: Origin,
}

/// One point of a sweep: the keys it sets and its pipeline.
#[derive(Debug, Clone)]
pub struct SweepPoint {
    /// Its id, made of its values (`lr=5e-3,act=elu`).
    pub id: String,
    /// The keys it sets, in the sweep's key order, with their values as JSON.
    pub values: Vec<(String, serde_json::Value)>,
    /// The manifest with those keys set: a pipeline named `<sweep>@<id>`.
    pub pipeline: Pipeline,
}

/// A loaded sweep: every point typed and checked.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// The sweep's name (the manifest's `name`, or its file stem).
    pub name: String,
    /// Other names it answers to.
    pub aliases: Vec<String>,
    /// The manifest file.
    pub file: std::path::PathBuf,
    /// Every swept key (as `--set` takes it), in order.
    pub keys: Vec<String>,
    /// The points, in order.
    pub points: Vec<SweepPoint>,
    /// Successive halving, if any.
    pub halving: Option<Halving>,
}

impl Sweep {
    /// The point with this id (or `<sweep>@<id>`).
    pub fn point(&self, id: &str) -> Option<&SweepPoint> {
        let id = id.strip_prefix(&format!("{}@", self.name)).unwrap_or(id);
        self.points.iter().find(|p| p.id == id)
    }

    /// A key's name in ids and tables: its last part, unless another swept key ends the
    /// same way.
    pub fn short_key(&self, key: &str) -> String {
        short_key(&self.keys, key)
    }
}

fn short_key(keys: &[String], key: &str) -> String {
    let last = key.rsplit('.').next().unwrap_or(key);
    let clashes = keys
        .iter()
        .filter(|k| k.rsplit('.').next() == Some(last))
        .count();
    if clashes > 1 {
        key.to_string()
    } else {
        last.to_string()
    }
}

fn err(msg: impl Into<String>, at: &Origin, path: &str) -> ManifestError {
    ManifestError::new(msg).at(at.clone()).path(path)
}

/// The leaves of a table of keys: `"train.lr" = [...]` and `train.lr = [...]` (a nested
/// table) alike give `train.lr`. `leaf` says whether a value ends the key.
fn leaves<'a>(
    t: &'a IndexMap<String, Entry>,
    prefix: &str,
    leaf: &dyn Fn(&SValue) -> bool,
    out: &mut Vec<(String, &'a Entry)>,
) {
    for (k, e) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match &e.value.kind {
            Kind::Table(inner) if !leaf(&e.value) => leaves(inner, &key, leaf, out),
            _ => out.push((key, e)),
        }
    }
}

fn axes(entry: &Entry, path: &str) -> Result<Vec<Axis>, ManifestError> {
    let Some(t) = entry.value.as_table() else {
        return Err(err(
            format!(
                "wrong type: `{path}` must be a table of keys and lists, found {}",
                entry.value.kind.type_name()
            ),
            &entry.value.origin,
            path,
        ));
    };
    let mut found = Vec::new();
    leaves(t, "", &|v| !matches!(v.kind, Kind::Table(_)), &mut found);
    let mut out = Vec::new();
    for (key, e) in found {
        let kp = format!("{path}.{key}");
        let Kind::Array(values) = &e.value.kind else {
            return Err(err(
                format!(
                    "wrong type: `{key}` needs a list of values to sweep, found {}",
                    e.value.kind.type_name()
                ),
                &e.value.origin,
                &kp,
            ));
        };
        if values.is_empty() {
            return Err(err(
                format!("`{key}` sweeps an empty list: a sweep needs at least one value"),
                &e.value.origin,
                &kp,
            ));
        }
        out.push(Axis {
            key,
            origin: e.key_origin.clone(),
            values: values.clone(),
        });
    }
    Ok(out)
}

fn number(v: &SValue, path: &str) -> Result<f64, ManifestError> {
    match v.kind {
        Kind::Float(f) => Ok(f),
        Kind::Int(i) => Ok(i as f64),
        _ => Err(err(
            format!(
                "wrong type: expected a number, found {}",
                v.kind.type_name()
            ),
            &v.origin,
            path,
        )),
    }
}

fn pair(v: &SValue, path: &str) -> Result<(f64, f64, Origin), ManifestError> {
    match &v.kind {
        Kind::Array(a) if a.len() == 2 => {
            let (lo, hi) = (number(&a[0], path)?, number(&a[1], path)?);
            if lo > hi {
                return Err(err(
                    format!("the range [{lo}, {hi}] is empty: low must not exceed high"),
                    &v.origin,
                    path,
                ));
            }
            Ok((lo, hi, v.origin.clone()))
        }
        _ => Err(err("expected [low, high]".to_string(), &v.origin, path)),
    }
}

const DISTS: [&str; 4] = ["choice", "uniform", "log_uniform", "int_uniform"];

fn dist_of(v: &SValue) -> bool {
    matches!(&v.kind, Kind::Table(t) if t.len() == 1 && t.keys().all(|k| DISTS.contains(&k.as_str())))
}

fn random(entry: &Entry) -> Result<RandomSpec, ManifestError> {
    let path = "sweep.random";
    let Some(t) = entry.value.as_table() else {
        return Err(err(
            format!(
                "wrong type: `sweep.random` must be a table, found {}",
                entry.value.kind.type_name()
            ),
            &entry.value.origin,
            path,
        ));
    };
    let mut samples = None;
    let mut seed = 0u64;
    let mut rest: IndexMap<String, Entry> = IndexMap::new();
    for (k, e) in t {
        match k.as_str() {
            "samples" => match e.value.kind {
                Kind::Int(n) if n > 0 => samples = Some(n as usize),
                _ => {
                    return Err(err(
                        "`samples` must be a whole number > 0",
                        &e.value.origin,
                        "sweep.random.samples",
                    ))
                }
            },
            "seed" => match e.value.kind {
                Kind::Int(n) if n >= 0 => seed = n as u64,
                _ => {
                    return Err(err(
                        "`seed` must be a whole number >= 0",
                        &e.value.origin,
                        "sweep.random.seed",
                    ))
                }
            },
            _ => {
                rest.insert(k.clone(), e.clone());
            }
        }
    }
    let Some(samples) = samples else {
        return Err(err(
            "missing required key `samples` (how many points to draw)",
            &entry.key_origin,
            path,
        ));
    };
    // A table that holds no table is where a key ends: a distribution, or a mistake in one.
    let ends = |v: &SValue| match &v.kind {
        Kind::Table(t) => dist_of(v) || !t.values().any(|e| matches!(e.value.kind, Kind::Table(_))),
        _ => true,
    };
    let mut found = Vec::new();
    leaves(&rest, "", &ends, &mut found);
    let mut keys = Vec::new();
    for (key, e) in found {
        let kp = format!("{path}.{key}");
        let Some((name, spec)) = e
            .value
            .as_table()
            .filter(|_| dist_of(&e.value))
            .and_then(|t| t.iter().next())
        else {
            let mut x = err(
                format!("`{key}` needs a distribution, e.g. `{{ log_uniform = [1e-4, 1e-1] }}`"),
                &e.value.origin,
                &kp,
            );
            if let Some(t) = e.value.as_table() {
                if let Some(k) = t.keys().next() {
                    x = x.help(match did_you_mean(k, DISTS) {
                        Some(m) => format!("did you mean `{m}`?"),
                        None => format!("one of: {}", DISTS.join(", ")),
                    });
                }
            }
            return Err(x);
        };
        let sp = format!("{kp}.{name}");
        let d = match name.as_str() {
            "choice" => match &spec.value.kind {
                Kind::Array(a) if !a.is_empty() => Dist::Choice(a.clone()),
                _ => {
                    return Err(err(
                        "`choice` needs a non-empty list of values",
                        &spec.value.origin,
                        &sp,
                    ))
                }
            },
            "uniform" => {
                let (lo, hi, _) = pair(&spec.value, &sp)?;
                Dist::Uniform(lo, hi)
            }
            "log_uniform" => {
                let (lo, hi, o) = pair(&spec.value, &sp)?;
                if lo <= 0.0 {
                    return Err(err("`log_uniform` needs a range above 0", &o, &sp));
                }
                Dist::LogUniform(lo, hi)
            }
            _ => {
                let (lo, hi, o) = pair(&spec.value, &sp)?;
                if lo.fract() != 0.0 || hi.fract() != 0.0 {
                    return Err(err("`int_uniform` needs whole numbers", &o, &sp));
                }
                Dist::IntUniform(lo as i64, hi as i64)
            }
        };
        keys.push((key, e.key_origin.clone(), d));
    }
    if keys.is_empty() {
        return Err(err(
            "`sweep.random` draws no key: add one, e.g. `\"train.lr\" = { log_uniform = [1e-4, 1e-1] }`",
            &entry.key_origin,
            path,
        ));
    }
    Ok(RandomSpec {
        samples,
        seed,
        keys,
    })
}

fn halving(entry: &Entry) -> Result<(Halving, Vec<Origin>), ManifestError> {
    let path = "sweep.halving";
    let Some(t) = entry.value.as_table() else {
        return Err(err(
            format!(
                "wrong type: `sweep.halving` must be a table, found {}",
                entry.value.kind.type_name()
            ),
            &entry.value.origin,
            path,
        ));
    };
    for (k, e) in t {
        if !["rungs", "metric", "goal", "eta"].contains(&k.as_str()) {
            let mut x = err(
                format!("unknown key `{k}`"),
                &e.key_origin,
                &format!("{path}.{k}"),
            );
            x.help = Some(match did_you_mean(k, ["rungs", "metric", "goal", "eta"]) {
                Some(m) => format!("did you mean `{m}`?"),
                None => "expected one of: rungs, metric, goal, eta".into(),
            });
            return Err(x);
        }
    }
    let Some(r) = t.get("rungs") else {
        return Err(err(
            "missing required key `rungs` (the training stages after which points are compared)",
            &entry.key_origin,
            path,
        ));
    };
    let mut rungs = Vec::new();
    let mut origins = Vec::new();
    match &r.value.kind {
        Kind::Array(a) if !a.is_empty() => {
            for x in a {
                match x.as_str() {
                    Some(s) => {
                        rungs.push(s.to_string());
                        origins.push(x.origin.clone());
                    }
                    None => {
                        return Err(err(
                            "a rung is the name of a training stage",
                            &x.origin,
                            "sweep.halving.rungs",
                        ))
                    }
                }
            }
        }
        _ => {
            return Err(err(
                "`rungs` must be a non-empty list of training stage names",
                &r.value.origin,
                "sweep.halving.rungs",
            ))
        }
    }
    let metric = match t.get("metric") {
        None => Metric::ValAcc,
        Some(m) => match m.value.as_str().and_then(Metric::parse) {
            Some(metric) => metric,
            _ => {
                let mut x = err(
                    "`metric` must be one of val.acc, val.loss, train.acc, train.loss",
                    &m.value.origin,
                    "sweep.halving.metric",
                );
                if let Some(s) = m.value.as_str() {
                    if let Some(d) = did_you_mean(s, Metric::ALL.map(Metric::as_str)) {
                        x = x.help(format!("did you mean `{d}`?"));
                    }
                }
                return Err(x);
            }
        },
    };
    let goal = match t.get("goal") {
        None => metric.default_goal(),
        Some(g) => match g.value.as_str() {
            Some("max") => Goal::Max,
            Some("min") => Goal::Min,
            _ => {
                return Err(err(
                    "`goal` must be \"max\" or \"min\"",
                    &g.value.origin,
                    "sweep.halving.goal",
                ))
            }
        },
    };
    let eta = match t.get("eta") {
        None => 3,
        Some(e) => match e.value.kind {
            Kind::Int(n) if n >= 2 => n as usize,
            _ => {
                return Err(err(
                    "`eta` must be a whole number >= 2 (the best 1/eta of the points go on)",
                    &e.value.origin,
                    "sweep.halving.eta",
                ))
            }
        },
    };
    Ok((
        Halving {
            rungs,
            metric,
            goal,
            eta,
        },
        origins,
    ))
}

/// Parse the `[sweep]` table.
pub fn parse_spec(entry: &Entry) -> Result<SweepSpec, ManifestError> {
    let Some(t) = entry.value.as_table() else {
        return Err(err(
            format!(
                "wrong type: `sweep` must be a table, found {}",
                entry.value.kind.type_name()
            ),
            &entry.value.origin,
            "sweep",
        ));
    };
    let known = ["grid", "zip", "random", "halving", "max_points"];
    let mut spec = SweepSpec {
        grid: Vec::new(),
        zip: Vec::new(),
        random: None,
        halving: None,
        max_points: DEFAULT_MAX_POINTS,
        origin: entry.key_origin.clone(),
    };
    for (k, e) in t {
        match k.as_str() {
            "grid" => spec.grid = axes(e, "sweep.grid")?,
            "zip" => spec.zip = axes(e, "sweep.zip")?,
            "random" => spec.random = Some(random(e)?),
            "halving" => spec.halving = Some(halving(e)?),
            "max_points" => match e.value.kind {
                Kind::Int(n) if n > 0 && n as u64 <= MAX_POINTS_CEILING as u64 => {
                    spec.max_points = n as usize
                }
                _ => {
                    return Err(err(
                        format!(
                            "`max_points` must be a whole number from 1 to {MAX_POINTS_CEILING}"
                        ),
                        &e.value.origin,
                        "sweep.max_points",
                    ))
                }
            },
            _ => {
                let mut x = err(
                    format!("unknown key `{k}`"),
                    &e.key_origin,
                    &format!("sweep.{k}"),
                );
                x.help = Some(match did_you_mean(k, known) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("expected one of: {}", known.join(", ")),
                });
                return Err(x);
            }
        }
    }
    if spec.grid.is_empty() && spec.zip.is_empty() && spec.random.is_none() {
        return Err(err(
            "the sweep sets no key: give it a `[sweep.grid]`, `[sweep.zip]` or `[sweep.random]`",
            &entry.key_origin,
            "sweep",
        ));
    }
    if let Some(first) = spec.zip.first() {
        for a in &spec.zip[1..] {
            if a.values.len() != first.values.len() {
                return Err(err(
                    format!(
                        "zipped lists must have one length: `{}` has {} values, `{}` {}",
                        a.key,
                        a.values.len(),
                        first.key,
                        first.values.len()
                    ),
                    &a.origin,
                    &format!("sweep.zip.{}", a.key),
                ));
            }
        }
    }
    // A key swept twice would set one value over another.
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let random_keys = spec
        .random
        .iter()
        .flat_map(|r| r.keys.iter().map(|k| (&k.0, &k.1)));
    for (k, o) in spec
        .grid
        .iter()
        .chain(&spec.zip)
        .map(|a| (&a.key, &a.origin))
        .chain(random_keys)
    {
        if !seen.insert(k.as_str()) {
            return Err(err(
                format!("`{k}` is swept twice"),
                o,
                &format!("sweep.{k}"),
            ));
        }
    }
    Ok(spec)
}

/// A value as an id shows it: numbers short (`5e-3`, not `0.005`), strings bare (other
/// than `[A-Za-z0-9._+-]`, percent-escaped, so an id is one shell word).
pub fn id_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            let plain = format!("{f}");
            let sci = format!("{f:e}");
            let small_or_large = f != 0.0 && (f.abs() < 0.1 || f.abs() >= 1e5);
            if sci.len() < plain.len() || (sci.len() == plain.len() && small_or_large) {
                sci
            } else {
                plain
            }
        }
        serde_json::Value::String(s) => s
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                    c.to_string()
                } else {
                    let mut b = [0u8; 4];
                    c.encode_utf8(&mut b)
                        .bytes()
                        .map(|x| format!("%{x:02X}"))
                        .collect()
                }
            })
            .collect(),
        serde_json::Value::Array(a) => a.iter().map(id_value).collect::<Vec<_>>().join("_"),
        other => other.to_string(),
    }
}

/// A float rounded to 4 significant digits (random draws: the id shows the value used).
fn round4(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let e = x.abs().log10().floor() as i32;
    let f = 10f64.powi(3 - e);
    (x * f).round() / f
}

/// One point's overrides: (key, key's origin, value), in the sweep's key order.
pub type Overrides = Vec<(String, Origin, SValue)>;

/// Every point's overrides.
pub fn expand(spec: &SweepSpec) -> Result<Vec<Overrides>, ManifestError> {
    // Counted in u128, which no product of these counts passes: a grid of 16 keys of
    // 16 values is 2^64 points, not 0.
    let counts = spec
        .grid
        .iter()
        .map(|a| a.values.len())
        .chain(spec.zip.first().map(|a| a.values.len()))
        .chain(spec.random.as_ref().map(|r| r.samples));
    let total = counts.fold(1u128, |t, n| t.saturating_mul(n as u128));
    if total > spec.max_points as u128 {
        return Err(err(
            format!(
                "the sweep has {total} points, more than `max_points` = {} (raise it in [sweep] if you mean it, up to {MAX_POINTS_CEILING})",
                spec.max_points
            ),
            &spec.origin,
            "sweep",
        ));
    }
    // Random draws, once, in order: sample by sample, key by key. A sample that repeats
    // an earlier one (after rounding) is drawn again, so a seed whose draws never repeat
    // gives the points it always gave; a space too small for `samples` distinct points is
    // an error naming it.
    let mut draws: Vec<Overrides> = Vec::new();
    if let Some(r) = &spec.random {
        let mut rng = ChaCha8Rng::seed_from_u64(r.seed);
        let mut drawn: BTreeSet<String> = BTreeSet::new();
        for _ in 0..r.samples {
            let mut attempts = 0;
            let one = loop {
                let one = draw(&mut rng, r);
                let seen = format!(
                    "{:?}",
                    one.iter().map(|(_, _, v)| &v.kind).collect::<Vec<_>>()
                );
                if drawn.insert(seen) {
                    break one;
                }
                attempts += 1;
                if attempts >= MAX_REDRAWS {
                    return Err(err(
                        format!(
                            "`sweep.random` cannot draw {} distinct points: after {} of them, {MAX_REDRAWS} draws in a row repeated an earlier point (widen the ranges or lower `samples`)",
                            r.samples,
                            draws.len()
                        ),
                        &spec.origin,
                        "sweep.random.samples",
                    ));
                }
            };
            draws.push(one);
        }
    } else {
        draws.push(Vec::new());
    }
    // At most `max_points` (checked above): these products fit.
    let grid_n: usize = spec.grid.iter().map(|a| a.values.len()).product();
    let zip_n = spec.zip.first().map_or(1, |a| a.values.len());
    let mut out = Vec::with_capacity(total as usize);
    for g in 0..grid_n {
        // Mixed radix, the last grid key fastest.
        let mut rem = g;
        let mut grid_vals = vec![None; spec.grid.len()];
        for (i, a) in spec.grid.iter().enumerate().rev() {
            grid_vals[i] = Some(a.values[rem % a.values.len()].clone());
            rem /= a.values.len();
        }
        for z in 0..zip_n {
            for d in &draws {
                let mut point = Vec::new();
                for (a, v) in spec.grid.iter().zip(&grid_vals) {
                    point.push((a.key.clone(), a.origin.clone(), v.clone().expect("set")));
                }
                for a in &spec.zip {
                    point.push((a.key.clone(), a.origin.clone(), a.values[z].clone()));
                }
                point.extend(d.iter().cloned());
                out.push(point);
            }
        }
    }
    Ok(out)
}

/// Load every point (`typed` types the manifest with one point's keys set), and check
/// what spans points: ids unique, no two points alike, halving rungs a training chain.
pub fn load_points(
    name: &str,
    aliases: Vec<String>,
    file: &Path,
    spec: &SweepSpec,
    mut typed: impl FnMut(&[(String, Origin, SValue)]) -> Result<Pipeline, ManifestError>,
) -> Result<Sweep, ManifestError> {
    let overrides = expand(spec)?;
    let keys: Vec<String> = overrides
        .first()
        .map(|p| p.iter().map(|(k, _, _)| k.clone()).collect())
        .unwrap_or_default();
    let mut points: Vec<SweepPoint> = Vec::with_capacity(overrides.len());
    let mut seen_ids: BTreeSet<String> = BTreeSet::new();
    let mut seen_values: BTreeSet<String> = BTreeSet::new();
    for over in &overrides {
        let values: Vec<(String, serde_json::Value)> = over
            .iter()
            .map(|(k, _, v)| (k.clone(), v.to_json()))
            .collect();
        let id = values
            .iter()
            .map(|(k, v)| format!("{}={}", short_key(&keys, k), id_value(v)))
            .collect::<Vec<_>>()
            .join(",");
        let at = over
            .iter()
            .map(|(_, _, v)| v.origin.clone())
            .next_back()
            .unwrap_or_else(|| spec.origin.clone());
        if !seen_values.insert(serde_json::to_string(&values).unwrap_or_default()) {
            return Err(err(
                format!("two points of the sweep are identical ({id}): each point must differ"),
                &at,
                "sweep",
            ));
        }
        if !seen_ids.insert(id.clone()) {
            return Err(err(
                format!("two points of the sweep have the id `{id}`: their values print alike"),
                &at,
                "sweep",
            ));
        }
        let mut pipeline = typed(over).map_err(|mut e| {
            e.message = format!("{} (in sweep point `{id}`)", e.message);
            e
        })?;
        pipeline.name = format!("{name}@{id}");
        pipeline.aliases.clear();
        points.push(SweepPoint {
            id,
            values,
            pipeline,
        });
    }
    let halving = match &spec.halving {
        Some((h, origins)) => {
            check_rungs(&points[0].pipeline, h, origins)?;
            Some(h.clone())
        }
        None => None,
    };
    Ok(Sweep {
        name: name.to_string(),
        aliases,
        file: file.to_path_buf(),
        keys,
        points,
        halving,
    })
}

/// Each rung is a training stage, and each continues the one before it.
fn check_rungs(p: &Pipeline, h: &Halving, origins: &[Origin]) -> Result<(), ManifestError> {
    for (i, (rung, at)) in h.rungs.iter().zip(origins).enumerate() {
        let Some(s) = p.stages.get(rung) else {
            let mut e = err(
                format!("halving rung `{rung}` is not a stage of this pipeline"),
                at,
                "sweep.halving.rungs",
            );
            e.help = Some(
                match did_you_mean(rung, p.stages.keys().map(|k| k.as_str())) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!(
                        "training stages: {}",
                        p.stages
                            .iter()
                            .filter(|(_, s)| s.config.is_training())
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            );
            return Err(e);
        };
        if !s.config.is_training() {
            return Err(err(
                format!(
                    "halving rung `{rung}` is not a training stage but {} `{}` stage: a rung is a train, lr-drop or resume stage",
                    if matches!(s.config.kind().as_str().as_bytes()[0], b'a' | b'e' | b'i' | b'o' | b'u' | b'h') { "an" } else { "a" },
                    s.config.kind()
                ),
                at,
                "sweep.halving.rungs",
            ));
        }
        if i > 0 {
            let prev = &h.rungs[i - 1];
            let mut at_stage = rung.as_str();
            let mut found = false;
            for _ in 0..256 {
                match p.continues(at_stage) {
                    Some(c) if c == prev => {
                        found = true;
                        break;
                    }
                    Some(c) => at_stage = c,
                    None => break,
                }
            }
            if !found {
                return Err(err(
                    format!(
                        "halving rung `{rung}` does not continue `{prev}`: the rungs are the segments of one training chain, in order"
                    ),
                    at,
                    "sweep.halving.rungs",
                ));
            }
        }
    }
    Ok(())
}

/// Each rung halving decides at (every rung but the last) depends on a swept key. A rung
/// whose stage and every stage it reads are the same in every point gives every point the
/// same result: the comparison would be a tie settled by point order, and the swept values
/// would never be tried. Checked where the keys name stages alone; a key on a block, a
/// network or the seed may reach any training stage, so such a sweep is not refused.
pub fn check_rungs_differ(
    p: &Pipeline,
    keys: &[String],
    h: &Halving,
    origins: &[Origin],
) -> Result<(), ManifestError> {
    let swept: BTreeSet<&str> = keys
        .iter()
        .map(|k| k.split('.').next().unwrap_or(k))
        .collect();
    if swept.is_empty() || !swept.iter().all(|k| p.stages.contains_key(*k)) {
        return Ok(());
    }
    let decided = h.rungs.len().saturating_sub(1);
    for (rung, at) in h.rungs.iter().zip(origins).take(decided) {
        // The rung and every stage it reads, by inputs and by the segment it continues.
        let mut upstream: BTreeSet<&str> = BTreeSet::new();
        let mut todo = vec![rung.as_str()];
        while let Some(name) = todo.pop() {
            let Some((name, stage)) = p.stages.get_key_value(name) else {
                continue;
            };
            if upstream.insert(name.as_str()) {
                todo.extend(stage.inputs.iter().map(|i| i.as_str()));
                todo.extend(p.continues(name));
            }
        }
        if swept.iter().all(|k| !upstream.contains(k)) {
            let mut e = err(
                format!(
                    "halving rung `{rung}` is the same in every point: no swept key ({}) changes it or a stage it reads, so comparing the points there would decide by point order alone",
                    swept.iter().map(|k| format!("`{k}.*`")).collect::<Vec<_>>().join(", ")
                ),
                at,
                "sweep.halving.rungs",
            );
            e.help = Some(
                "halve at a rung that a swept key changes (a later segment), or drop this rung"
                    .into(),
            );
            return Err(e);
        }
    }
    Ok(())
}

/// Draws in a row that may repeat an earlier random point before the sweep is refused.
const MAX_REDRAWS: usize = 1000;

/// One random sample: each key drawn in turn.
fn draw(rng: &mut ChaCha8Rng, r: &RandomSpec) -> Overrides {
    let mut one = Vec::new();
    for (key, origin, d) in &r.keys {
        let kind = match d {
            Dist::Choice(vals) => vals[rng.random_range(0..vals.len())].kind.clone(),
            Dist::Uniform(lo, hi) => Kind::Float(round4(lo + (hi - lo) * rng.random::<f64>())),
            Dist::LogUniform(lo, hi) => Kind::Float(round4(
                (lo.ln() + (hi.ln() - lo.ln()) * rng.random::<f64>()).exp(),
            )),
            Dist::IntUniform(lo, hi) => Kind::Int(rng.random_range(*lo..=*hi)),
        };
        one.push((
            key.clone(),
            origin.clone(),
            SValue {
                kind,
                origin: origin.clone(),
            },
        ));
    }
    one
}

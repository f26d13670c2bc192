//! A sweep's words: a stage as the points share it ([`SharedStage`]), how a run of the
//! sweep went ([`SweepRun`], one [`PointResult`] per point), and the decisions successive
//! halving recorded after each rung ([`HalvingDecisions`]).

use serde::{Deserialize, Serialize};

use super::StageOutcome;
use crate::ids::Recipe;
use crate::manifest::sweep::{Goal, Metric};

/// One stage as the points of a sweep share it: the same key (or, before inputs exist,
/// the same recipe) in every point listed.
#[derive(Debug, Clone, Serialize)]
pub struct SharedStage {
    /// The points (ids) that have this stage.
    pub points: Vec<String>,
    /// Its outcome (the first point's).
    pub outcome: StageOutcome,
    /// What identifies it while its key cannot be known yet (an input not built): its
    /// recipe, the hash of its configuration and its inputs' recipes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipe: Option<Recipe>,
}

/// A halving decision after one rung.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rung {
    /// The rung's stage.
    pub stage: String,
    /// The metric compared (`val.acc`).
    pub metric: Metric,
    /// Whether higher or lower is better.
    pub goal: Goal,
    /// Reduction factor.
    pub eta: usize,
    /// Each live point's metric at this rung, in point order (a diverged point's NaN is
    /// written `null`, and read back as NaN).
    #[serde(deserialize_with = "values_nan_if_null")]
    pub values: Vec<(String, f64)>,
    /// The points that go on, best first.
    pub kept: Vec<String>,
}

/// The decisions recorded for a sweep (`<store>/sweeps/<sweep>.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HalvingDecisions {
    /// One entry per rung decided, in order.
    pub rungs: Vec<Rung>,
    /// The ids of the sweep's points when these were decided (a sweep whose points
    /// changed since has its decisions worked out again).
    #[serde(default)]
    pub points: Vec<String>,
    /// BLAKE3 of what the decisions were taken over: the halving settings and every
    /// point's stages as configured (an `eta`, a `goal` or a rung's epochs changed since
    /// has the decisions worked out again). Empty in records from before it was kept,
    /// which are trusted as they were (over their points alone) until a run rewrites them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub about: String,
    /// BLAKE3 of the rungs and the points as written: a file edited or damaged since is
    /// not trusted.
    #[serde(default)]
    pub seal: String,
}

/// A rung's values as written: JSON has no NaN, so serde writes a diverged point's metric
/// as `null`; it reads back as the NaN it was.
fn values_nan_if_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, f64)>, D::Error> {
    let v: Vec<(String, Option<f64>)> = Deserialize::deserialize(d)?;
    Ok(v.into_iter()
        .map(|(id, m)| (id, m.unwrap_or(f64::NAN)))
        .collect())
}

impl HalvingDecisions {
    /// The rung after which a point was pruned, if it was.
    pub fn pruned_at(&self, id: &str) -> Option<&Rung> {
        self.rungs
            .iter()
            .find(|r| r.values.iter().any(|(p, _)| p == id) && !r.kept.iter().any(|k| k == id))
    }
}

/// How one point of a run went.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum PointResult {
    /// Every stage is done.
    Done,
    /// A stage failed: the error.
    Failed {
        /// The error, one line.
        error: String,
    },
    /// Successive halving stopped it after this rung.
    Pruned {
        /// The rung.
        rung: String,
    },
    /// A dry run: what would run.
    Planned,
}

/// A run of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRun {
    /// The sweep.
    pub sweep: String,
    /// Each point run, in order, with its stages.
    pub points: Vec<(String, PointResult, Vec<StageOutcome>)>,
    /// Halving decisions made (or repeated).
    pub decisions: HalvingDecisions,
}

impl SweepRun {
    /// The ids of the points that failed, with their errors.
    pub fn failed(&self) -> Vec<(&str, &str)> {
        self.points
            .iter()
            .filter_map(|(id, r, _)| match r {
                PointResult::Failed { error } => Some((id.as_str(), error.as_str())),
                _ => None,
            })
            .collect()
    }
}

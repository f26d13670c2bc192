//! Training history: one record per epoch, across every segment (train, lr drops,
//! resumes) of a run. A training stage writes them as `history.json` (and its timings as
//! `timings.json`); `report::history` plots them.

use serde::{Deserialize, Serialize};

/// One epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// The stage that trained it.
    pub stage: String,
    /// Learning rate used.
    pub lr: f64,
    /// Mean training loss (cross-entropy).
    pub train_loss: f64,
    /// Training accuracy (on augmented batches).
    pub train_acc: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_acc: f64,
    /// Validation loss of the weights' moving average (`ema`), when the stage keeps one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_val_loss: Option<f64>,
    /// Validation accuracy of the weights' moving average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_val_acc: Option<f64>,
    /// Training images per second. Not written to `history.json` (nor to checkpoints): a
    /// timing is not content, and a byte-identical re-train must give a byte-identical
    /// artifact. Timings go to `timings.json`, a record the store does not hash.
    #[serde(default, skip_serializing)]
    pub images_per_sec: f64,
    /// Wall-clock seconds of the epoch (training and validation). Not written to
    /// `history.json` either, for the same reason: it goes to `timings.json`.
    #[serde(default, skip_serializing)]
    pub seconds: f64,
}

/// One epoch's timing, for `timings.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochTiming {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// The stage that trained it.
    pub stage: String,
    /// Training images per second.
    pub images_per_sec: f64,
    /// Wall-clock seconds of the epoch, training and validation (0: not recorded, as in
    /// stores written before it was).
    #[serde(default)]
    pub seconds: f64,
    /// What it trained on: `cpu (2 threads, x86_64)`, or the GPU's name, driver and CUDA
    /// version. A record, like the rest: thread counts and machines do not change the
    /// artifact.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device: String,
}

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
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    /// Mean training loss (cross-entropy).
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    /// Training accuracy (on augmented batches).
    #[serde(deserialize_with = "nan_if_null")]
    pub train_acc: f64,
    /// Validation loss.
    #[serde(deserialize_with = "nan_if_null")]
    pub val_loss: f64,
    /// Validation accuracy.
    #[serde(deserialize_with = "nan_if_null")]
    pub val_acc: f64,
    /// Validation loss of the weights' moving average (`ema`), when the stage keeps one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nan_if_null_kept"
    )]
    pub ema_val_loss: Option<f64>,
    /// Validation accuracy of the weights' moving average.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nan_if_null_kept"
    )]
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

/// A number as `history.json` holds it: serde_json writes a non-finite one (a diverged
/// validation loss) as `null`, which reads back as NaN, so the epoch still reads and a
/// sweep's rung ranks it worst instead of losing it.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// [`nan_if_null`] for a number only some stages keep: absent is `None`, `null` is NaN.
fn nan_if_null_kept<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(Some(nan_if_null(d)?))
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

/// The file beside a training's curves that holds each epoch's timing.
pub const TIMINGS: &str = "timings.json";

/// A training stage's `timings.json` in `dir` (each epoch's images/s and seconds), or none.
pub fn read_timings(dir: &std::path::Path) -> Vec<EpochTiming> {
    std::fs::read(dir.join(TIMINGS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Each epoch's images/s and seconds from the timings of the stages that trained it (the
/// last said of an epoch of a stage wins: a resumed training's).
pub fn with_timings(epochs: &mut [EpochRecord], timings: &[EpochTiming]) {
    for r in epochs {
        if let Some(t) = timings
            .iter()
            .rev()
            .find(|t| t.epoch == r.epoch && t.stage == r.stage)
        {
            r.images_per_sec = t.images_per_sec;
            r.seconds = t.seconds;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_number_reads_back_as_nan_and_an_absent_one_as_none() {
        let e = EpochRecord {
            epoch: 3,
            stage: "train".into(),
            lr: 0.1,
            train_loss: 0.5,
            train_acc: 0.75,
            val_loss: f64::INFINITY,
            val_acc: 0.25,
            ema_val_loss: Some(f64::NAN),
            ema_val_acc: Some(0.5),
            images_per_sec: 0.0,
            seconds: 0.0,
        };
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains("\"val_loss\":null"), "{text}");
        let back: EpochRecord = serde_json::from_str(&text).unwrap();
        assert!(back.val_loss.is_nan());
        assert!(back.ema_val_loss.is_some_and(f64::is_nan));
        assert_eq!((back.val_acc, back.ema_val_acc), (0.25, Some(0.5)));
        let plain = EpochRecord {
            ema_val_loss: None,
            ema_val_acc: None,
            ..e
        };
        let back: EpochRecord =
            serde_json::from_str(&serde_json::to_string(&plain).unwrap()).unwrap();
        assert_eq!((back.ema_val_loss, back.ema_val_acc), (None, None));
    }
}

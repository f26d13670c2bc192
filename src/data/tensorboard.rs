//! TensorBoard event files for recorded runs (`pipe runs --tensorboard DIR`): one folder
//! per run (`DIR/<pipeline>.<run id>/events.out.tfevents.<secs>.<host>`) holding
//! per-epoch scalars (`loss`, `accuracy`, `val_loss`, `val_accuracy`, `lr`), the final
//! metrics (`final/<name>`), and the hparams plugin's session summaries (the configuration
//! keys that differ between the runs written, with the final metrics beside them in
//! TensorBoard's HParams tab).
//!
//! The format: TFRecord framing (`u64` length, masked CRC-32C of it, the data, masked
//! CRC-32C of the data) around `Event` protobufs; the first event carries
//! `file_version = "brain.Event:2"`. The messages are the few of TensorBoard's protos
//! needed, as prost structs (field numbers from `event.proto`, `summary.proto`,
//! `tensor.proto` and the hparams plugin's `plugin_data.proto`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use prost::Message;

use crate::outcome::history::EpochRecord;
use crate::outcome::record::{RunRecord, RunState};

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

/// `tensorflow.TensorProto` (a scalar float: what the hparams summaries carry).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    #[prost(float, repeated, tag = "5")]
    pub float_val: Vec<f32>,
}

/// `tensorflow.TensorShapeProto` (empty: a scalar).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {}

/// `tensorflow.SummaryMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorboard.hparams.HParamsPluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HParamsPluginData {
    #[prost(int32, tag = "1")]
    pub version: i32,
    #[prost(message, optional, tag = "3")]
    pub session_start_info: Option<SessionStartInfo>,
    #[prost(message, optional, tag = "4")]
    pub session_end_info: Option<SessionEndInfo>,
}

/// `tensorboard.hparams.SessionStartInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionStartInfo {
    #[prost(btree_map = "string, message", tag = "1")]
    pub hparams: BTreeMap<String, ProtoValue>,
    #[prost(string, tag = "4")]
    pub group_name: String,
    #[prost(double, tag = "5")]
    pub start_time_secs: f64,
}

/// `tensorboard.hparams.SessionEndInfo` (status 1: success, 2: failure, 3: running).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionEndInfo {
    #[prost(int32, tag = "1")]
    pub status: i32,
    #[prost(double, tag = "2")]
    pub end_time_secs: f64,
}

/// `google.protobuf.Value` (number, string or bool).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoValue {
    #[prost(double, optional, tag = "2")]
    pub number_value: Option<f64>,
    #[prost(string, optional, tag = "3")]
    pub string_value: Option<String>,
    #[prost(bool, optional, tag = "4")]
    pub bool_value: Option<bool>,
}

/// TFRecord's masked CRC-32C.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the data, the data's masked CRC.
fn frame(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

fn scalar(tag: &str, v: f64) -> Value {
    Value {
        tag: tag.to_string(),
        simple_value: Some(v as f32),
        tensor: None,
        metadata: None,
    }
}

fn hparams_value(tag: &str, data: HParamsPluginData) -> Value {
    Value {
        tag: tag.to_string(),
        simple_value: None,
        tensor: Some(TensorProto {
            dtype: 1,
            tensor_shape: Some(TensorShapeProto {}),
            float_val: vec![0.0],
        }),
        metadata: Some(SummaryMetadata {
            plugin_data: Some(PluginData {
                plugin_name: "hparams".into(),
                content: data.encode_to_vec(),
            }),
        }),
    }
}

/// A configuration value as a `google.protobuf.Value`.
fn proto_value(v: &str) -> ProtoValue {
    let mut out = ProtoValue::default();
    if let Ok(x) = v.parse::<f64>() {
        out.number_value = Some(x);
    } else if let Ok(b) = v.parse::<bool>() {
        out.bool_value = Some(b);
    } else {
        out.string_value = Some(v.to_string());
    }
    out
}

/// The configuration keys shown as hparams: those whose values differ between `runs`;
/// when none do (one run, or identical ones), the training keys (`lr`, `epochs`,
/// `batch_size`, `optimizer`).
pub fn hparam_keys(runs: &[RunRecord]) -> Vec<String> {
    let configs: Vec<_> = runs.iter().map(RunRecord::config).collect();
    let all: BTreeSet<&String> = configs.iter().flat_map(|c| c.keys()).collect();
    let differ: Vec<String> = all
        .iter()
        .filter(|k| {
            let first = configs[0].get(**k);
            configs.iter().any(|c| c.get(**k) != first)
        })
        .map(|k| (*k).clone())
        .collect();
    if !differ.is_empty() {
        return differ;
    }
    all.into_iter()
        .filter(|k| {
            [".lr", ".epochs", ".batch_size", ".optimizer"]
                .iter()
                .any(|s| k.ends_with(s))
        })
        .cloned()
        .collect()
}

/// Write one run folder per record into `dir`; the number written. `artifacts`: the
/// store's artifact folder (training histories are read from there).
pub fn write_runs(dir: &Path, runs: &[RunRecord], artifacts: &Path) -> Result<usize> {
    if runs.is_empty() {
        return Ok(0);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let keys = hparam_keys(runs);
    for r in runs {
        let label = format!("{}.{}", r.pipeline.replace(['/', '\\'], "_"), r.id);
        let run_dir = dir.join(&label);
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("cannot create {}", run_dir.display()))?;
        let bytes = events_of(r, &keys, artifacts);
        let start = crate::outcome::record::unix_of(&r.started).unwrap_or(0);
        let host = if r.host.hostname.is_empty() {
            "pipe".to_string()
        } else {
            r.host.hostname.replace(['/', '\\'], "_")
        };
        let path = run_dir.join(format!("events.out.tfevents.{start}.{host}"));
        crate::atomic::write_atomic(&path, &bytes)?;
    }
    Ok(runs.len())
}

/// The event file's bytes for one run.
pub fn events_of(r: &RunRecord, keys: &[String], artifacts: &Path) -> Vec<u8> {
    let start = crate::outcome::record::unix_of(&r.started).unwrap_or(0) as f64;
    let config = r.config();
    let end = r
        .ended
        .as_deref()
        .and_then(crate::outcome::record::unix_of)
        .map_or(start, |e| e as f64);
    let mut out = Vec::new();
    let event = |out: &mut Vec<u8>, step: i64, wall: f64, values: Vec<Value>| {
        let e = Event {
            wall_time: wall,
            step,
            file_version: None,
            summary: Some(Summary { value: values }),
        };
        frame(out, &e.encode_to_vec());
    };
    frame(
        &mut out,
        &Event {
            wall_time: start,
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        }
        .encode_to_vec(),
    );
    // The session's hyperparameters first, as TensorBoard's hparams summary writes them.
    let start_info = SessionStartInfo {
        hparams: keys
            .iter()
            .filter_map(|k| {
                config.get(k).map(|v| {
                    (
                        crate::outcome::record::RunRecord::short_key(k).to_string(),
                        proto_value(v),
                    )
                })
            })
            .collect(),
        group_name: String::new(),
        start_time_secs: start,
    };
    event(
        &mut out,
        0,
        start,
        vec![hparams_value(
            "_hparams_/session_start_info",
            HParamsPluginData {
                version: 0,
                session_start_info: Some(start_info),
                session_end_info: None,
            },
        )],
    );
    // Per-epoch scalars from the last training stage's history (it holds every segment).
    // A record's outputs are content hashes (a record pulled from elsewhere that says
    // otherwise names no folder here).
    let trained: Vec<std::path::PathBuf> = r
        .stages
        .iter()
        .filter(|s| matches!(s.kind.as_str(), "train" | "lr-drop" | "resume"))
        .filter_map(|s| {
            let out = crate::ids::ContentHash::parse(s.output.as_deref()?)?;
            Some(artifacts.join(out.as_str()))
        })
        .collect();
    let mut history = trained
        .iter()
        .rev()
        .find_map(|dir| {
            let bytes = std::fs::read(dir.join("history.json")).ok()?;
            serde_json::from_slice::<Vec<EpochRecord>>(&bytes).ok()
        })
        .unwrap_or_default();
    let timings: Vec<_> = trained
        .iter()
        .flat_map(|d| crate::outcome::history::read_timings(d))
        .collect();
    crate::outcome::history::with_timings(&mut history, &timings);
    // Each epoch's wall time: the run's start plus the training seconds up to its end
    // (`timings.json`), so the relative axis is training time; spread evenly over the
    // run where an epoch's time was not recorded.
    let timed = !history.is_empty() && history.iter().all(|e| e.seconds > 0.0);
    let span = (end - start).max(0.0);
    let n = history.len().max(1) as f64;
    let mut trained_secs = 0.0;
    for (i, e) in history.iter().enumerate() {
        trained_secs += e.seconds;
        let wall = match timed {
            true => start + trained_secs,
            false => start + span * (i + 1) as f64 / n,
        };
        event(
            &mut out,
            e.epoch as i64,
            wall,
            vec![
                scalar("loss", e.train_loss),
                scalar("accuracy", e.train_acc),
                scalar("val_loss", e.val_loss),
                scalar("val_accuracy", e.val_acc),
                scalar("lr", e.lr),
            ],
        );
    }
    let last_step = history.last().map_or(0, |e| e.epoch as i64);
    let finals: Vec<Value> = r
        .metrics
        .iter()
        .map(|(k, v)| scalar(&format!("final/{k}"), *v))
        .collect();
    if !finals.is_empty() {
        event(&mut out, last_step, end, finals);
    }
    let status = match r.state {
        RunState::Done => 1,
        RunState::Failed | RunState::Interrupted => 2,
        RunState::Running => 3,
    };
    event(
        &mut out,
        last_step,
        end,
        vec![hparams_value(
            "_hparams_/session_end_info",
            HParamsPluginData {
                version: 0,
                session_start_info: None,
                session_end_info: Some(SessionEndInfo {
                    status,
                    end_time_secs: end,
                }),
            },
        )],
    );
    let _ = out.flush();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The masked CRC of TFRecord, against values TensorFlow's own writer gives.
    #[test]
    fn masked_crc_matches_tensorflow() {
        // crc32c("") = 0 -> mask = 0xa282ead8; crc32c of 8 zero bytes (a length of 0).
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        let crc = crc32c::crc32c(b"123456789");
        assert_eq!(crc, 0xe306_9283, "CRC-32C check value");
        assert_eq!(
            masked_crc(b"123456789"),
            crc.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }
}

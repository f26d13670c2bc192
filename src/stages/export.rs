//! `export`: a trained model as a file other runtimes load — ONNX (see
//! [`crate::data::onnx`]). The stage writes `model.onnx` into its artifact, cached like
//! every stage; `pipe export` writes the same bytes where it is told.

use std::path::Path;

use anyhow::Result;

use super::model::{input_mean, ModelArtifact};
use super::StageCtx;
use crate::data::index::read_classes;
use crate::data::onnx::{self, Provenance};
use crate::ids::StageKey;
use crate::manifest::{ExportConfig, ResizeFilter, Tta};

/// `, tta = flip` when the graph averages mirrored views, else nothing.
pub fn tta_note(tta: Tta) -> String {
    match tta {
        Tta::None => String::new(),
        t => format!(", tta = {t}"),
    }
}

/// The ONNX model of the trained artifact `model_dir`, with the class names of the data
/// it was trained on (`data_dir`'s `classes.csv`) and, when given, the pipeline, stage and
/// key it comes from (the stage gives none: its artifact is shared by every pipeline
/// whose stage has its key, so it names only the model's content hash).
pub fn onnx_of(
    model_dir: &Path,
    data_dir: &Path,
    pipeline: &str,
    stage: &str,
    key: Option<&StageKey>,
    filter: ResizeFilter,
    tta: Tta,
) -> Result<Vec<u8>> {
    let model = model_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let artifact = ModelArtifact::open(model_dir)?;
    let (state, _) = artifact.weights()?;
    let mean = input_mean(&state, ModelArtifact::WEIGHTS)?;
    let plan = artifact.plan;
    let mut classes = read_classes(&data_dir.join("classes.csv"))?;
    classes.sort_by_key(|c| c.label);
    onnx::export(
        &plan.graph,
        &state,
        &mean,
        &Provenance {
            pipeline: pipeline.into(),
            stage: stage.into(),
            key: key.map_or(String::new(), |k| k.to_string()),
            resize_filter: serde_json::to_value(filter)?
                .as_str()
                .unwrap_or_default()
                .to_string(),
            model,
            tta,
            class_ids: classes.iter().map(|c| c.id.clone()).collect(),
            class_names: classes
                .iter()
                .map(|c| {
                    if c.name.trim().is_empty() {
                        c.id.clone()
                    } else {
                        c.name.clone()
                    }
                })
                .collect(),
        },
    )
}

/// Run the export stage: `model.onnx` of its input model.
pub fn run(ctx: &StageCtx<'_>, c: &ExportConfig) -> Result<String> {
    let model_dir = &ctx.inputs[0].1;
    let data = &ctx.inputs[1].1;
    let filter = ctx
        .pipeline
        .resize_filter_of(&ctx.stage.inputs[0])
        .unwrap_or_default();
    let bytes = onnx_of(model_dir, data, "", "", None, filter, c.tta)?;
    crate::atomic::write_atomic(&ctx.out.join("model.onnx"), &bytes)?;
    Ok(format!(
        "model.onnx ({} KiB, opset {}{})",
        bytes.len() / 1024,
        onnx::OPSET,
        tta_note(c.tta)
    ))
}

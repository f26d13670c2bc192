//! Checks over a whole pipeline once every stage is typed: each reference names a stage
//! of a kind that makes what the reader needs, no cycle, image sizes against the network's
//! input, `top_k` against its classes, `stage@epoch` within the epochs trained. Then the
//! data inputs of continuing and evaluating stages are wired in.

use std::collections::HashMap;

use super::config::IngestFormat;
use super::error::{self, ManifestError};
use super::model::{Pipeline, StageConfig, StageKind};
use super::source::Origin;

/// A `resume` from `stage@N` needs a checkpoint at epoch N: within the epochs `stage`
/// trains.
pub(crate) fn check_resume_epochs(
    p: &Pipeline,
    input_origins: &HashMap<String, Vec<Origin>>,
) -> Result<(), ManifestError> {
    for (name, s) in &p.stages {
        let StageConfig::Resume {
            stage,
            at,
            file: None,
            ..
        } = &s.config
        else {
            continue;
        };
        if let Some((start, end)) = p.epochs_of(stage) {
            if *at <= start || *at > end {
                let origin = input_origins
                    .get(name)
                    .and_then(|o| o.first().cloned())
                    .unwrap_or_else(|| s.origin.clone());
                return Err(ManifestError::new(format!(
                    "`from = \"{stage}@{at}\"`: stage `{stage}` trains epochs {}..{end}, so it has no checkpoint at epoch {at}",
                    start + 1
                ))
                .at(origin)
                .path(format!("stages.{name}.from")));
            }
        }
        if let Some(kept) = p.checkpoint_epochs(stage) {
            if !kept.contains(at) {
                let origin = input_origins
                    .get(name)
                    .and_then(|o| o.first().cloned())
                    .unwrap_or_else(|| s.origin.clone());
                let list = |xs: &[usize]| {
                    xs.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(ManifestError::new(format!(
                    "`from = \"{stage}@{at}\"`: stage `{stage}` keeps checkpoints at epochs {} (`checkpoint_every`), not at epoch {at}",
                    list(&kept)
                ))
                .at(origin)
                .path(format!("stages.{name}.from")));
            }
        }
    }
    Ok(())
}

/// A continuing stage's `momentum` and `nesterov` are SGD's: with the Adam or AdamW its
/// training started with, nothing reads them, so they stay out of its key (a base file's
/// lr-drop `momentum` under a derived Adam, a sweep over the optimizer).
pub(crate) fn leave_out_unread_momentum(p: &mut Pipeline) {
    let adam: Vec<String> = p
        .stages
        .keys()
        .filter(|name| {
            p.root_config(name)
                .is_some_and(|t| t.optimizer != super::config::OptimizerKind::Sgd)
        })
        .cloned()
        .collect();
    for name in adam {
        if let Some(s) = p.stages.get_mut(&name) {
            if let StageConfig::LrDrop(c) | StageConfig::Resume { config: c, .. } = &mut s.config {
                c.momentum = None;
                c.nesterov = None;
            }
        }
    }
}

/// An evaluate stage cannot ask for rank-k with k above the network's class count.
pub(crate) fn check_top_k(p: &Pipeline) -> Result<(), ManifestError> {
    for (name, s) in &p.stages {
        let StageConfig::Evaluate(c) = &s.config else {
            continue;
        };
        let Some(model) = s.inputs.first() else {
            continue;
        };
        let classes = p
            .root_config(model)
            .and_then(|t| p.library.networks.get(&t.network))
            .and_then(|n| n.classes);
        if let (Some(k), Some(classes)) = (c.top_k.iter().max(), classes) {
            if *k > classes {
                return Err(ManifestError::new(format!(
                    "`top_k` asks for rank-{k}, but the network has {classes} classes"
                ))
                .at(s.key_origin("top_k"))
                .path(format!("stages.{name}.top_k")));
            }
        }
    }
    Ok(())
}

/// What the manifest alone says of the images a stage's data holds: their size (h, w) and
/// class count, and which key says so. Known for generated (`synthetic`) and CIFAR-10 data;
/// a folder's images and classes are known only once it is ingested.
struct DataShape {
    size: Option<((usize, usize), String)>,
    classes: Option<(usize, String)>,
}

fn data_shape(p: &Pipeline, stage: &str, depth: usize) -> DataShape {
    let none = DataShape {
        size: None,
        classes: None,
    };
    let Some(s) = p.stages.get(stage).filter(|_| depth < 64) else {
        return none;
    };
    match &s.config {
        StageConfig::Ingest(c) => match c.format {
            IngestFormat::Synthetic => DataShape {
                size: c.image_size.map(|[w, h]| {
                    (
                        (h as usize, w as usize),
                        format!("`stages.{stage}.image_size = [{w}, {h}]`"),
                    )
                }),
                classes: c
                    .classes
                    .map(|k| (k, format!("`stages.{stage}.classes = {k}`"))),
            },
            IngestFormat::Cifar10 => DataShape {
                size: Some(((32, 32), format!("stage `{stage}` reads CIFAR-10, 32x32"))),
                classes: Some((10, format!("stage `{stage}` reads CIFAR-10, 10 classes"))),
            },
            _ => none,
        },
        StageConfig::Split(_) => match s.inputs.first() {
            Some(i) => data_shape(p, i, depth + 1),
            None => none,
        },
        StageConfig::Hdf5(h) => {
            let mut d = match s.inputs.first() {
                Some(i) => data_shape(p, i, depth + 1),
                None => none,
            };
            if let Some([w, hgt]) = h.size {
                d.size = Some((
                    (hgt as usize, w as usize),
                    format!("`stages.{stage}.size = [{w}, {hgt}]`"),
                ));
            }
            d
        }
        _ => none,
    }
}

/// Checks that depend on the data, where the manifest says what the data is: a network's
/// input against generated or CIFAR-10 images it is not resized from, its classes against
/// the data's, and `top_k` against the data's classes.
pub(crate) fn check_data(p: &Pipeline) -> Result<(), ManifestError> {
    for (name, s) in &p.stages {
        match &s.config {
            StageConfig::Train(t) => {
                let Some(data) = s.inputs.first() else {
                    continue;
                };
                let Some(net) = p.library.networks.get(&t.network) else {
                    continue;
                };
                let shape = data_shape(p, data, 0);
                let (nh, nw, nc) = net.input;
                if let Some(((h, w), says)) = &shape.size {
                    if (nh, nw, nc) != (*h, *w, 3) {
                        return Err(ManifestError::new(format!(
                            "network `{}` takes {nh}x{nw}x{nc} images (`networks.{}.input`), but stage `{name}` gets {h}x{w}x3 RGB images from `{data}` ({says}); resize them in the hdf5 stage (`size = [{nw}, {nh}]`, width first) or change the network's input",
                            t.network, t.network
                        ))
                        .at(net.key_origins.get("input").unwrap_or(&net.origin).clone())
                        .path(format!("networks.{}.input", t.network)));
                    }
                }
                if let (Some(k), Some((d, says))) = (net.classes, &shape.classes) {
                    if k != *d {
                        return Err(ManifestError::new(format!(
                            "network `{}` outputs {k} classes, but stage `{name}` trains on {d} ({says})",
                            t.network
                        ))
                        .at(net.key_origins.get("classes").unwrap_or(&net.origin).clone())
                        .path(format!("networks.{}.classes", t.network)));
                    }
                }
            }
            StageConfig::Evaluate(c) => {
                let Some(data) = s.inputs.get(1) else {
                    continue;
                };
                if let (Some(k), Some((d, says))) =
                    (c.top_k.iter().max(), data_shape(p, data, 0).classes)
                {
                    if *k > d {
                        return Err(ManifestError::new(format!(
                            "`top_k` asks for rank-{k}, but the data has {d} classes ({says})"
                        ))
                        .at(s.key_origin("top_k"))
                        .path(format!("stages.{name}.top_k")));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// References, kinds of inputs, image sizes against networks, cycles.
pub(crate) fn validate_graph(
    p: &Pipeline,
    input_origins: &HashMap<String, Vec<Origin>>,
) -> Result<(), ManifestError> {
    // Every reference names a stage, of a kind that produces what the reader needs.
    for (name, s) in &p.stages {
        for (i, input) in s.inputs.iter().enumerate() {
            let origin = input_origins[name][i].clone();
            let key = match s.config {
                StageConfig::LrDrop(_) | StageConfig::Resume { .. } => "from",
                _ => "input",
            };
            let path = format!("stages.{name}.{key}");
            let Some(src) = p.stages.get(input) else {
                let mut e = ManifestError::new(format!(
                    "stage `{name}` reads `{input}`, which is not a stage of this pipeline"
                ))
                .at(origin)
                .path(path);
                e.help = Some(
                    match error::did_you_mean(input, p.stages.keys().map(|k| k.as_str())) {
                        Some(m) => format!("did you mean `{m}`?"),
                        None => format!(
                            "stages: {}",
                            p.stages.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    },
                );
                return Err(e);
            };
            let file_resume = matches!(s.config, StageConfig::Resume { file: Some(_), .. });
            let (ok, needs) = match s.config.kind() {
                StageKind::Resume if file_resume => (
                    matches!(src.config, StageConfig::Hdf5(_)),
                    "the HDF5 files of an hdf5 stage",
                ),
                StageKind::Split | StageKind::Hdf5 => (
                    matches!(src.config, StageConfig::Ingest(_) | StageConfig::Split(_)),
                    "an index from an ingest or split stage",
                ),
                StageKind::Train => (
                    matches!(src.config, StageConfig::Hdf5(_)),
                    "the HDF5 files of an hdf5 stage",
                ),
                StageKind::LrDrop | StageKind::Resume | StageKind::Evaluate | StageKind::Export => {
                    (
                        src.config.is_training(),
                        "a model from a train, lr-drop or resume stage",
                    )
                }
                StageKind::Ingest => (true, ""),
            };
            if !ok {
                let kind = src.config.kind();
                let article = match kind {
                    StageKind::Ingest
                    | StageKind::Evaluate
                    | StageKind::Export
                    | StageKind::Hdf5 => "an",
                    _ => "a",
                };
                return Err(ManifestError::new(format!(
                    "stage `{name}` ({}) needs {needs}, but `{input}` is {article} {kind} stage",
                    s.config.kind(),
                ))
                .at(origin)
                .path(path));
            }
            // The images a train stage reads must fit its network's input, when the hdf5
            // stage fixes their size.
            if let (StageConfig::Train(t), StageConfig::Hdf5(h)) = (&s.config, &src.config) {
                if let (Some([w, hgt]), Some((nh, nw, c))) =
                    (h.size, p.library.networks.get(&t.network).map(|n| n.input))
                {
                    if (nh, nw, c) != (hgt as usize, w as usize, 3) {
                        return Err(ManifestError::new(format!(
                            "network `{}` takes {nh}x{nw}x{c} images (`networks.{}.input = [{nh}, {nw}, {c}]`), but stage `{input}` writes {hgt}x{w}x3 RGB images (`stages.{input}.size = [{w}, {hgt}]`, width first)",
                            t.network, t.network
                        ))
                        .at(origin)
                        .path(path));
                    }
                }
            }
        }
    }
    // Cycles: depth-first search, reporting the first cycle found.
    fn visit<'a>(
        p: &'a Pipeline,
        n: &'a str,
        state: &mut HashMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|s| *s == n).unwrap_or(0);
                let mut cyc: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
                cyc.push(n.to_string());
                return Some(cyc);
            }
            _ => {}
        }
        state.insert(n, 1);
        stack.push(n);
        for i in &p.stages[n].inputs {
            if let Some(c) = visit(p, i, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let mut state = HashMap::new();
    for name in p.stages.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(p, name, &mut state, &mut stack) {
            let reader = &cycle[cycle.len() - 2];
            let read = &cycle[cycle.len() - 1];
            let idx = p.stages[reader]
                .inputs
                .iter()
                .position(|i| i == read)
                .unwrap_or(0);
            let origin = input_origins[reader.as_str()][idx].clone();
            // The cycle is reported in data-flow order: producer -> reader.
            let mut flow = cycle.clone();
            flow.reverse();
            return Err(
                ManifestError::new(format!("stages form a cycle: {}", flow.join(" -> ")))
                    .at(origin)
                    .path(format!("stages.{reader}.input")),
            );
        }
    }
    Ok(())
}

/// Stages that continue or evaluate a model also read the HDF5 files that model was
/// trained on: add that input, so everything a stage reads is declared to the engine.
pub(crate) fn wire_data_inputs(p: &mut Pipeline) {
    for name in p.topo_order() {
        let s = &p.stages[&name];
        let needs_data = matches!(
            s.config,
            StageConfig::LrDrop(_)
                | StageConfig::Resume { .. }
                | StageConfig::Evaluate(_)
                | StageConfig::Export(_)
        );
        let file_resume = matches!(s.config, StageConfig::Resume { file: Some(_), .. });
        if needs_data && !file_resume && s.inputs.len() == 1 {
            let model = &p.stages[&s.inputs[0]];
            // A model stage's data: `train` and a `resume` from a file read it first; an
            // `lr-drop` or `resume` from a stage reads (model, data).
            let data = match &model.config {
                StageConfig::Train(_) | StageConfig::Resume { file: Some(_), .. } => {
                    model.inputs.first()
                }
                _ => model.inputs.get(1),
            };
            if let Some(data) = data.cloned() {
                p.stages[&name].inputs.push(data);
            }
        }
    }
}

//! Manifests: what the user wrote, loaded, merged (`extends`, `--set`) and typed.
//!
//! This module knows TOML, origins and stage configs; it does not know how stages run or
//! how results are cached (that is `engine`). Every error it returns names the file, line,
//! column and key path at fault.

pub mod config;
pub mod de;
pub mod error;
pub mod value;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use serde::Deserialize;

pub use config::*;
pub use error::ManifestError;
use value::{Entry, Kind, Origin, SValue, Source};

/// Every stage kind this build knows.
pub const STAGE_KINDS: &[&str] = &[
    "ingest", "split", "hdf5", "train", "lr-drop", "resume", "evaluate",
];

/// A train stage: its config and the expanded network.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainStage {
    /// What the user wrote (defaults filled).
    pub config: TrainConfig,
    /// The network, expanded and shape-checked.
    pub graph: crate::nn::graph::Graph,
}

/// A typed stage configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum StageConfig {
    /// `ingest`.
    Ingest(IngestConfig),
    /// `split`.
    Split(SplitConfig),
    /// `hdf5`.
    Hdf5(Hdf5Config),
    /// `train`.
    Train(Box<TrainStage>),
    /// `lr-drop`: continue from the final state of `from`.
    LrDrop(ContinueConfig),
    /// `resume`: continue from epoch `at` of stage `stage`, or from a checkpoint file.
    Resume {
        /// The config as written.
        config: ContinueConfig,
        /// The stage resumed (empty when resuming from a file).
        stage: String,
        /// The epoch resumed from (from the file's metadata when resuming from a file).
        at: usize,
        /// A checkpoint file written by pipe, and the BLAKE3 of its content.
        file: Option<(PathBuf, String)>,
    },
    /// `evaluate`.
    Evaluate(EvaluateConfig),
}

impl StageConfig {
    /// The kind name.
    pub fn kind(&self) -> &'static str {
        match self {
            StageConfig::Ingest(_) => "ingest",
            StageConfig::Split(_) => "split",
            StageConfig::Hdf5(_) => "hdf5",
            StageConfig::Train(_) => "train",
            StageConfig::LrDrop(_) => "lr-drop",
            StageConfig::Resume { .. } => "resume",
            StageConfig::Evaluate(_) => "evaluate",
        }
    }

    /// Whether this stage produces a trained model (train, lr-drop, resume).
    pub fn is_training(&self) -> bool {
        matches!(
            self,
            StageConfig::Train(_) | StageConfig::LrDrop(_) | StageConfig::Resume { .. }
        )
    }

    /// The effective configuration as JSON: defaults filled, order-independent.
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            StageConfig::Ingest(c) => serde_json::to_value(c),
            StageConfig::Split(c) => serde_json::to_value(c),
            StageConfig::Hdf5(c) => serde_json::to_value(c),
            StageConfig::Train(t) => serde_json::to_value(&t.config).map(|mut v| {
                // The key covers the expanded network's structure, not its names.
                v["network"] = t.graph.structure_json();
                v
            }),
            StageConfig::LrDrop(c) => serde_json::to_value(c).map(|mut v| {
                v.as_object_mut().map(|o| o.remove("from"));
                v
            }),
            StageConfig::Resume {
                config, at, file, ..
            } => serde_json::to_value(config).map(|mut v| {
                v["from"] = match file {
                    // The file's content, not its path, decides what is resumed.
                    Some((_, hash)) => serde_json::json!({ "checkpoint": hash }),
                    None => serde_json::json!(at),
                };
                v
            }),
            StageConfig::Evaluate(c) => serde_json::to_value(c),
        };
        v.expect("stage configs serialize to JSON")
    }
}

/// One stage of a pipeline.
#[derive(Debug, Clone)]
pub struct Stage {
    /// The stage's name (its key under `[stages]`).
    pub name: String,
    /// Names of the stages it reads.
    pub inputs: Vec<String>,
    /// Its typed configuration.
    pub config: StageConfig,
    /// Where its table was written.
    pub origin: Origin,
    /// What a cluster job running it asks for (`[stages.<name>.resources]`); not part of
    /// the stage's key.
    pub resources: Resources,
}

/// A stage's cluster resources (`[stages.<name>.resources]`), for `--executor slurm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// GPUs (`--gres=gpu:N`); default: `--gpus-per-stage` for training and evaluation.
    pub gpus: Option<u32>,
    /// CPU cores (`--cpus-per-task`).
    pub cpus: Option<u32>,
    /// Memory, Slurm's syntax: `"32G"`, `"500M"` (`--mem`).
    pub mem: Option<String>,
    /// Time limit, Slurm's syntax: `"12:00:00"`, `"1-00:00:00"`, `"90"` minutes (`--time`).
    pub time: Option<String>,
    /// Partition (`--partition`); default: `--partition`, else the cluster's default.
    pub partition: Option<String>,
}

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

/// A loaded, merged, typed and validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Pipeline name (the `name` key, or the file stem).
    pub name: String,
    /// Other names `pipe run` accepts for it.
    pub aliases: Vec<String>,
    /// Free text.
    pub description: Option<String>,
    /// Default seed for every seeded stage.
    pub seed: u64,
    /// The manifest file.
    pub file: PathBuf,
    /// The directory relative paths are resolved against.
    pub project_dir: PathBuf,
    /// Stages, in the order written (merged: base first).
    pub stages: IndexMap<String, Stage>,
    /// Blocks and networks (`[blocks.*]`, `[networks.*]`).
    pub library: crate::nn::spec::Library,
}

impl Pipeline {
    /// Stage names in dependency order (inputs before readers; ties in written order).
    pub fn topo_order(&self) -> Vec<String> {
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut order = Vec::new();
        while order.len() < self.stages.len() {
            for (name, s) in &self.stages {
                if !done.contains(name.as_str())
                    && s.inputs.iter().all(|i| done.contains(i.as_str()))
                {
                    done.insert(name);
                    order.push(name.clone());
                }
            }
        }
        order
    }

    /// The stages `target` depends on, and itself.
    pub fn ancestors_of(&self, target: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo = vec![target.to_string()];
        while let Some(n) = todo.pop() {
            if out.insert(n.clone()) {
                if let Some(s) = self.stages.get(&n) {
                    todo.extend(s.inputs.iter().cloned());
                }
            }
        }
        out
    }

    /// Resolve a path from the manifest against the project directory.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.project_dir.join(path)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopLevel {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default)]
    device: DeviceSetting,
    #[serde(default)]
    backend: Option<BackendKind>,
    #[allow(dead_code)]
    stages: serde::de::IgnoredAny,
    /// Typed by `nn::spec`.
    #[serde(default)]
    #[allow(dead_code)]
    networks: Option<serde::de::IgnoredAny>,
    /// Typed by `nn::spec`.
    #[serde(default)]
    #[allow(dead_code)]
    blocks: Option<serde::de::IgnoredAny>,
}

fn default_seed() -> u64 {
    42
}

/// Read one file and the chain of files it `extends`, merged base-first.
fn load_merged(path: &Path, chain: &mut Vec<PathBuf>) -> Result<SValue, ManifestError> {
    let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let source = value::read_source(path, display_path(path))?;
    let mut doc = value::parse_document(source)?;
    chain.push(canon);
    let table = doc.as_table_mut().expect("a document is a table");
    let extends = table.shift_remove("extends");
    let includes = table.shift_remove("include");
    let mut base = match extends {
        Some(ext) => Some(load_base(path, &ext, chain, "extends")?),
        None => None,
    };
    if let Some(inc) = includes {
        let items: Vec<&SValue> = match &inc.value.kind {
            Kind::Str(_) => vec![&inc.value],
            Kind::Array(a) => a.iter().collect(),
            other => {
                return Err(ManifestError::new(format!(
                    "wrong type: `include` must be a path or a list of paths, found {}",
                    other.type_name()
                ))
                .at(inc.value.origin.clone())
                .path("include"))
            }
        };
        for item in items {
            let included = load_base(
                path,
                &Entry {
                    key_origin: inc.key_origin.clone(),
                    value: item.clone(),
                },
                chain,
                "include",
            )?;
            match &mut base {
                Some(b) => b.merge(included),
                None => base = Some(included),
            }
        }
    }
    match base {
        Some(mut b) => {
            b.merge(doc);
            Ok(b)
        }
        None => Ok(doc),
    }
}

/// Load a file named by `extends` or `include` (`key`, relative to `path`'s folder).
fn load_base(
    path: &Path,
    ext: &Entry,
    chain: &mut Vec<PathBuf>,
    key: &str,
) -> Result<SValue, ManifestError> {
    let Some(rel) = ext.value.as_str() else {
        return Err(ManifestError::new(format!(
            "wrong type: expected a manifest path, found {}",
            ext.value.kind.type_name()
        ))
        .at(ext.value.origin.clone())
        .path(key));
    };
    let base_path = path.parent().unwrap_or(Path::new(".")).join(rel);
    if !base_path.is_file() {
        return Err(
            ManifestError::new(format!("`{key}` names a file that does not exist: {rel}"))
                .at(ext.value.origin.clone())
                .path(key),
        );
    }
    let base_canon = base_path.canonicalize().unwrap_or(base_path.clone());
    if chain.contains(&base_canon) {
        let names: Vec<String> = chain
            .iter()
            .chain(std::iter::once(&base_canon))
            .map(|p| {
                p.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        return Err(
            ManifestError::new(format!("`{key}` loop: {}", names.join(" -> ")))
                .at(ext.value.origin.clone())
                .path(key),
        );
    }
    let mut base = load_merged(&base_path, chain)?;
    chain.pop();
    // A name and its aliases belong to one file; they are not inherited.
    if let Some(t) = base.as_table_mut() {
        t.shift_remove("name");
        t.shift_remove("aliases");
    }
    Ok(base)
}

fn display_path(path: &Path) -> String {
    let cwd = std::env::current_dir().ok();
    if let Some(cwd) = cwd {
        if let Ok(rel) = path.strip_prefix(&cwd) {
            return rel.display().to_string();
        }
    }
    path.display().to_string()
}

/// Apply one `--set key.path=value` override to the merged tree.
fn apply_set(doc: &mut SValue, arg: &str) -> Result<(), ManifestError> {
    let source = Arc::new(Source {
        name: "--set".into(),
        path: None,
        text: arg.to_string(),
    });
    let whole = Origin {
        source: source.clone(),
        span: 0..arg.len(),
    };
    let Some(eq) = arg.find('=') else {
        return Err(ManifestError::new(format!(
            "`--set {arg}`: expected KEY=VALUE (e.g. `ingest.root=/data/tiny-imagenet-200`)"
        ))
        .at(whole));
    };
    let key = arg[..eq].trim();
    if key.is_empty() || key.split('.').any(|s| s.is_empty()) {
        return Err(ManifestError::new(format!("`--set {arg}`: empty key")).at(whole));
    }
    let value = value::parse_value(source.clone(), eq + 1).unwrap_or_else(|| SValue {
        kind: Kind::Str(arg[eq + 1..].to_string()),
        origin: Origin {
            source: source.clone(),
            span: eq + 1..arg.len(),
        },
    });
    let mut parts: Vec<&str> = key.split('.').collect();
    let is_stage = doc
        .get("stages")
        .and_then(|s| s.value.get(parts[0]))
        .is_some();
    if is_stage {
        parts.insert(0, "stages");
    }
    let key_origin = Origin {
        source: source.clone(),
        span: 0..eq,
    };
    let mut node = value;
    for part in parts.iter().rev() {
        let mut t = IndexMap::new();
        t.insert(
            part.to_string(),
            Entry {
                key_origin: key_origin.clone(),
                value: node,
            },
        );
        node = SValue {
            kind: Kind::Table(t),
            origin: key_origin.clone(),
        };
    }
    doc.merge(node);
    Ok(())
}

/// Load a manifest file, follow `extends`, apply `--set` overrides, type and validate it.
pub fn load(path: &Path, sets: &[String], project_dir: &Path) -> Result<Pipeline, ManifestError> {
    let mut chain = Vec::new();
    let mut doc = load_merged(path, &mut chain)?;
    for s in sets {
        apply_set(&mut doc, s)?;
    }
    check_finite(&doc, "")?;
    let top: TopLevel = match doc.get("stages") {
        Some(_) => de::from_svalue(&doc, "")?,
        None => {
            return Err(ManifestError::new("missing required key `stages`")
                .at(doc.origin.clone())
                .help("a pipeline declares its stages as [stages.<name>] tables"))
        }
    };
    if let (Some(""), Some(e)) = (top.name.as_deref(), doc.get("name")) {
        return Err(ManifestError::new("`name` must not be empty")
            .at(e.value.origin.clone())
            .path("name"));
    }
    let stages_entry = doc.get("stages").expect("checked above");
    let Some(stage_tables) = stages_entry.value.as_table() else {
        return Err(
            ManifestError::new("`stages` must be a table of stage tables")
                .at(stages_entry.value.origin.clone())
                .path("stages"),
        );
    };
    if stage_tables.is_empty() {
        return Err(ManifestError::new("the pipeline has no stages")
            .at(stages_entry.key_origin.clone())
            .path("stages"));
    }
    let name = top.name.unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".into())
    });
    let library = crate::nn::spec::parse_library(&doc)?;
    let mut stages = IndexMap::new();
    let mut input_origins: HashMap<String, Vec<Origin>> = HashMap::new();
    for (sname, entry) in stage_tables {
        if sname.is_empty() || sname.chars().count() > 100 || sname.chars().any(char::is_control) {
            return Err(ManifestError::new(format!(
                "stage name {sname:?} must be 1 to 100 characters, none of them control characters"
            ))
            .at(entry.key_origin.clone())
            .path(format!("stages.{}", sname.escape_debug())));
        }
        let (stage, origins) = parse_stage(
            sname,
            entry,
            top.seed,
            (top.device, top.backend),
            &library,
            project_dir,
        )?;
        input_origins.insert(sname.clone(), origins);
        stages.insert(sname.clone(), stage);
    }
    let mut pipeline = Pipeline {
        library,
        name,
        aliases: top.aliases,
        description: top.description,
        seed: top.seed,
        file: path.to_path_buf(),
        project_dir: project_dir.to_path_buf(),
        stages,
    };
    validate_graph(&pipeline, &input_origins)?;
    check_top_k(&pipeline)?;
    check_resume_epochs(&pipeline, &input_origins)?;
    wire_data_inputs(&mut pipeline);
    // Shapes are checked now, before anything runs (the class count, if the network leaves
    // it to the data, does not change any shape but the last).
    for (name, n) in &pipeline.library.networks {
        pipeline.library.expand(name, n.classes.or(Some(2)))?;
    }
    Ok(pipeline)
}

/// The network a training stage (or a chain of continuations) trains.
fn trained_network<'a>(p: &'a Pipeline, stage: &str, depth: usize) -> Option<&'a str> {
    match &p.stages.get(stage)?.config {
        StageConfig::Train(t) => Some(&t.config.network),
        StageConfig::LrDrop(c) if depth < 64 => trained_network(p, &c.from, depth + 1),
        StageConfig::Resume { stage, .. } if depth < 64 => trained_network(p, stage, depth + 1),
        _ => None,
    }
}

/// The last epoch a training stage (or chain) reaches; `None` when it starts from a file.
fn end_epoch(p: &Pipeline, stage: &str, depth: usize) -> Option<usize> {
    if depth > 64 {
        return None;
    }
    match &p.stages.get(stage)?.config {
        StageConfig::Train(t) => Some(t.config.epochs),
        StageConfig::LrDrop(c) => Some(end_epoch(p, &c.from, depth + 1)? + c.epochs),
        StageConfig::Resume {
            config,
            file: None,
            at,
            ..
        } => Some(at + config.epochs),
        _ => None,
    }
}

/// A `resume` from `stage@N` needs a checkpoint at epoch N: within the epochs `stage`
/// trains.
fn check_resume_epochs(
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
        let end = end_epoch(p, stage, 0);
        let start = match p.stages.get(stage).map(|x| &x.config) {
            Some(StageConfig::LrDrop(c)) => end.map(|e| e - c.epochs),
            Some(StageConfig::Resume { at, .. }) => Some(*at),
            _ => Some(0),
        };
        if let (Some(start), Some(end)) = (start, end) {
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
    }
    Ok(())
}

/// An evaluate stage cannot ask for rank-k with k above the network's class count.
fn check_top_k(p: &Pipeline) -> Result<(), ManifestError> {
    for (name, s) in &p.stages {
        let StageConfig::Evaluate(c) = &s.config else {
            continue;
        };
        let Some(model) = s.inputs.first() else {
            continue;
        };
        let classes = trained_network(p, model, 0)
            .and_then(|n| p.library.networks.get(n))
            .and_then(|n| n.classes);
        if let (Some(k), Some(classes)) = (c.top_k.iter().max(), classes) {
            if *k > classes {
                return Err(ManifestError::new(format!(
                    "`top_k` asks for rank-{k}, but the network has {classes} classes"
                ))
                .at(s.origin.clone())
                .path(format!("stages.{name}.top_k")));
            }
        }
    }
    Ok(())
}

/// No number in a manifest may be NaN or infinite (TOML allows `nan` and `inf`).
fn check_finite(v: &SValue, path: &str) -> Result<(), ManifestError> {
    match &v.kind {
        value::Kind::Float(f) if !f.is_finite() => Err(ManifestError::new(format!(
            "`{}` is {f}: numbers must be finite",
            if path.is_empty() { "value" } else { path }
        ))
        .at(v.origin.clone())
        .path(path.to_string())),
        value::Kind::Array(items) => {
            for (i, it) in items.iter().enumerate() {
                check_finite(it, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        value::Kind::Table(t) => {
            for (k, e) in t {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                check_finite(&e.value, &p)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Largest image side a manifest may ask for (a 4096x4096 RGB image is 48 MiB).
pub const MAX_IMAGE_SIDE: u32 = 4096;

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
    library: &'a crate::nn::spec::Library,
    project_dir: &'a Path,
    inputs: &'a mut Vec<String>,
    origins: &'a mut Vec<Origin>,
    kind: String,
}

impl StageCx<'_> {
    /// Where key `k` of the stage was written (the stage's own key when absent).
    fn key_at(&self, k: &str) -> Origin {
        self.table
            .get(k)
            .map(|e| e.key_origin.clone())
            .unwrap_or_else(|| self.entry.key_origin.clone())
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
            let top = k.split('.').next().unwrap_or(k);
            return Err(ManifestError::new(format!("`{k}` = {v} must be {allowed}"))
                .at(cx.key_at(top))
                .path(format!("{path}.{k}")));
        }
        if c.schedule == ScheduleKind::Step && c.steps.is_empty() {
            return Err(ManifestError::new(
                "schedule = \"step\" needs `steps = [[epoch, lr], ...]`",
            )
            .at(cx.key_at("schedule"))
            .path(format!("{path}.steps")));
        }
        let expanded = library.expand(&c.network, None).map_err(|e| {
            if e.origin.is_none() {
                e.at(cx.key_at("network")).path(format!("{path}.network"))
            } else {
                e
            }
        })?;
        StageConfig::Train(Box::new(TrainStage {
            config: c,
            graph: expanded.graph,
        }))
    })
}

/// `lr-drop` and `resume`: what is continued (a stage, `stage@epoch` or a file).
fn parse_continue(cx: &mut StageCx<'_>) -> Result<StageConfig, ManifestError> {
    let path = cx.path.clone();
    let entry = cx.entry;
    let device = cx.device;
    let backend = cx.backend;
    let project_dir = cx.project_dir;
    let kind = cx.kind.clone();
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
        if c.lr <= 0.0 || c.epochs == 0 {
            let k = if c.epochs == 0 { "epochs" } else { "lr" };
            return Err(ManifestError::new(format!("`{k}` must be > 0"))
                .at(cx.key_at(k))
                .path(format!("{path}.{k}")));
        }
        let from_file = kind == "resume" && !c.from.contains('@');
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
        } else if kind == "resume" {
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
    let entry = cx.entry;
    let device = cx.device;
    let backend = cx.backend;
    let body = cx.body.clone();
    let mut c: EvaluateConfig = de::from_svalue(&body, &path)?;
    // `auto` and the backend's default are resolved by the engine (it knows the
    // machine); the resolved values are what the stage's key covers.
    c.device = Some(c.device.unwrap_or(device));
    c.backend = c.backend.or(backend);
    if c.top_k.is_empty() || c.top_k.contains(&0) || c.batch_size == 0 {
        return Err(ManifestError::new(
            "`top_k` must list ranks >= 1 and `batch_size` must be > 0",
        )
        .at(entry.key_origin.clone())
        .path(path));
    }
    Ok(StageConfig::Evaluate(c))
}

fn parse_stage(
    sname: &str,
    entry: &Entry,
    seed: u64,
    (device, backend): (DeviceSetting, Option<BackendKind>),
    library: &crate::nn::spec::Library,
    project_dir: &Path,
) -> Result<(Stage, Vec<Origin>), ManifestError> {
    let path = format!("stages.{sname}");
    let mut table = match &entry.value.kind {
        Kind::Table(t) => t.clone(),
        _ => {
            return Err(wrong_type("a stage table", &entry.value, path));
        }
    };
    let kind = match table.shift_remove("kind") {
        Some(k) => match k.value.as_str() {
            Some(s) if STAGE_KINDS.contains(&s) => s.to_string(),
            Some(s) => {
                let mut e = ManifestError::new(format!("unknown stage kind `{s}`"))
                    .at(k.value.origin.clone())
                    .path(format!("{path}.kind"));
                e.help = Some(match error::did_you_mean(s, STAGE_KINDS.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("known kinds: {}", STAGE_KINDS.join(", ")),
                });
                return Err(e);
            }
            None => return Err(wrong_type("a string", &k.value, format!("{path}.kind"))),
        },
        None if STAGE_KINDS.contains(&sname) => sname.to_string(),
        None => {
            return Err(ManifestError::new(format!(
                "missing required key `kind` in stage `{sname}`"
            ))
            .at(entry.key_origin.clone())
            .path(path)
            .help(format!("one of: {}", STAGE_KINDS.join(", "))))
        }
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
        kind: kind.clone(),
    };
    let config = match kind.as_str() {
        "ingest" => parse_ingest(&mut cx)?,
        "split" => parse_split(&mut cx)?,
        "hdf5" => parse_hdf5(&mut cx)?,
        "train" => parse_train(&mut cx)?,
        "lr-drop" | "resume" => parse_continue(&mut cx)?,
        "evaluate" => parse_evaluate(&mut cx)?,
        _ => unreachable!("kind checked against STAGE_KINDS"),
    };
    if matches!(
        config,
        StageConfig::Split(_)
            | StageConfig::Hdf5(_)
            | StageConfig::Train(_)
            | StageConfig::Evaluate(_)
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
            resources,
        },
        origins,
    ))
}

fn validate_graph(
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
                "resume" if file_resume => (
                    matches!(src.config, StageConfig::Hdf5(_)),
                    "the HDF5 files of an hdf5 stage",
                ),
                "split" | "hdf5" => (
                    matches!(src.config, StageConfig::Ingest(_) | StageConfig::Split(_)),
                    "an index from an ingest or split stage",
                ),
                "train" => (
                    matches!(src.config, StageConfig::Hdf5(_)),
                    "the HDF5 files of an hdf5 stage",
                ),
                "lr-drop" | "resume" | "evaluate" => (
                    src.config.is_training(),
                    "a model from a train, lr-drop or resume stage",
                ),
                _ => (true, ""),
            };
            if !ok {
                return Err(ManifestError::new(format!(
                    "stage `{name}` ({}) needs {needs}, but `{input}` is a {} stage",
                    s.config.kind(),
                    src.config.kind()
                ))
                .at(origin)
                .path(path));
            }
            // The images a train stage reads must fit its network's input, when the hdf5
            // stage fixes their size.
            if let (StageConfig::Train(t), StageConfig::Hdf5(h)) = (&s.config, &src.config) {
                if let (Some([w, hgt]), Some(crate::nn::graph::Op::Input { h: nh, w: nw, c })) =
                    (h.size, t.graph.nodes.first().map(|n| &n.op))
                {
                    if (*nh, *nw, *c) != (hgt as usize, w as usize, 3) {
                        return Err(ManifestError::new(format!(
                            "network `{}` takes {nh}x{nw}x{c} images (`networks.{}.input = [{nh}, {nw}, {c}]`), but stage `{input}` writes {hgt}x{w}x3 RGB images (`stages.{input}.size = [{w}, {hgt}]`, width first)",
                            t.config.network, t.config.network
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
fn wire_data_inputs(p: &mut Pipeline) {
    for name in p.topo_order() {
        let s = &p.stages[&name];
        let needs_data = matches!(
            s.config,
            StageConfig::LrDrop(_) | StageConfig::Resume { .. } | StageConfig::Evaluate(_)
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

/// Find the manifest for `arg`: a path, `pipelines/<arg>.toml`, or the manifest whose
/// `name` or `aliases` is `arg`.
pub fn find(pipelines_dir: &Path, arg: &str) -> anyhow::Result<PathBuf> {
    let as_path = Path::new(arg);
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    let direct = pipelines_dir.join(format!("{arg}.toml"));
    if direct.is_file() {
        return Ok(direct);
    }
    let mut hits = Vec::new();
    for f in list(pipelines_dir)? {
        if let Ok((name, aliases)) = peek_names(&f) {
            if name.as_deref() == Some(arg) || aliases.iter().any(|a| a == arg) {
                hits.push(f);
            }
        }
    }
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => {
            let names: Vec<String> = list(pipelines_dir)?
                .iter()
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect();
            let hint = error::did_you_mean(arg, names.iter().map(|s| s.as_str()))
                .map(|m| format!(" (did you mean `{m}`?)"))
                .unwrap_or_default();
            anyhow::bail!(
                "no pipeline `{arg}`: not a file, not {}, and no manifest there is named so{hint}",
                direct.display()
            )
        }
        _ => anyhow::bail!(
            "`{arg}` is ambiguous: {}",
            hits.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Every `*.toml` directly in `dir`, sorted.
pub fn list(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if dir.is_dir() {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "toml") && p.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn peek_names(path: &Path) -> Result<(Option<String>, Vec<String>), ManifestError> {
    let src = value::read_source(path, display_path(path))?;
    let doc = value::parse_document(src)?;
    let name = doc
        .get("name")
        .and_then(|e| e.value.as_str())
        .map(|s| s.to_string());
    let aliases = match doc.get("aliases").map(|e| &e.value.kind) {
        Some(Kind::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(|s| s.to_string()))
            .collect(),
        _ => Vec::new(),
    };
    Ok((name, aliases))
}

//! Loading: read a manifest and the files it `extends` or `include`s, merge them base
//! first, apply `--set` overrides, then type every stage (`parse`) and check the whole
//! (`check`). The result is a [`Pipeline`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use serde::Deserialize;

use super::config::{BackendKind, DeviceSetting};
use super::error::ManifestError;
use super::model::{ManifestSources, Pipeline, SourceFile};
use super::source::{display_path, read_source, Origin, Source};
use super::sweep::{self, Sweep};
use super::value::{self, Entry, Kind, SValue};
use super::{check, de, error, network, parse};

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
    /// Typed by `network`.
    #[serde(default)]
    #[allow(dead_code)]
    networks: Option<serde::de::IgnoredAny>,
    /// Typed by `network`.
    #[serde(default)]
    #[allow(dead_code)]
    blocks: Option<serde::de::IgnoredAny>,
}

fn default_seed() -> u64 {
    42
}

/// How many files deep `extends` and `include` may chain (a file counts with all it
/// extends and includes, level by level).
pub const MAX_CHAIN: usize = 32;

/// At most this many files are read for one manifest, through `extends` and `include`.
pub const MAX_READS: usize = 256;

thread_local! {
    /// The files read by the load in progress on this thread (see [`load_any`]).
    static READ: RefCell<Vec<SourceFile>> = const { RefCell::new(Vec::new()) };
    /// While [`load_recorded`] runs: the recorded texts, read instead of the files.
    static RECORDED: RefCell<Option<HashMap<PathBuf, String>>> = const { RefCell::new(None) };
}

/// `path` made absolute, `.` and `..` folded (without touching the file system): how a
/// recorded file is looked up when the file itself may be gone.
fn lexical(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Where a manifest file is found: canonical when it exists, else folded lexically.
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| lexical(path))
}

/// The recorded text of `path`, while [`load_recorded`] runs.
fn recorded_text(path: &Path) -> Option<String> {
    RECORDED.with(|r| {
        let r = r.borrow();
        let map = r.as_ref()?;
        map.get(&canonical(path))
            .or_else(|| map.get(&lexical(path)))
            .cloned()
    })
}

/// Read one manifest file (its recorded text, under [`load_recorded`]), noting it among
/// the files this load read.
fn read_manifest(path: &Path) -> Result<Arc<Source>, ManifestError> {
    let source = match recorded_text(path) {
        Some(text) => Arc::new(Source {
            name: display_path(path),
            path: Some(path.to_path_buf()),
            text,
        }),
        None => read_source(path, display_path(path))?,
    };
    READ.with(|r| {
        r.borrow_mut().push(SourceFile {
            path: canonical(path).display().to_string(),
            text: source.text.clone(),
        })
    });
    Ok(source)
}

/// Load a pipeline or sweep from recorded texts (a run's record: `files[0]` the manifest,
/// then what it extends and includes) with the recorded `--set` overrides, as
/// [`load_any`] loaded it then, whatever the files hold now.
pub fn load_recorded(src: &ManifestSources, project_dir: &Path) -> Result<Loaded, ManifestError> {
    let Some(first) = src.files.first() else {
        return Err(ManifestError::new(
            "the run's record holds no manifest text",
        ));
    };
    let map: HashMap<PathBuf, String> = src
        .files
        .iter()
        .map(|f| (PathBuf::from(&f.path), f.text.clone()))
        .collect();
    RECORDED.with(|r| *r.borrow_mut() = Some(map));
    let out = load_any(Path::new(&first.path), &src.sets, project_dir);
    RECORDED.with(|r| *r.borrow_mut() = None);
    out
}

/// Read one file and the chain of files it `extends`, merged base-first.
fn load_merged(path: &Path, chain: &mut Vec<PathBuf>) -> Result<SValue, ManifestError> {
    let canon = canonical(path);
    let source = read_manifest(path)?;
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
    if recorded_text(&base_path).is_none() && !base_path.is_file() {
        let what = match std::fs::metadata(&base_path) {
            Ok(m) if m.is_dir() => format!("`{key}` names a folder, not a manifest file: {rel}"),
            Ok(_) => format!("`{key}` names something that is not a regular file: {rel}"),
            Err(_) => format!("`{key}` names a file that does not exist: {rel}"),
        };
        return Err(ManifestError::new(what)
            .at(ext.value.origin.clone())
            .path(key));
    }
    if chain.len() >= MAX_CHAIN {
        return Err(ManifestError::new(format!(
            "`{key}` chains more than {MAX_CHAIN} files deep (each file may extend or include others, to at most {MAX_CHAIN} levels)"
        ))
        .at(ext.value.origin.clone())
        .path(key));
    }
    // Depth alone does not bound the work: a file that includes the next twice, chained,
    // reads 2^depth files.
    let read = READ.with(|r| r.borrow().len());
    if read >= MAX_READS {
        return Err(ManifestError::new(format!(
            "`{key}`: loading this manifest reads more than {MAX_READS} files through `extends` and `include` (a file named twice is read twice)"
        ))
        .at(ext.value.origin.clone())
        .path(key));
    }
    let base_canon = canonical(&base_path);
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
    let key_origin = Origin {
        source: source.clone(),
        span: 0..eq,
    };
    apply_override(doc, key, value, key_origin);
    Ok(())
}

/// Top-level keys a manifest may hold.
const TOP_KEYS: [&str; 10] = [
    "name",
    "aliases",
    "description",
    "seed",
    "device",
    "backend",
    "stages",
    "networks",
    "blocks",
    "sweep",
];

/// Set key `key` (as `--set` takes it: `train.lr` is `stages.train.lr` when `train` is a
/// stage) to `value` in the merged tree; the key is said to be written at `key_origin`.
fn apply_override(doc: &mut SValue, key: &str, value: SValue, key_origin: Origin) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let is_stage = doc
        .get("stages")
        .and_then(|s| s.value.get(parts[0]))
        .is_some();
    if is_stage {
        parts.insert(0, "stages");
    }
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
}

/// A swept key must name a stage or a top-level key: anything else is a typo, said with
/// the names it could have meant.
fn check_swept_key(doc: &SValue, key: &str, at: &Origin) -> Result<(), ManifestError> {
    let first = key.split('.').next().unwrap_or(key);
    let stages: Vec<String> = doc
        .get("stages")
        .and_then(|s| s.value.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    if stages.iter().any(|s| s == first) || TOP_KEYS.contains(&first) && first != "sweep" {
        return Ok(());
    }
    let candidates = stages
        .iter()
        .map(|s| s.as_str())
        .chain(TOP_KEYS.iter().copied());
    let mut e = ManifestError::new(format!(
        "swept key `{key}`: `{first}` is neither a stage of this pipeline nor a top-level key"
    ))
    .at(at.clone())
    .path(format!("sweep.{key}"));
    e.help = Some(match error::did_you_mean(first, candidates) {
        Some(m) => format!("did you mean `{m}`?"),
        None => format!("stages: {}", stages.join(", ")),
    });
    Err(e)
}

/// What a manifest is: one pipeline, or a sweep of them.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// A manifest without `[sweep]`.
    Pipeline(Pipeline),
    /// A manifest with `[sweep]`: every point typed and checked.
    Sweep(Sweep),
}

/// Load a manifest that is not a sweep (see [`load_any`]).
pub fn load(path: &Path, sets: &[String], project_dir: &Path) -> Result<Pipeline, ManifestError> {
    match load_any(path, sets, project_dir)? {
        Loaded::Pipeline(p) => Ok(p),
        Loaded::Sweep(s) => Err(ManifestError::new(format!(
            "{} is a sweep of {} points: run it whole (`pipe run {}`) or name a point (`pipe run {}`)",
            path.display(),
            s.points.len(),
            s.name,
            s.points[0].pipeline.name
        ))),
    }
}

/// Load a manifest file, follow `extends`, apply `--set` overrides, type and validate it;
/// with a `[sweep]`, every point. Networks are checked by `nn::check` (the engine's
/// `Project::load` runs both).
pub fn load_any(path: &Path, sets: &[String], project_dir: &Path) -> Result<Loaded, ManifestError> {
    READ.with(|r| r.borrow_mut().clear());
    let merged = load_merged(path, &mut Vec::new());
    let sources = Arc::new(ManifestSources {
        files: READ.with(|r| std::mem::take(&mut *r.borrow_mut())),
        sets: sets.to_vec(),
    });
    let mut doc = merged?;
    for s in sets {
        apply_set(&mut doc, s)?;
    }
    check_finite(&doc, "")?;
    let sweep = doc.as_table_mut().and_then(|t| t.shift_remove("sweep"));
    let Some(sweep) = sweep else {
        return type_doc(&doc, path, project_dir, &sources).map(Loaded::Pipeline);
    };
    let spec = sweep::parse_spec(&sweep)?;
    check_names(&doc, path)?;
    // A `--set` of a swept key would be overridden by every point: say so.
    let swept: Vec<&str> = spec
        .grid
        .iter()
        .chain(&spec.zip)
        .map(|a| a.key.as_str())
        .chain(
            spec.random
                .iter()
                .flat_map(|r| r.keys.iter().map(|k| k.0.as_str())),
        )
        .collect();
    for arg in sets {
        let key = arg.split_once('=').map_or(arg.as_str(), |(k, _)| k.trim());
        let bare = |k: &str| k.strip_prefix("stages.").unwrap_or(k).to_string();
        if swept.iter().any(|k| bare(k) == bare(key)) {
            return Err(ManifestError::new(format!(
                "`--set {arg}`: `{key}` is swept by this manifest, so every point sets it; to run the points with one value, use `--only {key}=VALUE`"
            ))
            .at(Origin {
                source: Arc::new(Source {
                    name: "--set".into(),
                    path: None,
                    text: arg.to_string(),
                }),
                span: 0..key.len(),
            }));
        }
    }
    let base: TopLevel = match doc.get("stages") {
        Some(_) => de::from_svalue(&doc, "")?,
        None => return type_doc(&doc, path, project_dir, &sources).map(Loaded::Pipeline),
    };
    let name = base.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".into())
    });
    let s = sweep::load_points(&name, base.aliases.clone(), path, &spec, |over| {
        let mut d = doc.clone();
        for (key, origin, value) in over {
            check_swept_key(&d, key, origin)?;
            apply_override(&mut d, key, value.clone(), origin.clone());
        }
        check_finite(&d, "")?;
        type_doc(&d, path, project_dir, &sources)
    })?;
    // A sweep as recorded loads as it ran: what was refused later is not refused there
    // (a record of it stays readable, its keys resolvable).
    let recorded = RECORDED.with(|r| r.borrow().is_some());
    if let (Some((h, origins)), false) = (&spec.halving, recorded) {
        sweep::check_rungs_differ(&s.points[0].pipeline, &s.keys, h, origins)?;
    }
    Ok(Loaded::Sweep(s))
}

/// A pipeline's name and aliases name files in the store (`state/<name>.json`,
/// `sweeps/<name>.json`) and are typed on command lines, where `@` picks a sweep's point:
/// 1 to 100 characters, no control character, no `/`, `\` or `@`, not starting with `.`.
/// A name taken from the file name is held to the same rule.
fn check_names(doc: &SValue, path: &Path) -> Result<(), ManifestError> {
    let bad = |n: &str| -> Option<&'static str> {
        if n.is_empty() {
            Some("must not be empty")
        } else if n.chars().count() > 100 {
            Some("must be at most 100 characters")
        } else if n.chars().any(char::is_control) {
            Some("must not hold control characters")
        } else if n.contains(['/', '\\']) {
            Some("must not hold `/` or `\\` (it names a file in the store)")
        } else if n.contains('@') {
            Some("must not hold `@`, which picks a sweep's point (`sweep@lr=1e-3`)")
        } else if n.starts_with('.') {
            Some("must not start with `.`")
        } else {
            None
        }
    };
    let mut named: Vec<(String, Origin, String)> = Vec::new();
    match doc.get("name") {
        Some(e) => {
            if let Some(n) = e.value.as_str() {
                named.push((n.to_string(), e.value.origin.clone(), "name".into()));
            }
        }
        None => {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(why) = bad(&stem) {
                return Err(ManifestError::new(format!(
                    "the pipeline is named after its file, `{stem}`, and a name {why}: rename the file or set `name`"
                ))
                .at(doc.origin.clone()));
            }
        }
    }
    if let Some(e) = doc.get("aliases") {
        if let Kind::Array(a) = &e.value.kind {
            for (i, v) in a.iter().enumerate() {
                if let Some(n) = v.as_str() {
                    named.push((n.to_string(), v.origin.clone(), format!("aliases[{i}]")));
                }
            }
        }
    }
    for (n, origin, key) in named {
        if let Some(why) = bad(&n) {
            let what = if key == "name" { "`name`" } else { "an alias" };
            let msg = if n.is_empty() {
                format!("{what} {why}")
            } else {
                format!("{what} {n:?} {why}")
            };
            return Err(ManifestError::new(msg).at(origin).path(key));
        }
    }
    Ok(())
}

/// Type and check a merged manifest tree (no `[sweep]` left in it) as one pipeline.
fn type_doc(
    doc: &SValue,
    path: &Path,
    project_dir: &Path,
    sources: &Arc<ManifestSources>,
) -> Result<Pipeline, ManifestError> {
    let top: TopLevel = match doc.get("stages") {
        Some(_) => de::from_svalue(doc, "")?,
        None => {
            return Err(ManifestError::new("missing required key `stages`")
                .at(doc.origin.clone())
                .help("a pipeline declares its stages as [stages.<name>] tables"))
        }
    };
    check_names(doc, path)?;
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
    let library = network::parse_library(doc)?;
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
        if sname.contains('@') {
            return Err(ManifestError::new(format!(
                "stage name {sname:?} holds `@`, which `from = \"stage@epoch\"` reserves: rename the stage"
            ))
            .at(entry.key_origin.clone())
            .path(format!("stages.{sname}")));
        }
        let (stage, origins) = parse::parse_stage(
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
        sources: sources.clone(),
    };
    check::validate_graph(&pipeline, &input_origins)?;
    check::check_top_k(&pipeline)?;
    check::check_resume_epochs(&pipeline, &input_origins)?;
    check::wire_data_inputs(&mut pipeline);
    check::leave_out_unread_momentum(&mut pipeline);
    check::check_data(&pipeline)?;
    Ok(pipeline)
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
                check_finite(&e.value, &value::join_key(path, k))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

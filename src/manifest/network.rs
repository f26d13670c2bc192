//! Networks and blocks as the user writes them: `[blocks.*]` and `[networks.*]`, read into
//! specs with every origin kept. Their expansion into a graph (parameters substituted,
//! blocks inlined, shapes checked) is `nn::expand`'s job.
//!
//! ```toml
//! [blocks.conv_module]
//! params = ["k", "kx", "ky", "stride", "padding"]
//! defaults = { stride = 1, padding = "same" }
//! layers = [
//!   { conv2d = { filters = "$k", kernel = ["$kx", "$ky"], stride = "$stride", padding = "$padding" } },
//!   { batchnorm = {} },
//!   { relu = {} },
//! ]
//!
//! [networks.mini_googlenet]
//! input = [32, 32, 3]
//! classes = 10
//! layers = [ { conv_module = [96, 3, 3] }, { name = "3a", inception = [32, 32] }, ... ]
//! ```
//!
//! A layer is a one-key inline table: the key is an op or a block, the value its arguments
//! (an array: positional; a table: by name; a scalar: the first argument). `name` and
//! `inputs` are optional: without `inputs` a layer reads the previous one; inside a block,
//! `"input"` names the block's input. `"$p"` is the block parameter `p` (`$classes` the
//! network's class count). Blocks may use blocks.

use indexmap::IndexMap;

use super::error::{did_you_mean, ManifestError};
use super::source::Origin;
use super::value::{Entry, Kind, SValue};

/// Layer names that mean something else: the network's input, and the prefixes of a
/// checkpoint's moving-average weights and optimizer moments.
const RESERVED: [&str; 3] = ["input", "ema", "opt"];

/// Every op name.
pub const OPS: &[&str] = &[
    "conv2d",
    "batchnorm",
    "relu",
    "elu",
    "maxpool",
    "avgpool",
    "global_avgpool",
    "dropout",
    "flatten",
    "dense",
    "concat",
    "add",
    "softmax",
];

/// One layer as written.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    /// `name = "..."`, if given.
    pub name: Option<String>,
    /// The op or block it calls.
    pub callee: String,
    /// Where the callee's key was written.
    pub callee_origin: Origin,
    /// Its arguments.
    pub args: Args,
    /// `inputs = [...]`, if given (else the previous layer).
    pub inputs: Option<Vec<(String, Origin)>>,
    /// `if = <bool>` (true) or `unless = <bool>` (false): the layer is there only when the
    /// value (a `$param`, usually) is that.
    pub when: Option<(bool, SValue)>,
    /// Where the layer was written.
    pub origin: Origin,
}

/// A layer's arguments as written.
#[derive(Debug, Clone)]
pub enum Args {
    /// An array (or a scalar: the first argument).
    Positional(Vec<SValue>),
    /// A table, by name.
    Keyword(IndexMap<String, Entry>),
}

/// A parameterised sub-graph.
#[derive(Debug, Clone)]
pub struct BlockSpec {
    /// Parameter names, in positional order.
    pub params: Vec<String>,
    /// Default values of some of them.
    pub defaults: IndexMap<String, SValue>,
    /// Its layers.
    pub layers: Vec<LayerSpec>,
}

/// A network as written.
#[derive(Debug, Clone)]
pub struct NetworkSpec {
    /// Its name under `[networks]`.
    pub name: String,
    /// `input = [height, width, channels]`.
    pub input: (usize, usize, usize),
    /// Class count, if the manifest sets it (`$classes`).
    pub classes: Option<usize>,
    /// Network-level parameters (`$name` in its layers).
    pub params: IndexMap<String, SValue>,
    /// Its layers.
    pub layers: Vec<LayerSpec>,
    /// Where `[networks.<name>]` was written.
    pub origin: Origin,
    /// Where its `input` and `classes` keys were written.
    pub key_origins: IndexMap<String, Origin>,
}

/// All blocks and networks of a manifest.
#[derive(Debug, Clone, Default)]
pub struct Library {
    /// Blocks by name.
    pub blocks: IndexMap<String, BlockSpec>,
    /// Networks by name.
    pub networks: IndexMap<String, NetworkSpec>,
}

/// Every parameter (`$name`) that `v` names, anywhere in it.
fn params_named<'a>(v: &'a SValue, out: &mut std::collections::BTreeSet<&'a str>) {
    match &v.kind {
        Kind::Str(s) => {
            if let Some(n) = s.strip_prefix('$') {
                out.insert(n);
            }
        }
        Kind::Array(a) => a.iter().for_each(|x| params_named(x, out)),
        Kind::Table(t) => {
            // `{ "$act" = {} }`: the op or block a layer calls can be a parameter.
            for (k, e) in t {
                if let Some(n) = k.strip_prefix('$') {
                    out.insert(n);
                }
                params_named(&e.value, out);
            }
        }
        _ => {}
    }
}

pub(crate) fn err(msg: impl Into<String>, at: &Origin, path: &str) -> ManifestError {
    ManifestError::new(msg).at(at.clone()).path(path)
}

fn table<'a>(v: &'a SValue, path: &str) -> Result<&'a IndexMap<String, Entry>, ManifestError> {
    v.as_table().ok_or_else(|| {
        err(
            format!("wrong type: expected a table, found {}", v.kind.type_name()),
            &v.origin,
            path,
        )
    })
}

pub(crate) fn usize_of(v: &SValue, path: &str) -> Result<usize, ManifestError> {
    match v.kind {
        Kind::Int(i) if i >= 0 => Ok(i as usize),
        _ => Err(err(
            format!(
                "wrong type: expected a non-negative integer, found {}",
                describe(v)
            ),
            &v.origin,
            path,
        )),
    }
}

pub(crate) fn describe(v: &SValue) -> String {
    match &v.kind {
        Kind::Str(s) => format!("string \"{s}\""),
        Kind::Int(i) => format!("integer {i}"),
        Kind::Float(f) => format!("float {f}"),
        Kind::Bool(b) => format!("boolean {b}"),
        other => other.type_name().to_string(),
    }
}

fn parse_layers(v: &SValue, path: &str) -> Result<Vec<LayerSpec>, ManifestError> {
    let Kind::Array(items) = &v.kind else {
        return Err(err(
            format!(
                "wrong type: `layers` must be an array of one-key tables, found {}",
                v.kind.type_name()
            ),
            &v.origin,
            path,
        ));
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let t = table(item, &p)?;
        let mut name = None;
        let mut inputs = None;
        let mut when = None;
        let mut call: Option<(&String, &Entry)> = None;
        for (k, e) in t {
            match k.as_str() {
                "if" | "unless" => {
                    if when.is_some() {
                        return Err(err(
                            "a layer takes one `if` or `unless`",
                            &e.key_origin,
                            &format!("{p}.{k}"),
                        ));
                    }
                    when = Some((k == "if", e.value.clone()));
                }
                "name" => match e.value.as_str() {
                    // `ema/` and `opt/` begin the names of a checkpoint's moving
                    // average and optimizer moments: a layer of that name would be
                    // taken for them.
                    Some(s)
                        if !s.is_empty() && !s.contains('/') && !RESERVED.contains(&s) =>
                    {
                        name = Some(s.to_string())
                    }
                    _ => {
                        return Err(err(
                            "`name` must be a non-empty string without `/`, and not `input`, `ema` or `opt` (reserved: the input, and a checkpoint's moving average and optimizer moments)",
                            &e.value.origin,
                            &format!("{p}.name"),
                        ))
                    }
                },
                "inputs" | "input" => {
                    let list: Vec<&SValue> = match &e.value.kind {
                        Kind::Str(_) => vec![&e.value],
                        Kind::Array(a) => a.iter().collect(),
                        _ => {
                            return Err(err(
                                "`inputs` must be a layer name or a list of them",
                                &e.value.origin,
                                &format!("{p}.inputs"),
                            ))
                        }
                    };
                    let mut names = Vec::new();
                    for x in list {
                        match x.as_str() {
                            Some(s) => names.push((s.to_string(), x.origin.clone())),
                            None => {
                                return Err(err(
                                    format!(
                                        "wrong type: expected a layer name, found {}",
                                        describe(x)
                                    ),
                                    &x.origin,
                                    &format!("{p}.inputs"),
                                ))
                            }
                        }
                    }
                    inputs = Some(names);
                }
                _ => {
                    if let Some((first, _)) = call {
                        return Err(err(
                            format!(
                                "a layer calls one op or block, this one calls `{first}` and `{k}`"
                            ),
                            &e.key_origin,
                            &format!("{p}.{k}"),
                        ));
                    }
                    call = Some((k, e));
                }
            }
        }
        let Some((callee, e)) = call else {
            return Err(err(
                "a layer needs an op or block, e.g. `{ relu = {} }`",
                &item.origin,
                &p,
            ));
        };
        let args = match &e.value.kind {
            Kind::Array(a) => Args::Positional(a.clone()),
            Kind::Table(t) => Args::Keyword(t.clone()),
            _ => Args::Positional(vec![e.value.clone()]),
        };
        out.push(LayerSpec {
            name,
            callee: callee.clone(),
            callee_origin: e.key_origin.clone(),
            args,
            inputs,
            when,
            origin: item.origin.clone(),
        });
    }
    Ok(out)
}

fn check_keys(
    t: &IndexMap<String, Entry>,
    allowed: &[&str],
    path: &str,
) -> Result<(), ManifestError> {
    for (k, e) in t {
        if !allowed.contains(&k.as_str()) {
            let mut x = err(
                format!("unknown key `{k}`"),
                &e.key_origin,
                &format!("{path}.{k}"),
            );
            x.help = Some(match did_you_mean(k, allowed.iter().copied()) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!("expected one of: {}", allowed.join(", ")),
            });
            return Err(x);
        }
    }
    Ok(())
}

/// Read `[blocks.*]` and `[networks.*]` from a merged manifest.
pub fn parse_library(doc: &SValue) -> Result<Library, ManifestError> {
    let mut lib = Library::default();
    if let Some(b) = doc.get("blocks") {
        for (name, e) in table(&b.value, "blocks")? {
            let path = format!("blocks.{name}");
            if OPS.contains(&name.as_str()) {
                return Err(err(
                    format!("block `{name}` has the name of an op"),
                    &e.key_origin,
                    &path,
                ));
            }
            let t = table(&e.value, &path)?;
            check_keys(t, &["params", "defaults", "layers"], &path)?;
            let mut params = Vec::new();
            if let Some(p) = t.get("params") {
                let Kind::Array(a) = &p.value.kind else {
                    return Err(err(
                        "`params` must be an array of names",
                        &p.value.origin,
                        &format!("{path}.params"),
                    ));
                };
                for x in a {
                    match x.as_str() {
                        Some(s) if params.iter().any(|q| q == s) => {
                            return Err(err(
                                format!("parameter `{s}` is listed twice in `params`"),
                                &x.origin,
                                &format!("{path}.params"),
                            ))
                        }
                        Some("") => {
                            return Err(err(
                                "a parameter name must not be empty",
                                &x.origin,
                                &format!("{path}.params"),
                            ))
                        }
                        Some(s) => params.push(s.to_string()),
                        None => {
                            return Err(err(
                                "`params` must be an array of names",
                                &x.origin,
                                &format!("{path}.params"),
                            ))
                        }
                    }
                }
            }
            let mut defaults = IndexMap::new();
            if let Some(d) = t.get("defaults") {
                for (k, de) in table(&d.value, &format!("{path}.defaults"))? {
                    if !params.contains(k) {
                        return Err(err(
                            format!("default for `{k}`, which is not in `params`"),
                            &de.key_origin,
                            &format!("{path}.defaults.{k}"),
                        ));
                    }
                    defaults.insert(k.clone(), de.value.clone());
                }
            }
            let Some(layers) = t.get("layers") else {
                return Err(err(
                    format!("block `{name}` has no `layers`"),
                    &e.key_origin,
                    &path,
                ));
            };
            if matches!(&layers.value.kind, Kind::Array(a) if a.is_empty()) {
                return Err(err(
                    format!("block `{name}` has an empty `layers` list"),
                    &layers.value.origin,
                    &format!("{path}.layers"),
                ));
            }
            lib.blocks.insert(
                name.clone(),
                BlockSpec {
                    params,
                    defaults,
                    layers: parse_layers(&layers.value, &format!("{path}.layers"))?,
                },
            );
        }
    }
    if let Some(n) = doc.get("networks") {
        for (name, e) in table(&n.value, "networks")? {
            let path = format!("networks.{name}");
            let t = table(&e.value, &path)?;
            check_keys(t, &["input", "classes", "params", "layers"], &path)?;
            let mut params = IndexMap::new();
            if let Some(p) = t.get("params") {
                for (k, pe) in table(&p.value, &format!("{path}.params"))? {
                    if k == "classes" {
                        return Err(err(
                            "set `classes` at the network level, not in `params`",
                            &pe.key_origin,
                            &format!("{path}.params.classes"),
                        ));
                    }
                    params.insert(k.clone(), pe.value.clone());
                }
            }
            let Some(input) = t.get("input") else {
                return Err(err(
                    format!("missing required key `input` ([height, width, channels]) in network `{name}`"),
                    &e.key_origin,
                    &path,
                ));
            };
            let dims = match &input.value.kind {
                Kind::Array(a) if a.len() == 3 => a
                    .iter()
                    .map(|x| usize_of(x, &format!("{path}.input")))
                    .collect::<Result<Vec<_>, _>>()?,
                _ => {
                    return Err(err(
                        "`input` must be [height, width, channels]",
                        &input.value.origin,
                        &format!("{path}.input"),
                    ))
                }
            };
            let classes = t
                .get("classes")
                .map(|c| usize_of(&c.value, &format!("{path}.classes")))
                .transpose()?;
            let Some(layers) = t.get("layers") else {
                return Err(err(
                    format!("network `{name}` has no `layers`"),
                    &e.key_origin,
                    &path,
                ));
            };
            if matches!(&layers.value.kind, Kind::Array(a) if a.is_empty()) {
                return Err(err(
                    format!("network `{name}` has an empty `layers` list"),
                    &layers.value.origin,
                    &format!("{path}.layers"),
                ));
            }
            // A parameter no layer names (a typo, in the manifest, a `--set` or a sweep's
            // key) would change the stage key and nothing else.
            let mut used = std::collections::BTreeSet::new();
            params_named(&layers.value, &mut used);
            if let Some(p) = t.get("params") {
                for (k, pe) in table(&p.value, &format!("{path}.params"))? {
                    if !used.contains(k.as_str()) {
                        let mut e = err(
                            format!(
                                "parameter `{k}` of network `{name}` is named by no layer (`${k}`)"
                            ),
                            &pe.key_origin,
                            &format!("{path}.params.{k}"),
                        );
                        e.help = Some(match did_you_mean(k, used.iter().copied()) {
                            Some(m) => format!("did you mean `{m}`?"),
                            None if used.is_empty() => "its layers name no parameter".into(),
                            None => format!(
                                "its layers name: {}",
                                used.iter().copied().collect::<Vec<_>>().join(", ")
                            ),
                        });
                        return Err(e);
                    }
                }
            }
            lib.networks.insert(
                name.clone(),
                NetworkSpec {
                    name: name.clone(),
                    input: (dims[0], dims[1], dims[2]),
                    classes,
                    params,
                    layers: parse_layers(&layers.value, &format!("{path}.layers"))?,
                    origin: e.key_origin.clone(),
                    key_origins: t
                        .iter()
                        .map(|(k, x)| (k.clone(), x.key_origin.clone()))
                        .collect(),
                },
            );
        }
    }
    Ok(lib)
}

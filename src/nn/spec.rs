//! Networks and blocks as the user writes them, and their expansion into a [`Graph`].
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

use std::collections::HashMap;

use indexmap::IndexMap;

use super::graph::{Graph, Node, Op, Padding};
use crate::manifest::error::{did_you_mean, ManifestError};
use crate::manifest::value::{Entry, Kind, Origin, SValue};

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
    name: Option<String>,
    callee: String,
    callee_origin: Origin,
    args: Args,
    inputs: Option<Vec<(String, Origin)>>,
    origin: Origin,
}

#[derive(Debug, Clone)]
enum Args {
    Positional(Vec<SValue>),
    Keyword(IndexMap<String, Entry>),
}

/// A parameterised sub-graph.
#[derive(Debug, Clone)]
pub struct BlockSpec {
    params: Vec<String>,
    defaults: IndexMap<String, SValue>,
    layers: Vec<LayerSpec>,
}

/// A network as written.
#[derive(Debug, Clone)]
pub struct NetworkSpec {
    /// Its name under `[networks]`.
    pub name: String,
    input: (usize, usize, usize),
    /// Class count, if the manifest sets it (`$classes`).
    pub classes: Option<usize>,
    /// Network-level parameters (`$name` in its layers).
    params: IndexMap<String, SValue>,
    layers: Vec<LayerSpec>,
    origin: Origin,
}

/// All blocks and networks of a manifest.
#[derive(Debug, Clone, Default)]
pub struct Library {
    /// Blocks by name.
    pub blocks: IndexMap<String, BlockSpec>,
    /// Networks by name.
    pub networks: IndexMap<String, NetworkSpec>,
}

fn err(msg: impl Into<String>, at: &Origin, path: &str) -> ManifestError {
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

fn usize_of(v: &SValue, path: &str) -> Result<usize, ManifestError> {
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

fn describe(v: &SValue) -> String {
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
        let mut call: Option<(&String, &Entry)> = None;
        for (k, e) in t {
            match k.as_str() {
                "name" => match e.value.as_str() {
                    Some(s) if !s.is_empty() && !s.contains('/') && s != "input" => {
                        name = Some(s.to_string())
                    }
                    _ => {
                        return Err(err(
                            "`name` must be a non-empty string without `/` (and not `input`)",
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
            lib.networks.insert(
                name.clone(),
                NetworkSpec {
                    name: name.clone(),
                    input: (dims[0], dims[1], dims[2]),
                    classes,
                    params,
                    layers: parse_layers(&layers.value, &format!("{path}.layers"))?,
                    origin: e.key_origin.clone(),
                },
            );
        }
    }
    Ok(lib)
}

/// An expanded network: the graph, and where each node was written.
pub struct Expanded {
    /// The graph.
    pub graph: Graph,
    /// Origin of the layer each node came from.
    pub origins: Vec<Origin>,
}

struct Expander<'a> {
    lib: &'a Library,
    nodes: Vec<Node>,
    origins: Vec<Origin>,
    stack: Vec<String>,
}

type Env = HashMap<String, SValue>;

fn substitute(v: &SValue, env: &Env, path: &str) -> Result<SValue, ManifestError> {
    match &v.kind {
        Kind::Str(s) if s.starts_with('$') => {
            let key = &s[1..];
            match env.get(key) {
                Some(x) => Ok(x.clone()),
                None => {
                    let mut e = err(format!("unknown parameter `{s}`"), &v.origin, path);
                    let mut names: Vec<&str> = env.keys().map(|k| k.as_str()).collect();
                    names.sort();
                    e.help = Some(match did_you_mean(key, names.iter().copied()) {
                        Some(m) => format!("did you mean `${m}`?"),
                        None if names.is_empty() => "no parameters are defined here".into(),
                        None => format!(
                            "parameters here: {}",
                            names
                                .iter()
                                .map(|n| format!("${n}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                    Err(e)
                }
            }
        }
        Kind::Array(a) => Ok(SValue {
            kind: Kind::Array(
                a.iter()
                    .map(|x| substitute(x, env, path))
                    .collect::<Result<_, _>>()?,
            ),
            origin: v.origin.clone(),
        }),
        _ => Ok(v.clone()),
    }
}

/// Bind a call's arguments to parameter names (positional in order, or by name).
fn bind(
    l: &LayerSpec,
    params: &[&str],
    env: &Env,
    path: &str,
) -> Result<IndexMap<String, SValue>, ManifestError> {
    let mut out = IndexMap::new();
    match &l.args {
        Args::Positional(a) => {
            if a.len() > params.len() {
                return Err(err(
                    format!(
                        "`{}` takes {} argument(s) ({}), got {}",
                        l.callee,
                        params.len(),
                        params.join(", "),
                        a.len()
                    ),
                    &a[params.len()].origin,
                    path,
                ));
            }
            for (p, v) in params.iter().zip(a) {
                out.insert(p.to_string(), substitute(v, env, path)?);
            }
        }
        Args::Keyword(t) => {
            for (k, e) in t {
                if !params.contains(&k.as_str()) {
                    let mut x = err(
                        format!("`{}` has no argument `{k}`", l.callee),
                        &e.key_origin,
                        &format!("{path}.{k}"),
                    );
                    x.help = Some(match did_you_mean(k, params.iter().copied()) {
                        Some(m) => format!("did you mean `{m}`?"),
                        None => format!("arguments: {}", params.join(", ")),
                    });
                    return Err(x);
                }
                out.insert(
                    k.clone(),
                    substitute(&e.value, env, &format!("{path}.{k}"))?,
                );
            }
        }
    }
    Ok(out)
}

struct OpArgs<'a> {
    l: &'a LayerSpec,
    v: IndexMap<String, SValue>,
    path: String,
}

impl OpArgs<'_> {
    fn missing(&self, k: &str) -> ManifestError {
        err(
            format!("`{}` needs `{k}`", self.l.callee),
            &self.l.origin,
            &self.path,
        )
    }
    fn usize(&self, k: &str, default: Option<usize>) -> Result<usize, ManifestError> {
        match self.v.get(k) {
            Some(v) => {
                let n = usize_of(v, &format!("{}.{k}", self.path))?;
                if n == 0 {
                    return Err(err(format!("`{k}` must be > 0"), &v.origin, &self.path));
                }
                Ok(n)
            }
            None => default.ok_or_else(|| self.missing(k)),
        }
    }
    fn pair(
        &self,
        k: &str,
        default: Option<(usize, usize)>,
    ) -> Result<(usize, usize), ManifestError> {
        match self.v.get(k) {
            Some(v) => match &v.kind {
                Kind::Array(a) if a.len() == 2 => {
                    let p = format!("{}.{k}", self.path);
                    let (x, y) = (usize_of(&a[0], &p)?, usize_of(&a[1], &p)?);
                    if x == 0 || y == 0 {
                        return Err(err(format!("`{k}` must be > 0"), &v.origin, &p));
                    }
                    Ok((x, y))
                }
                _ => {
                    let n = self.usize(k, None)?;
                    Ok((n, n))
                }
            },
            None => default.ok_or_else(|| self.missing(k)),
        }
    }
    fn f64(&self, k: &str, default: Option<f64>) -> Result<f64, ManifestError> {
        match self.v.get(k) {
            Some(v) => match v.kind {
                Kind::Float(f) => Ok(f),
                Kind::Int(i) => Ok(i as f64),
                _ => Err(err(
                    format!("wrong type: expected a number, found {}", describe(v)),
                    &v.origin,
                    &format!("{}.{k}", self.path),
                )),
            },
            None => default.ok_or_else(|| self.missing(k)),
        }
    }
    fn bool(&self, k: &str, default: bool) -> Result<bool, ManifestError> {
        match self.v.get(k) {
            Some(v) => match v.kind {
                Kind::Bool(b) => Ok(b),
                _ => Err(err(
                    format!("wrong type: expected true or false, found {}", describe(v)),
                    &v.origin,
                    &format!("{}.{k}", self.path),
                )),
            },
            None => Ok(default),
        }
    }
    fn padding(&self, default: Padding) -> Result<Padding, ManifestError> {
        match self.v.get("padding") {
            None => Ok(default),
            Some(v) => match &v.kind {
                Kind::Str(s) if s == "same" => Ok(Padding::Same),
                Kind::Str(s) if s == "valid" => Ok(Padding::Valid),
                Kind::Int(i) if *i >= 0 => Ok(Padding::Explicit(*i as usize)),
                _ => Err(err(
                    format!(
                        "`padding` must be \"same\", \"valid\" or an integer, found {}",
                        describe(v)
                    ),
                    &v.origin,
                    &format!("{}.padding", self.path),
                )),
            },
        }
    }
}

fn op_params(op: &str) -> &'static [&'static str] {
    match op {
        "conv2d" => &["filters", "kernel", "stride", "padding", "bias", "l2"],
        "batchnorm" => &["momentum", "epsilon"],
        "elu" => &["alpha"],
        "maxpool" | "avgpool" => &["size", "stride", "padding"],
        "dropout" => &["rate"],
        "dense" => &["units", "bias", "l2"],
        _ => &[],
    }
}

fn build_op(l: &LayerSpec, env: &Env, path: &str) -> Result<Op, ManifestError> {
    let a = OpArgs {
        l,
        v: bind(l, op_params(&l.callee), env, path)?,
        path: path.to_string(),
    };
    let l2 = |a: &OpArgs| -> Result<f64, ManifestError> {
        let x = a.f64("l2", Some(0.0))?;
        if x < 0.0 {
            return Err(err("`l2` must be >= 0", &l.origin, path));
        }
        Ok(x)
    };
    Ok(match l.callee.as_str() {
        "conv2d" => Op::Conv2d {
            filters: a.usize("filters", None)?,
            kernel: a.pair("kernel", None)?,
            stride: a.pair("stride", Some((1, 1)))?,
            padding: a.padding(Padding::Same)?,
            bias: a.bool("bias", true)?,
            l2: l2(&a)?,
        },
        "batchnorm" => Op::BatchNorm {
            momentum: a.f64("momentum", Some(0.99))?,
            epsilon: a.f64("epsilon", Some(1e-3))?,
        },
        "relu" => Op::Relu,
        "elu" => Op::Elu {
            alpha: a.f64("alpha", Some(1.0))?,
        },
        "maxpool" | "avgpool" => {
            let size = a.pair("size", None)?;
            let stride = a.pair("stride", Some(size))?;
            let padding = a.padding(Padding::Valid)?;
            if l.callee == "maxpool" {
                Op::MaxPool {
                    size,
                    stride,
                    padding,
                }
            } else {
                Op::AvgPool {
                    size,
                    stride,
                    padding,
                }
            }
        }
        "global_avgpool" => Op::GlobalAvgPool,
        "dropout" => {
            let rate = a.f64("rate", None)?;
            if !(0.0..1.0).contains(&rate) {
                return Err(err("dropout `rate` must be in [0, 1)", &l.origin, path));
            }
            Op::Dropout { rate }
        }
        "flatten" => Op::Flatten,
        "dense" => Op::Dense {
            units: a.usize("units", None)?,
            bias: a.bool("bias", true)?,
            l2: l2(&a)?,
        },
        "concat" => Op::Concat,
        "add" => Op::Add,
        "softmax" => Op::Softmax,
        _ => unreachable!("checked against OPS"),
    })
}

impl Expander<'_> {
    fn push(&mut self, name: String, op: Op, inputs: Vec<usize>, origin: Origin) -> usize {
        self.nodes.push(Node { name, op, inputs });
        self.origins.push(origin);
        self.nodes.len() - 1
    }

    fn expand(
        &mut self,
        layers: &[LayerSpec],
        env: &Env,
        prefix: &str,
        input: usize,
        path: &str,
    ) -> Result<usize, ManifestError> {
        let mut local: HashMap<String, usize> = HashMap::new();
        local.insert("input".into(), input);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let mut prev = input;
        for (i, l) in layers.iter().enumerate() {
            let lpath = format!("{path}[{i}]");
            let n = counts.entry(l.callee.as_str()).or_insert(0);
            *n += 1;
            let name = l
                .name
                .clone()
                .unwrap_or_else(|| format!("{}_{n}", l.callee));
            if local.contains_key(&name) && name != "input" {
                return Err(err(
                    format!("two layers named `{name}` in one scope"),
                    &l.origin,
                    &lpath,
                ));
            }
            let inputs: Vec<usize> = match &l.inputs {
                None => vec![prev],
                Some(names) => names
                    .iter()
                    .map(|(n, o)| {
                        local.get(n).copied().ok_or_else(|| {
                            let mut e = err(
                                format!("`{name}` reads `{n}`, which is not an earlier layer here"),
                                o,
                                &format!("{lpath}.inputs"),
                            );
                            let mut known: Vec<&str> = local.keys().map(|k| k.as_str()).collect();
                            known.sort();
                            e.help = Some(match did_you_mean(n, known.iter().copied()) {
                                Some(m) => format!("did you mean `{m}`?"),
                                None => format!("earlier layers: {}", known.join(", ")),
                            });
                            e
                        })
                    })
                    .collect::<Result<_, _>>()?,
            };
            let full = format!("{prefix}{name}");
            let out = if OPS.contains(&l.callee.as_str()) {
                let op = build_op(l, env, &lpath)?;
                self.push(full, op, inputs, l.origin.clone())
            } else if let Some(block) = self.lib.blocks.get(&l.callee) {
                if self.stack.contains(&l.callee) {
                    return Err(err(
                        format!(
                            "block recursion: {} -> {}",
                            self.stack.join(" -> "),
                            l.callee
                        ),
                        &l.callee_origin,
                        &lpath,
                    ));
                }
                let [block_input] = inputs.as_slice() else {
                    return Err(err(
                        format!("block `{}` takes one input, got {}", l.callee, inputs.len()),
                        &l.origin,
                        &lpath,
                    ));
                };
                let params: Vec<&str> = block.params.iter().map(|s| s.as_str()).collect();
                let mut benv: Env = bind(l, &params, env, &lpath)?.into_iter().collect();
                for (k, v) in &block.defaults {
                    benv.entry(k.clone()).or_insert_with(|| v.clone());
                }
                if let Some(missing) = params.iter().find(|p| !benv.contains_key(**p)) {
                    return Err(err(
                        format!(
                            "block `{}` needs `{missing}` (params: {})",
                            l.callee,
                            params.join(", ")
                        ),
                        &l.origin,
                        &lpath,
                    ));
                }
                if let Some(c) = env.get("classes") {
                    benv.entry("classes".into()).or_insert_with(|| c.clone());
                }
                self.stack.push(l.callee.clone());
                let out = self.expand(
                    &block.layers,
                    &benv,
                    &format!("{full}/"),
                    *block_input,
                    &format!("blocks.{}.layers", l.callee),
                )?;
                self.stack.pop();
                out
            } else {
                let mut e = err(
                    format!("unknown op or block `{}`", l.callee),
                    &l.callee_origin,
                    &lpath,
                );
                let mut names: Vec<&str> = OPS.to_vec();
                names.extend(self.lib.blocks.keys().map(|k| k.as_str()));
                e.help = Some(match did_you_mean(&l.callee, names.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!(
                        "ops: {}; blocks: {}",
                        OPS.join(", "),
                        self.lib
                            .blocks
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
                return Err(e);
            };
            local.insert(name, out);
            prev = out;
        }
        Ok(prev)
    }
}

impl Library {
    /// Expand a network into its graph and check every shape. `classes` overrides the
    /// network's `classes` (a train stage passes the dataset's class count).
    pub fn expand(&self, network: &str, classes: Option<usize>) -> Result<Expanded, ManifestError> {
        let Some(spec) = self.networks.get(network) else {
            let mut e = ManifestError::new(format!("no network `{network}` in this manifest"));
            e.help = Some(
                match did_you_mean(network, self.networks.keys().map(|k| k.as_str())) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!(
                        "networks: {}",
                        self.networks.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                },
            );
            return Err(e);
        };
        let mut env: Env = spec
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(c) = classes.or(spec.classes) {
            env.insert(
                "classes".into(),
                SValue {
                    kind: Kind::Int(c as i64),
                    origin: spec.origin.clone(),
                },
            );
        }
        let mut x = Expander {
            lib: self,
            nodes: Vec::new(),
            origins: Vec::new(),
            stack: Vec::new(),
        };
        let (h, w, c) = spec.input;
        x.push(
            "input".into(),
            Op::Input { h, w, c },
            vec![],
            spec.origin.clone(),
        );
        let out = x.expand(
            &spec.layers,
            &env,
            "",
            0,
            &format!("networks.{network}.layers"),
        )?;
        if out != x.nodes.len() - 1 {
            // The last layer must be the output; anything after it would be dead.
            return Err(err(
                "the last layer is not the network's output",
                &spec.origin,
                &format!("networks.{network}"),
            ));
        }
        let graph = Graph { nodes: x.nodes };
        if let Err(se) = graph.infer() {
            let idx = graph
                .nodes
                .iter()
                .position(|n| n.name == se.node)
                .unwrap_or(0);
            return Err(ManifestError::new(format!("shape error at {se}"))
                .at(x.origins[idx].clone())
                .path(format!("networks.{network}")));
        }
        Ok(Expanded {
            graph,
            origins: x.origins,
        })
    }
}

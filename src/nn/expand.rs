//! Expansion of a manifest's network into a [`Graph`]: block parameters substituted,
//! blocks inlined with their layer names prefixed (`3a/branch2/conv`), every op built with
//! its arguments checked, and every shape inferred. Errors point at the layer as written.

use std::collections::HashMap;

use indexmap::IndexMap;

use super::graph::{Graph, Node, Op, Padding};
use crate::manifest::error::{did_you_mean, ManifestError};
use crate::manifest::network::{describe, err, usize_of, Args, LayerSpec, Library, OPS};
use crate::manifest::source::Origin;
use crate::manifest::value::{Kind, SValue};
use crate::manifest::{Pipeline, StageConfig};

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

/// An op argument's range: an error at the argument (else the layer) when `ok` is false.
fn in_range(
    a: &OpArgs,
    l: &LayerSpec,
    path: &str,
    k: &str,
    v: &dyn std::fmt::Display,
    ok: bool,
    allowed: &str,
) -> Result<(), ManifestError> {
    if ok {
        return Ok(());
    }
    let at = a.v.get(k).map_or(&l.origin, |v| &v.origin);
    Err(err(
        format!("{} `{k}` = {v} must be {allowed}", l.callee),
        at,
        path,
    ))
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
        "conv2d" => {
            let kernel = a.pair("kernel", None)?;
            let padding = a.padding(Padding::Same)?;
            if let Padding::Explicit(pad) = padding {
                let ok = pad < kernel.0 && pad < kernel.1;
                let allowed = format!(
                    "less than the {}x{} kernel (the outer rows and columns would see padding only)",
                    kernel.0, kernel.1
                );
                in_range(&a, l, path, "padding", &pad, ok, &allowed)?;
            }
            Op::Conv2d {
                filters: a.usize("filters", None)?,
                kernel,
                stride: a.pair("stride", Some((1, 1)))?,
                padding,
                bias: a.bool("bias", true)?,
                l2: l2(&a)?,
            }
        }
        "batchnorm" => {
            let momentum = a.f64("momentum", Some(0.99))?;
            let epsilon = a.f64("epsilon", Some(1e-3))?;
            in_range(
                &a,
                l,
                path,
                "momentum",
                &momentum,
                (0.0..1.0).contains(&momentum),
                "in [0, 1) (Keras' convention: the weight of the running mean)",
            )?;
            in_range(&a, l, path, "epsilon", &epsilon, epsilon > 0.0, "> 0")?;
            Op::BatchNorm { momentum, epsilon }
        }
        "relu" => Op::Relu,
        "elu" => {
            let alpha = a.f64("alpha", Some(1.0))?;
            in_range(&a, l, path, "alpha", &alpha, alpha >= 0.0, ">= 0")?;
            Op::Elu { alpha }
        }
        "maxpool" | "avgpool" => {
            let size = a.pair("size", None)?;
            let stride = a.pair("stride", Some(size))?;
            let padding = a.padding(Padding::Valid)?;
            // As PyTorch and ONNX ask: no window may lie wholly in the padding.
            if let Padding::Explicit(pad) = padding {
                let ok = pad <= size.0 / 2 && pad <= size.1 / 2;
                let allowed = format!(
                    "at most half the {}x{} window (a window would see padding only)",
                    size.0, size.1
                );
                in_range(&a, l, path, "padding", &pad, ok, &allowed)?;
            }
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
                let at = a.v.get("rate").map_or(&l.origin, |v| &v.origin);
                return Err(err(
                    format!("dropout `rate` = {rate} must be in [0, 1)"),
                    at,
                    path,
                ));
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

/// The most layers a network may expand to (blocks counted layer by layer): far above any
/// network that trains (DeeperGoogLeNet has 216), and a bound on the memory and time
/// expansion itself may spend on a manifest.
pub const MAX_LAYERS: usize = 100_000;

/// How deep blocks may call blocks.
pub const MAX_NESTING: usize = 32;

impl Expander<'_> {
    /// Add a node, unless the network already holds [`MAX_LAYERS`]: then an error at the
    /// layer that would pass it.
    fn push(
        &mut self,
        name: String,
        op: Op,
        inputs: Vec<usize>,
        origin: Origin,
        path: &str,
    ) -> Result<usize, ManifestError> {
        if self.nodes.len() >= MAX_LAYERS {
            return Err(err(
                format!(
                    "the network expands to more than {MAX_LAYERS} layers (blocks count layer by layer); no network this large can be trained"
                ),
                &origin,
                path,
            ));
        }
        self.nodes.push(Node { name, op, inputs });
        self.origins.push(origin);
        Ok(self.nodes.len() - 1)
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
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut prev = input;
        for (i, l) in layers.iter().enumerate() {
            let lpath = format!("{path}[{i}]");
            // `if = "$p"` / `unless = "$p"`: a layer that is not there takes no name and
            // is no one's input.
            if let Some((want, v)) = &l.when {
                match substitute(v, env, &lpath)?.kind {
                    Kind::Bool(b) if b == *want => {}
                    Kind::Bool(_) => continue,
                    _ => {
                        return Err(err(
                            format!(
                                "`{}` needs true or false, found {}",
                                if *want { "if" } else { "unless" },
                                describe(v)
                            ),
                            &v.origin,
                            &lpath,
                        ))
                    }
                }
            }
            // `{ "$act" = {} }`: the op or block a parameter names.
            let resolved;
            let l = if let Some(param) = l.callee.strip_prefix('$') {
                let v = substitute(
                    &SValue {
                        kind: Kind::Str(l.callee.clone()),
                        origin: l.callee_origin.clone(),
                    },
                    env,
                    &lpath,
                )?;
                let Some(callee) = v.as_str() else {
                    return Err(err(
                        format!(
                            "`${param}` must name an op or a block, found {}",
                            describe(&v)
                        ),
                        &l.callee_origin,
                        &lpath,
                    ));
                };
                resolved = LayerSpec {
                    callee: callee.to_string(),
                    ..l.clone()
                };
                &resolved
            } else {
                l
            };
            let n = counts.entry(l.callee.clone()).or_insert(0);
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
                self.push(full, op, inputs, l.origin.clone(), &lpath)?
            } else if let Some(block) = self.lib.blocks.get(&l.callee) {
                if self.stack.len() >= MAX_NESTING {
                    return Err(err(
                        format!(
                            "blocks nested more than {MAX_NESTING} deep: {} -> {}",
                            self.stack.join(" -> "),
                            l.callee
                        ),
                        &l.callee_origin,
                        &lpath,
                    ));
                }
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

/// Expand a network into its graph and check every shape. `classes` overrides the
/// network's `classes`.
pub fn expand(
    lib: &Library,
    network: &str,
    classes: Option<usize>,
) -> Result<Expanded, ManifestError> {
    {
        let Some(spec) = lib.networks.get(network) else {
            let mut e = ManifestError::new(format!("no network `{network}` in this manifest"));
            e.help = Some(
                match did_you_mean(network, lib.networks.keys().map(|k| k.as_str())) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!(
                        "networks: {}",
                        lib.networks.keys().cloned().collect::<Vec<_>>().join(", ")
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
            lib,
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
            &format!("networks.{network}.input"),
        )?;
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
        // A layer whose output nothing reads is a wiring mistake (an `inputs` naming the
        // wrong layer): it would count, train and cost, and change nothing.
        let mut read = vec![false; x.nodes.len()];
        for n in &x.nodes {
            for &i in &n.inputs {
                read[i] = true;
            }
        }
        if let Some(i) = (1..x.nodes.len().saturating_sub(1)).find(|&i| !read[i]) {
            return Err(err(
                format!(
                    "layer `{}` feeds no layer and is not the network's output (check the `inputs` of the layers after it)",
                    x.nodes[i].name
                ),
                &x.origins[i],
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

/// The graph a `train` stage builds (its network, with the class count it declares).
pub fn train_graph(p: &Pipeline, stage: &str) -> Result<Graph, ManifestError> {
    let Some(StageConfig::Train(t)) = p.stages.get(stage).map(|s| &s.config) else {
        return Err(ManifestError::new(format!(
            "stage `{stage}` is not a train stage"
        )));
    };
    Ok(expand(&p.library, &t.network, None)?.graph)
}

/// Check every network of a loaded pipeline: each train stage's network expands, and every
/// network declared expands with consistent shapes. Errors are located at the layer (or,
/// failing that, at the train stage's `network` key).
pub fn check(p: &Pipeline) -> Result<(), ManifestError> {
    for (name, s) in &p.stages {
        if let StageConfig::Train(t) = &s.config {
            expand(&p.library, &t.network, None).map_err(|e| {
                e.at(s.key_origin("network"))
                    .path(format!("stages.{name}.network"))
            })?;
        }
    }
    // The class count, if the network leaves it to the data, changes no shape but the last.
    for (name, n) in &p.library.networks {
        expand(&p.library, name, n.classes.or(Some(2)))?;
    }
    Ok(())
}

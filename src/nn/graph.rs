//! The expanded layer graph: ops with concrete arguments, shape inference, parameter and
//! MAC counts. This is what a training backend builds a model from; it names no backend.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Padding of a convolution or pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Keras `same`: output = ceil(input / stride); extra padding goes bottom/right.
    Same,
    /// No padding: output = floor((input - k) / stride) + 1.
    Valid,
    /// Explicit symmetric padding.
    Explicit(usize),
}

/// One operation with its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// The network input (H, W, C).
    Input {
        /// Height.
        h: usize,
        /// Width.
        w: usize,
        /// Channels.
        c: usize,
    },
    /// 2-D convolution, NHWC.
    Conv2d {
        /// Output channels.
        filters: usize,
        /// (kh, kw).
        kernel: (usize, usize),
        /// (sh, sw).
        stride: (usize, usize),
        /// Padding.
        padding: Padding,
        /// Learn a bias.
        bias: bool,
        /// L2 penalty on the kernel.
        l2: f64,
    },
    /// Batch normalisation over channels.
    BatchNorm {
        /// Running-statistics momentum (Keras convention: new = m * old + (1 - m) * batch).
        momentum: f64,
        /// Added to the variance.
        epsilon: f64,
    },
    /// max(0, x).
    Relu,
    /// x if x > 0 else alpha * (exp(x) - 1).
    Elu {
        /// Saturation value for negative inputs.
        alpha: f64,
    },
    /// Max pooling.
    MaxPool {
        /// (kh, kw).
        size: (usize, usize),
        /// (sh, sw).
        stride: (usize, usize),
        /// Padding (`same` pads with -inf).
        padding: Padding,
    },
    /// Average pooling (`same` averages over the valid part of each window).
    AvgPool {
        /// (kh, kw).
        size: (usize, usize),
        /// (sh, sw).
        stride: (usize, usize),
        /// Padding.
        padding: Padding,
    },
    /// Mean over H and W: (H, W, C) -> (C).
    GlobalAvgPool,
    /// Dropout (training only).
    Dropout {
        /// Fraction dropped.
        rate: f64,
    },
    /// (H, W, C) -> (H*W*C).
    Flatten,
    /// Fully connected.
    Dense {
        /// Output units.
        units: usize,
        /// Learn a bias.
        bias: bool,
        /// L2 penalty on the weights.
        l2: f64,
    },
    /// Channel concatenation (last axis).
    Concat,
    /// Element-wise sum.
    Add,
    /// Softmax over the last axis.
    Softmax,
}

/// A window op's ((kh, kw), (sh, sw), padding).
pub type WindowSpec = ((usize, usize), (usize, usize), Padding);

impl Op {
    /// Window (kernel, stride, padding) of a convolution or pooling op.
    pub fn window(&self) -> Option<WindowSpec> {
        match *self {
            Op::Conv2d {
                kernel,
                stride,
                padding,
                ..
            } => Some((kernel, stride, padding)),
            Op::MaxPool {
                size,
                stride,
                padding,
            }
            | Op::AvgPool {
                size,
                stride,
                padding,
            } => Some((size, stride, padding)),
            _ => None,
        }
    }

    /// The op's manifest name.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Conv2d { .. } => "conv2d",
            Op::BatchNorm { .. } => "batchnorm",
            Op::Relu => "relu",
            Op::Elu { .. } => "elu",
            Op::MaxPool { .. } => "maxpool",
            Op::AvgPool { .. } => "avgpool",
            Op::GlobalAvgPool => "global_avgpool",
            Op::Dropout { .. } => "dropout",
            Op::Flatten => "flatten",
            Op::Dense { .. } => "dense",
            Op::Concat => "concat",
            Op::Add => "add",
            Op::Softmax => "softmax",
        }
    }
}

/// The shape of one example (no batch axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Shape {
    /// (H, W, C).
    Image(usize, usize, usize),
    /// (N).
    Flat(usize),
}

impl Shape {
    /// Number of values.
    pub fn numel(&self) -> usize {
        match *self {
            Shape::Image(h, w, c) => h * w * c,
            Shape::Flat(n) => n,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Image(h, w, c) => write!(f, "{h}x{w}x{c}"),
            Shape::Flat(n) => write!(f, "{n}"),
        }
    }
}

/// One node of the expanded graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Full name (`3a/branch2/conv`).
    pub name: String,
    /// The operation.
    pub op: Op,
    /// Indices of the nodes it reads (earlier in the list).
    pub inputs: Vec<usize>,
}

/// A network: nodes in topological order; node 0 is the input, the last is the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// The nodes.
    pub nodes: Vec<Node>,
}

/// Per-node facts from shape inference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeInfo {
    /// Output shape.
    pub shape: Shape,
    /// Trainable parameters.
    pub trainable: usize,
    /// Non-trainable parameters (batch-norm running statistics).
    pub non_trainable: usize,
    /// Multiply-accumulates per example.
    pub macs: usize,
}

/// A shape error, naming the node.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeError {
    /// The node at fault.
    pub node: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.node, self.message)
    }
}

impl std::error::Error for ShapeError {}

/// Output length of a window op along one axis.
pub fn out_len(input: usize, k: usize, s: usize, p: Padding) -> Option<usize> {
    match p {
        Padding::Same => Some(input.div_ceil(s)),
        Padding::Valid => (input >= k).then(|| (input - k) / s + 1),
        Padding::Explicit(pad) => {
            let padded = pad.checked_mul(2)?.checked_add(input)?;
            (padded >= k).then(|| (padded - k) / s + 1)
        }
    }
}

/// Padding before (top/left) along one axis, Keras/TensorFlow convention.
pub fn pad_before(input: usize, k: usize, s: usize, p: Padding) -> usize {
    match p {
        Padding::Same => {
            let out = input.div_ceil(s);
            ((out - 1) * s + k).saturating_sub(input) / 2
        }
        Padding::Valid => 0,
        Padding::Explicit(pad) => pad,
    }
}

/// The most values, parameters or multiply-adds one layer may have (2^48): far above any
/// network that trains, and far enough below `usize::MAX` that a batch of such values and
/// the totals over every layer are still counted without overflow.
pub const MAX_COUNT: usize = 1 << 48;

/// The product of `xs`, if it is at most [`MAX_COUNT`] (`None`: too large to count).
pub fn product(xs: &[usize]) -> Option<usize> {
    xs.iter()
        .try_fold(1usize, |a, &x| a.checked_mul(x))
        .filter(|&p| p <= MAX_COUNT)
}

impl Graph {
    /// Infer every node's shape, parameters and MACs; the first inconsistency is an error
    /// naming the node and the shapes involved, and so is a layer whose values,
    /// parameters or multiply-adds pass [`MAX_COUNT`] (checked as they are counted, so
    /// nothing overflows).
    pub fn infer(&self) -> Result<Vec<NodeInfo>, ShapeError> {
        let mut infos: Vec<NodeInfo> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let err = |m: String| ShapeError {
                node: node.name.clone(),
                message: m,
            };
            let ins: Vec<Shape> = node.inputs.iter().map(|&i| infos[i].shape).collect();
            let one = || -> Result<Shape, ShapeError> {
                match ins.as_slice() {
                    [s] => Ok(*s),
                    _ => Err(err(format!(
                        "{} takes one input, got {}",
                        node.op.name(),
                        ins.len()
                    ))),
                }
            };
            let count = |xs: &[usize], what: &str| -> Result<usize, ShapeError> {
                product(xs).ok_or_else(|| {
                    err(format!(
                        "{} has too many {what} ({} multiplied: more than 2^48); no network this large can be trained",
                        node.op.name(),
                        xs.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" x ")
                    ))
                })
            };
            let image = |s: Shape| -> Result<(usize, usize, usize), ShapeError> {
                match s {
                    Shape::Image(h, w, c) => Ok((h, w, c)),
                    Shape::Flat(n) => Err(err(format!(
                        "{} needs an image (HxWxC) input, got a flat vector of {n} (flatten comes after it)",
                        node.op.name()
                    ))),
                }
            };
            let mut info = NodeInfo {
                shape: Shape::Flat(0),
                trainable: 0,
                non_trainable: 0,
                macs: 0,
            };
            match &node.op {
                Op::Input { h, w, c } => {
                    count(&[*h, *w, *c], "input values")?;
                    info.shape = Shape::Image(*h, *w, *c)
                }
                Op::Conv2d {
                    filters,
                    kernel,
                    stride,
                    padding,
                    bias,
                    ..
                } => {
                    let (h, w, c) = image(one()?)?;
                    let oh = out_len(h, kernel.0, stride.0, *padding);
                    let ow = out_len(w, kernel.1, stride.1, *padding);
                    let (Some(oh), Some(ow)) = (oh, ow) else {
                        return Err(err(format!(
                            "kernel {}x{} does not fit input {h}x{w} with padding {:?}",
                            kernel.0, kernel.1, padding
                        )));
                    };
                    count(&[oh, ow, *filters], "output values")?;
                    info.shape = Shape::Image(oh, ow, *filters);
                    info.trainable = count(&[kernel.0, kernel.1, c, *filters], "parameters")?
                        + if *bias { *filters } else { 0 };
                    info.macs = count(&[oh, ow, *filters, kernel.0, kernel.1, c], "multiply-adds")?;
                }
                Op::BatchNorm { .. } => {
                    let s = one()?;
                    let c = match s {
                        Shape::Image(_, _, c) => c,
                        Shape::Flat(n) => n,
                    };
                    info.shape = s;
                    info.trainable = 2 * c;
                    info.non_trainable = 2 * c;
                }
                Op::Relu | Op::Elu { .. } | Op::Dropout { .. } | Op::Softmax => {
                    info.shape = one()?;
                }
                Op::MaxPool {
                    size,
                    stride,
                    padding,
                }
                | Op::AvgPool {
                    size,
                    stride,
                    padding,
                } => {
                    let (h, w, c) = image(one()?)?;
                    let oh = out_len(h, size.0, stride.0, *padding);
                    let ow = out_len(w, size.1, stride.1, *padding);
                    let (Some(oh), Some(ow)) = (oh, ow) else {
                        return Err(err(format!(
                            "window {}x{} does not fit input {h}x{w} with padding {:?}",
                            size.0, size.1, padding
                        )));
                    };
                    count(&[oh, ow, c], "output values")?;
                    info.shape = Shape::Image(oh, ow, c);
                }
                Op::GlobalAvgPool => {
                    let (_, _, c) = image(one()?)?;
                    info.shape = Shape::Flat(c);
                }
                Op::Flatten => info.shape = Shape::Flat(one()?.numel()),
                Op::Dense { units, .. } if product(&[*units]).is_none() => {
                    return Err(err(format!("dense of {units} units: more than 2^48")));
                }
                Op::Dense { units, bias, .. } => {
                    let n = match one()? {
                        Shape::Flat(n) => n,
                        s @ Shape::Image(..) => {
                            return Err(err(format!(
                                "dense needs a flat input, got {s} (add a flatten or global_avgpool before it)"
                            )))
                        }
                    };
                    info.shape = Shape::Flat(*units);
                    info.trainable =
                        count(&[n, *units], "parameters")? + if *bias { *units } else { 0 };
                    info.macs = count(&[n, *units], "multiply-adds")?;
                }
                Op::Concat | Op::Add => {
                    if ins.len() < 2 {
                        return Err(err(format!(
                            "{} needs at least two inputs, got {}",
                            node.op.name(),
                            ins.len()
                        )));
                    }
                    let describe = |s: &Shape| match s {
                        Shape::Image(h, w, c) => format!("{h}x{w} ({c} channels)"),
                        Shape::Flat(n) => format!("flat {n}"),
                    };
                    if matches!(node.op, Op::Concat) {
                        let mut total = 0;
                        for s in &ins {
                            match (s, &ins[0]) {
                                (Shape::Image(h, w, c), Shape::Image(h0, w0, _))
                                    if h == h0 && w == w0 =>
                                {
                                    total = count(&[1, total + c], "channels")?
                                }
                                (Shape::Flat(n), Shape::Flat(_)) => {
                                    total = count(&[1, total + n], "values")?
                                }
                                _ => {
                                    return Err(err(format!(
                                        "concat inputs {} and {} differ in more than channels",
                                        describe(&ins[0]),
                                        describe(s)
                                    )))
                                }
                            }
                        }
                        info.shape = match ins[0] {
                            Shape::Image(h, w, _) => {
                                count(&[h, w, total], "output values")?;
                                Shape::Image(h, w, total)
                            }
                            Shape::Flat(_) => Shape::Flat(total),
                        };
                    } else {
                        if let Some(s) = ins.iter().find(|s| **s != ins[0]) {
                            return Err(err(format!(
                                "add inputs {} and {} differ",
                                describe(&ins[0]),
                                describe(s)
                            )));
                        }
                        info.shape = ins[0];
                    }
                }
            }
            infos.push(info);
        }
        Ok(infos)
    }

    /// The structure alone (ops and wiring, no names): what a train stage's key covers, so
    /// renaming a block or a node changes nothing while changing one filter count does.
    pub fn structure_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.nodes
                .iter()
                .map(|n| serde_json::json!({"op": n.op, "inputs": n.inputs}))
                .collect(),
        )
    }
}

/// Totals over a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Totals {
    /// Trainable parameters.
    pub trainable: usize,
    /// Non-trainable parameters.
    pub non_trainable: usize,
    /// Multiply-accumulates per example.
    pub macs: usize,
}

/// Sum of a graph's per-node facts.
pub fn totals(infos: &[NodeInfo]) -> Totals {
    // Each layer's counts are at most 2^48 (`Graph::infer`): saturating sums never wrap.
    infos.iter().fold(Totals::default(), |t, i| Totals {
        trainable: t.trainable.saturating_add(i.trainable),
        non_trainable: t.non_trainable.saturating_add(i.non_trainable),
        macs: t.macs.saturating_add(i.macs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(ops: Vec<(Op, Vec<usize>)>) -> Graph {
        Graph {
            nodes: ops
                .into_iter()
                .enumerate()
                .map(|(i, (op, inputs))| Node {
                    name: format!("n{i}"),
                    op,
                    inputs,
                })
                .collect(),
        }
    }

    fn input(h: usize, w: usize, c: usize) -> (Op, Vec<usize>) {
        (Op::Input { h, w, c }, vec![])
    }

    #[test]
    fn explicit_padding_that_would_overflow_is_refused_not_wrapped() {
        assert_eq!(
            out_len(16, 3, 1, Padding::Explicit(usize::MAX / 2 + 1)),
            None
        );
        assert_eq!(out_len(16, 3, 1, Padding::Explicit(1)), Some(16));
        let conv = |pad| Op::Conv2d {
            filters: 4,
            kernel: (3, 3),
            stride: (1, 1),
            padding: Padding::Explicit(pad),
            bias: true,
            l2: 0.0,
        };
        let e = graph(vec![input(16, 16, 3), (conv(usize::MAX / 2 + 1), vec![0])])
            .infer()
            .unwrap_err();
        assert!(e.to_string().contains("does not fit input 16x16"), "{e}");
        let e = graph(vec![input(16, 16, 3), (conv(1 << 40), vec![0])])
            .infer()
            .unwrap_err();
        assert!(e.to_string().contains("2^48"), "{e}");
        assert!(graph(vec![input(16, 16, 3), (conv(2), vec![0])])
            .infer()
            .is_ok());
    }

    #[test]
    fn a_pool_whose_output_is_too_large_is_refused() {
        let pool = |size, pad| Op::MaxPool {
            size: (size, size),
            stride: (1, 1),
            padding: Padding::Explicit(pad),
        };
        let ok = graph(vec![input(16, 16, 3), (pool(3, 1), vec![0])])
            .infer()
            .unwrap();
        assert_eq!(ok[1].shape, Shape::Image(16, 16, 3));
        // A window that fits, on an input whose output passes 2^48 values.
        let e = graph(vec![input(1 << 23, 1 << 23, 4), (pool(2, 1), vec![0])])
            .infer()
            .unwrap_err();
        assert!(e.to_string().contains("2^48"), "{e}");
    }

    #[test]
    fn a_concat_whose_values_pass_the_limit_is_refused() {
        // Each input is within the limit; the concat's h x w x channels is not.
        let mut ops = vec![input(1 << 16, 1 << 16, 1 << 15)];
        ops.push((Op::Concat, vec![0, 0, 0]));
        let e = graph(ops).infer().unwrap_err();
        assert!(e.to_string().contains("2^48"), "{e}");
    }
}

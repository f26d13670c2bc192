//! ONNX export: a trained network as an ONNX model (opset 17, IR version 8) that ONNX
//! Runtime, TensorRT, OpenVINO or a browser can run.
//!
//! The model takes what a camera or decoder gives: `input`, float32 `[N, H, W, 3]`, RGB
//! values in 0..255 (the image already resized to H x W, as `pipe predict` resizes it),
//! and gives `probabilities`, float32 `[N, classes]`. The training mean is subtracted
//! inside the model; the layers run in ONNX's NCHW order (one transpose after the input,
//! and one before a `flatten`, which flattens in our H, W, C order). Windows get explicit
//! `pads` (our `same` puts the extra row and column after, as TensorFlow does); pooling
//! counts padded cells as our kernels do (max ignores them, average leaves them out of
//! the count); batch norm runs in inference form; dropout is left out. The class names,
//! the mean, the input size and the source pipeline, stage and key are in
//! `metadata_props`.
//!
//! The messages are the few of `onnx.proto` needed, as prost structs; the field numbers
//! are `onnx.proto`'s.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use prost::Message;

use crate::backend::{NamedTensor, State};
use crate::manifest::Tta;
use crate::nn::graph::{pad_before, Graph, NodeInfo, Op, Padding, Shape};

/// The opset the export targets.
pub const OPSET: i64 = 17;
/// The IR version that goes with it.
pub const IR_VERSION: i64 = 8;

/// The ONNX messages used (field numbers from `onnx.proto`).
pub mod proto {
    /// `ModelProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        /// The IR version.
        #[prost(int64, optional, tag = "1")]
        pub ir_version: Option<i64>,
        /// The tool that wrote it.
        #[prost(string, optional, tag = "2")]
        pub producer_name: Option<String>,
        /// Its version.
        #[prost(string, optional, tag = "3")]
        pub producer_version: Option<String>,
        /// Free text.
        #[prost(string, optional, tag = "6")]
        pub doc_string: Option<String>,
        /// The graph.
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
        /// Operator sets.
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
        /// Named metadata.
        #[prost(message, repeated, tag = "14")]
        pub metadata_props: Vec<StringStringEntryProto>,
    }

    /// `GraphProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        /// Nodes, in topological order.
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        /// Name.
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
        /// Constant tensors.
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
        /// Inputs.
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfoProto>,
        /// Outputs.
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfoProto>,
    }

    /// `NodeProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        /// Input value names.
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        /// Output value names.
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        /// Node name.
        #[prost(string, optional, tag = "3")]
        pub name: Option<String>,
        /// Operator.
        #[prost(string, optional, tag = "4")]
        pub op_type: Option<String>,
        /// Attributes.
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<AttributeProto>,
    }

    /// `AttributeProto` (float, int, ints).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeProto {
        /// Name.
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        /// A float.
        #[prost(float, optional, tag = "2")]
        pub f: Option<f32>,
        /// An integer.
        #[prost(int64, optional, tag = "3")]
        pub i: Option<i64>,
        /// Integers.
        #[prost(int64, repeated, packed = "false", tag = "8")]
        pub ints: Vec<i64>,
        /// Which of the above (`AttributeType`: FLOAT 1, INT 2, INTS 7).
        #[prost(int32, optional, tag = "20")]
        pub r#type: Option<i32>,
    }

    /// `TensorProto` (float32, as raw little-endian bytes).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        /// Shape.
        #[prost(int64, repeated, packed = "false", tag = "1")]
        pub dims: Vec<i64>,
        /// Element type (FLOAT 1).
        #[prost(int32, optional, tag = "2")]
        pub data_type: Option<i32>,
        /// Name.
        #[prost(string, optional, tag = "8")]
        pub name: Option<String>,
        /// Values, little-endian.
        #[prost(bytes = "vec", optional, tag = "9")]
        pub raw_data: Option<Vec<u8>>,
    }

    /// `ValueInfoProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfoProto {
        /// Name.
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        /// Type.
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<TypeProto>,
    }

    /// `TypeProto` (its `oneof` holding a tensor type).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeProto {
        /// The tensor type.
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TensorType>,
    }

    /// `TypeProto.Tensor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorType {
        /// Element type.
        #[prost(int32, optional, tag = "1")]
        pub elem_type: Option<i32>,
        /// Shape.
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    /// `TensorShapeProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        /// Dimensions.
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dimension>,
    }

    /// `TensorShapeProto.Dimension` (one of its `oneof` set).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        /// A size.
        #[prost(int64, optional, tag = "1")]
        pub dim_value: Option<i64>,
        /// A named, free size.
        #[prost(string, optional, tag = "2")]
        pub dim_param: Option<String>,
    }

    /// `OperatorSetIdProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        /// Domain (empty: the ONNX operators).
        #[prost(string, optional, tag = "1")]
        pub domain: Option<String>,
        /// Version.
        #[prost(int64, optional, tag = "2")]
        pub version: Option<i64>,
    }

    /// `StringStringEntryProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StringStringEntryProto {
        /// Key.
        #[prost(string, optional, tag = "1")]
        pub key: Option<String>,
        /// Value.
        #[prost(string, optional, tag = "2")]
        pub value: Option<String>,
    }
}

use proto::*;

/// `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;
const INT64: i32 = 7;

/// What the exported file says of where it comes from.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// The pipeline.
    pub pipeline: String,
    /// The training stage.
    pub stage: String,
    /// Its key.
    pub key: String,
    /// The content hash of the model artifact (its folder in the store).
    pub model: String,
    /// Class ids, by label.
    pub class_ids: Vec<String>,
    /// Readable class names, by label.
    pub class_names: Vec<String>,
    /// How the images the model was trained on were resized (`bilinear`, ...): what a
    /// caller's preprocessing must do to feed it the same pixels.
    pub resize_filter: String,
    /// Test-time augmentation built into the graph (`flip`: the mean of the class
    /// probabilities of each image and its mirror).
    pub tta: Tta,
}

fn attr_ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.iter().map(|&x| x as i64).collect(),
        r#type: Some(7),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(2),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(1),
        ..Default::default()
    }
}

fn int64_tensor(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![data.len() as i64],
        data_type: Some(INT64),
        name: Some(name.into()),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
    }
}

fn float_tensor(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(FLOAT),
        name: Some(name.into()),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
    }
}

fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorType {
                elem_type: Some(FLOAT),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Some(v) => Dimension {
                                dim_value: Some(*v as i64),
                                dim_param: None,
                            },
                            None => Dimension {
                                dim_value: None,
                                dim_param: Some("batch".into()),
                            },
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

/// Builds the graph: nodes, constants, fresh value names.
struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    n: usize,
}

impl Builder {
    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.n += 1;
        let out = format!("t{}_{}", self.n, op.to_lowercase());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: Some(format!("n{}_{op}", self.n)),
            op_type: Some(op.into()),
            attribute: attrs,
        });
        out
    }

    fn constant(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.inits.push(float_tensor(name, dims, data));
        name.to_string()
    }

    fn constant_i64(&mut self, name: &str, data: &[i64]) -> String {
        self.inits.push(int64_tensor(name, data));
        name.to_string()
    }
}

fn tensor<'a>(state: &'a State, name: &str) -> Result<&'a NamedTensor> {
    state
        .tensors
        .get(name)
        .with_context(|| format!("the model has no tensor `{name}`"))
}

/// `[top, left, bottom, right]` pads of a window op on an `(h, w)` input giving `(oh, ow)`.
fn pads(
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    (kh, kw): (usize, usize),
    (sh, sw): (usize, usize),
    p: Padding,
) -> [usize; 4] {
    match p {
        Padding::Valid => [0; 4],
        Padding::Explicit(x) => [x; 4],
        Padding::Same => {
            let total_h = ((oh - 1) * sh + kh).saturating_sub(h);
            let total_w = ((ow - 1) * sw + kw).saturating_sub(w);
            let (t, l) = (pad_before(h, kh, sh, p), pad_before(w, kw, sw, p));
            [t, l, total_h - t, total_w - l]
        }
    }
}

/// The ONNX model (serialized) of a trained network: `graph` with the weights of `state`
/// and the training `mean` (3 values, or the H x W x 3 mean image).
pub fn export(
    graph: &Graph,
    state: &State,
    mean: &NamedTensor,
    from: &Provenance,
) -> Result<Vec<u8>> {
    let infos: Vec<NodeInfo> = graph.infer().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (h, w) = match graph.nodes.first().map(|n| &n.op) {
        Some(Op::Input { h, w, c: 3 }) => (*h, *w),
        other => bail!("the network's input is not an RGB image ({other:?})"),
    };
    let mut b = Builder {
        nodes: Vec::new(),
        inits: Vec::new(),
        n: 0,
    };
    // The training mean, then NHWC -> NCHW.
    let mean_dims: Vec<usize> = if mean.data.len() == 3 {
        vec![3]
    } else if mean.data.len() == h * w * 3 {
        vec![h, w, 3]
    } else {
        bail!(
            "the mean has {} values: neither RGB (3) nor an {h}x{w} image",
            mean.data.len()
        )
    };
    let m = b.constant("input_mean", &mean_dims, &mean.data);
    // Flip TTA: the batch and its mirror (reversed along W) as one batch of 2N, whose two
    // halves' probabilities are averaged at the end.
    let input = match from.tta {
        Tta::None => "input".to_string(),
        Tta::Flip => {
            let starts = b.constant_i64("tta_starts", &[-1]);
            let ends = b.constant_i64("tta_ends", &[i64::MIN]);
            let axes = b.constant_i64("tta_axes", &[2]);
            let steps = b.constant_i64("tta_steps", &[-1]);
            let mirrored = b.node("Slice", &["input", &starts, &ends, &axes, &steps], vec![]);
            b.node("Concat", &["input", &mirrored], vec![attr_int("axis", 0)])
        }
    };
    let centred = b.node("Sub", &[&input, &m], vec![]);
    let nchw = b.node(
        "Transpose",
        &[&centred],
        vec![attr_ints("perm", &[0, 3, 1, 2])],
    );
    let mut value: Vec<String> = Vec::with_capacity(graph.nodes.len());
    value.push(nchw);
    for (i, nd) in graph.nodes.iter().enumerate().skip(1) {
        let ins: Vec<&str> = nd.inputs.iter().map(|&j| value[j].as_str()).collect();
        let in_shape = infos[nd.inputs[0]].shape;
        let hw = |s: Shape| match s {
            Shape::Image(h, w, _) => Ok((h, w)),
            Shape::Flat(_) => bail!("node `{}` expects an image", nd.name),
        };
        let v = match &nd.op {
            Op::Input { .. } => bail!("node `{}`: a second input", nd.name),
            Op::Conv2d {
                filters,
                kernel,
                stride,
                padding,
                bias,
                ..
            } => {
                let k = tensor(state, &format!("{}/kernel", nd.name))?;
                let [kh, kw, cin, cout] = k.shape[..] else {
                    bail!("`{}/kernel` is not (kh, kw, cin, cout)", nd.name);
                };
                if cout != *filters {
                    bail!(
                        "`{}/kernel` has {cout} filters, the node {filters}",
                        nd.name
                    );
                }
                // (kh, kw, cin, cout) -> (cout, cin, kh, kw).
                let mut oihw = vec![0f32; k.data.len()];
                for y in 0..kh {
                    for x in 0..kw {
                        for c in 0..cin {
                            for o in 0..cout {
                                oihw[((o * cin + c) * kh + y) * kw + x] =
                                    k.data[((y * kw + x) * cin + c) * cout + o];
                            }
                        }
                    }
                }
                let wname = b.constant(&format!("{}/kernel", nd.name), &[cout, cin, kh, kw], &oihw);
                let mut inputs = vec![ins[0], wname.as_str()];
                let bname;
                if *bias {
                    let t = tensor(state, &format!("{}/bias", nd.name))?;
                    bname = b.constant(&format!("{}/bias", nd.name), &[cout], &t.data);
                    inputs.push(&bname);
                }
                let p = pads(
                    hw(in_shape)?,
                    hw(infos[i].shape)?,
                    *kernel,
                    *stride,
                    *padding,
                );
                b.node(
                    "Conv",
                    &inputs,
                    vec![
                        attr_ints("kernel_shape", &[kernel.0, kernel.1]),
                        attr_ints("strides", &[stride.0, stride.1]),
                        attr_ints("pads", &p),
                        attr_ints("dilations", &[1, 1]),
                        attr_int("group", 1),
                    ],
                )
            }
            Op::BatchNorm { epsilon, .. } => {
                let names = ["gamma", "beta", "moving_mean", "moving_variance"];
                let mut inputs = vec![ins[0].to_string()];
                for n in names {
                    let t = tensor(state, &format!("{}/{n}", nd.name))?;
                    inputs.push(b.constant(&format!("{}/{n}", nd.name), &[t.data.len()], &t.data));
                }
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                b.node(
                    "BatchNormalization",
                    &refs,
                    vec![attr_float("epsilon", *epsilon as f32)],
                )
            }
            Op::Relu => b.node("Relu", &ins, vec![]),
            Op::Elu { alpha } => b.node("Elu", &ins, vec![attr_float("alpha", *alpha as f32)]),
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
                let p = pads(hw(in_shape)?, hw(infos[i].shape)?, *size, *stride, *padding);
                let mut attrs = vec![
                    attr_ints("kernel_shape", &[size.0, size.1]),
                    attr_ints("strides", &[stride.0, stride.1]),
                    attr_ints("pads", &p),
                ];
                if matches!(nd.op, Op::MaxPool { .. }) {
                    b.node("MaxPool", &ins, attrs)
                } else {
                    // Our average leaves padded cells out of the count.
                    attrs.push(attr_int("count_include_pad", 0));
                    b.node("AveragePool", &ins, attrs)
                }
            }
            Op::GlobalAvgPool => {
                let g = b.node("GlobalAveragePool", &ins, vec![]);
                b.node("Flatten", &[&g], vec![attr_int("axis", 1)])
            }
            Op::Dropout { .. } => ins[0].to_string(),
            Op::Flatten => match in_shape {
                // Our flatten reads H, W, C: back to NHWC first.
                Shape::Image(..) => {
                    let t = b.node("Transpose", &ins, vec![attr_ints("perm", &[0, 2, 3, 1])]);
                    b.node("Flatten", &[&t], vec![attr_int("axis", 1)])
                }
                Shape::Flat(_) => ins[0].to_string(),
            },
            Op::Dense { units, bias, .. } => {
                let k = tensor(state, &format!("{}/kernel", nd.name))?;
                let [fan_in, out] = k.shape[..] else {
                    bail!("`{}/kernel` is not (in, out)", nd.name);
                };
                if out != *units {
                    bail!("`{}/kernel` has {out} units, the node {units}", nd.name);
                }
                let wname = b.constant(&format!("{}/kernel", nd.name), &[fan_in, out], &k.data);
                let mut inputs = vec![ins[0], wname.as_str()];
                let bname;
                if *bias {
                    let t = tensor(state, &format!("{}/bias", nd.name))?;
                    bname = b.constant(&format!("{}/bias", nd.name), &[out], &t.data);
                    inputs.push(&bname);
                }
                b.node("Gemm", &inputs, vec![attr_int("transB", 0)])
            }
            Op::Concat => b.node("Concat", &ins, vec![attr_int("axis", 1)]),
            Op::Add => b.node("Sum", &ins, vec![]),
            Op::Softmax => {
                if !matches!(in_shape, Shape::Flat(_)) {
                    bail!("node `{}`: softmax over an image is not exported", nd.name);
                }
                b.node("Softmax", &ins, vec![attr_int("axis", -1)])
            }
        };
        value.push(v);
    }
    let last = value.last().cloned().unwrap_or_default();
    let classes = match infos.last().map(|i| i.shape) {
        Some(Shape::Flat(k)) => k,
        other => bail!("the network's output is not a vector of classes ({other:?})"),
    };
    let ends_in_softmax = matches!(graph.nodes.last().map(|n| &n.op), Some(Op::Softmax));
    let probs = if ends_in_softmax {
        last
    } else {
        b.node("Softmax", &[&last], vec![attr_int("axis", -1)])
    };
    let probs = match from.tta {
        Tta::None => probs,
        Tta::Flip => {
            let shape = b.constant_i64("tta_shape", &[2, -1, classes as i64]);
            let halves = b.node("Reshape", &[&probs, &shape], vec![]);
            b.node(
                "ReduceMean",
                &[&halves],
                vec![attr_ints("axes", &[0]), attr_int("keepdims", 0)],
            )
        }
    };
    b.nodes.push(NodeProto {
        input: vec![probs],
        output: vec!["probabilities".into()],
        name: Some("output".into()),
        op_type: Some("Identity".into()),
        attribute: vec![],
    });
    let meta = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    let model = ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: Some("pipe".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!(
            "input float32 [N, {h}, {w}, 3], RGB 0..255 resized to {w}x{h}; output class probabilities [N, {classes}]"
        )),
        graph: Some(GraphProto {
            node: b.nodes,
            name: Some(if from.pipeline.is_empty() {
                "pipe".into()
            } else {
                from.pipeline.clone()
            }),
            initializer: b.inits,
            input: vec![value_info("input", &[None, Some(h), Some(w), Some(3)])],
            output: vec![value_info("probabilities", &[None, Some(classes)])],
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        metadata_props: [
            ("pipe.pipeline", from.pipeline.clone()),
            ("pipe.stage", from.stage.clone()),
            ("pipe.key", from.key.clone()),
            ("pipe.model", from.model.clone()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| meta(k, v))
        .chain((from.tta != Tta::None).then(|| meta("pipe.tta", from.tta.to_string())))
        .chain([
            meta("pipe.classes", serde_json::to_string(&from.class_names)?),
            meta("pipe.class_ids", serde_json::to_string(&from.class_ids)?),
            meta(
                "pipe.mean",
                serde_json::to_string(&serde_json::json!({"shape": mean_dims, "values": mean.data}))?,
            ),
            meta("pipe.input_size", format!("{w}x{h}")),
            meta("pipe.resize_filter", from.resize_filter.clone()),
            meta(
                "pipe.input",
                "float32 [N, H, W, 3], RGB values 0..255, the image resized to the input size; the mean is subtracted inside the model".into(),
            ),
        ])
        .collect(),
    };
    Ok(model.encode_to_vec())
}

/// Parse an exported file back (for checks and tests).
pub fn read(bytes: &[u8]) -> Result<ModelProto> {
    ModelProto::decode(bytes).context("not an ONNX model")
}

/// The metadata of a model, as a map.
pub fn metadata(m: &ModelProto) -> HashMap<String, String> {
    m.metadata_props
        .iter()
        .map(|p| {
            (
                p.key.clone().unwrap_or_default(),
                p.value.clone().unwrap_or_default(),
            )
        })
        .collect()
}

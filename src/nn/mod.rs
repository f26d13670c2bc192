//! Networks as data: a manifest's networks expanded into graphs (`expand`), each node's
//! shape, parameters and MACs (`graph`), and a Keras-like summary. Nothing here knows a
//! training backend, a stage or the store; it reads only the manifest's network specs.

pub mod expand;
pub mod graph;

pub use expand::{check, expand, train_graph};

use graph::{totals, Graph, NodeInfo};

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn si(n: usize) -> String {
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}K", x / 1e3)
    } else {
        n.to_string()
    }
}

/// A `model.summary()`-style table: node, op, output shape, parameters, MACs, totals.
pub fn summary(name: &str, g: &Graph, infos: &[NodeInfo]) -> String {
    let width = g
        .nodes
        .iter()
        .map(|n| n.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut s = String::new();
    s.push_str(&format!("network {name}\n"));
    s.push_str(&format!(
        "{:<width$}  {:<14} {:>12} {:>11} {:>9}  inputs\n",
        "layer", "op", "output", "params", "MACs"
    ));
    s.push_str(&format!("{}\n", "-".repeat(width + 60)));
    for (n, i) in g.nodes.iter().zip(infos) {
        let inputs: Vec<&str> = n.inputs.iter().map(|&j| g.nodes[j].name.as_str()).collect();
        let inputs = if n.inputs.len() > 1 {
            inputs.join(", ")
        } else {
            String::new()
        };
        s.push_str(&format!(
            "{:<width$}  {:<14} {:>12} {:>11} {:>9}  {}\n",
            n.name,
            n.op.name(),
            i.shape.to_string(),
            thousands(i.trainable + i.non_trainable),
            si(i.macs),
            inputs
        ));
    }
    let t = totals(infos);
    s.push_str(&format!("{}\n", "-".repeat(width + 60)));
    s.push_str(&format!(
        "total params: {} (trainable {}, non-trainable {})\n",
        thousands(t.trainable + t.non_trainable),
        thousands(t.trainable),
        thousands(t.non_trainable)
    ));
    s.push_str(&format!(
        "MACs per image: {} ({} layers)\n",
        si(t.macs),
        g.nodes.len() - 1
    ));
    s
}

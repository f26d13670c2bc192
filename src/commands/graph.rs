//! `pipe graph`: each network's layers, shapes, parameters and MACs.

use anyhow::Result;

use super::{load, Global};

/// `pipe graph`: a summary of each network of a pipeline (or the one named).
pub fn graph(
    g: &Global,
    pipeline: &str,
    sets: &[String],
    network: Option<&str>,
    json: bool,
) -> Result<()> {
    let (_, p) = load(g, pipeline, sets)?;
    let names: Vec<String> = match network {
        Some(n) => vec![n.to_string()],
        None => p.library.networks.keys().cloned().collect(),
    };
    if names.is_empty() {
        anyhow::bail!(
            "pipeline `{}` declares no network ([networks.<name>])",
            p.name
        );
    }
    // Which stages train each network, and with what: train stages name their network;
    // lr-drop and resume stages continue their `from`'s.
    let mut trains: Vec<(String, String, String)> = Vec::new(); // (stage, network, "backend, device")
    for (sname, st) in &p.stages {
        let Some((_, _, device, backend)) = st.config.training() else {
            continue;
        };
        let how = format!(
            "{} backend, {}",
            backend.unwrap_or_default(),
            match device {
                Some(crate::manifest::DeviceSetting::Cuda) => "cuda",
                _ => "cpu",
            }
        );
        trains.push((
            sname.clone(),
            p.network_of(sname).unwrap_or_default().to_string(),
            how,
        ));
    }
    let mut out = Vec::new();
    for name in names {
        let x = crate::nn::expand(&p.library, &name, None).map_err(|e| anyhow::anyhow!("{e}"))?;
        let infos = x.graph.infer()?;
        let trained_by: Vec<&(String, String, String)> =
            trains.iter().filter(|t| t.1 == name).collect();
        if json {
            let t = crate::nn::graph::totals(&infos);
            out.push(serde_json::json!({
                "network": name,
                "nodes": x.graph.nodes.iter().zip(&infos).map(|(n, i)| serde_json::json!({
                    "name": n.name, "op": n.op.name(), "shape": i.shape.to_string(),
                    "params": i.trainable + i.non_trainable, "macs": i.macs,
                })).collect::<Vec<_>>(),
                "trainable": t.trainable, "non_trainable": t.non_trainable, "macs": t.macs,
                "trained_by": trained_by.iter().map(|t| serde_json::json!({
                    "stage": t.0, "how": t.2,
                })).collect::<Vec<_>>(),
            }));
        } else {
            println!("{}", crate::nn::summary(&name, &x.graph, &infos));
            for t in &trained_by {
                println!("trained by stage `{}`: {}", t.0, t.2);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

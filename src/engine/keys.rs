//! What a stage's identity is made of. A **key** (what the store caches under) and a
//! **recipe** (what a cluster job is named by, known before any input exists) hash the
//! same [`KeyMaterial`]: the stage's kind, its kind's implementation version, its effective
//! configuration, its dataset fingerprint, and its inputs — their content hashes for a
//! key, their recipes for a recipe.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::ids::{Recipe, StageKey};
use crate::manifest::{Pipeline, StageConfig, StageKind};
use crate::stages;

/// Everything a key or a recipe hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyMaterial {
    /// The stage kind.
    pub kind: StageKind,
    /// Its implementation version ([`stages::version`]).
    pub version: u32,
    /// The effective configuration ([`effective_config`]).
    pub config: serde_json::Value,
    /// The inputs, in the stage's input order: content hashes (keys) or recipes.
    pub inputs: Vec<String>,
    /// The dataset folder's fingerprint, for a stage that reads one.
    pub external: Option<String>,
}

impl KeyMaterial {
    /// The material of stage `name`, given what stands for its inputs.
    pub fn of(
        p: &Pipeline,
        name: &str,
        inputs: Vec<String>,
        external: Option<String>,
    ) -> Result<KeyMaterial> {
        let kind = p.stages[name].config.kind();
        Ok(KeyMaterial {
            kind,
            version: stages::version(kind),
            config: effective_config(p, name)?,
            inputs,
            external,
        })
    }

    /// The key: the BLAKE3 of the material, with the inputs' content hashes.
    pub fn key(&self) -> StageKey {
        StageKey::from(self.hash_with(&self.inputs, self.external.as_deref()))
    }

    /// The recipe: the same material with `inputs` (the inputs' recipes) in place of the
    /// inputs' content hashes, and `external` as the dataset's stand-in.
    pub fn recipe(&self, inputs: &[String], external: Option<&str>) -> Recipe {
        Recipe::from(self.hash_with(inputs, external))
    }

    fn hash_with(&self, inputs: &[String], external: Option<&str>) -> blake3::Hash {
        // A JSON object's keys serialize sorted, so this is the same bytes whatever the
        // order below; it is what every store written so far was keyed by.
        let material = serde_json::json!({
            "kind": self.kind.as_str(),
            "version": self.version,
            "config": self.config,
            "inputs": inputs,
            "external": external,
        });
        blake3::hash(&serde_json::to_vec(&material).expect("JSON values serialize"))
    }
}

/// The key of stage `name` given its inputs' content hashes (in input order) and its
/// dataset fingerprint.
pub fn stage_key(
    p: &Pipeline,
    name: &str,
    input_hashes: &[String],
    external: Option<&str>,
) -> Result<StageKey> {
    Ok(KeyMaterial::of(p, name, input_hashes.to_vec(), external.map(str::to_string))?.key())
}

/// A stage's configuration as its key covers it: defaults filled, and for a train stage
/// the expanded network's structure (ops and wiring, no names) in place of its name, so
/// renaming a block changes nothing while changing one filter count does.
pub fn effective_config(p: &Pipeline, name: &str) -> Result<serde_json::Value> {
    let s = &p.stages[name];
    let mut v = s.config.to_json();
    if let StageConfig::Train(_) = &s.config {
        let g = crate::nn::train_graph(p, name).map_err(|e| anyhow::anyhow!("{e}"))?;
        v["network"] = g.structure_json();
    }
    Ok(v)
}

/// A configuration as flat `key = value` lines (`augment.flip = true`): strings bare, other
/// values as JSON. What `status` explains a changed key with and `diff` compares.
pub fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                flatten(&crate::manifest::value::join_key(prefix, k), x, out);
            }
        }
        serde_json::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

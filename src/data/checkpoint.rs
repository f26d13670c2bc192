//! Model state on disk as safetensors: every tensor of a [`State`] (f32, Keras layouts) and
//! string metadata (epoch, step, history). A PyTorch user can open the files with
//! `safetensors.torch.load_file`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::atomic::write_atomic;
use crate::backend::{NamedTensor, State};

/// Write `state` (only the tensors `keep` accepts) with `metadata`, atomically.
pub fn save(
    path: &Path,
    state: &State,
    metadata: HashMap<String, String>,
    keep: impl Fn(&str) -> bool,
) -> Result<Written> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = state
        .tensors
        .iter()
        .filter(|(k, _)| keep(k))
        .map(|(k, t)| {
            let b: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.clone(), b, t.shape.clone())
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(k, b, s)| Ok((k.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    let mut meta = metadata;
    meta.insert("step".into(), state.step.to_string());
    let out = sorted_header(safetensors::serialize(views, &Some(meta))?)?;
    write_atomic(path, &out)?;
    Ok(Written {
        blake3: blake3::hash(&out).to_hex().to_string(),
        bytes: out.len() as u64,
    })
}

/// What [`save`] wrote: the file's BLAKE3 (hex) and its length.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Written {
    /// BLAKE3 of the whole file, hex.
    pub blake3: String,
    /// Its length in bytes.
    pub bytes: u64,
}

/// The same file with its JSON header's keys sorted. safetensors writes the metadata map in
/// hash order, which changes from process to process; sorted, the same state gives the same
/// bytes, so a re-trained artifact that equals the old one is recognised as such.
fn sorted_header(mut file: Vec<u8>) -> Result<Vec<u8>> {
    let n = u64::from_le_bytes(file[..8].try_into().context("safetensors header length")?) as usize;
    let header: serde_json::Value = serde_json::from_slice(&file[8..8 + n])?;
    let sorted = serde_json::to_vec(&header)?; // serde_json's maps are ordered by key
    if sorted.len() > n {
        bail!(
            "re-serialised safetensors header grew ({} > {n} bytes)",
            sorted.len()
        );
    }
    file[8..8 + sorted.len()].copy_from_slice(&sorted);
    file[8 + sorted.len()..8 + n].fill(b' ');
    Ok(file)
}

/// A checkpoint's metadata alone, from its header (the tensors are not read). A header
/// longer than 64 MiB is refused rather than read.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    super::check_regular(path)?;
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let n = u64::from_le_bytes(len);
    if n > 64 << 20 {
        bail!(
            "{}: a {n}-byte header is not a checkpoint's",
            path.display()
        );
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .with_context(|| format!("{}: the header is cut short", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("{}: the header is not JSON", path.display()))?;
    Ok(v.get("__metadata__")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default())
}

/// Read a state and its metadata.
pub fn load(path: &Path) -> Result<(State, HashMap<String, String>)> {
    let bytes = super::read_regular(path)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    load_bytes(&bytes, path)
}

/// A state and its metadata from a checkpoint's bytes, read from `path` (named in errors).
pub fn load_bytes(bytes: &[u8], path: &Path) -> Result<(State, HashMap<String, String>)> {
    let st = SafeTensors::deserialize(bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(bytes)?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let mut state = State {
        step: metadata
            .get("step")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        ..Default::default()
    };
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!(
                "{}: tensor `{name}` is {:?}, expected F32",
                path.display(),
                view.dtype()
            );
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        state.tensors.insert(
            name,
            NamedTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok((state, metadata))
}

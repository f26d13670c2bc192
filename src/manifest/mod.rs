//! Manifests: the front end. What the user wrote, loaded, merged (`extends`, `include`,
//! `--set`), typed and checked.
//!
//! - `source`: source texts and spans (file, line, column);
//! - `error`: errors that point at the user's text, rustc-style, with did-you-mean;
//! - `value`: the spanned TOML tree and its merge; `de`: serde over that tree;
//! - `config`: each stage kind's typed configuration, defaults filled;
//! - `network`: blocks and networks as written (`nn` expands them into graphs);
//! - `model`: the typed pipeline ([`Pipeline`], [`Stage`], [`StageKind`], [`StageConfig`]);
//! - `load`: reading, merging, overrides; `parse`: one parser per stage kind; `check`:
//!   checks over the whole pipeline; `discover`: finding a manifest by name;
//! - `sweep`: a `[sweep]` table, its points and their ids (each point a [`Pipeline`]).
//!
//! It knows nothing of how stages run or how results are cached, and imports nothing of
//! pipe's above it. Every error names the file, line, column and key path at fault.

pub mod check;
pub mod config;
pub mod de;
pub mod discover;
pub mod error;
pub mod load;
pub mod model;
pub mod network;
pub mod parse;
pub mod source;
pub mod sweep;
pub mod value;

pub use config::*;
pub use discover::{find, list};
pub use error::ManifestError;
pub use load::{load, load_any, Loaded};
pub use model::{ManifestSources, Pipeline, Resources, SourceFile, Stage, StageConfig, StageKind};
pub use parse::{is_slurm_mem, is_slurm_time, MAX_IMAGE_SIDE};
pub use sweep::{Sweep, SweepPoint};

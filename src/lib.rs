//! `pipe`: deep-learning experiments as declarative TOML manifests, run as a cached DAG.
//!
//! Data flows one way: `manifest` (what the user wrote) -> `engine` (what must run, what
//! is cached) -> `stages` (one file per kind) -> artifacts in the store. `data` holds the
//! formats stages read and write; `report` what the user sees; `commands` the CLI verbs.

pub mod atomic;
pub mod backend;
pub mod commands;
pub mod content;
pub mod data;
pub mod engine;
pub mod manifest;
pub mod nn;
pub mod report;
pub mod stages;
pub mod ui;

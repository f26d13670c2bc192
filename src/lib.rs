//! `pipe`: deep-learning experiments as declarative TOML manifests, run as a cached DAG.
//!
//! Data flows one way: `manifest` (what the user wrote) -> `engine` (what must run, what
//! is cached) -> `stages` (one file per kind) -> artifacts in the store. `outcome` holds
//! the engine's words (states, reasons, events, epoch records, sweep decisions); `data`
//! the formats stages read and write; `report` what the user sees, as text and plots;
//! `commands` the CLI verbs; `ids`, `fmt`, `atomic` and `content` are leaves.

pub mod atomic;
pub mod backend;
pub mod commands;
pub mod content;
pub mod data;
pub mod engine;
pub mod fmt;
pub mod ids;
pub mod manifest;
pub mod nn;
pub mod outcome;
pub mod report;
pub mod stages;
pub mod ui;

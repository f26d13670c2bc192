//! `pipe ui`: a read-only dashboard of a project's runs — every pipeline and sweep point
//! of `pipelines/` with what the store holds of it. Served over HTTP on loopback
//! ([`serve`]), or written as static pages ([`export`]).
//!
//! - `snapshot`: the runs and their rows, rebuilt in the background, so the runs page is
//!   served from memory however many runs there are.
//! - `server`: the routes (pages, JSON, server-sent events for live curves, artifact
//!   files), with every request read-only and every path checked.
//! - `pages` (HTML, escaped by maud), `charts` (the charts' data, drawn in the browser by
//!   ECharts) and `svg` (the stage DAG): shared by both.
//! - `export`: the same pages as files.
//! - `conn`: the connections the server holds (a cap, an idle limit).

mod assets;
pub mod charts;
mod conn;
mod export;
pub mod pages;
mod server;
mod snapshot;
pub mod svg;

pub use export::export;

/// Bytes of the embedded chart library (`pipe bench ui` reports it).
pub const ECHARTS_BYTES: usize = assets::ECHARTS.len();
pub use server::{serve, UiOptions};
pub use snapshot::Snapshot;

/// Characters a run's name keeps in a URL path segment (`exp3`, `mini_lr@lr=5e-3`); the
/// rest (`%` of an escaped id, `/`, spaces) are percent-encoded.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'@')
    .remove(b'=')
    .remove(b',')
    .remove(b'+');

/// `s` as one URL path segment.
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

//! What the user sees while and after things run: progress bars, summary lines, the
//! training history and its plot.

pub mod compare;
pub mod history;
pub mod progress;

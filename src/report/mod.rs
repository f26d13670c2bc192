//! What the user sees: the outcome of each stage and the lines a run prints (`outcome`),
//! progress bars, the training history and its plot, `pipe show`'s table and `pipe diff`'s
//! comparison. It turns typed values into text and pictures, and knows nothing of the
//! store's layout: the engine's query layer hands it what to show.

pub mod diff;
pub mod gc;
pub mod history;
pub mod outcome;
pub mod progress;
pub mod run;
pub mod show;
pub mod sweep;

//! What the user sees, as text and pictures: the lines a run prints (`outcome`), the
//! training plot (`history`), `pipe show`'s table, `pipe diff`'s comparison, a sweep's
//! tree, what gc removes. It turns typed values into text and bytes, knows nothing of the
//! store's layout, and prints and writes nothing: the engine's query layer hands it what
//! to show, and the command line prints it.

pub mod diff;
pub mod gc;
pub mod history;
pub mod outcome;
pub mod run;
pub mod runs;
pub mod show;
pub mod sweep;

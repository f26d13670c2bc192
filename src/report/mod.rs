//! What the user sees while and after things run: progress bars and summary lines.
//! (Training history and plots will live here too.)

pub mod progress;

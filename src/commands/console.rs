//! The command line's [`Watcher`]: what a run and its stages say, as lines on stderr, and
//! their progress bars (drawn only where stderr is a terminal). A line printed while a
//! bar is drawn is printed above it.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::outcome::{Event, Watcher};
use crate::report::outcome::{epoch_line, join, run_line};

/// The console. `quiet` keeps the stage lines and notes off (`--json` prints the report
/// instead) but still shows warnings, notices and a training's epochs.
#[derive(Debug, Default)]
pub struct Console {
    /// No per-stage lines or notes.
    pub quiet: bool,
    /// The bar drawn now, if any: lines are printed above it.
    bar: Mutex<Option<ProgressBar>>,
}

impl Console {
    /// A console; `quiet` as `--json` wants it.
    pub fn new(quiet: bool) -> Console {
        Console {
            quiet,
            bar: Mutex::new(None),
        }
    }

    fn line(&self, text: &str) {
        let bar = self.bar.lock().map(|b| b.clone()).unwrap_or(None);
        match bar.filter(|b| !b.is_finished()) {
            Some(b) => b.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }
}

impl Watcher for Console {
    fn event(&self, e: Event<'_>) {
        match e {
            Event::Starting(name, reasons) if !self.quiet => {
                self.line(&format!("{name:<12} running ({})", join(reasons)));
            }
            Event::Settled(o) if !self.quiet => self.line(&run_line(o)),
            Event::Epoch { record, end } => self.line(&epoch_line(record, end)),
            Event::Warning(w) => self.line(&format!("warning: {w}")),
            Event::Note(n) if !self.quiet => self.line(&n),
            Event::Notice(n) => self.line(&n),
            Event::Fault(name) => self.line(&format!("PIPE_FAULT reached: {name}")),
            _ => {}
        }
    }

    fn bar(&self, len: u64, stage: &str, what: &str) -> ProgressBar {
        let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>10.bold} [{bar:32.cyan/blue}] {human_pos}/{human_len} {msg} {per_sec} eta {eta}",
            )
            .expect("valid progress template")
            .progress_chars("=> "),
        );
        pb.set_prefix(stage.to_string());
        pb.set_message(what.to_string());
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(pb.clone());
        }
        pb
    }
}

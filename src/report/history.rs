//! Training history: one record per epoch, across every segment (train, lr drops,
//! resumes) of a run, written as `history.json` and plotted as `history.png`.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// One epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// The stage that trained it.
    pub stage: String,
    /// Learning rate used.
    pub lr: f64,
    /// Mean training loss (cross-entropy).
    pub train_loss: f64,
    /// Training accuracy (on augmented batches).
    pub train_acc: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_acc: f64,
    /// Training images per second. Not written to `history.json` (nor to checkpoints): a
    /// timing is not content, and a byte-identical re-train must give a byte-identical
    /// artifact. Timings go to `timings.json`, a record the store does not hash.
    #[serde(default, skip_serializing)]
    pub images_per_sec: f64,
}

/// One epoch's timing, for `timings.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochTiming {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// The stage that trained it.
    pub stage: String,
    /// Training images per second.
    pub images_per_sec: f64,
}

/// Write the epochs of `history` that have a timing to `path` (a training stage's
/// `timings.json`).
pub fn write_timings(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let t: Vec<EpochTiming> = history
        .iter()
        .filter(|r| r.images_per_sec > 0.0)
        .map(|r| EpochTiming {
            epoch: r.epoch,
            stage: r.stage.clone(),
            images_per_sec: r.images_per_sec,
        })
        .collect();
    crate::atomic::write_json_atomic(path, &t)
}

/// Write `history.json` and `history.png` into `dir`.
pub fn write(dir: &Path, history: &[EpochRecord]) -> Result<()> {
    crate::atomic::write_json_atomic(&dir.join("history.json"), &history)?;
    plot(&dir.join("history.png"), history)
}

fn font() -> Option<&'static [u8]> {
    // The bitmap backend draws text with a TrueType font from the system (Debian:
    // fonts-dejavu-core, installed by scripts/bootstrap); without one the plot has no text.
    static FONT: std::sync::OnceLock<Option<&'static [u8]>> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        let candidates = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        ];
        let bytes = candidates.iter().find_map(|p| std::fs::read(p).ok())?;
        let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).ok()?;
        Some(leaked)
    })
}

/// Loss and accuracy (train and val) per epoch, with the stage boundaries marked.
pub fn plot(path: &Path, h: &[EpochRecord]) -> Result<()> {
    let has_font = font().is_some();
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    let max_epoch = h.iter().map(|r| r.epoch).max().unwrap_or(1).max(1);
    let ymax = h
        .iter()
        .flat_map(|r| [r.train_loss, r.val_loss, 1.0])
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.05;
    let mut b = ChartBuilder::on(&root);
    b.margin(15).x_label_area_size(40).y_label_area_size(50);
    if has_font {
        b.caption("Training loss and accuracy", ("sans-serif", 22));
    }
    let mut chart = b
        .build_cartesian_2d(0f64..max_epoch as f64 + 0.5, 0f64..ymax)
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    let mut mesh = chart.configure_mesh();
    if has_font {
        mesh.x_desc("epoch").y_desc("loss / accuracy");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    // Stage boundaries (lr drops, resumes): a vertical line where the stage changes.
    for w in h.windows(2) {
        if w[0].stage != w[1].stage {
            let x = w[0].epoch as f64 + 0.5;
            chart
                .draw_series(LineSeries::new(
                    [(x, 0.0), (x, ymax)],
                    BLACK.mix(0.75).stroke_width(2),
                ))
                .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        }
    }
    type Series = (&'static str, RGBColor, fn(&EpochRecord) -> f64);
    let series: [Series; 4] = [
        ("train_loss", RED, |r| r.train_loss),
        ("val_loss", BLUE, |r| r.val_loss),
        ("train_acc", MAGENTA, |r| r.train_acc),
        ("val_acc", GREEN, |r| r.val_acc),
    ];
    for (name, color, f) in series {
        let s = chart
            .draw_series(LineSeries::new(
                h.iter().map(|r| (r.epoch as f64, f(r).min(ymax))),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        if has_font {
            s.label(name).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
    }
    if has_font {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    Ok(())
}

//! The training plot, `history.png`: loss and accuracy (train and val) per epoch, with the
//! stage boundaries marked, rendered to PNG bytes (the training stage writes them).

use anyhow::Result;
use plotters::prelude::*;

use crate::outcome::history::EpochRecord;

/// The font the plot's text is drawn with: `PIPE_PLOT_FONT` (a TrueType file, or `none`
/// for no text), else the system's DejaVu Sans (Debian: fonts-dejavu-core, installed by
/// scripts/bootstrap); without one the plot has no text. The plot is a record of a
/// training, not its content (`stages::train::PLOT`), so the font changes no hash.
fn font() -> Option<&'static [u8]> {
    static FONT: std::sync::OnceLock<Option<&'static [u8]>> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        let chosen = std::env::var("PIPE_PLOT_FONT").ok();
        let candidates: Vec<String> = match chosen.as_deref() {
            Some("none") => Vec::new(),
            Some(path) => vec![path.to_string()],
            None => [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            ]
            .map(String::from)
            .to_vec(),
        };
        let bytes = candidates.iter().find_map(|p| std::fs::read(p).ok())?;
        let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).ok()?;
        Some(leaked)
    })
}

/// The plot's size in pixels.
const SIZE: (u32, u32) = (900, 600);

/// Loss and accuracy (train and val) per epoch, with the stage boundaries marked, as the
/// bytes of a PNG file.
pub fn plot_png(h: &[EpochRecord]) -> Result<Vec<u8>> {
    let mut rgb = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
    draw(&mut rgb, h)?;
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &rgb,
        SIZE.0,
        SIZE.1,
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(png)
}

fn draw(rgb: &mut [u8], h: &[EpochRecord]) -> Result<()> {
    let has_font = font().is_some();
    let root = BitMapBackend::with_buffer(rgb, SIZE).into_drawing_area();
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

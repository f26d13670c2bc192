//! The dashboard's charts, drawn as SVG on the server (and into `--export`'s files): a
//! run's loss and accuracy curves (several runs overlaid; one marked point per epoch, the
//! lr drops as vertical lines), parallel coordinates of a sweep, and a stage DAG. Markup
//! goes through maud, so every label (a run's name, a class name) is escaped.

use maud::{html, Markup, PreEscaped};

use crate::outcome::history::EpochRecord;

/// One run's curves.
pub struct Series<'a> {
    /// Its name (legend).
    pub name: &'a str,
    /// Its epochs.
    pub epochs: &'a [EpochRecord],
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// A colour per series index.
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Round tick positions covering `[lo, hi]` (1, 2, 5 x 10^k steps).
fn ticks(lo: f64, hi: f64, want: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / want.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

/// A number as an axis label.
fn label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-2..1e4).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

/// A linear or log10 scale from data to pixels.
#[derive(Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    px0: f64,
    px1: f64,
    log: bool,
}

impl Scale {
    fn at(&self, v: f64) -> f64 {
        let (lo, hi, v) = if self.log {
            (
                self.lo.log10(),
                self.hi.log10(),
                v.max(f64::MIN_POSITIVE).log10(),
            )
        } else {
            (self.lo, self.hi, v)
        };
        if hi <= lo {
            return (self.px0 + self.px1) / 2.0;
        }
        self.px0 + (v - lo) / (hi - lo) * (self.px1 - self.px0)
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let (a, b) = (
                self.lo.log10().floor() as i32,
                self.hi.log10().ceil() as i32,
            );
            (a..=b)
                .map(|e| 10f64.powi(e))
                .filter(|t| *t >= self.lo * 0.999 && *t <= self.hi * 1.001)
                .collect()
        } else {
            ticks(self.lo, self.hi, 5)
        }
    }
}

/// Which value of an epoch a panel plots.
#[derive(Clone, Copy)]
enum Metric {
    TrainLoss,
    ValLoss,
    TrainAcc,
    ValAcc,
}

impl Metric {
    fn of(self, r: &EpochRecord) -> f64 {
        match self {
            Metric::TrainLoss => r.train_loss,
            Metric::ValLoss => r.val_loss,
            Metric::TrainAcc => r.train_acc,
            Metric::ValAcc => r.val_acc,
        }
    }

    fn id(self) -> &'static str {
        match self {
            Metric::TrainLoss => "train_loss",
            Metric::ValLoss => "val_loss",
            Metric::TrainAcc => "train_acc",
            Metric::ValAcc => "val_acc",
        }
    }

    fn train(self) -> bool {
        matches!(self, Metric::TrainLoss | Metric::TrainAcc)
    }
}

const W: f64 = 440.0;
const H: f64 = 280.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 36.0;

/// One panel: `metrics` of every series against the epoch, at horizontal offset `x0`.
fn panel(
    title: &str,
    x0: f64,
    series: &[Series],
    metrics: [Metric; 2],
    log: bool,
    percent: bool,
) -> Markup {
    let max_epoch = series
        .iter()
        .flat_map(|s| s.epochs.iter().map(|r| r.epoch))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| {
            s.epochs
                .iter()
                .flat_map(move |r| metrics.into_iter().map(move |m| m.of(r)))
        })
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .collect();
    let (mut lo, mut hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(*v), b.max(*v))
        });
    if values.is_empty() {
        (lo, hi) = if log { (0.1, 1.0) } else { (0.0, 1.0) };
    }
    if percent {
        // Accuracy: always the whole 0-100 %.
        (lo, hi) = (0.0, 1.0);
    } else if !log {
        lo = lo.min(0.0);
        if hi <= lo {
            hi = lo + 1.0;
        }
    } else if hi <= lo {
        hi = lo * 10.0;
    }
    let x = Scale {
        lo: if max_epoch > 1.0 { 1.0 } else { 0.0 },
        hi: max_epoch,
        px0: x0 + LEFT,
        px1: x0 + W - RIGHT,
        log: false,
    };
    let y = Scale {
        lo,
        hi,
        px0: H - BOTTOM,
        px1: TOP,
        log,
    };
    // Where the stage changes: an lr drop (or a resume) starts.
    let mut drops: Vec<(f64, String)> = Vec::new();
    if let Some(s) = series.first() {
        for w in s.epochs.windows(2) {
            if w[1].stage != w[0].stage {
                drops.push((
                    w[0].epoch as f64 + 0.5,
                    format!("{}: lr {}", w[1].stage, label(w[1].lr)),
                ));
            }
        }
    }
    let fmt_y = |v: f64| {
        if percent {
            format!("{:.0}%", 100.0 * v)
        } else {
            label(v)
        }
    };
    html! {
        g class="panel" {
            text x=(x0 + LEFT) y="16" class="title" { (title) }
            @for t in y.ticks() {
                line class="grid" x1=(x.px0) x2=(x.px1) y1=(y.at(t)) y2=(y.at(t)) {}
                text class="tick" x=(x.px0 - 4.0) y=(y.at(t) + 4.0) text-anchor="end" { (fmt_y(t)) }
            }
            @for t in ticks(x.lo, x.hi, 6).into_iter().filter(|t| t.fract() == 0.0) {
                text class="tick" x=(x.at(t)) y=(H - BOTTOM + 16.0) text-anchor="middle" { (label(t)) }
            }
            text class="axis" x=((x.px0 + x.px1) / 2.0) y=(H - 4.0) text-anchor="middle" { "epoch" }
            line class="frame" x1=(x.px0) x2=(x.px0) y1=(y.px1) y2=(y.px0) {}
            line class="frame" x1=(x.px0) x2=(x.px1) y1=(y.px0) y2=(y.px0) {}
            @for (at, what) in &drops {
                g class="drop" {
                    line x1=(x.at(*at)) x2=(x.at(*at)) y1=(y.px1) y2=(y.px0) {}
                    text x=(x.at(*at) + 3.0) y=(y.px1 + 10.0) { (what) }
                }
            }
            @for (i, s) in series.iter().enumerate() {
                @for m in metrics {
                    @let pts: Vec<(usize, f64)> = s.epochs.iter().map(|r| (r.epoch, m.of(r))).filter(|(_, v)| v.is_finite() && (!log || *v > 0.0)).collect();
                    g class={ "series " (if m.train() { "train" } else { "val" }) } data-run=(s.name) data-metric=(m.id()) data-points=(pts.len()) stroke=(colour(i)) fill=(colour(i)) {
                        polyline fill="none" points=(pts.iter().map(|(e, v)| format!("{:.1},{:.1}", x.at(*e as f64), y.at(*v))).collect::<Vec<_>>().join(" ")) {}
                        @for (e, v) in &pts {
                            circle class="pt" cx=(format!("{:.1}", x.at(*e as f64))) cy=(format!("{:.1}", y.at(*v))) r="2.5" data-epoch=(e) {
                                title { (s.name) " epoch " (e) ": " (m.id()) " " (format!("{v:.4}")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Loss and accuracy curves of one or more runs: two panels, train dashed and val solid,
/// one point per epoch, lr drops marked (of the first run). `log`: the loss axis in log10.
pub fn curves(series: &[Series], log: bool) -> String {
    let epochs: usize = series.iter().map(|s| s.epochs.len()).sum();
    let legend_h = if series.len() > 1 {
        16.0 * series.len() as f64 + 8.0
    } else {
        0.0
    };
    let total_h = H + legend_h;
    let svg = html! {
        svg xmlns="http://www.w3.org/2000/svg" class="curves" viewBox=(format!("0 0 {} {total_h}", 2.0 * W)) width=(2.0 * W) height=(total_h) data-epochs=(epochs) {
            @if epochs == 0 {
                text x=(W) y=(H / 2.0) text-anchor="middle" class="empty" { "no epochs yet" }
            } @else {
                (panel(if log { "loss (log scale)" } else { "loss" }, 0.0, series, [Metric::TrainLoss, Metric::ValLoss], log, false))
                (panel("accuracy", W, series, [Metric::TrainAcc, Metric::ValAcc], false, true))
                @if series.len() > 1 {
                    @for (i, s) in series.iter().enumerate() {
                        g class="legend" {
                            rect x=(LEFT) y=(H + 4.0 + 16.0 * i as f64) width="12" height="10" fill=(colour(i)) {}
                            text x=(LEFT + 18.0) y=(H + 13.0 + 16.0 * i as f64) { (s.name) }
                        }
                    }
                }
                text class="key" x=(2.0 * W - RIGHT) y="16" text-anchor="end" { "dashed: train, solid: val" }
            }
        }
    };
    svg.into_string()
}

/// One axis of a parallel-coordinates chart: a swept key or the metric.
pub struct PAxis {
    /// Its name.
    pub name: String,
    /// Each line's value on it, as shown (`5e-3`, `elu`), and as a number if it is one.
    pub values: Vec<(String, Option<f64>)>,
}

/// One line: a sweep point.
pub struct PLine {
    /// Its id.
    pub id: String,
    /// The best point.
    pub best: bool,
    /// Pruned by halving (or not finished).
    pub pruned: bool,
    /// Where it links to.
    pub href: String,
}

/// Parallel coordinates: one vertical axis per swept key and the metric (numeric axes
/// linear, or log10 when all values are positive and span more than a decade; text axes
/// with their values evenly spaced), one polyline per point.
pub fn parallel(axes: &[PAxis], lines: &[PLine]) -> String {
    let w = (160.0 * axes.len() as f64).max(480.0);
    let h = 360.0;
    let (top, bottom) = (30.0, 40.0);
    let gap = if axes.len() > 1 {
        (w - 120.0) / (axes.len() - 1) as f64
    } else {
        0.0
    };
    // Each axis: a function from a line's index to a y.
    let mut ys: Vec<Vec<Option<f64>>> = Vec::new();
    let mut tick_labels: Vec<Vec<(f64, String)>> = Vec::new();
    for a in axes {
        let nums: Vec<f64> = a.values.iter().filter_map(|v| v.1).collect();
        let numeric =
            nums.len() == a.values.iter().filter(|v| v.0 != "-").count() && !nums.is_empty();
        if numeric {
            let lo = nums.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = nums.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let log = lo > 0.0 && hi / lo > 10.0;
            let pad = (lo.abs() * 0.05).max(1e-3);
            let (lo, hi) = if hi > lo {
                (lo, hi)
            } else {
                (lo - pad, hi + pad)
            };
            let log = log && lo > 0.0;
            let s = Scale {
                lo,
                hi,
                px0: h - bottom,
                px1: top,
                log,
            };
            ys.push(a.values.iter().map(|v| v.1.map(|x| s.at(x))).collect());
            let mut t: Vec<(f64, String)> =
                s.ticks().into_iter().map(|t| (s.at(t), label(t))).collect();
            if t.len() < 2 {
                t = vec![(s.at(lo), label(lo)), (s.at(hi), label(hi))];
            }
            tick_labels.push(t);
        } else {
            let mut cats: Vec<String> = Vec::new();
            for v in &a.values {
                if v.0 != "-" && !cats.contains(&v.0) {
                    cats.push(v.0.clone());
                }
            }
            let at = |i: usize| {
                if cats.len() <= 1 {
                    (top + h - bottom) / 2.0
                } else {
                    h - bottom - i as f64 * (h - bottom - top) / (cats.len() - 1) as f64
                }
            };
            ys.push(
                a.values
                    .iter()
                    .map(|v| cats.iter().position(|c| *c == v.0).map(at))
                    .collect(),
            );
            tick_labels.push(
                cats.iter()
                    .enumerate()
                    .map(|(i, c)| (at(i), c.clone()))
                    .collect(),
            );
        }
    }
    let ax_x = |i: usize| 60.0 + gap * i as f64;
    let svg = html! {
        svg xmlns="http://www.w3.org/2000/svg" class="parallel" viewBox=(format!("0 0 {w} {h}")) width=(w) height=(h) data-lines=(lines.len()) {
            @for (li, l) in lines.iter().enumerate() {
                @let pts: Vec<String> = ys.iter().enumerate().filter_map(|(ai, y)| y[li].map(|y| format!("{:.1},{:.1}", ax_x(ai), y))).collect();
                a href=(l.href) {
                    polyline class={ "pline" @if l.best { " best" } @if l.pruned { " pruned" } } fill="none" points=(pts.join(" ")) data-id=(l.id) {
                        title { (l.id) @if l.best { " (best)" } @if l.pruned { " (pruned)" } }
                    }
                }
            }
            @for (ai, a) in axes.iter().enumerate() {
                g class="paxis" {
                    line x1=(ax_x(ai)) x2=(ax_x(ai)) y1=(top) y2=(h - bottom) {}
                    text class="title" x=(ax_x(ai)) y=(h - 12.0) text-anchor="middle" { (a.name) }
                    @for (y, t) in &tick_labels[ai] {
                        text class="tick" x=(ax_x(ai) + 5.0) y=(y + 4.0) { (t) }
                    }
                }
            }
        }
    };
    svg.into_string()
}

/// A stage DAG: stages in columns by depth (inputs to the left), each box coloured by its
/// state (the class `state-<state>`), an arrow per input.
pub fn dag(stages: &[(String, String)], edges: &[(String, String)]) -> String {
    let mut depth: Vec<usize> = vec![0; stages.len()];
    let idx = |n: &str| stages.iter().position(|s| s.0 == n);
    // Stages come in dependency order, so one pass settles every depth.
    for (i, (name, _)) in stages.iter().enumerate() {
        for (from, to) in edges {
            if to == name {
                if let Some(j) = idx(from) {
                    depth[i] = depth[i].max(depth[j] + 1);
                }
            }
        }
    }
    let mut row_of = vec![0usize; stages.len()];
    let mut per_depth: std::collections::BTreeMap<usize, usize> = Default::default();
    for (i, d) in depth.iter().enumerate() {
        let n = per_depth.entry(*d).or_insert(0);
        row_of[i] = *n;
        *n += 1;
    }
    let (bw, bh, gx, gy) = (120.0, 30.0, 40.0, 14.0);
    let cols = depth.iter().max().map_or(1, |d| d + 1) as f64;
    let rows = per_depth.values().max().copied().unwrap_or(1) as f64;
    let w = cols * (bw + gx) + 10.0;
    let h = rows * (bh + gy) + 10.0;
    let pos = |i: usize| {
        (
            5.0 + depth[i] as f64 * (bw + gx),
            5.0 + row_of[i] as f64 * (bh + gy),
        )
    };
    let svg = html! {
        svg xmlns="http://www.w3.org/2000/svg" class="dag" viewBox=(format!("0 0 {w} {h}")) width=(w) height=(h) {
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" {}
                }
            }
            @for (from, to) in edges {
                @if let (Some(a), Some(b)) = (idx(from), idx(to)) {
                    @let (ax, ay) = pos(a);
                    @let (bx, by) = pos(b);
                    line class="edge" x1=(ax + bw) y1=(ay + bh / 2.0) x2=(bx) y2=(by + bh / 2.0) marker-end="url(#arrow)" {}
                }
            }
            @for (i, (name, state)) in stages.iter().enumerate() {
                @let (x, y) = pos(i);
                g class={ "node state-" (state) } data-stage=(name) data-state=(state) {
                    rect x=(x) y=(y) width=(bw) height=(bh) rx="5" {}
                    text x=(x + bw / 2.0) y=(y + 13.0) text-anchor="middle" { (name) }
                    text class="state" x=(x + bw / 2.0) y=(y + 25.0) text-anchor="middle" { (state) }
                }
            }
        }
    };
    svg.into_string()
}

/// SVG markup to embed in a page as is (it was made by this module, escaped).
pub fn embed(svg: &str) -> PreEscaped<&str> {
    PreEscaped(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: usize, stage: &str, v: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            stage: stage.into(),
            lr: if stage == "train" { 0.01 } else { 0.001 },
            train_loss: 2.0 - v,
            train_acc: v / 2.0,
            val_loss: 2.1 - v,
            val_acc: v / 2.1,
            images_per_sec: 0.0,
        }
    }

    #[test]
    fn one_point_per_epoch_and_series_and_the_drop_marked() {
        let h: Vec<EpochRecord> = (1..=5)
            .map(|e| rec(e, if e <= 3 { "train" } else { "drop" }, e as f64 / 5.0))
            .collect();
        let svg = curves(
            &[Series {
                name: "a<b>",
                epochs: &h,
            }],
            false,
        );
        assert_eq!(svg.matches("<circle class=\"pt\"").count(), 4 * 5);
        assert_eq!(
            svg.matches("data-metric=\"val_loss\" data-points=\"5\"")
                .count(),
            1
        );
        assert_eq!(svg.matches("class=\"drop\"").count(), 2, "one per panel");
        assert!(svg.contains("drop: lr 1e-3"), "{svg}");
        assert!(svg.contains("a&lt;b&gt;") && !svg.contains("a<b>"));
        assert!(curves(&[], false).contains("no epochs yet"));
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let close = |a: &[f64], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
        };
        assert!(close(&ticks(0.0, 1.0, 5), &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]));
        assert!(close(&ticks(1.0, 8.0, 6), &[2.0, 4.0, 6.0, 8.0]));
        assert_eq!(label(0.005), "5e-3");
        assert_eq!(label(0.25), "0.25");
    }

    #[test]
    fn parallel_coordinates_have_a_line_per_point() {
        let axes = vec![
            PAxis {
                name: "lr".into(),
                values: vec![("1e-3".into(), Some(1e-3)), ("1e-1".into(), Some(0.1))],
            },
            PAxis {
                name: "act".into(),
                values: vec![("relu".into(), None), ("<elu>".into(), None)],
            },
        ];
        let lines = vec![
            PLine {
                id: "a".into(),
                best: true,
                pruned: false,
                href: "/run/a".into(),
            },
            PLine {
                id: "b".into(),
                best: false,
                pruned: true,
                href: "/run/b".into(),
            },
        ];
        let svg = parallel(&axes, &lines);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("pline best") && svg.contains("pline pruned"));
        assert!(svg.contains("&lt;elu&gt;"));
    }
}

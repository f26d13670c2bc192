//! The data of the dashboard's charts. The charts are drawn in the browser by Apache
//! ECharts (`assets/vendor/echarts.min.js`, embedded in the binary) and `assets/charts.js`;
//! a page carries its charts' data in a `<script type="application/json">` block, so a
//! served page and an exported one (opened from `file://`) draw the same charts offline.
//!
//! - [`curves`]: several runs' epochs (loss, accuracy, lr, wall time), one colour each.
//! - [`parallel`]: a sweep's points on parallel axes, the best and the pruned marked.

use maud::{html, Markup, PreEscaped};
use serde_json::{json, Value};

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

/// A colour per series index (the chart's lines and the tables' swatches agree).
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

fn epoch_json(e: &EpochRecord) -> Value {
    // serde_json writes a non-finite number (a diverged loss) as null: a gap in the line.
    json!({
        "epoch": e.epoch,
        "stage": e.stage,
        "lr": e.lr,
        "train_loss": e.train_loss,
        "val_loss": e.val_loss,
        "train_acc": e.train_acc,
        "val_acc": e.val_acc,
        "seconds": e.seconds,
    })
}

/// The curves of `series`; `live`: where a live page fetches this data again.
pub fn curves(series: &[Series], live: Option<&str>) -> Value {
    let runs: Vec<Value> = series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "name": s.name,
                "colour": colour(i),
                "epochs": s.epochs.iter().map(epoch_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "runs": runs, "live": live })
}

/// One parallel axis: a swept key or the metric.
pub struct Axis {
    /// Its name.
    pub name: String,
    /// Each point's value on it, as written (`5e-3`, `elu`), and as a number if it is one;
    /// [`MISSING`] where the point has none yet (a point not run, or pruned before it).
    pub values: Vec<(String, Option<f64>)>,
}

/// How a point with no value on an axis writes it.
pub const MISSING: &str = "-";

/// One sweep point.
pub struct Line {
    /// Its name.
    pub name: String,
    /// The best point.
    pub best: bool,
    /// Pruned by halving (or not finished).
    pub pruned: bool,
    /// Its page.
    pub href: String,
}

/// Parallel coordinates: numeric axes (log10 when every value is positive and they span
/// more than a decade), or categorical ones (a value that is not a number anywhere on the
/// axis makes it a list of the values, in their first order).
pub fn parallel(axes: &[Axis], lines: &[Line]) -> Value {
    let axes_json: Vec<Value> = axes
        .iter()
        .map(|a| {
            // Numbers, where some are missing or not finite (a point not run yet, a
            // diverged one), stay a numeric axis, in order: those points have no value
            // on it (null), rather than turn the axis into unordered categories.
            let missing = |s: &str, n: Option<f64>| {
                n.is_none_or(|x| !x.is_finite()) && (s == MISSING || n.is_some())
            };
            let numeric = a
                .values
                .iter()
                .all(|(s, n)| n.is_some_and(f64::is_finite) || missing(s, *n))
                && a.values.iter().any(|(_, n)| n.is_some_and(f64::is_finite));
            if numeric {
                let (lo, hi) = a
                    .values
                    .iter()
                    .filter_map(|(_, n)| n.filter(|x| x.is_finite()))
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
                        (l.min(v), h.max(v))
                    });
                let log = lo > 0.0 && hi / lo > 10.0;
                json!({ "name": a.name, "log": log })
            } else {
                let mut cats: Vec<&str> = Vec::new();
                for (s, _) in &a.values {
                    if !cats.contains(&s.as_str()) {
                        cats.push(s);
                    }
                }
                json!({ "name": a.name, "categories": cats })
            }
        })
        .collect();
    let lines_json: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let values: Vec<Value> = axes
                .iter()
                .zip(&axes_json)
                .map(|(a, aj)| {
                    let (s, n) = &a.values[i];
                    match aj.get("categories") {
                        Some(_) => json!(s),
                        None => json!(n.filter(|x| x.is_finite())),
                    }
                })
                .collect();
            json!({
                "name": l.name,
                "values": values,
                "best": l.best,
                "pruned": l.pruned,
                "href": l.href,
            })
        })
        .collect();
    json!({ "axes": axes_json, "lines": lines_json })
}

/// `data` as a page's data block: `<script type="application/json" id=ID>`. A `<` is
/// written `\u003c`, so no string in it can end the block.
pub fn block(id: &str, data: &Value) -> Markup {
    let text = data.to_string().replace('<', "\\u003c");
    html! { script type="application/json" id=(id) { (PreEscaped(text)) } }
}

/// The curves panel: its controls, the three charts and their data.
pub fn curves_panel(data: &Value) -> Markup {
    html! {
        div class="controls" {
            label { "smoothing " input id="smooth" type="range" min="0" max="0.99" step="0.01" value="0"; " " output id="smooth-value" { "0.00" } }
            label { input id="logloss" type="checkbox"; " log loss axis" }
            label { "x: " select id="xaxis" { option value="epoch" { "epoch" } option value="time" { "wall time" } } }
            span class="hint" { "solid: validation · dashed: training · dotted: lr drops · wheel or drag to zoom" }
        }
        div id="curves" {
            div id="chart-loss" class="chart" {}
            div id="chart-acc" class="chart" {}
            div id="chart-lr" class="chart lr" {}
        }
        (block("curve-data", data))
    }
}

/// The parallel-coordinates panel and its data.
pub fn parallel_panel(data: &Value) -> Markup {
    html! {
        div id="parallel" class="chart parallel" {}
        p id="points-shown" class="hint" {}
        (block("parallel-data", data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: usize, lr: f64, loss: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            stage: "train".into(),
            lr,
            train_loss: loss,
            train_acc: 0.5,
            val_loss: loss + 0.1,
            val_acc: 0.4,
            ema_val_loss: None,
            ema_val_acc: None,
            images_per_sec: 0.0,
            seconds: 1.5,
        }
    }

    #[test]
    fn a_data_block_cannot_be_closed_by_a_name() {
        let h = [rec(1, 1e-2, f64::NAN)];
        let d = curves(
            &[Series {
                name: "</script><script>alert(1)</script>",
                epochs: &h,
            }],
            None,
        );
        let b = block("curve-data", &d).into_string();
        assert_eq!(b.matches("</script>").count(), 1, "{b}");
        let inner = &b[b.find('>').unwrap() + 1..b.rfind("</script>").unwrap()];
        let back: Value = serde_json::from_str(inner).unwrap();
        assert_eq!(
            back["runs"][0]["name"],
            "</script><script>alert(1)</script>"
        );
        assert!(back["runs"][0]["epochs"][0]["train_loss"].is_null());
        assert_eq!(back["runs"][0]["epochs"][0]["seconds"], 1.5);
    }

    #[test]
    fn parallel_axes_are_numeric_log_or_categorical() {
        let axes = [
            Axis {
                name: "lr".into(),
                values: vec![("1e-3".into(), Some(1e-3)), ("1e-1".into(), Some(0.1))],
            },
            Axis {
                name: "act".into(),
                values: vec![("relu".into(), None), ("elu".into(), None)],
            },
            Axis {
                name: "val_acc".into(),
                values: vec![("0.5".into(), Some(0.5)), ("0.7".into(), Some(0.7))],
            },
        ];
        let lines = [
            Line {
                name: "a".into(),
                best: false,
                pruned: true,
                href: "/run/a".into(),
            },
            Line {
                name: "b".into(),
                best: true,
                pruned: false,
                href: "/run/b".into(),
            },
        ];
        let d = parallel(&axes, &lines);
        assert_eq!(d["axes"][0]["log"], true);
        assert_eq!(d["axes"][1]["categories"], json!(["relu", "elu"]));
        assert_eq!(d["axes"][2]["log"], false);
        assert_eq!(d["lines"][1]["values"], json!([0.1, "elu", 0.7]));
        assert_eq!(d["lines"][0]["pruned"], true);
        // A point with no metric yet, or a diverged one: the axis stays numeric, in order,
        // and those points have no value on it.
        let metric = Axis {
            name: "val.acc".into(),
            values: vec![
                ("0.8123".into(), Some(0.8123)),
                (MISSING.into(), None),
                ("NaN".into(), Some(f64::NAN)),
                ("0.7456".into(), Some(0.7456)),
            ],
        };
        let four: Vec<Line> = (0..4)
            .map(|i| Line {
                name: format!("p{i}"),
                best: false,
                pruned: false,
                href: String::new(),
            })
            .collect();
        let d = parallel(&[metric], &four);
        assert!(d["axes"][0].get("categories").is_none(), "{d}");
        assert_eq!(d["axes"][0]["log"], false);
        let got: Vec<Value> = (0..4).map(|i| d["lines"][i]["values"][0].clone()).collect();
        assert_eq!(
            got,
            vec![json!(0.8123), Value::Null, Value::Null, json!(0.7456)]
        );
        // All missing: no numbers to order, categories.
        let none = Axis {
            name: "x".into(),
            values: vec![(MISSING.into(), None)],
        };
        assert_eq!(
            parallel(&[none], &four[..1])["axes"][0]["categories"],
            json!(["-"])
        );
    }
}

//! The stage DAG of a run's page, drawn as SVG on the server (and into `--export`'s
//! files). Markup goes through maud, so every label (a stage's name) is escaped. The
//! charts are drawn in the browser (see [`super::charts`]).
//!
//! The layout is layered (Sugiyama's scheme, small): a stage's layer is its longest path
//! from an input; an edge that skips layers passes through a waypoint in each layer it
//! crosses, which takes a slot of that layer like a stage does; the slots of each layer
//! are ordered by the mean slot of their neighbours (a few sweeps each way); each layer's
//! boxes are as wide as its longest name. Edges run only between neighbouring layers'
//! slots, so no edge crosses a box.

use maud::{html, PreEscaped};

/// A box of the DAG: where it is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    /// Left.
    pub x: f64,
    /// Top.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

impl Rect {
    /// Whether the segment `a`-`b` passes through the inside of this box (touching its
    /// border is not passing through).
    pub fn crossed_by(&self, a: (f64, f64), b: (f64, f64)) -> bool {
        // Liang-Barsky clipping against the box shrunk by a hair.
        let e = 1e-6;
        let (x0, x1, y0, y1) = (
            self.x + e,
            self.x + self.w - e,
            self.y + e,
            self.y + self.h - e,
        );
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let (mut t0, mut t1) = (0.0f64, 1.0f64);
        for (p, q) in [
            (-dx, a.0 - x0),
            (dx, x1 - a.0),
            (-dy, a.1 - y0),
            (dy, y1 - a.1),
        ] {
            if p == 0.0 {
                if q < 0.0 {
                    return false;
                }
            } else {
                let r = q / p;
                if p < 0.0 {
                    t0 = t0.max(r);
                } else {
                    t1 = t1.min(r);
                }
                if t0 > t1 {
                    return false;
                }
            }
        }
        t1 - t0 > 1e-9
    }
}

/// An edge drawn: its input's index, its stage's index, and its polyline.
pub type Edge = (usize, usize, Vec<(f64, f64)>);

/// A DAG laid out: each stage's box (in the order given) and each edge's polyline (from
/// the input's right side to the stage's left side), and the drawing's size.
#[derive(Debug, Clone)]
pub struct Layout {
    /// One box per stage.
    pub boxes: Vec<Rect>,
    /// One polyline per edge that names two known stages: (from, to, points).
    pub edges: Vec<Edge>,
    /// Width and height.
    pub size: (f64, f64),
}

const BOX_H: f64 = 32.0;
const GAP_X: f64 = 44.0;
const GAP_Y: f64 = 14.0;
const MARGIN: f64 = 6.0;
/// Width of a character of the 11 px labels (an upper bound for system-ui).
const CHAR_W: f64 = 7.0;

/// Lay out `stages` (name, state; in dependency order) with `edges` (input, stage).
/// (Waypoints have no box: `vlayer[v]` for `v >= stages.len()` is a waypoint's layer.)
pub fn layout(stages: &[(String, String)], edges: &[(String, String)]) -> Layout {
    let n = stages.len();
    let idx = |s: &str| stages.iter().position(|x| x.0 == s);
    let known: Vec<(usize, usize)> = edges
        .iter()
        .filter_map(|(a, b)| Some((idx(a)?, idx(b)?)))
        .filter(|(a, b)| a != b)
        .collect();
    // Layers: the longest path from an input (stages come in dependency order, but a
    // few passes settle any order).
    let mut layer = vec![0usize; n];
    for _ in 0..n.max(1) {
        let mut moved = false;
        for &(a, b) in &known {
            if layer[b] < layer[a] + 1 && layer[a] < n {
                layer[b] = layer[a] + 1;
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    let layers = layer.iter().max().map_or(1, |m| m + 1);
    // Slots: stages (vertices 0..n), then a waypoint per skipped layer of each long edge.
    let mut vlayer: Vec<usize> = layer.clone();
    let mut chains: Vec<Vec<usize>> = Vec::new(); // per edge: vertices from a to b
    for &(a, b) in &known {
        let mut chain = vec![a];
        for l in layer[a] + 1..layer[b] {
            vlayer.push(l);
            chain.push(vlayer.len() - 1);
        }
        chain.push(b);
        chains.push(chain);
    }
    let v = vlayer.len();
    let mut up: Vec<Vec<usize>> = vec![Vec::new(); v];
    let mut down: Vec<Vec<usize>> = vec![Vec::new(); v];
    for c in &chains {
        for w in c.windows(2) {
            down[w[0]].push(w[1]);
            up[w[1]].push(w[0]);
        }
    }
    let mut order: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for (x, &l) in vlayer.iter().enumerate() {
        order[l].push(x);
    }
    let mut pos = vec![0.0f64; v];
    let set_pos = |order: &Vec<Vec<usize>>, pos: &mut Vec<f64>| {
        for row in order {
            for (i, &x) in row.iter().enumerate() {
                pos[x] = i as f64;
            }
        }
    };
    set_pos(&order, &mut pos);
    for sweep in 0..8 {
        let (range, nb): (Vec<usize>, &Vec<Vec<usize>>) = if sweep % 2 == 0 {
            ((1..layers).collect(), &up)
        } else {
            ((0..layers.saturating_sub(1)).rev().collect(), &down)
        };
        for l in range {
            let mut keyed: Vec<(f64, usize)> = order[l]
                .iter()
                .map(|&x| {
                    let ns = &nb[x];
                    let k = if ns.is_empty() {
                        pos[x]
                    } else {
                        ns.iter().map(|&y| pos[y]).sum::<f64>() / ns.len() as f64
                    };
                    (k, x)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            order[l] = keyed.into_iter().map(|(_, x)| x).collect();
            for (i, &x) in order[l].iter().enumerate() {
                pos[x] = i as f64;
            }
        }
    }
    // Column widths: the longest label of the layer's stages.
    let label_w = |s: usize| {
        let chars = stages[s].0.chars().count().max(stages[s].1.chars().count());
        (chars as f64 * CHAR_W + 20.0).max(80.0)
    };
    let col_w: Vec<f64> = (0..layers)
        .map(|l| {
            order[l]
                .iter()
                .filter(|&&x| x < n)
                .map(|&x| label_w(x))
                .fold(24.0, f64::max)
        })
        .collect();
    let mut col_x = vec![MARGIN; layers];
    for l in 1..layers {
        col_x[l] = col_x[l - 1] + col_w[l - 1] + GAP_X;
    }
    let rows = order.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let slot_y = |x: usize| MARGIN + pos[x] * (BOX_H + GAP_Y);
    let boxes: Vec<Rect> = (0..n)
        .map(|s| {
            let l = layer[s];
            let w = label_w(s);
            Rect {
                x: col_x[l] + (col_w[l] - w) / 2.0,
                y: slot_y(s),
                w,
                h: BOX_H,
            }
        })
        .collect();
    let mid = BOX_H / 2.0;
    let edges_out = known
        .iter()
        .zip(&chains)
        .map(|(&(a, b), chain)| {
            // Within a layer an edge runs level, in its own slot's row; it changes rows
            // only in the gaps between layers.
            let (la, lb) = (layer[a], layer[b]);
            let (ya, yb) = (boxes[a].y + mid, boxes[b].y + mid);
            let mut pts = vec![(boxes[a].x + boxes[a].w, ya), (col_x[la] + col_w[la], ya)];
            for &w in &chain[1..chain.len() - 1] {
                let l = vlayer[w];
                let y = slot_y(w) + mid;
                pts.push((col_x[l], y));
                pts.push((col_x[l] + col_w[l], y));
            }
            pts.push((col_x[lb], yb));
            pts.push((boxes[b].x, yb));
            pts.dedup();
            (a, b, pts)
        })
        .collect();
    let width = col_x[layers - 1] + col_w[layers - 1] + MARGIN;
    let height = MARGIN * 2.0 + rows as f64 * (BOX_H + GAP_Y) - GAP_Y;
    Layout {
        boxes,
        edges: edges_out,
        size: (width, height),
    }
}

/// A stage DAG, laid out by [`layout`]: each box coloured by its state (the class
/// `state-<state>`), an arrow per input.
pub fn dag(stages: &[(String, String)], edges: &[(String, String)]) -> String {
    let lay = layout(stages, edges);
    let (w, h) = lay.size;
    let points = |pts: &[(f64, f64)]| {
        pts.iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let svg = html! {
        svg xmlns="http://www.w3.org/2000/svg" class="dag" viewBox=(format!("0 0 {w:.0} {h:.0}")) width=(format!("{w:.0}")) height=(format!("{h:.0}")) {
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" {}
                }
            }
            @for (a, b, pts) in &lay.edges {
                polyline class="edge" data-from=(stages[*a].0) data-to=(stages[*b].0) points=(points(pts)) fill="none" marker-end="url(#arrow)" {}
            }
            @for (i, (name, state)) in stages.iter().enumerate() {
                @let r = lay.boxes[i];
                g class={ "node state-" (state) } data-stage=(name) data-state=(state) {
                    rect x=(format!("{:.1}", r.x)) y=(format!("{:.1}", r.y)) width=(format!("{:.1}", r.w)) height=(format!("{:.1}", r.h)) rx="5" {}
                    text x=(format!("{:.1}", r.x + r.w / 2.0)) y=(format!("{:.1}", r.y + 14.0)) text-anchor="middle" { (name) }
                    text class="state" x=(format!("{:.1}", r.x + r.w / 2.0)) y=(format!("{:.1}", r.y + 26.0)) text-anchor="middle" { (state) }
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

    fn s(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| (n.to_string(), "cached".to_string()))
            .collect()
    }

    fn e(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// No edge segment passes through a box other than its own two ends'.
    fn no_edge_through_a_box(l: &Layout) {
        for (a, b, pts) in &l.edges {
            for seg in pts.windows(2) {
                for (i, r) in l.boxes.iter().enumerate() {
                    if i == *a || i == *b {
                        continue;
                    }
                    assert!(
                        !r.crossed_by(seg[0], seg[1]),
                        "edge {a}->{b} segment {seg:?} crosses box {i} {r:?}"
                    );
                }
            }
        }
        for (i, p) in l.boxes.iter().enumerate() {
            for q in &l.boxes[i + 1..] {
                let apart =
                    p.x + p.w <= q.x || q.x + q.w <= p.x || p.y + p.h <= q.y || q.y + q.h <= p.y;
                assert!(apart, "boxes overlap: {p:?} {q:?}");
            }
        }
    }

    #[test]
    fn a_skip_edge_goes_around_the_stages_it_skips() {
        // data -> split -> hdf5 -> train -> drop -> test, and hdf5 -> test (a skip edge
        // that a one-row layout draws through train and drop).
        let st = s(&["data", "split", "hdf5", "train", "drop", "test"]);
        let ed = e(&[
            ("data", "split"),
            ("split", "hdf5"),
            ("hdf5", "train"),
            ("train", "drop"),
            ("drop", "test"),
            ("hdf5", "test"),
        ]);
        let l = layout(&st, &ed);
        no_edge_through_a_box(&l);
        // The skip edge bends: it leaves the row of the chain.
        let skip = l.edges.iter().find(|(a, b, _)| *a == 2 && *b == 5).unwrap();
        assert!(skip.2.len() > 2, "{:?}", skip.2);
        assert!(skip
            .2
            .iter()
            .any(|p| (p.1 - (l.boxes[3].y + 16.0)).abs() > 1.0));
    }

    #[test]
    fn boxes_fit_their_names() {
        let long = "evaluate_on_the_validation_split_after_the_lr_drop";
        let st = s(&["a", long]);
        let l = layout(&st, &e(&[("a", long)]));
        assert!(
            l.boxes[1].w >= long.len() as f64 * CHAR_W,
            "{:?}",
            l.boxes[1]
        );
        no_edge_through_a_box(&l);
    }

    #[test]
    fn a_wide_graph_keeps_every_edge_clear() {
        // Two branches of different lengths joining, plus fan-out.
        let st = s(&["d", "s", "h", "t1", "t2", "t3", "x1", "ev1", "ev2", "ev3"]);
        let ed = e(&[
            ("d", "s"),
            ("s", "h"),
            ("h", "t1"),
            ("t1", "t2"),
            ("t2", "t3"),
            ("h", "x1"),
            ("h", "ev1"),
            ("t1", "ev1"),
            ("h", "ev2"),
            ("t2", "ev2"),
            ("h", "ev3"),
            ("t3", "ev3"),
            ("x1", "ev3"),
        ]);
        no_edge_through_a_box(&layout(&st, &ed));
    }

    #[test]
    fn a_crossing_is_seen_and_a_touch_is_not() {
        let r = Rect {
            x: 10.0,
            y: 10.0,
            w: 10.0,
            h: 10.0,
        };
        assert!(r.crossed_by((0.0, 15.0), (30.0, 15.0)));
        assert!(!r.crossed_by((0.0, 10.0), (30.0, 10.0)));
        assert!(!r.crossed_by((0.0, 0.0), (9.0, 30.0)));
        assert!(!r.crossed_by((20.0, 15.0), (40.0, 15.0)));
    }
}

//! Softmax fused with cross-entropy over the logits (n, k), and L2 penalties.

use super::{Ptr, Real};
use crate::backend::native::plan::View;
use crate::backend::Targets;

/// Mean cross-entropy of `softmax(logits)` against the targets' distributions (one-hot
/// labels, or mixed and smoothed: [`Targets`]); writes `dlogits = (softmax - target) / n`
/// and returns (loss, rows whose label's logit is above every other class's).
///
/// Shapes: `logits (n, k)`, `dlogits (n, k)`, `n = targets.labels.len()`.
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn softmax_cross_entropy<T: Real>(
    logits: Ptr<T>,
    lv: View,
    targets: &Targets<'_>,
    dlogits: (Ptr<T>, View),
) -> (T, usize) {
    let n = targets.labels.len();
    let inv_n = super::r::<T>(1.0 / n as f64);
    let mut loss = T::zero();
    let mut correct = 0;
    for r in 0..n {
        // SAFETY: row r of the logits and of their gradient (distinct arenas).
        let (x, d) = unsafe { (logits.row(lv, r), dlogits.0.row_mut(dlogits.1, r)) };
        let (l, hit) = cross_entropy_row(x, d, targets, r, inv_n);
        loss += l;
        correct += hit as usize;
    }
    (loss * inv_n, correct)
}

/// One row of [`softmax_cross_entropy`]: its loss `-sum(target * log softmax(x))`, its
/// gradient `(softmax(x) - target) * scale` into `d`, and whether the label's logit is above
/// every other class's (a tie is not correct: [`crate::backend::predicts`]).
fn cross_entropy_row<T: Real>(
    x: &[T],
    d: &mut [T],
    targets: &Targets<'_>,
    r: usize,
    scale: T,
) -> (T, bool) {
    let k = x.len();
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    let label = targets.dominant(r) as usize;
    let m = x[best];
    let mut z = T::zero();
    for (o, v) in d.iter_mut().zip(x) {
        *o = (*v - m).exp();
        z += *o;
    }
    let ([(a, wa), (b, wb)], base) = targets.row(r, k);
    let (wa, wb, base) = (super::r::<T>(wa), super::r::<T>(wb), super::r::<T>(base));
    // -sum_j t_j (x_j - m - ln z) = m + ln z - sum_j t_j x_j, as the targets sum to 1.
    let mut dot = wa * x[a] + wb * x[b];
    if base != T::zero() {
        dot += base * x.iter().fold(T::zero(), |s, v| s + *v);
    }
    let loss = z.ln() + m - dot;
    for (j, o) in d.iter_mut().enumerate() {
        let mut t = base;
        if j == a {
            t += wa;
        }
        if j == b {
            t += wb;
        }
        *o = (*o / z - t) * scale;
    }
    (loss, crate::backend::predicts(x, label))
}

/// [`softmax_cross_entropy`] over plain rows: `logits (n, k)` row-major, the targets of
/// `n` examples. Returns (mean loss, `dlogits (n, k)`, correct).
pub fn cross_entropy(logits: &[f32], k: usize, targets: &Targets<'_>) -> (f32, Vec<f32>, usize) {
    let n = targets.labels.len();
    assert_eq!(logits.len(), n * k, "logits (n, k)");
    let mut d = vec![0f32; n * k];
    let inv_n = 1.0 / n as f32;
    let (mut loss, mut correct) = (0f32, 0);
    for (r, (x, dr)) in logits
        .chunks_exact(k)
        .zip(d.chunks_exact_mut(k))
        .enumerate()
    {
        let (l, hit) = cross_entropy_row(x, dr, targets, r, inv_n);
        loss += l;
        correct += hit as usize;
    }
    (loss * inv_n, d, correct)
}

/// `l2 * sum(w^2)`, and `grad += 2 * l2 * w`.
pub fn l2_penalty<T: Real>(w: &[T], l2: f64, grad: &mut [T]) -> T {
    let c = super::r::<T>(l2);
    let two_c = c + c;
    let mut s = T::zero();
    for (g, v) in grad.iter_mut().zip(w) {
        s += *v * *v;
        *g += two_c * *v;
    }
    s * c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_accuracy_gives_no_credit_for_a_tie() {
        // Four rows of three classes, labels 0: right, tied with class 1 (the label first),
        // all equal (a network that has collapsed), wrong.
        let logits = [
            2.0f32, 1.0, 0.0, //
            1.0, 1.0, 0.0, //
            0.0, 0.0, 0.0, //
            0.0, 3.0, 0.0,
        ];
        let labels = [0i64; 4];
        let (loss, _, correct) = cross_entropy(&logits, 3, &Targets::plain(&labels));
        assert_eq!(correct, 1);
        assert!(loss.is_finite());
        // Mixed targets: the label with the larger weight is the one scored.
        let other = [1i64; 4];
        let mixed = Targets {
            labels: &labels,
            mix: Some((&other, 0.3)),
            smoothing: 0.0,
        };
        assert_eq!(cross_entropy(&logits, 3, &mixed).2, 1);
    }
}

//! Softmax fused with cross-entropy over the logits (n, k), and L2 penalties.

use super::{Ptr, Real};
use crate::backend::native::plan::View;

/// Mean cross-entropy of `softmax(logits)` against integer labels; writes
/// `dlogits = (softmax - onehot) / n` and returns (loss, correct arg-max predictions).
///
/// # Safety
/// The kernels' contract (see [`super`]): views inside their arenas, written rows
/// touched by nobody else, outputs aliasing inputs only as said above.
pub unsafe fn softmax_cross_entropy<T: Real>(
    logits: Ptr<T>,
    lv: View,
    labels: &[i64],
    dlogits: (Ptr<T>, View),
) -> (T, usize) {
    let n = labels.len();
    let inv_n = super::r::<T>(1.0 / n as f64);
    let mut loss = T::zero();
    let mut correct = 0;
    for (r, &l) in labels.iter().enumerate() {
        // SAFETY: row r of the logits and of their gradient (distinct arenas).
        let (x, d) = unsafe { (logits.row(lv, r), dlogits.0.row_mut(dlogits.1, r)) };
        let mut best = 0;
        for (i, v) in x.iter().enumerate() {
            if *v > x[best] {
                best = i;
            }
        }
        if best == l as usize {
            correct += 1;
        }
        let m = x[best];
        let mut z = T::zero();
        for (o, v) in d.iter_mut().zip(x) {
            *o = (*v - m).exp();
            z += *o;
        }
        loss += z.ln() + m - x[l as usize];
        for (i, o) in d.iter_mut().enumerate() {
            let t = if i == l as usize { T::one() } else { T::zero() };
            *o = (*o / z - t) * inv_n;
        }
    }
    (loss * inv_n, correct)
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

//! Random affine augmentation of one HWC image (Keras `ImageDataGenerator` semantics:
//! rotation, width/height shift, shear, zoom, horizontal flip; fill `nearest`; bilinear
//! sampling). The random draws come from the caller's RNG, so a seed fixes the result.

use rand::Rng;

use crate::manifest::AugmentConfig;

/// Whether the config changes images at all.
pub fn is_identity(a: &AugmentConfig) -> bool {
    a.width_shift == 0.0
        && a.height_shift == 0.0
        && !a.flip
        && a.rotation == 0.0
        && a.zoom == 0.0
        && a.shear == 0.0
}

fn uniform(rng: &mut impl Rng, r: f64) -> f64 {
    if r > 0.0 {
        rng.random_range(-r..r)
    } else {
        0.0
    }
}

/// Transform `src` (h x w x 3, u8) into `dst` (same size, f32), subtracting nothing.
pub fn augment(
    src: &[u8],
    h: usize,
    w: usize,
    a: &AugmentConfig,
    rng: &mut impl Rng,
    dst: &mut [f32],
) {
    let theta = uniform(rng, a.rotation).to_radians();
    let tx = uniform(rng, a.width_shift) * w as f64;
    let ty = uniform(rng, a.height_shift) * h as f64;
    let shear = uniform(rng, a.shear).to_radians();
    let (zx, zy) = if a.zoom > 0.0 {
        (
            rng.random_range(1.0 - a.zoom..1.0 + a.zoom),
            rng.random_range(1.0 - a.zoom..1.0 + a.zoom),
        )
    } else {
        (1.0, 1.0)
    };
    let flip = a.flip && rng.random::<f64>() < 0.5;
    // Output -> input mapping about the centre: rotation, then shear, then zoom, then shift.
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let (ct, st) = (theta.cos(), theta.sin());
    for y in 0..h {
        for x in 0..w {
            let xo = if flip { w - 1 - x } else { x };
            let u = xo as f64 - cx;
            let v = y as f64 - cy;
            let (ru, rv) = (ct * u - st * v, st * u + ct * v);
            let (su, sv) = (ru - shear.sin() * rv, shear.cos() * rv);
            let sx = su * zx + cx + tx;
            let sy = sv * zy + cy + ty;
            // fill = nearest: clamp to the border.
            let sx = sx.clamp(0.0, w as f64 - 1.0);
            let sy = sy.clamp(0.0, h as f64 - 1.0);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (fx, fy) = ((sx - x0 as f64) as f32, (sy - y0 as f64) as f32);
            for c in 0..3 {
                let p = |yy: usize, xx: usize| src[(yy * w + xx) * 3 + c] as f32;
                let top = p(y0, x0) * (1.0 - fx) + p(y0, x1) * fx;
                let bot = p(y1, x0) * (1.0 - fx) + p(y1, x1) * fx;
                dst[(y * w + x) * 3 + c] = top * (1.0 - fy) + bot * fy;
            }
        }
    }
}

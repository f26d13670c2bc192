// The native backend's own CUDA kernels: one per op that cuDNN and cuBLAS do not cover.
// Compiled at run time by NVRTC to a CUBIN for the GPU's compute capability.
//
// Conventions (the planner's views, see plan.rs): an activation is `rows` rows of `c`
// floats, row r at `base + r * ld` (ld >= c: a channel slice of a concat). Image rows run
// (image, y, x), so a batch is NHWC with pixel stride ld. `acc` != 0 adds into the
// destination instead of overwriting it. Grid-stride loops: any launch size is correct.

typedef long long i64;
#define NEG_INF __int_as_float(0xff800000)

#define FOR_EACH(i, total) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (total); \
         i += (i64)blockDim.x * gridDim.x)

__device__ __forceinline__ void store(float* p, float v, int acc) {
    if (acc) { *p += v; } else { *p = v; }
}

// relu_forward: y (rows, c) = max(x, 0).
extern "C" __global__ void relu_forward(const float* x, i64 ldx, float* y, i64 ldy, i64 rows, i64 c) {
    FOR_EACH(i, rows * c) {
        i64 r = i / c, k = i % c;
        float v = x[r * ldx + k];
        y[r * ldy + k] = v > 0.f ? v : 0.f;
    }
}

// relu_backward: dx (rows, c) [+]= dy * (y > 0). In place (dx == dy) is allowed.
extern "C" __global__ void relu_backward(const float* y, i64 ldy, const float* dy, i64 lddy,
                                         float* dx, i64 lddx, i64 rows, i64 c, int acc) {
    FOR_EACH(i, rows * c) {
        i64 r = i / c, k = i % c;
        float g = y[r * ldy + k] > 0.f ? dy[r * lddy + k] : 0.f;
        store(&dx[r * lddx + k], g, acc);
    }
}

// elu_forward: y (rows, c) = x > 0 ? x : alpha * (exp(x) - 1).
extern "C" __global__ void elu_forward(const float* x, i64 ldx, float* y, i64 ldy, i64 rows, i64 c,
                                       float alpha) {
    FOR_EACH(i, rows * c) {
        i64 r = i / c, k = i % c;
        float v = x[r * ldx + k];
        y[r * ldy + k] = v > 0.f ? v : alpha * (expf(v) - 1.f);
    }
}

// elu_backward: dx (rows, c) [+]= x > 0 ? dy : dy * alpha * exp(x).
extern "C" __global__ void elu_backward(const float* x, i64 ldx, const float* dy, i64 lddy,
                                        float* dx, i64 lddx, i64 rows, i64 c, float alpha, int acc) {
    FOR_EACH(i, rows * c) {
        i64 r = i / c, k = i % c;
        float v = x[r * ldx + k], d = dy[r * lddy + k];
        store(&dx[r * lddx + k], v > 0.f ? d : d * alpha * expf(v), acc);
    }
}

// dropout_forward: y (rows, c) = x * mask; mask is (rows, c) packed, 0 or 1/keep.
extern "C" __global__ void dropout_forward(const float* x, i64 ldx, const float* mask, float* y,
                                           i64 ldy, i64 rows, i64 c) {
    FOR_EACH(i, rows * c) {
        i64 r = i / c, k = i % c;
        y[r * ldy + k] = x[r * ldx + k] * mask[i];
    }
}

// dropout_backward: dx (rows, c) [+]= dy * mask. In place allowed.
extern "C" __global__ void dropout_backward(const float* mask, const float* dy, i64 lddy, float* dx,
                                            i64 lddx, i64 rows, i64 c, int acc) {
    FOR_EACH(i, rows * c) {
        i64 r = i / c, k = i % c;
        store(&dx[r * lddx + k], dy[r * lddy + k] * mask[i], acc);
    }
}

// copy_rows: dst (rows, c) [+]= src (rows, c). Concat slices, add's extra inputs, flatten
// (rows = n, c = h*w*ch) and the gradients that fan out from them.
extern "C" __global__ void copy_rows(const float* src, i64 lds, float* dst, i64 ldd, i64 rows, i64 c,
                                     int acc) {
    FOR_EACH(i, rows * c) {
        i64 r = i / c, k = i % c;
        store(&dst[r * ldd + k], src[r * lds + k], acc);
    }
}

// add_forward: y (rows, c) = a + b.
extern "C" __global__ void add_forward(const float* a, i64 lda, const float* b, i64 ldb, float* y,
                                       i64 ldy, i64 rows, i64 c) {
    FOR_EACH(i, rows * c) {
        i64 r = i / c, k = i % c;
        y[r * ldy + k] = a[r * lda + k] + b[r * ldb + k];
    }
}

// bias_forward: y (rows, c) += bias (c).
extern "C" __global__ void bias_forward(float* y, i64 ldy, const float* bias, i64 rows, i64 c) {
    FOR_EACH(i, rows * c) {
        i64 r = i / c, k = i % c;
        y[r * ldy + k] += bias[k];
    }
}

// bias_backward: dbias (c) += column sums of dy (rows, c). Block (32, 8); grid.x covers
// the columns in 32s, grid.y splits the rows; partial sums meet by atomicAdd (dbias is
// zeroed once per step with the other gradients).
extern "C" __global__ void bias_backward(const float* dy, i64 lddy, float* dbias, i64 rows, i64 c) {
    __shared__ float part[8][33];
    i64 k = (i64)blockIdx.x * 32 + threadIdx.x;
    float s = 0.f;
    if (k < c) {
        for (i64 r = (i64)blockIdx.y * 8 + threadIdx.y; r < rows; r += (i64)gridDim.y * 8) {
            s += dy[r * lddy + k];
        }
    }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && k < c) {
        float t = 0.f;
        for (int j = 0; j < 8; ++j) t += part[j][threadIdx.x];
        atomicAdd(&dbias[k], t);
    }
}

// Window geometry shared by the pools: input (n, h, w, c), output (n, oh, ow, c), window
// (kh, kw), stride (sh, sw), padding before (pt, pl); padded taps are skipped.
struct Pool {
    i64 n, h, w, c, oh, ow;
    int kh, kw, sh, sw, pt, pl;
};

// maxpool_forward: y (n, oh, ow, c) = max over each window's valid taps of x (n, h, w, c).
extern "C" __global__ void maxpool_forward(const float* x, i64 ldx, float* y, i64 ldy, Pool g) {
    FOR_EACH(i, g.n * g.oh * g.ow * g.c) {
        i64 k = i % g.c, o = i / g.c;
        i64 ox = o % g.ow, oy = (o / g.ow) % g.oh, b = o / (g.ow * g.oh);
        float m = -1e30f;  // the CPU's start value: a window of padding only gives it too
        for (int ty = 0; ty < g.kh; ++ty) {
            i64 iy = oy * g.sh - g.pt + ty;
            if (iy < 0 || iy >= g.h) continue;
            for (int tx = 0; tx < g.kw; ++tx) {
                i64 ix = ox * g.sw - g.pl + tx;
                if (ix < 0 || ix >= g.w) continue;
                m = fmaxf(m, x[((b * g.h + iy) * g.w + ix) * ldx + k]);
            }
        }
        y[o * ldy + k] = m;
    }
}

// maxpool_backward: dx (n, h, w, c) [+]= for every window whose max this tap equals, that
// window's dy divided by its number of taps equal to the max (ties split, like the CPU).
extern "C" __global__ void maxpool_backward(const float* x, i64 ldx, const float* y, i64 ldy,
                                            const float* dy, i64 lddy, float* dx, i64 lddx, Pool g,
                                            int acc) {
    FOR_EACH(i, g.n * g.h * g.w * g.c) {
        i64 k = i % g.c, p = i / g.c;
        i64 ix = p % g.w, iy = (p / g.w) % g.h, b = p / (g.w * g.h);
        float v = x[p * ldx + k], s = 0.f;
        i64 oy0 = iy + g.pt - g.kh + 1, ox0 = ix + g.pl - g.kw + 1;
        oy0 = oy0 <= 0 ? 0 : (oy0 + g.sh - 1) / g.sh;
        ox0 = ox0 <= 0 ? 0 : (ox0 + g.sw - 1) / g.sw;
        i64 oy1 = min((iy + g.pt) / g.sh, g.oh - 1), ox1 = min((ix + g.pl) / g.sw, g.ow - 1);
        for (i64 oy = oy0; oy <= oy1; ++oy) {
            for (i64 ox = ox0; ox <= ox1; ++ox) {
                i64 o = (b * g.oh + oy) * g.ow + ox;
                float m = y[o * ldy + k];
                if (v != m) continue;
                int ties = 0;
                for (int ty = 0; ty < g.kh; ++ty) {
                    i64 jy = oy * g.sh - g.pt + ty;
                    if (jy < 0 || jy >= g.h) continue;
                    for (int tx = 0; tx < g.kw; ++tx) {
                        i64 jx = ox * g.sw - g.pl + tx;
                        if (jx < 0 || jx >= g.w) continue;
                        ties += x[((b * g.h + jy) * g.w + jx) * ldx + k] == m;
                    }
                }
                s += dy[o * lddy + k] / (float)ties;
            }
        }
        store(&dx[p * lddx + k], s, acc);
    }
}

__device__ __forceinline__ int valid_taps(const Pool& g, i64 oy, i64 ox) {
    i64 y0 = max(oy * g.sh - g.pt, (i64)0), y1 = min(oy * g.sh - g.pt + g.kh, g.h);
    i64 x0 = max(ox * g.sw - g.pl, (i64)0), x1 = min(ox * g.sw - g.pl + g.kw, g.w);
    i64 t = (y1 - y0) * (x1 - x0);
    return t > 0 ? (int)t : 1;
}

// avgpool_forward: y (n, oh, ow, c) = mean of each window's valid taps of x (n, h, w, c).
extern "C" __global__ void avgpool_forward(const float* x, i64 ldx, float* y, i64 ldy, Pool g) {
    FOR_EACH(i, g.n * g.oh * g.ow * g.c) {
        i64 k = i % g.c, o = i / g.c;
        i64 ox = o % g.ow, oy = (o / g.ow) % g.oh, b = o / (g.ow * g.oh);
        float s = 0.f;
        for (int ty = 0; ty < g.kh; ++ty) {
            i64 iy = oy * g.sh - g.pt + ty;
            if (iy < 0 || iy >= g.h) continue;
            for (int tx = 0; tx < g.kw; ++tx) {
                i64 ix = ox * g.sw - g.pl + tx;
                if (ix < 0 || ix >= g.w) continue;
                s += x[((b * g.h + iy) * g.w + ix) * ldx + k];
            }
        }
        y[o * ldy + k] = s / (float)valid_taps(g, oy, ox);
    }
}

// avgpool_backward: dx (n, h, w, c) [+]= sum over covering windows of dy / valid taps.
extern "C" __global__ void avgpool_backward(const float* dy, i64 lddy, float* dx, i64 lddx, Pool g,
                                            int acc) {
    FOR_EACH(i, g.n * g.h * g.w * g.c) {
        i64 k = i % g.c, p = i / g.c;
        i64 ix = p % g.w, iy = (p / g.w) % g.h, b = p / (g.w * g.h);
        float s = 0.f;
        i64 oy0 = iy + g.pt - g.kh + 1, ox0 = ix + g.pl - g.kw + 1;
        oy0 = oy0 <= 0 ? 0 : (oy0 + g.sh - 1) / g.sh;
        ox0 = ox0 <= 0 ? 0 : (ox0 + g.sw - 1) / g.sw;
        i64 oy1 = min((iy + g.pt) / g.sh, g.oh - 1), ox1 = min((ix + g.pl) / g.sw, g.ow - 1);
        for (i64 oy = oy0; oy <= oy1; ++oy) {
            for (i64 ox = ox0; ox <= ox1; ++ox) {
                i64 o = (b * g.oh + oy) * g.ow + ox;
                s += dy[o * lddy + k] / (float)valid_taps(g, oy, ox);
            }
        }
        store(&dx[p * lddx + k], s, acc);
    }
}

// global_avgpool_forward: y (n, c) = mean over the hw rows of each image of x (n*hw, c).
extern "C" __global__ void global_avgpool_forward(const float* x, i64 ldx, float* y, i64 ldy, i64 n,
                                                  i64 hw, i64 c) {
    FOR_EACH(i, n * c) {
        i64 k = i % c, b = i / c;
        float s = 0.f;
        for (i64 p = 0; p < hw; ++p) s += x[(b * hw + p) * ldx + k];
        y[b * ldy + k] = s / (float)hw;
    }
}

// global_avgpool_backward: dx (n*hw, c) [+]= dy (n, c) / hw.
extern "C" __global__ void global_avgpool_backward(const float* dy, i64 lddy, float* dx, i64 lddx,
                                                   i64 n, i64 hw, i64 c, int acc) {
    FOR_EACH(i, n * hw * c) {
        i64 k = i % c, p = i / c, b = p / hw;
        store(&dx[p * lddx + k], dy[b * lddy + k] / (float)hw, acc);
    }
}

// softmax_forward: y (rows, c) = exp(x - max) / sum, one thread per row.
extern "C" __global__ void softmax_forward(const float* x, i64 ldx, float* y, i64 ldy, i64 rows,
                                           i64 c) {
    FOR_EACH(r, rows) {
        const float* xr = x + r * ldx;
        float* yr = y + r * ldy;
        float m = NEG_INF, z = 0.f;
        for (i64 k = 0; k < c; ++k) m = fmaxf(m, xr[k]);
        for (i64 k = 0; k < c; ++k) { yr[k] = expf(xr[k] - m); z += yr[k]; }
        for (i64 k = 0; k < c; ++k) yr[k] /= z;
    }
}

// softmax_backward: dx (rows, c) [+]= y * (dy - sum(dy * y)), one thread per row.
extern "C" __global__ void softmax_backward(const float* y, i64 ldy, const float* dy, i64 lddy,
                                            float* dx, i64 lddx, i64 rows, i64 c, int acc) {
    FOR_EACH(r, rows) {
        float d = 0.f;
        for (i64 k = 0; k < c; ++k) d += dy[r * lddy + k] * y[r * ldy + k];
        for (i64 k = 0; k < c; ++k) {
            store(&dx[r * lddx + k], y[r * ldy + k] * (dy[r * lddy + k] - d), acc);
        }
    }
}

// softmax_cross_entropy: for logits (n, k) and labels a, b (n; b = a unless mixed), with
// lambda = hyper[5] (the weight of a) and label smoothing e = hyper[6]: the target is
// t = (1-e)(lambda onehot(a) + (1-lambda) onehot(b)) + e/k; dlogits = (softmax - t) / n;
// stats[0] += the batch's summed cross-entropy -sum(t log softmax), stats[1] += rows whose
// logit of the label with the larger weight is above every other class's (a tie or a NaN
// is not correct). The stats stay on the device until the host reads them.
extern "C" __global__ void softmax_cross_entropy(const float* x, i64 ldx, const int* labels,
                                                 const int* labels2, i64 n, i64 k, float* dx,
                                                 i64 lddx, const float* hyper, float* stats) {
    float lambda = hyper[5], e = hyper[6];
    float wa = (1.f - e) * lambda, wb = (1.f - e) * (1.f - lambda), base = e / (float)k;
    FOR_EACH(r, n) {
        const float* xr = x + r * ldx;
        float* dr = dx + r * lddx;
        int a = labels[r], b = labels2[r], best = 0;
        for (i64 j = 1; j < k; ++j) if (xr[j] > xr[best]) best = (int)j;
        float m = xr[best], z = 0.f, dot = wa * xr[a] + wb * xr[b];
        if (base != 0.f) {
            float s = 0.f;
            for (i64 j = 0; j < k; ++j) s += xr[j];
            dot += base * s;
        }
        for (i64 j = 0; j < k; ++j) { dr[j] = expf(xr[j] - m); z += dr[j]; }
        float inv_n = 1.f / (float)n;
        for (i64 j = 0; j < k; ++j) {
            float t = base;
            if (j == a) t += wa;
            if (j == b) t += wb;
            dr[j] = (dr[j] / z - t) * inv_n;
        }
        atomicAdd(&stats[0], logf(z) + m - dot);
        int lab = lambda < 0.5f ? b : a;
        bool hit = true;
        for (i64 j = 0; j < k; ++j) if (j != lab && !(xr[j] < xr[lab])) { hit = false; break; }
        if (hit) atomicAdd(&stats[1], 1.f);
    }
}

// batchnorm_running_single: the running-statistics update of a batch norm over a single
// row (n*h*w == 1), where cuDNN's unbiased variance is undefined: mean = m*mean + (1-m)*x,
// var = m*var (the batch variance is 0), as on the CPU.
extern "C" __global__ void batchnorm_running_single(float* mean, float* var, const float* batch_mean,
                                                    i64 c, float m) {
    FOR_EACH(k, c) {
        mean[k] = m * mean[k] + (1.f - m) * batch_mean[k];
        var[k] = m * var[k];
    }
}

// l2_backward: g (len) += 2 * l2 * w (the gradient of l2 * sum(w^2)).
extern "C" __global__ void l2_backward(const float* w, float* g, i64 len, float l2) {
    FOR_EACH(i, len) { g[i] += 2.f * l2 * w[i]; }
}

// sgd_update: w *= keep (decoupled decay; keep = 1 - lr * wd, 1 without); v = momentum * v -
// lr * g; w += v (Nesterov: w += momentum * v - lr * g). The rates are read from the device
// (hyper[0] lr, hyper[2] keep, hyper[3] momentum) so a captured step replays with new ones
// (a schedule, one-cycle's momentum).
extern "C" __global__ void sgd_update(float* w, const float* g, float* v, i64 len, const float* hyper,
                                      int nesterov) {
    float lr = hyper[0], keep = hyper[2], momentum = hyper[3];
    FOR_EACH(i, len) {
        float vel = momentum * v[i] - lr * g[i];
        v[i] = vel;
        w[i] = w[i] * keep + (nesterov ? momentum * vel - lr * g[i] : vel);
    }
}

// adam_update: w *= keep; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// w -= lr_t m / (sqrt(v) + eps_t), with lr_t = hyper[1] (bias-corrected), keep = hyper[2],
// b1 = hyper[3] and eps_t = hyper[4] read from the device (AdamW: eps_t = eps * sqrt(1 - b2^t),
// which is torch's eps added to the bias-corrected sqrt(v)).
extern "C" __global__ void adam_update(float* w, const float* g, float* m, float* v, i64 len,
                                       const float* hyper, float b2) {
    float lr_t = hyper[1], keep = hyper[2], b1 = hyper[3], eps = hyper[4];
    FOR_EACH(i, len) {
        float gi = g[i];
        m[i] = b1 * m[i] + (1.f - b1) * gi;
        v[i] = b2 * v[i] + (1.f - b2) * gi * gi;
        w[i] = w[i] * keep - lr_t * m[i] / (sqrtf(v[i]) + eps);
    }
}

// ema_update: e (len) += wt * (x - e): the moving average of x, wt = 1 - decay.
extern "C" __global__ void ema_update(float* e, const float* x, i64 len, float wt) {
    FOR_EACH(i, len) e[i] += wt * (x[i] - e[i]);
}

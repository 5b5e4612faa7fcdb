/* One training step's forward and backward pass through a stack of affine or
 * rational-quadratic spline couplings and permutations, for the rows of one part of a
 * batch, in float32 on one thread.
 *
 * The same arithmetic as the TorchScript kernels (realnvp/bijections/_kernels.py,
 * coupling_forward and coupling_backward) and, for splines, as
 * realnvp/bijections/spline.py; see realnvp/training/native.py for the contract.
 * The matrix products of wide layers go to the BLAS that torch itself links (its sgemm_,
 * passed in by rnvp_set_blas); everything else is plain loops over rows, each layer's
 * elementwise steps done in one pass while its rows are in cache.
 *
 * Layers are described by five integers each, meta[5 i ..]: kind (0 affine coupling, 1
 * permutation, 2 spline coupling), d1 (kept features), d2 (transformed features), n
 * (linear layers of the conditioner, input to output), K (a spline's bins; else 0). The
 * other arrays are read in layer order: index (a coupling's d1 kept then d2 transformed
 * columns; a permutation's dim-long permutation then its inverse), widths (per linear
 * layer: out, in), bounds (per coupling: input bound, then the scale bound of an affine
 * coupling or the interval bound B of a spline; an input or scale bound <= 0 means none),
 * params and grads (per linear layer: weight, bias). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void (*sgemm_fn)(const char *, const char *, const int *, const int *, const int *,
                         const float *, const float *, const int *, const float *,
                         const int *, const float *, float *, const int *);
typedef int (*threads_fn)(int);

static sgemm_fn blas_sgemm = NULL;
static threads_fn blas_threads_local = NULL;

enum { COUPLING = 0, PERMUTE = 1, SPLINE = 2 };
#define META 5  /* integers per layer in meta */

/* exp and tanh written so that loops over rows vectorise (libm's are calls, one value at a
 * time); within 2 ulp of the exact values, as torch's own vectorised versions are. */

/* exp(y) for y in [-87, 88] (clamped to it): y = k ln 2 + f with |f| <= ln 2 / 2 (ln 2 in
 * two parts, so k ln 2 is exact), exp(f) by its Taylor series to f^7 (remainder < 6e-9
 * relative), times 2^k built in the exponent bits. */
static inline float exp_approx(float y) {
    y = y < -87.0f ? -87.0f : (y > 88.0f ? 88.0f : y);
    const float round = 12582912.0f;  /* 1.5 * 2^23: adding it rounds to an integer */
    const float k = (y * 1.44269504088896341f + round) - round;
    const float f = (y - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * f + 1.0f / 720.0f;
    p = p * f + 1.0f / 120.0f;
    p = p * f + 1.0f / 24.0f;
    p = p * f + 1.0f / 6.0f;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)k + 127) << 23;
    return p * scale.f;
}

/* tanh(x): below |x| = 0.55 its Taylor series to x^17 (remainder < 5e-9 relative), above
 * it 1 - 2 / (exp(2 |x|) + 1) with the sign of x (|x| capped at 9, where tanh is 1 in
 * float32). NaN stays NaN. */
static inline float tanh_approx(float x) {
    const float ax = fabsf(x), x2 = x * x;
    float p = 0.000590027440945586f;
    p = p * x2 - 0.0014558343870513183f;
    p = p * x2 + 0.003592128036572481f;
    p = p * x2 - 0.008863235529902197f;
    p = p * x2 + 0.021869488536155203f;
    p = p * x2 - 0.05396825396825397f;
    p = p * x2 + 0.13333333333333333f;
    p = p * x2 - 0.3333333333333333f;
    const float small = x + x * (p * x2);
    const float e = exp_approx(2.0f * (ax < 9.0f ? ax : 9.0f));
    const float large = copysignf(1.0f - 2.0f / (e + 1.0f), x);
    return ax < 0.55f ? small : large;
}

/* log(x) for positive normal x: x = 2^e m with m in [sqrt(1/2), sqrt(2)), log m =
 * 2 atanh(q) with q = (m - 1) / (m + 1), |q| <= 0.172, by its series to q^13 (remainder
 * < 1e-11 relative), plus e ln 2 with ln 2 in two parts: within 1.9 ulp of float64's
 * log over [1e-30, 1e30]. NaN stays NaN (through x - x, which a loop vectorises where it
 * would not a select on x != x). */
static inline float log_approx(float x) {
    union { float f; int32_t i; } v;
    v.f = x;
    const int32_t bits = v.i, big = (bits & 0x007fffff) > 0x3504f3;  /* mantissa > sqrt 2 */
    const float e = (float)(((bits >> 23) & 0xff) - 127 + big);
    v.i = (bits & 0x007fffff) | ((127 - big) << 23);
    const float m = v.f, q = (m - 1.0f) / (m + 1.0f), q2 = q * q;
    float p = 1.0f / 13.0f;
    p = p * q2 + 1.0f / 11.0f;
    p = p * q2 + 1.0f / 9.0f;
    p = p * q2 + 1.0f / 7.0f;
    p = p * q2 + 1.0f / 5.0f;
    p = p * q2 + 1.0f / 3.0f;
    const float r = (2.0f * q + 2.0f * q * (p * q2) + e * 1.428606765330187e-06f)
                    + e * 0.693145751953125f;
    return r + (x - x);
}

/* Hidden layers with at most THIN_IN inputs take loops instead of sgemm (a product with one
 * side this thin runs far below the machine's speed in a general matrix product). */
#define THIN_IN 1
/* Rows per block of the column-by-column loops: a block's rows stay in the L1 cache. */
#define ROW_BLOCK 64

void rnvp_set_blas(void *sgemm, void *threads_local) {
    blas_sgemm = (sgemm_fn)sgemm;
    blas_threads_local = (threads_fn)threads_local;
}

/* Row-major C (m x n) = op(A) op(B) + beta C, as column-major sgemm on the transposes. */
static void gemm(int ta, int tb, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
    const int im = (int)m, in = (int)n, ik = (int)k, ila = (int)lda, ilb = (int)ldb,
              ilc = (int)ldc;
    const float one = 1.0f;
    blas_sgemm(&cb, &ca, &in, &im, &ik, &one, b, &ilb, a, &ila, &beta, c, &ilc);
}

/* A hidden layer: out (rows x o) = relu(a (rows x i) W^T + bias), W is o x i. */
static void hidden_forward(int64_t rows, int64_t o, int64_t i, const float *restrict a,
                           const float *restrict w, const float *restrict bias,
                           float *restrict out) {
    if (i <= THIN_IN) {
        for (int64_t r = 0; r < rows; r++) {
            float *restrict row = out + r * o;
#pragma omp simd
            for (int64_t j = 0; j < o; j++) {
                float v = bias[j];
                for (int64_t q = 0; q < i; q++) v += a[r * i + q] * w[j * i + q];
                row[j] = v < 0.0f ? 0.0f : v;
            }
        }
        return;
    }
    gemm(0, 1, rows, o, i, a, i, w, i, 0.0f, out, o);
    for (int64_t r = 0; r < rows; r++) {
        float *restrict row = out + r * o;
#pragma omp simd
        for (int64_t j = 0; j < o; j++) {
            const float v = row[j] + bias[j];
            row[j] = v < 0.0f ? 0.0f : v;
        }
    }
}

/* gin (rows x i) zeroed where `act` (a ReLU's output) was not positive, and its column
 * sums (the next layer down's bias gradient) written into `sums`: one pass. */
static void relu_mask_and_sums(int64_t rows, int64_t i, const float *restrict act,
                               float *restrict gin, float *restrict sums) {
    memset(sums, 0, (size_t)i * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        float *restrict row = gin + r * i;
        const float *ar = act + r * i;
#pragma omp simd
        for (int64_t q = 0; q < i; q++) {
            const float v = ar[q] > 0.0f ? row[q] : 0.0f;
            row[q] = v;
            sums[q] += v;
        }
    }
}

/* A hidden layer's gradients from g (rows x o), d loss / d its pre-activation, whose
 * column sums, its bias gradient, are already in gb: gw = g^T a (o x i), and gin (rows x
 * i) = g W. With `act` (the layer's input, a ReLU's output; NULL: the conditioner's
 * input) gin is zeroed where act was not positive and its column sums go to gb_in, the
 * bias gradient of the layer below. */
static void hidden_backward(int64_t rows, int64_t o, int64_t i, const float *restrict g,
                            const float *restrict a, const float *restrict w,
                            const float *restrict act, float *restrict gw,
                            float *restrict gin, float *restrict gb_in) {
    if (i <= THIN_IN) {
        memset(gw, 0, (size_t)(o * i) * sizeof(float));
        if (act != NULL) memset(gb_in, 0, (size_t)i * sizeof(float));
        for (int64_t r = 0; r < rows; r++) {
            const float *gr = g + r * o;
            for (int64_t q = 0; q < i; q++) {
                const float aq = a[r * i + q];
                float v = 0.0f;
#pragma omp simd reduction(+ : v)
                for (int64_t j = 0; j < o; j++) {
                    gw[j * i + q] += gr[j] * aq;
                    v += gr[j] * w[j * i + q];
                }
                if (act != NULL) {
                    v = act[r * i + q] > 0.0f ? v : 0.0f;
                    gb_in[q] += v;
                }
                gin[r * i + q] = v;
            }
        }
        return;
    }
    gemm(1, 0, o, i, rows, g, o, a, i, 0.0f, gw, i);
    gemm(0, 0, rows, i, o, g, o, w, i, 0.0f, gin, i);
    if (act != NULL) relu_mask_and_sums(rows, i, act, gin, gb_in);
}

/* The output layer, transposed (its few outputs would make short rows): outT (o x rows) =
 * W a^T + bias, for W (o x i) and a (rows x i). */
static void head_forward(int64_t rows, int64_t o, int64_t i, const float *restrict a,
                         const float *restrict w, const float *restrict bias,
                         float *restrict out_t) {
    gemm(0, 1, o, rows, i, w, i, a, i, 0.0f, out_t, rows);
    for (int64_t j = 0; j < o; j++) {
        const float bj = bias[j];
        float *restrict row = out_t + j * rows;
#pragma omp simd
        for (int64_t r = 0; r < rows; r++) row[r] += bj;
    }
}

/* The output layer's gradients from gT (o x rows): gw = gT a (o x i), gb = row sums of gT,
 * gin (rows x i) = gT^T W; with `act`, masked and summed into gb_in as in
 * hidden_backward. (Loops for gin's few-term sums measured 50% slower than sgemm.) */
static void head_backward(int64_t rows, int64_t o, int64_t i, const float *restrict g_t,
                          const float *restrict a, const float *restrict w,
                          const float *restrict act, float *restrict gw, float *restrict gb,
                          float *restrict gin, float *restrict gb_in) {
    for (int64_t j = 0; j < o; j++) {
        const float *row = g_t + j * rows;
        float v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (int64_t r = 0; r < rows; r++) v += row[r];
        gb[j] = v;
    }
    gemm(0, 0, o, i, rows, g_t, rows, a, i, 0.0f, gw, i);
    gemm(1, 0, rows, i, o, g_t, rows, w, i, 0.0f, gin, i);
    if (act != NULL) relu_mask_and_sums(rows, i, act, gin, gb_in);
}

/* Rational-quadratic splines (realnvp/bijections/spline.py: rq_knots, rq_derivatives,
 * rq_spline), one transformed feature over a block of n <= ROW_BLOCK rows. */
#define SPLINE_MIN_SIZE 1e-3f        /* smallest bin, as a fraction of [-B, B] */
#define SPLINE_MIN_DERIVATIVE 1e-3f  /* smallest interior knot derivative */
#define SOFTPLUS_OF_ONE 0.5413248546129181f  /* log(e - 1): softplus of it is 1 */
#define SPLINE_ROWS 19               /* per-row arrays of the scratch */

/* Floats of scratch spline_block needs for K bins. */
static int64_t spline_scratch(int64_t K) { return ROW_BLOCK * (9 * (K + 1) + SPLINE_ROWS); }

/* u[p * ldu + r]: raw parameter p of row r (K widths, K heights, K - 1 interior
 * derivatives, unnormalised), x[r * xs]: row r's input. Forward (gy NULL): y[r * ys] =
 * the spline's value, ld[r] += log dy/dx; B bounds the interval, the identity outside.
 * Backward (gy[r * gys]: the loss's gradient with respect to y; gl: with respect to each
 * log dy/dx): gu[p * ldg + r] = the gradient with respect to raw parameter p, gx[r * gxs]
 * with respect to x. The knots, derivatives and bin are computed again for the backward.
 * Every loop over rows is written to vectorise (one SIMD lane per row). */
static void spline_block(int64_t n, int64_t K, float B, const float *u, int64_t ldu,
                         const float *x, int64_t xs, float *y, int64_t ys, float *ld,
                         const float *gy, int64_t gys, float gl, float *gu, int64_t ldg,
                         float *gx, int64_t gxs, float *scratch) {
    const int64_t R = ROW_BLOCK, K1 = K + 1;
    const float spread = 1.0f - (float)K * SPLINE_MIN_SIZE;
    const float e1 = exp_approx(-SOFTPLUS_OF_ONE);
    const float unit = 1.0f / (SOFTPLUS_OF_ONE + log_approx(1.0f + e1));  /* 1 up to rounding */
    float *sw = scratch, *sh = sw + K1 * R, *xk = sh + K1 * R, *yk = xk + K1 * R;
    float *dk = yk + K1 * R, *sg = dk + K1 * R, *g1 = sg + K1 * R, *g2 = g1 + K1 * R;
    float *g3 = g2 + K1 * R, *row = g3 + K1 * R;
    float *xc = row, *bin = row + R, *acc = row + 2 * R, *mx = row + 3 * R;
    float *gx0 = row + 4 * R, *gx1 = row + 5 * R, *gy0 = row + 6 * R, *gy1 = row + 7 * R;
    float *gd0 = row + 8 * R, *gd1 = row + 9 * R, *inside = row + 10 * R;
    float *x0 = row + 11 * R, *x1 = row + 12 * R, *y0 = row + 13 * R, *y1 = row + 14 * R;
    float *d0 = row + 15 * R, *d1 = row + 16 * R, *out = row + 17 * R, *gin = row + 18 * R;

    /* Bin sizes by softmax, then knots: widths into sw / xk, heights into sh / yk. */
    for (int side = 0; side < 2; side++) {
        const float *us = u + side * K * ldu;
        float *sz = side ? sh : sw, *kn = side ? yk : xk;
        for (int64_t r = 0; r < n; r++) mx[r] = us[r];
        for (int64_t p = 1; p < K; p++)
#pragma omp simd
            for (int64_t r = 0; r < n; r++) mx[r] = us[p * ldu + r] > mx[r] ? us[p * ldu + r] : mx[r];
        for (int64_t r = 0; r < n; r++) acc[r] = 0.0f;
        for (int64_t p = 0; p < K; p++)
#pragma omp simd
            for (int64_t r = 0; r < n; r++) {
                const float e = exp_approx(us[p * ldu + r] - mx[r]);
                sz[p * R + r] = e;
                acc[r] += e;
            }
        for (int64_t r = 0; r < n; r++) acc[r] = 1.0f / acc[r];
        for (int64_t p = 0; p < K; p++)
#pragma omp simd
            for (int64_t r = 0; r < n; r++) sz[p * R + r] *= acc[r];
        for (int64_t r = 0; r < n; r++) {
            acc[r] = 0.0f;
            kn[r] = -B;
            kn[K * R + r] = B;
        }
        for (int64_t p = 0; p + 1 < K; p++)
#pragma omp simd
            for (int64_t r = 0; r < n; r++) {
                acc[r] += SPLINE_MIN_SIZE + spread * sz[p * R + r];
                kn[(p + 1) * R + r] = 2.0f * B * acc[r] - B;
            }
    }
    /* Knot derivatives: 1 at both ends, d_min + (1 - d_min) softplus(u + c) inside, with
     * softplus(z) = max(z, 0) + log(1 + exp(-|z|)); for the backward, sg keeps d d_i / d u. */
    for (int64_t r = 0; r < n; r++) {
        dk[r] = 1.0f;
        dk[K * R + r] = 1.0f;
    }
    for (int64_t i = 1; i < K; i++) {
        const float *ud = u + (2 * K + i - 1) * ldu;
#pragma omp simd
        for (int64_t r = 0; r < n; r++) acc[r] = exp_approx(-fabsf(ud[r] + SOFTPLUS_OF_ONE));
#pragma omp simd
        for (int64_t r = 0; r < n; r++) {
            const float z = ud[r] + SOFTPLUS_OF_ONE, e = acc[r], inv = 1.0f / (1.0f + e);
            const float softplus = (z > 0.0f ? z : 0.0f) + log_approx(1.0f + e);
            dk[i * R + r] = SPLINE_MIN_DERIVATIVE + (1.0f - SPLINE_MIN_DERIVATIVE) * unit * softplus;
            if (gy != NULL)
                sg[i * R + r] = (1.0f - SPLINE_MIN_DERIVATIVE) * unit * (z >= 0.0f ? inv : e * inv);
        }
    }
    /* The bin of each (clamped) input, the last knot at or below it (at most K - 1), and
     * its two knots' positions, heights and derivatives. */
    for (int64_t r = 0; r < n; r++) {
        const float v = x[r * xs];
        inside[r] = (v >= -B && v <= B) ? 1.0f : 0.0f;
        xc[r] = v < -B ? -B : (v > B ? B : v);
        bin[r] = 0.0f;
    }
    for (int64_t i = 1; i < K; i++)
#pragma omp simd
        for (int64_t r = 0; r < n; r++) bin[r] += xk[i * R + r] <= xc[r] ? 1.0f : 0.0f;
    for (int64_t r = 0; r < n; r++) {
        x0[r] = xk[r], x1[r] = xk[R + r], y0[r] = yk[r], y1[r] = yk[R + r];
        d0[r] = dk[r], d1[r] = dk[R + r];
    }
    for (int64_t i = 1; i < K; i++)
#pragma omp simd
        for (int64_t r = 0; r < n; r++) {
            const int sel = bin[r] == (float)i;
            x0[r] = sel ? xk[i * R + r] : x0[r];
            x1[r] = sel ? xk[(i + 1) * R + r] : x1[r];
            y0[r] = sel ? yk[i * R + r] : y0[r];
            y1[r] = sel ? yk[(i + 1) * R + r] : y1[r];
            d0[r] = sel ? dk[i * R + r] : d0[r];
            d1[r] = sel ? dk[(i + 1) * R + r] : d1[r];
        }

    if (gy == NULL) {
        /* y = x + ((y0 - x0) + dx (ratio - 1)), exactly x at the identity parameters. */
#pragma omp simd
        for (int64_t r = 0; r < n; r++) {
            const float w = x1[r] - x0[r], s = (y1[r] - y0[r]) / w, dx = xc[r] - x0[r];
            const float xi = dx / w, v = 1.0f - xi, c = d0[r] + d1[r] - 2.0f * s;
            const float den = s + c * xi * v;
            const float num = xi * (d1[r] * xi + s * v) + v * (s * xi + d0[r] * v);
            const float ratio = s * (s * xi + d0[r] * v) / den;
            out[r] = xc[r] + ((y0[r] - x0[r]) + dx * (ratio - 1.0f));
            ld[r] += inside[r] * log_approx(s * s * num / (den * den));
        }
        for (int64_t r = 0; r < n; r++) y[r * ys] = inside[r] != 0.0f ? out[r] : x[r * xs];
        return;
    }

    /* With t = xi (1 - xi), A = s xi^2 + d0 t, den = s + (d0 + d1 - 2 s) t and num =
     * d1 xi^2 + 2 s t + d0 (1 - xi)^2: y = y0 + h A / den, log dy/dx = log(s^2 num / den^2).
     * Their partial derivatives in xi, s = h / w, h, d0 and d1, then in the knots. */
    for (int64_t r = 0; r < n; r++) gin[r] = gy[r * gys];
#pragma omp simd
    for (int64_t r = 0; r < n; r++) {
        const float w = x1[r] - x0[r], h = y1[r] - y0[r], s = h / w, xi = (xc[r] - x0[r]) / w;
        const float v = 1.0f - xi, t = xi * v, c = d0[r] + d1[r] - 2.0f * s;
        const float den = s + c * t;
        const float num = xi * (d1[r] * xi + s * v) + v * (s * xi + d0[r] * v);
        const float g = gin[r], a = s * xi * xi + d0[r] * t, inv_den = 1.0f / den;
        const float inv_num = 1.0f / num, tw = 1.0f - 2.0f * xi, in = inside[r];
        const float dy_h = a * inv_den;
        const float dy_s = h * (xi * xi - dy_h * (1.0f - 2.0f * t)) * inv_den;
        const float dy_d0 = h * t * (1.0f - dy_h) * inv_den;
        const float dy_d1 = -h * t * dy_h * inv_den;
        const float dy_xi = h * ((2.0f * s * xi + d0[r] * tw) - dy_h * c * tw) * inv_den;
        const float dl_s = 2.0f / s + 2.0f * t * inv_num - 2.0f * (1.0f - 2.0f * t) * inv_den;
        const float dl_d0 = v * v * inv_num - 2.0f * t * inv_den;
        const float dl_d1 = xi * xi * inv_num - 2.0f * t * inv_den;
        const float dl_xi = 2.0f * (d1[r] * xi + s * tw - d0[r] * v) * inv_num
                            - 2.0f * c * tw * inv_den;
        const float G_xi = (g * dy_xi + gl * dl_xi) * in, G_s = (g * dy_s + gl * dl_s) * in;
        const float inv_w = 1.0f / w;
        const float g_w = -(G_xi * xi + G_s * s) * inv_w, g_h = g * dy_h * in + G_s * inv_w;
        out[r] = in != 0.0f ? G_xi * inv_w : g;
        gx0[r] = -G_xi * inv_w - g_w;  /* knot bin: x0; knot bin + 1: x0 + w */
        gx1[r] = g_w;
        gy0[r] = g * in - g_h;
        gy1[r] = g_h;
        gd0[r] = (g * dy_d0 + gl * dl_d0) * in;
        gd1[r] = (g * dy_d1 + gl * dl_d1) * in;
    }
    for (int64_t r = 0; r < n; r++) gx[r * gxs] = out[r];

    /* Each knot's gradient (only the bin's two ends have one), then back through the
     * cumulative sums and the softmax to the raw widths and heights. */
    for (int64_t i = 0; i <= K; i++)
#pragma omp simd
        for (int64_t r = 0; r < n; r++) {
            const float fi = (float)i, lo = bin[r] == fi ? 1.0f : 0.0f;
            const float hi = bin[r] + 1.0f == fi ? 1.0f : 0.0f;
            g1[i * R + r] = lo * gx0[r] + hi * gx1[r];
            g2[i * R + r] = lo * gy0[r] + hi * gy1[r];
            g3[i * R + r] = lo * gd0[r] + hi * gd1[r];
        }
    for (int side = 0; side < 2; side++) {
        const float *sz = side ? sh : sw, *gk = side ? g2 : g1;
        float *gout = gu + side * K * ldg;
        /* d size_p = 2 B (sum of knot gradients for knots p + 1 .. K - 1); acc: running sum. */
        for (int64_t r = 0; r < n; r++) {
            acc[r] = 0.0f;
            mx[r] = 0.0f;  /* sum_p size_p * d softmax_p */
        }
        for (int64_t p = K - 1; p >= 0; p--)
#pragma omp simd
            for (int64_t r = 0; r < n; r++) {
                const float gsz = 2.0f * B * spread * acc[r];  /* d loss / d softmax_p */
                if (p >= 1) acc[r] += gk[p * R + r];
                gout[p * ldg + r] = gsz;
                mx[r] += gsz * sz[p * R + r];
            }
        for (int64_t p = 0; p < K; p++)
#pragma omp simd
            for (int64_t r = 0; r < n; r++)
                gout[p * ldg + r] = sz[p * R + r] * (gout[p * ldg + r] - mx[r]);
    }
    for (int64_t i = 1; i < K; i++) {
        float *gd = gu + (2 * K + i - 1) * ldg;
#pragma omp simd
        for (int64_t r = 0; r < n; r++) gd[r] = g3[i * R + r] * sg[i * R + r];
    }
}

/* An affine coupling's transform of features tr (y2 = x2 exp(s) + t, s = c tanh(o_s / c)
 * or o_s when c <= 0) from the head's output out_t (d2 rows of o_s, then d2 of t, each
 * `rows` long): the output into hn, log-dets added to ld, exp(s) and tanh into es, ts. */
static void affine_forward(int64_t rows, int64_t dim, int64_t d2, const int64_t *tr, float c,
                           const float *out_t, const float *x2, float *es, float *ts,
                           float *hn, float *ld) {
    for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
        const int64_t r1 = r0 + ROW_BLOCK < rows ? r0 + ROW_BLOCK : rows;
        for (int64_t j = 0; j < d2; j++) {
            const float *os = out_t + j * rows, *ot = out_t + (d2 + j) * rows;
            const int64_t col = tr[j];
            if (c > 0.0f) {
                const float inv_c = 1.0f / c;
#pragma omp simd
                for (int64_t r = r0; r < r1; r++) {
                    const float th = tanh_approx(os[r] * inv_c), s = c * th;
                    const float e = exp_approx(s);
                    ts[r * d2 + j] = th;
                    es[r * d2 + j] = e;
                    hn[r * dim + col] = x2[r * d2 + j] * e + ot[r];
                    ld[r] += s;
                }
            } else {
                for (int64_t r = r0; r < r1; r++) {
                    const float s = os[r], e = expf(s);
                    es[r * d2 + j] = e;
                    hn[r * dim + col] = x2[r * d2 + j] * e + ot[r];
                    ld[r] += s;
                }
            }
        }
    }
}

/* Its backward: from h (d loss / d output) and g_ld (d loss / d each log-det), the
 * head's gradient g (transposed like out_t) and d loss / d x2 into hn's columns tr. */
static void affine_backward(int64_t rows, int64_t dim, int64_t d2, const int64_t *tr, float c,
                            const float *x2, const float *es, const float *ts, const float *h,
                            float g_ld, float *g, float *hn) {
    for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
        const int64_t r1 = r0 + ROW_BLOCK < rows ? r0 + ROW_BLOCK : rows;
        for (int64_t j = 0; j < d2; j++) {
            float *gs_t = g + j * rows, *gt_t = g + (d2 + j) * rows;
            for (int64_t r = r0; r < r1; r++) {
                const float gy = h[r * dim + tr[j]];
                const float gx = gy * es[r * d2 + j];
                float gs = g_ld + gx * x2[r * d2 + j];
                if (c > 0.0f) gs *= 1.0f - ts[r * d2 + j] * ts[r * d2 + j];
                gs_t[r] = gs;
                gt_t[r] = gy;
                hn[r * dim + tr[j]] = gx;
            }
        }
    }
}

/* A spline coupling's transform of features tr, K bins on [-B, B], from the head's
 * output out_t (per feature, its 3K - 1 raw parameters, each a row `rows` long): with h
 * NULL, the output into hn and log-dets added to ld; else its backward, as
 * affine_backward's, from h (d loss / d output) and g_ld into g and hn. */
static void spline_coupling(int64_t rows, int64_t dim, int64_t d2, const int64_t *tr,
                            int64_t K, float B, const float *out_t, const float *x2, float *hn,
                            float *ld, const float *h, float g_ld, float *g, float *scratch) {
    const int64_t P = 3 * K - 1;
    for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
        const int64_t r1 = r0 + ROW_BLOCK < rows ? r0 + ROW_BLOCK : rows;
        for (int64_t j = 0; j < d2; j++) {
            const float *u = out_t + j * P * rows + r0, *x = x2 + r0 * d2 + j;
            float *y = hn + r0 * dim + tr[j];
            if (h == NULL)
                spline_block(r1 - r0, K, B, u, rows, x, d2, y, dim, ld + r0, NULL, 0, 0.0f,
                             NULL, 0, NULL, 0, scratch);
            else
                spline_block(r1 - r0, K, B, u, rows, x, d2, NULL, 0, NULL,
                             h + r0 * dim + tr[j], dim, g_ld, g + j * P * rows + r0, rows, y,
                             dim, scratch);
        }
    }
}

/* What the layers need: floats of tape per coupling, and the widest linear side. */
static int64_t tape_floats(const int64_t *meta, const int64_t *widths, int64_t rows) {
    const int64_t d1 = meta[1], d2 = meta[2], n = meta[3];
    /* a, x2, then exp(s), tanh(s / c) (affine) or the head's output (spline) */
    int64_t f = rows * (d1 + d2) + (meta[0] == SPLINE ? rows * widths[2 * (n - 1)] : 2 * rows * d2);
    for (int64_t k = 0; k + 1 < n; k++) f += rows * widths[2 * k];  /* hidden activations */
    return f;
}

static int64_t widest(const int64_t *meta, int64_t n_layers, const int64_t *widths) {
    int64_t w = 1, wi = 0;
    for (int64_t l = 0; l < n_layers; l++) {
        const int64_t *m = meta + META * l;
        if (m[0] == PERMUTE) continue;
        for (int64_t k = 0; k < m[3]; k++, wi++) {
            if (widths[2 * wi] > w) w = widths[2 * wi];
            if (widths[2 * wi + 1] > w) w = widths[2 * wi + 1];
        }
    }
    return w;
}

/* Floats of scratch the splines need: that of the one with most bins (0: none). */
static int64_t splines_scratch(const int64_t *meta, int64_t n_layers) {
    int64_t f = 0;
    for (int64_t l = 0; l < n_layers; l++) {
        const int64_t *m = meta + META * l;
        if (m[0] == SPLINE && spline_scratch(m[4]) > f) f = spline_scratch(m[4]);
    }
    return f;
}

/* Floats of workspace rnvp_train_part needs for `rows` rows. */
int64_t rnvp_work_floats(const int64_t *meta, int64_t n_layers, int64_t dim, int64_t rows,
                         const int64_t *widths) {
    int64_t f = 2 * rows * dim + rows + 2 * rows * widest(meta, n_layers, widths);
    f += splines_scratch(meta, n_layers);
    int64_t wi = 0;
    for (int64_t l = 0; l < n_layers; l++) {
        const int64_t *m = meta + META * l;
        if (m[0] == PERMUTE) continue;
        f += tape_floats(m, widths + 2 * wi, rows);
        wi += m[3];
    }
    return f;
}

/* Forward and backward of `rows` rows x (rows x dim) of a batch of 1 / inv_batch rows.
 * With loc and scale (else NULL) x is first standardised, (x - loc) / scale. Writes each
 * parameter's share of the gradient of the batch's mean negative log-likelihood into
 * grads (overwriting them), and the rows' summed loss, less the constant terms, into
 * *loss. Returns 0; -1 when no BLAS has been set, -2 when out of memory. */
int rnvp_train_part(const int64_t *meta, int64_t n_layers, int64_t dim, int64_t rows,
                    const int64_t *index, const int64_t *widths, const float *bounds,
                    float *const *params, float *const *grads, const float *x,
                    const float *loc, const float *scale, float *work, float inv_batch,
                    double *loss) {
    if (blas_sgemm == NULL) return -1;
    const int threads = blas_threads_local != NULL ? blas_threads_local(1) : 0;
    const int64_t wide = widest(meta, n_layers, widths);
    float *h = work, *hn = work + rows * dim, *ld = hn + rows * dim;
    float *ga = ld + rows, *gb = ga + rows * wide, *scratch = gb + rows * wide;
    float *tape = scratch + splines_scratch(meta, n_layers);
    int64_t *tapes = malloc((size_t)(n_layers > 0 ? n_layers : 1) * sizeof(int64_t));
    if (tapes == NULL) {
        if (blas_threads_local != NULL) blas_threads_local(threads);
        return -2;
    }

    for (int64_t r = 0; r < rows; r++) {
        for (int64_t j = 0; j < dim; j++) {
            const float v = x[r * dim + j];
            h[r * dim + j] = loc != NULL ? (v - loc[j]) / scale[j] : v;
        }
        ld[r] = 0.0f;
    }

    /* Forward. */
    int64_t ii = 0, wi = 0, bi = 0, pi = 0, used = 0;
    for (int64_t l = 0; l < n_layers; l++) {
        const int64_t *m = meta + META * l;
        if (m[0] == PERMUTE) {
            const int64_t *perm = index + ii;
            for (int64_t r = 0; r < rows; r++)
                for (int64_t j = 0; j < dim; j++) hn[r * dim + j] = h[r * dim + perm[j]];
            ii += 2 * dim;
        } else {
            const int64_t d1 = m[1], d2 = m[2], n = m[3];
            const int64_t *kept = index + ii, *tr = index + ii + d1;
            const float b = bounds[bi], c = bounds[bi + 1];
            float *a = tape + used, *acts = a + rows * d1;
            tapes[l] = used;
            int64_t hidden = 0;
            for (int64_t k = 0; k + 1 < n; k++) hidden += rows * widths[2 * (wi + k)];
            float *x2 = acts + hidden, *es = x2 + rows * d2, *ts = es + rows * d2;
            for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
                const int64_t r1 = r0 + ROW_BLOCK < rows ? r0 + ROW_BLOCK : rows;
                for (int64_t j = 0; j < d1; j++) {
                    const int64_t col = kept[j];
                    if (b > 0.0f) {
                        const float inv_b = 1.0f / b;
#pragma omp simd
                        for (int64_t r = r0; r < r1; r++)
                            a[r * d1 + j] = b * tanh_approx(h[r * dim + col] * inv_b);
                    } else {
                        for (int64_t r = r0; r < r1; r++) a[r * d1 + j] = h[r * dim + col];
                    }
                    for (int64_t r = r0; r < r1; r++) hn[r * dim + col] = h[r * dim + col];
                }
                for (int64_t j = 0; j < d2; j++)
                    for (int64_t r = r0; r < r1; r++) x2[r * d2 + j] = h[r * dim + tr[j]];
            }
            const float *in = a;
            float *out = acts;
            for (int64_t k = 0; k + 1 < n; k++) {
                const int64_t o = widths[2 * (wi + k)], i = widths[2 * (wi + k) + 1];
                hidden_forward(rows, o, i, in, params[pi + 2 * k], params[pi + 2 * k + 1], out);
                in = out;
                out += rows * o;
            }
            /* The head's output, transposed: kept on the tape (spline), else in scratch. */
            float *out_t = m[0] == SPLINE ? x2 + rows * d2 : ga;
            head_forward(rows, widths[2 * (wi + n - 1)], widths[2 * (wi + n - 1) + 1], in,
                         params[pi + 2 * n - 2], params[pi + 2 * n - 1], out_t);
            if (m[0] == SPLINE)
                spline_coupling(rows, dim, d2, tr, m[4], c, out_t, x2, hn, ld, NULL, 0.0f,
                                NULL, scratch);
            else
                affine_forward(rows, dim, d2, tr, c, out_t, x2, es, ts, hn, ld);
            used += tape_floats(m, widths + 2 * wi, rows);
            ii += d1 + d2;
            wi += n;
            bi += 2;
            pi += 2 * n;
        }
        float *swap = h;
        h = hn;
        hn = swap;
    }

    /* The loss, and its gradient with respect to z, in place. */
    double total = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        double sq = 0.0;
        for (int64_t j = 0; j < dim; j++) {
            const float z = h[r * dim + j];
            sq += (double)z * z;
            h[r * dim + j] = z * inv_batch;
        }
        total += 0.5 * sq - (double)ld[r];
    }
    *loss = total;
    const float g_ld = -inv_batch;

    /* Backward: h holds d loss / d (the current layer's output); hn receives its input's. */
    for (int64_t l = n_layers - 1; l >= 0; l--) {
        const int64_t *m = meta + META * l;
        if (m[0] == PERMUTE) {
            ii -= 2 * dim;
            const int64_t *inv = index + ii + dim;
            for (int64_t r = 0; r < rows; r++)
                for (int64_t j = 0; j < dim; j++) hn[r * dim + j] = h[r * dim + inv[j]];
        } else {
            const int64_t d1 = m[1], d2 = m[2], n = m[3];
            ii -= d1 + d2;
            wi -= n;
            bi -= 2;
            pi -= 2 * n;
            const int64_t *kept = index + ii, *tr = index + ii + d1;
            const float b = bounds[bi], c = bounds[bi + 1];
            float *a = tape + tapes[l], *acts = a + rows * d1;
            int64_t hidden = 0;
            for (int64_t k = 0; k + 1 < n; k++) hidden += rows * widths[2 * (wi + k)];
            const float *x2 = acts + hidden, *es = x2 + rows * d2, *ts = es + rows * d2;
            float *g = ga, *gn = gb;  /* the head's gradient, transposed like its output */
            if (m[0] == SPLINE)
                spline_coupling(rows, dim, d2, tr, m[4], c, x2 + rows * d2, x2, hn, NULL, h,
                                g_ld, g, scratch);
            else
                affine_backward(rows, dim, d2, tr, c, x2, es, ts, h, g_ld, g, hn);
            /* The linear layers from the head down; layer k's input is a or hidden k - 1. */
            for (int64_t k = n - 1; k >= 0; k--) {
                const int64_t o = widths[2 * (wi + k)], i = widths[2 * (wi + k) + 1];
                const float *act = a;
                if (k > 0) {
                    int64_t off = 0;
                    for (int64_t q = 0; q + 1 < k; q++) off += rows * widths[2 * (wi + q)];
                    act = acts + off;
                }
                const float *relu_in = k > 0 ? act : NULL;
                float *gb_in = k > 0 ? grads[pi + 2 * k - 1] : NULL;  /* layer k - 1's bias */
                if (k == n - 1)
                    head_backward(rows, o, i, g, act, params[pi + 2 * k], relu_in,
                                  grads[pi + 2 * k], grads[pi + 2 * k + 1], gn, gb_in);
                else
                    hidden_backward(rows, o, i, g, act, params[pi + 2 * k], relu_in,
                                    grads[pi + 2 * k], gn, gb_in);
                float *swap = g;
                g = gn;
                gn = swap;
            }
            for (int64_t r = 0; r < rows; r++) {
                for (int64_t j = 0; j < d1; j++) {
                    float gj = g[r * d1 + j];
                    if (b > 0.0f) {
                        const float sq = a[r * d1 + j] / b;
                        gj *= 1.0f - sq * sq;
                    }
                    hn[r * dim + kept[j]] = h[r * dim + kept[j]] + gj;
                }
            }
        }
        float *swap = h;
        h = hn;
        hn = swap;
    }
    free(tapes);
    if (blas_threads_local != NULL) blas_threads_local(threads);
    return 0;
}

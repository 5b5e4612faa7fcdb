/* One training step's forward and backward pass through a stack of affine couplings and
 * permutations, for the rows of one part of a batch, in float32 on one thread.
 *
 * The same arithmetic as the TorchScript kernels (realnvp/bijections/_kernels.py,
 * coupling_forward and coupling_backward); see realnvp/training/native.py for the contract.
 * The matrix products of wide layers go to the BLAS that torch itself links (its sgemm_,
 * passed in by rnvp_set_blas); everything else is plain loops over rows, each layer's
 * elementwise steps done in one pass while its rows are in cache.
 *
 * Layers are described by four integers each, meta[4 i ..]: kind (0 affine coupling, 1
 * permutation), d1 (kept features), d2 (transformed features), n (linear layers of the
 * conditioner, input to output). The other arrays are read in layer order: index (a
 * coupling's d1 kept then d2 transformed columns; a permutation's dim-long permutation then
 * its inverse), widths (per linear layer: out, in), bounds (per coupling: input bound,
 * scale bound; <= 0 means none), params and grads (per linear layer: weight, bias). */

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

enum { COUPLING = 0, PERMUTE = 1 };

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

/* What the layers need: floats of tape per coupling, and the widest linear side. */
static int64_t tape_floats(const int64_t *meta, const int64_t *widths, int64_t rows) {
    const int64_t d1 = meta[1], d2 = meta[2], n = meta[3];
    int64_t f = rows * (d1 + 3 * d2);  /* a, x2, exp(s), tanh(s / c) */
    for (int64_t k = 0; k + 1 < n; k++) f += rows * widths[2 * k];  /* hidden activations */
    return f;
}

static int64_t widest(const int64_t *meta, int64_t n_layers, const int64_t *widths) {
    int64_t w = 1, wi = 0;
    for (int64_t l = 0; l < n_layers; l++) {
        const int64_t *m = meta + 4 * l;
        if (m[0] != COUPLING) continue;
        for (int64_t k = 0; k < m[3]; k++, wi++) {
            if (widths[2 * wi] > w) w = widths[2 * wi];
            if (widths[2 * wi + 1] > w) w = widths[2 * wi + 1];
        }
    }
    return w;
}

/* Floats of workspace rnvp_train_part needs for `rows` rows. */
int64_t rnvp_work_floats(const int64_t *meta, int64_t n_layers, int64_t dim, int64_t rows,
                         const int64_t *widths) {
    int64_t f = 2 * rows * dim + rows + 2 * rows * widest(meta, n_layers, widths);
    int64_t wi = 0;
    for (int64_t l = 0; l < n_layers; l++) {
        const int64_t *m = meta + 4 * l;
        if (m[0] != COUPLING) continue;
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
    float *ga = ld + rows, *gb = ga + rows * wide, *tape = gb + rows * wide;
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
        const int64_t *m = meta + 4 * l;
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
            /* The head's output, transposed, in scratch: rows of s, then rows of t. */
            head_forward(rows, 2 * d2, widths[2 * (wi + n - 1) + 1], in,
                         params[pi + 2 * n - 2], params[pi + 2 * n - 1], ga);
            for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
                const int64_t r1 = r0 + ROW_BLOCK < rows ? r0 + ROW_BLOCK : rows;
                for (int64_t j = 0; j < d2; j++) {
                    const float *os = ga + j * rows, *ot = ga + (d2 + j) * rows;
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
        const int64_t *m = meta + 4 * l;
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

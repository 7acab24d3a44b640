/* The SA-RNN chunk computed in place: per step and row, the coordinator decides first, and
 * only the neurons that update have their gate rows read and multiplied.
 *
 * It answers as the chunk graph (export/onnx_graph.py) does, operation for operation in
 * float32: the same gate cut (2 tau - 1) / alpha, the same blend old + u (new - old), rows
 * frozen from their length on. Unlike the sparse ONNX graph it gathers nothing: a neuron's
 * weight rows are read where they lie, once per step for all the rows of the batch that update
 * it, so a step costs in proportion to the updates of each row, not to their union.
 *
 * Loaded with ctypes by sarnn_serve/native.py; no Python API is used.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { CELL_GRU = 0, CELL_LSTM = 1, CELL_RNN = 2 };

/* Weights, row-major, one row per output neuron (block k of the cell at offset k*H rows).
 * GRU blocks are r, z (negated: its sigmoid is 1 - z), n; LSTM i, f, g, o; RNN one block. */
typedef struct {
    int32_t cell, hidden, features, classes, blocks;
    float alpha;
    const float *mean, *std;   /* [F] */
    const float *w_in;         /* [G*H, F] */
    const float *b_in;         /* [G*H]: both biases, except the GRU's n block (input bias) */
    const float *w_rec;        /* [G*H, H] */
    const float *b_hn;         /* [H]: the GRU's recurrent n bias, inside r * (...) */
    const float *w_coord;      /* [F, H]: one row per input feature */
    const float *b_coord;      /* [H] */
    const float *w_diag;       /* [H] */
    const float *w_out;        /* [C, H] */
    const float *b_out;        /* [C] */
    const float *w_energy;     /* [F, H] or NULL: the coordinator's energy term (x_n * x_n) W_e */
    const float *phase;        /* [H] or NULL: the accumulating coordinator's levels */
    const float *w_motion;     /* [F, H] or NULL: the motion term (|x_t - xbar| / std) W_v,
                                * only with phase */
    const uint8_t *pattern;    /* [P, H] or NULL: a random mask's pattern (no coordinator) */
    int32_t period;            /* P */
    float smoothing;           /* with w_motion: the moving average's beta */
} sarnn_weights;

/* The layout of sarnn_weights and the calling convention of sarnn_chunk: native.py checks both
 * (sarnn_abi_version, sarnn_weights_size) before it calls anything. Change the version with
 * either. */
#define SARNN_ABI_VERSION 3

int sarnn_abi_version(void) { return SARNN_ABI_VERSION; }

size_t sarnn_weights_size(void) { return sizeof(sarnn_weights); }

/* Vector functions in three clones (AVX-512, AVX2, baseline SSE), one picked at load for the CPU.
 * Built with -ffp-contract=off (setup.py), none fuses a multiply and an add into an FMA, so all
 * three compute the same bits: an answer does not depend on the machine's CPU. SARNN_ONE_TARGET
 * builds only the target of -march (the tests compare the clones this way). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(SARNN_ONE_TARGET)
#define VECTOR_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTOR_CLONES
#endif

/* Dot products in 16 lanes (one 16-float vector of partial sums: lane l sums the elements
 * i = l mod 16), added up in a fixed order: a row's dot product is the same bits whether it is
 * computed alone (dot, dot_blocks) or beside other rows (dot_rows), and nothing depends on the
 * compiler's reassociation. GCC/Clang vector types: each target clone maps them to its
 * registers (one AVX-512 register, two AVX2 ones, four SSE ones) without changing a sum. */
typedef float v16f __attribute__((vector_size(64)));
#define ROW_BLOCK 4

static inline v16f load16(const float *p) {
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float reduce(v16f acc, const float *a, const float *b, int from, int n) {
    float v[8];
    for (int l = 0; l < 8; l++) v[l] = acc[l] + acc[l + 8];
    float sum = ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
    for (int i = from; i < n; i++) sum += a[i] * b[i];
    return sum;
}

VECTOR_CLONES static float dot(const float *a, const float *b, int n) {
    v16f acc = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16) acc += load16(a + i) * load16(b + i);
    return reduce(acc, a, b, i, n);
}

/* The dot products of G weight rows (w + k * stride) with one state row h, reading h once:
 * independent sums (more in flight) and several weight streams at once. One function per G
 * (GRU 3, LSTM 4, RNN 1), so that the sums stay in registers. */
#define DEFINE_DOT_BLOCKS(G)                                                                   \
    VECTOR_CLONES static void dot_blocks_##G(const float *w, size_t stride, const float *h,   \
                                             int n, float *out) {                             \
        v16f acc[G] = {{0}};                                                                  \
        int i = 0;                                                                            \
        for (; i + 16 <= n; i += 16) {                                                        \
            const v16f hv = load16(h + i);                                                    \
            for (int k = 0; k < G; k++) acc[k] += load16(w + k * stride + i) * hv;            \
        }                                                                                     \
        for (int k = 0; k < G; k++) out[k] = reduce(acc[k], w + k * stride, h, i, n);         \
    }
DEFINE_DOT_BLOCKS(1)
DEFINE_DOT_BLOCKS(3)
DEFINE_DOT_BLOCKS(4)

static void dot_blocks(const float *w, size_t stride, int blocks, const float *h, int n,
                       float *out) {
    if (blocks == 3) dot_blocks_3(w, stride, h, n, out);
    else if (blocks == 4) dot_blocks_4(w, stride, h, n, out);
    else dot_blocks_1(w, stride, h, n, out);
}

/* The dot products of one weight row w with ROW_BLOCK state rows h[r], reading w once. */
VECTOR_CLONES static void dot_rows(const float *w, const float *const *h, int n, float *out) {
    v16f acc[ROW_BLOCK] = {{0}};
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const v16f wv = load16(w + i);
        for (int r = 0; r < ROW_BLOCK; r++) acc[r] += wv * load16(h[r] + i);
    }
    for (int r = 0; r < ROW_BLOCK; r++) out[r] = reduce(acc[r], w, h[r], i, n);
}

/* Elementwise math on 16 lanes, the same for every lane: a value's answer never depends on
 * where it sits. exp: Cephes' range reduction and polynomial (about 1 ulp on [-87, 88], the
 * input clamped there); sigmoid within 1e-7 of the exact value, tanh(v) = 1 - 2 / (e^2v + 1)
 * within 2e-7 (measured on [-20, 20] in steps of 1e-4). */
typedef int32_t v16i __attribute__((vector_size(64)));

static inline v16f splat(float v) { return (v16f){0} + v; }

static inline v16f select16(v16i mask, v16f yes, v16f no) {
    return (v16f)((mask & (v16i)yes) | (~mask & (v16i)no));
}

static inline v16f exp16(v16f x) {
    x = select16(x > 88.0f, splat(88.0f), x);
    x = select16(x < -87.0f, splat(-87.0f), x);
    const v16f shifter = splat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    const v16f n = (x * 1.44269504088896341f + shifter) - shifter;
    const v16f r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    v16f p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    return p * (v16f)((__builtin_convertvector(n, v16i) + 127) << 23);
}

static inline v16f sigmoid16(v16f v) { return 1.0f / (1.0f + exp16(-v)); }

static inline v16f tanh16(v16f v) { return 1.0f - 2.0f / (exp16(v + v) + 1.0f); }

/* Updates whose dot products are done and whose activations wait, to be computed 16 at a time
 * (a multiple of 16: lanes past `n` hold stale values, computed and never written back). */
#define PENDING 256
typedef struct {
    int n;
    float pre[4][PENDING]; /* per gate block; the GRU's n block: W_hn h + b_hn */
    float gx_n[PENDING];   /* the GRU's n block: W_in x + b_in */
    float h[PENDING], c[PENDING];
    float *h_to[PENDING], *c_to[PENDING];
} pending_updates;

/* The new state of every pending update, written where it goes. */
VECTOR_CLONES static void activate(int cell, pending_updates *p) {
    float h_new[PENDING], c_new[PENDING];
    for (int i = 0; i < p->n; i += 16) {
        const v16f h = load16(p->h + i);
        v16f out;
        if (cell == CELL_GRU) {
            const v16f reset = sigmoid16(load16(p->pre[0] + i));
            const v16f zc = sigmoid16(load16(p->pre[1] + i));
            const v16f n = tanh16(load16(p->gx_n + i) + reset * load16(p->pre[2] + i));
            out = h + zc * (n - h);
        } else if (cell == CELL_LSTM) {
            const v16f c = load16(p->c + i);
            const v16f c_next = sigmoid16(load16(p->pre[1] + i)) * c +
                                sigmoid16(load16(p->pre[0] + i)) * tanh16(load16(p->pre[2] + i));
            const v16f h_next = sigmoid16(load16(p->pre[3] + i)) * tanh16(c_next);
            const v16f c_out = c + (c_next - c);
            memcpy(c_new + i, &c_out, sizeof c_out);
            out = h + (h_next - h);
        } else {
            out = h + (tanh16(load16(p->pre[0] + i)) - h);
        }
        memcpy(h_new + i, &out, sizeof out);
    }
    for (int i = 0; i < p->n; i++) *p->h_to[i] = h_new[i];
    if (cell == CELL_LSTM)
        for (int i = 0; i < p->n; i++) *p->c_to[i] = c_new[i];
    p->n = 0;
}

/* x_n . w in order: F is small, and a plain loop inlines where a vector one is a call. */
static inline float input_dot(const float *xn, const float *w, int n) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += xn[i] * w[i];
    return sum;
}

/* Neuron j of `m` rows (m <= ROW_BLOCK; h[r], c[r] their old state, h_next[r], c_next[r] where
 * their new values go, xn[r] their normalised inputs): its dot products, queued in `p` for
 * activation (done first if `p` could not take them). */
static void update_rows(const sarnn_weights *w, int j, int m, const float *const *xn,
                        const float *const *h, const float *const *c, float *const *h_next,
                        float *const *c_next, pending_updates *p) {
    const int H = w->hidden, F = w->features;
    const size_t block_stride = (size_t)H * H;
    float rec[4][ROW_BLOCK];
    if (p->n + m > PENDING) activate(w->cell, p);
    if (m == ROW_BLOCK) {
        for (int k = 0; k < w->blocks; k++)
            dot_rows(w->w_rec + ((size_t)k * H + j) * H, h, H, rec[k]);
    } else {
        for (int r = 0; r < m; r++) {
            float one[4];
            dot_blocks(w->w_rec + (size_t)j * H, block_stride, w->blocks, h[r], H, one);
            for (int k = 0; k < w->blocks; k++) rec[k][r] = one[k];
        }
    }
    for (int r = 0; r < m; r++) {
        const int i = p->n++;
        for (int k = 0; k < w->blocks; k++) {
            const size_t row = (size_t)k * H + j;
            const float gx = input_dot(xn[r], w->w_in + row * F, F) + w->b_in[row];
            /* the GRU's n block: W_hn h + b_hn, which r multiplies; else W h + (W x + b) */
            if (w->cell == CELL_GRU && k == 2) {
                p->pre[k][i] = rec[k][r] + w->b_hn[j];
                p->gx_n[i] = gx;
            } else {
                p->pre[k][i] = rec[k][r] + gx;
            }
        }
        p->h[i] = h[r][j];
        p->h_to[i] = h_next[r] + j;
        if (w->cell == CELL_LSTM) {
            p->c[i] = c[r][j];
            p->c_to[i] = c_next[r] + j;
        }
    }
}

/* Ask for the head of neuron j's recurrent weight rows ahead of their use: the rows lie far
 * apart (one per gate block), so the hardware prefetcher would meet each cold; once a row's
 * first lines are on their way it follows the rest. */
#define PREFETCH_FLOATS 128
static void prefetch_rows(const sarnn_weights *w, int j) {
    const int H = w->hidden, n = H < PREFETCH_FLOATS ? H : PREFETCH_FLOATS;
    for (int k = 0; k < w->blocks; k++) {
        const float *row = w->w_rec + ((size_t)k * H + j) * H;
        for (int i = 0; i < n; i += 16) __builtin_prefetch(row + i);
    }
}

/* The accumulating coordinator's gates from a_j (in `a`): acc_j += min(rate sigmoid(a_j), 1);
 * u_j = [acc_j >= phase_j]; acc_j -= u_j. Sixteen lanes at a time, as the graph's Sigmoid. */
VECTOR_CLONES static void accumulate(const sarnn_weights *w, const float *a, float rate,
                                     float *acc, uint8_t *u) {
    const int H = w->hidden;
    for (int j = 0; j < H; j += 16) {
        const int n = H - j < 16 ? H - j : 16;
        float lanes[16] = {0}, added[16];
        memcpy(lanes, a + j, sizeof(float) * (size_t)n);
        const v16f p = sigmoid16(load16(lanes)) * rate;
        memcpy(added, &p, sizeof added);
        for (int i = 0; i < n; i++) {
            const float next = acc[j + i] + (added[i] < 1.0f ? added[i] : 1.0f);
            u[j + i] = next >= w->phase[j + i];
            acc[j + i] = next - (float)u[j + i];
        }
    }
}

/* The coordinator of one row: a_j = (x_n W_a + b_a)_j [+ ((x_n * x_n) W_e)_j]
 * [+ (v W_v)_j] + w_d,j h_j for every j (each input part summed over the features in order, as
 * a row of x_n [1,F] times W [F,H], and added in the graph's order; v the row's motion
 * |x_t - xbar| / std); u_j = [a_j > cut], or the accumulator's gate (`accumulate`, acc not
 * NULL). `a` holds 2H floats. */
VECTOR_CLONES static void coordinate(const sarnn_weights *w, const float *xn, const float *v,
                                     const float *h, float cut, float rate, float *acc, float *a,
                                     uint8_t *u) {
    const int H = w->hidden, F = w->features;
    float *e = a + H;
    for (int j = 0; j < H; j++) a[j] = 0.0f;
    for (int f = 0; f < F; f++) {
        const float *row = w->w_coord + (size_t)f * H;
        for (int j = 0; j < H; j++) a[j] += xn[f] * row[j];
    }
    for (int j = 0; j < H; j++) a[j] += w->b_coord[j];
    if (w->w_energy) {
        for (int j = 0; j < H; j++) e[j] = 0.0f;
        for (int f = 0; f < F; f++) {
            const float *row = w->w_energy + (size_t)f * H;
            const float sq = xn[f] * xn[f];
            for (int j = 0; j < H; j++) e[j] += sq * row[j];
        }
        for (int j = 0; j < H; j++) a[j] += e[j];
    }
    if (w->w_motion) {
        for (int j = 0; j < H; j++) e[j] = 0.0f;
        for (int f = 0; f < F; f++) {
            const float *row = w->w_motion + (size_t)f * H;
            for (int j = 0; j < H; j++) e[j] += v[f] * row[j];
        }
        for (int j = 0; j < H; j++) a[j] += e[j];
    }
    if (acc) {
        for (int j = 0; j < H; j++) a[j] += w->w_diag[j] * h[j];
        accumulate(w, a, rate, acc, u);
        return;
    }
    for (int j = 0; j < H; j++) u[j] = a[j] + w->w_diag[j] * h[j] > cut;
}

/* Advance `batch` rows by `steps` steps. x [B,T,F]; state_in and state_out [B,S] (S = H, or
 * 2H for the LSTM: h then c; H more with an accumulator; F more with motion features, the
 * input's moving average in raw units; 1 more for a random mask, its place in the pattern);
 * lengths and
 * threshold [B];
 * logits [B,T,C]; updates [B,T,H].
 * Returns 0, or -1 if scratch memory could not be had. */
int sarnn_chunk(const sarnn_weights *w, int batch, int steps, const float *x,
                const float *state_in, const int64_t *lengths, const float *threshold,
                float *logits, uint8_t *updates, float *state_out) {
    const int H = w->hidden, F = w->features, C = w->classes;
    const int lstm = w->cell == CELL_LSTM;
    const size_t cell_size = (size_t)(lstm ? 2 : 1) * H;
    const size_t acc_size = w->phase ? (size_t)H : 0;
    const size_t S = cell_size + acc_size + (w->w_motion ? (size_t)F : 0) + (w->pattern ? 1 : 0);
    float *state = malloc(sizeof(float) * (size_t)batch * S);
    float *next = malloc(sizeof(float) * (size_t)batch * S);
    /* the rows' normalised inputs [B,F], then one row's motion and change [2F] */
    float *xn = malloc(sizeof(float) * ((size_t)batch + 2) * (F > 0 ? F : 1));
    float *v = xn + (size_t)batch * F;
    uint8_t *gate = malloc((size_t)batch * H);
    float *cut = malloc(sizeof(float) * 2 * (size_t)batch), *rate = cut + batch;
    float *coord = malloc(sizeof(float) * 2 * (size_t)H);
    int *active = malloc(sizeof(int) * (size_t)H);
    pending_updates *pending = calloc(1, sizeof *pending);
    if (!state || !next || !xn || !gate || !cut || !coord || !active || !pending) {
        free(state), free(next), free(xn), free(gate), free(cut), free(coord), free(active);
        free(pending);
        return -1;
    }
    memcpy(state, state_in, sizeof(float) * (size_t)batch * S);
    for (int b = 0; b < batch; b++) {
        cut[b] = (threshold[b] * 2.0f - 1.0f) / w->alpha;
        rate[b] = (1.0f - threshold[b]) / threshold[b];
    }

    for (int t = 0; t < steps; t++) {
        for (int b = 0; b < batch; b++) {
            float *h = state + b * S;
            const float *xt = x + ((size_t)b * steps + t) * F;
            float *xb = xn + (size_t)b * F;
            uint8_t *u = gate + (size_t)b * H;
            for (int f = 0; f < F; f++) xb[f] = (xt[f] - w->mean[f]) / w->std[f];
            if (t >= lengths[b]) {
                memset(u, 0, (size_t)H);
                continue;
            }
            if (w->pattern) {
                /* a random mask: row `place` of the pattern (outside [0, P) or NaN: row 0),
                 * then the place moves on by one, wrapping at P (in `state`, as below) */
                float *place = h + cell_size;
                const float at = *place >= 0.0f && *place < (float)w->period ? *place : 0.0f;
                memcpy(u, w->pattern + (size_t)(int64_t)at * H, (size_t)H);
                const float ahead = at + 1.0f;
                *place = ahead >= (float)w->period ? ahead - (float)w->period : ahead;
                continue;
            }
            /* the accumulator and the moving average change in `state`, from which `next` is
             * copied below */
            float *average = w->w_motion ? h + cell_size + acc_size : NULL;
            float *change = v + F;
            if (average)
                for (int f = 0; f < F; f++) {
                    change[f] = xt[f] - average[f];
                    v[f] = (change[f] < 0.0f ? -change[f] : change[f]) / w->std[f];
                }
            coordinate(w, xb, v, h, cut[b], rate[b], w->phase ? h + cell_size : NULL, coord, u);
            if (average)
                for (int f = 0; f < F; f++) average[f] = average[f] + w->smoothing * change[f];
        }
        memcpy(next, state, sizeof(float) * (size_t)batch * S);
        /* neuron-major: a neuron's weight rows are read once per step for the rows updating
         * it, ROW_BLOCK rows at a time, while the next such neuron's rows are fetched */
        int n_active = 0;
        for (int j = 0; j < H; j++) {
            int any = 0;
            for (int b = 0; b < batch && !any; b++) any = gate[(size_t)b * H + j];
            if (any) active[n_active++] = j;
        }
        for (int a = 0; a < n_active; a++) {
            const int j = active[a];
            if (a + 1 < n_active) prefetch_rows(w, active[a + 1]);
            const float *xs[ROW_BLOCK], *hs[ROW_BLOCK], *cs[ROW_BLOCK];
            float *hns[ROW_BLOCK], *cns[ROW_BLOCK];
            int m = 0;
            for (int b = 0; b < batch; b++) {
                /* every row written in place, kept by counting it only if it updates: no
                 * branch on the gate, which is a coin flip at high rates */
                xs[m] = xn + (size_t)b * F;
                hs[m] = state + b * S;
                hns[m] = next + b * S;
                cs[m] = lstm ? hs[m] + H : NULL;
                cns[m] = lstm ? hns[m] + H : NULL;
                m += gate[(size_t)b * H + j];
                if (m == ROW_BLOCK) {
                    update_rows(w, j, m, xs, hs, cs, hns, cns, pending);
                    m = 0;
                }
            }
            if (m) update_rows(w, j, m, xs, hs, cs, hns, cns, pending);
        }
        activate(w->cell, pending);
        float *swap = state;
        state = next;
        next = swap;
        for (int b = 0; b < batch; b++) {
            const float *h = state + b * S;
            float *out = logits + ((size_t)b * steps + t) * C;
            for (int k = 0; k < C; k++) out[k] = dot(h, w->w_out + (size_t)k * H, H) + w->b_out[k];
            memcpy(updates + ((size_t)b * steps + t) * H, gate + (size_t)b * H, (size_t)H);
        }
    }
    memcpy(state_out, state, sizeof(float) * (size_t)batch * S);
    free(state), free(next), free(xn), free(gate), free(cut), free(coord), free(active);
    free(pending);
    return 0;
}

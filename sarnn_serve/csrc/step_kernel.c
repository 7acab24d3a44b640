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
#include <math.h>
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
} sarnn_weights;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define VECTOR_CLONES
#endif

VECTOR_CLONES static float dot(const float *a, const float *b, int n) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}

static float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

/* One neuron j of one row: its new state value(s) from the old state h (and c). */
static void update_neuron(const sarnn_weights *w, int j, const float *xn, const float *h,
                          const float *c, float *h_next, float *c_next) {
    const int H = w->hidden, F = w->features;
    float pre[4];
    for (int k = 0; k < w->blocks; k++) {
        const size_t row = (size_t)k * H + j;
        const float gx = dot(xn, w->w_in + row * F, F) + w->b_in[row];
        const float rec = dot(h, w->w_rec + row * H, H);
        pre[k] = (w->cell == CELL_GRU && k == 2) ? rec + w->b_hn[j] : rec + gx;
        if (w->cell == CELL_GRU && k == 2) {
            const float r = sigmoid(pre[0]), zc = sigmoid(pre[1]);
            const float n = tanhf(gx + r * pre[2]);
            h_next[j] = h[j] + zc * (n - h[j]);
        }
    }
    if (w->cell == CELL_LSTM) {
        const float c_new = sigmoid(pre[1]) * c[j] + sigmoid(pre[0]) * tanhf(pre[2]);
        const float h_new = sigmoid(pre[3]) * tanhf(c_new);
        c_next[j] = c[j] + (c_new - c[j]);
        h_next[j] = h[j] + (h_new - h[j]);
    } else if (w->cell == CELL_RNN) {
        h_next[j] = h[j] + (tanhf(pre[0]) - h[j]);
    }
}

/* The coordinator of one row: u_j = (x_n W_a + b_a)_j + w_d,j h_j > cut, for every j (the
 * input part summed over the features in order, as a row of x_n [1,F] times W_a [F,H]). */
VECTOR_CLONES static void coordinate(const sarnn_weights *w, const float *xn, const float *h,
                                     float cut, float *a, uint8_t *u) {
    const int H = w->hidden, F = w->features;
    for (int j = 0; j < H; j++) a[j] = 0.0f;
    for (int f = 0; f < F; f++) {
        const float *row = w->w_coord + (size_t)f * H;
        for (int j = 0; j < H; j++) a[j] += xn[f] * row[j];
    }
    for (int j = 0; j < H; j++) u[j] = (a[j] + w->b_coord[j]) + w->w_diag[j] * h[j] > cut;
}

/* Advance `batch` rows by `steps` steps. x [B,T,F]; state_in and state_out [B,S] (S = H, or
 * 2H for the LSTM: h then c); lengths and threshold [B]; logits [B,T,C]; updates [B,T,H].
 * Returns 0, or -1 if scratch memory could not be had. */
int sarnn_chunk(const sarnn_weights *w, int batch, int steps, const float *x,
                const float *state_in, const int64_t *lengths, const float *threshold,
                float *logits, uint8_t *updates, float *state_out) {
    const int H = w->hidden, F = w->features, C = w->classes;
    const int lstm = w->cell == CELL_LSTM;
    const size_t S = (size_t)(lstm ? 2 : 1) * H;
    float *state = malloc(sizeof(float) * (size_t)batch * S);
    float *next = malloc(sizeof(float) * (size_t)batch * S);
    float *xn = malloc(sizeof(float) * (size_t)batch * (F > 0 ? F : 1));
    uint8_t *gate = malloc((size_t)batch * H);
    float *cut = malloc(sizeof(float) * (size_t)batch);
    float *coord = malloc(sizeof(float) * (size_t)H);
    if (!state || !next || !xn || !gate || !cut || !coord) {
        free(state), free(next), free(xn), free(gate), free(cut), free(coord);
        return -1;
    }
    memcpy(state, state_in, sizeof(float) * (size_t)batch * S);
    for (int b = 0; b < batch; b++) cut[b] = (threshold[b] * 2.0f - 1.0f) / w->alpha;

    for (int t = 0; t < steps; t++) {
        for (int b = 0; b < batch; b++) {
            const float *h = state + b * S;
            const float *xt = x + ((size_t)b * steps + t) * F;
            float *xb = xn + (size_t)b * F;
            uint8_t *u = gate + (size_t)b * H;
            for (int f = 0; f < F; f++) xb[f] = (xt[f] - w->mean[f]) / w->std[f];
            if (t >= lengths[b]) {
                memset(u, 0, (size_t)H);
                continue;
            }
            coordinate(w, xb, h, cut[b], coord, u);
        }
        memcpy(next, state, sizeof(float) * (size_t)batch * S);
        /* neuron-major: a neuron's weight rows are read once per step for every row using them */
        for (int j = 0; j < H; j++) {
            for (int b = 0; b < batch; b++) {
                if (!gate[(size_t)b * H + j]) continue;
                const float *h = state + b * S;
                float *hn = next + b * S;
                update_neuron(w, j, xn + (size_t)b * F, h, lstm ? h + H : NULL, hn,
                              lstm ? hn + H : NULL);
            }
        }
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
    free(state), free(next), free(xn), free(gate), free(cut), free(coord);
    return 0;
}

/* Multi-head attention of target nodes over their incoming edges, forward and backward, in one pass over each
 * target's edges (graphsr.nn.fused_attention builds and calls it; float32, CPU, one thread). HEADS and DIM (features
 * per head) are fixed at build time, one build per size, so that every per-edge loop is unrolled and vectorised.
 *
 * Shapes (W = heads * head_dim): q [T, W] per target; kv [S, 2W] per source (key, then value), their rows q_stride
 * and kv_stride floats apart (views into a wider matmul output need no copy); dq and dkv are contiguous; table
 * [R, 2W] of edge terms added to key and value, edge e using row[e] (table NULL: no edge terms, row unused);
 * source [E]; order [E] the edges sorted by target, target t's edges order[ptr[t] .. ptr[t + 1]);
 * scale = 1 / sqrt(head_dim).
 * Forward: out [T, W] = sum over t's edges of softmax_e(scale q . k_e) v_e per head (zero for targets without edges),
 * and lse [T, heads], each softmax's log normaliser, which the backward reuses instead of a second maximum pass.
 * Backward: the gradients dq, dkv, dtable (dkv and dtable zeroed by the caller; dtable NULL where table is) of out's
 * gradient dout.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef HEADS
#define HEADS 4
#endif
#ifndef DIM
#define DIM 8
#endif
#define WIDTH (HEADS * DIM)

/* The edges sorted by target, stably, by counting (O(E), where a comparison sort is O(E log E)): order [E] and
 * ptr [targets + 1], target t's edges at order[ptr[t] .. ptr[t + 1]). Returns 1 for a target outside 0..targets-1. */
int graphsr_csr(int64_t edges, int64_t targets, const int64_t *restrict target, int64_t *restrict order,
                int64_t *restrict ptr)
{
    memset(ptr, 0, sizeof(int64_t) * (targets + 1));
    for (int64_t e = 0; e < edges; e++) {
        if (target[e] < 0 || target[e] >= targets)
            return 1;
        ptr[target[e] + 1]++;
    }
    for (int64_t t = 0; t < targets; t++)
        ptr[t + 1] += ptr[t];
    int64_t *next = malloc(sizeof(int64_t) * (targets ? targets : 1));
    if (!next)
        return 2;
    memcpy(next, ptr, sizeof(int64_t) * targets);
    for (int64_t e = 0; e < edges; e++)
        order[next[target[e]]++] = e;
    free(next);
    return 0;
}

/* Distinct rows of a [rows, features] array of 32-bit words (float bits: rows equal bit for bit), in order of first
 * appearance, by an open-addressing hash table (linear probing): index [rows] (each row's distinct row) and
 * first [distinct] (the row where each first appears); returns the number of distinct rows, -1 out of memory. */
int64_t graphsr_distinct_rows(int64_t rows, int64_t features, const uint32_t *restrict bits,
                              int64_t *restrict index, int64_t *restrict first)
{
    uint64_t size = 16;
    while (size < 2 * (uint64_t)rows)
        size *= 2;
    int64_t *slot = malloc(sizeof(int64_t) * size);  /* distinct row id, -1 empty */
    if (!slot)
        return -1;
    for (uint64_t i = 0; i < size; i++)
        slot[i] = -1;
    int64_t count = 0;
    for (int64_t r = 0; r < rows; r++) {
        const uint32_t *row = bits + r * features;
        uint64_t hash = 0;  /* each word mixed in, then splitmix64's finaliser: the low bits index the table */
        for (int64_t f = 0; f < features; f++)
            hash = (hash + row[f]) * 0x9E3779B97F4A7C15ull;
        hash ^= hash >> 30, hash *= 0xBF58476D1CE4E5B9ull, hash ^= hash >> 27, hash *= 0x94D049BB133111EBull;
        hash ^= hash >> 31;
        for (uint64_t i = hash & (size - 1);; i = (i + 1) & (size - 1)) {
            if (slot[i] < 0) {
                slot[i] = count;
                first[count] = r;
                index[r] = count++;
                break;
            }
            if (!memcmp(bits + first[slot[i]] * features, row, sizeof(uint32_t) * features)) {
                index[r] = slot[i];
                break;
            }
        }
    }
    free(slot);
    return count;
}

static const float no_terms[2 * WIDTH];  /* the edge terms where there is no table: zeros */

static inline const float *terms(const float *table, const int64_t *row, int64_t e)
{
    return table ? table + row[e] * 2 * WIDTH : no_terms;
}

static int64_t most_edges(int64_t targets, const int64_t *ptr)
{
    int64_t most = 1;
    for (int64_t t = 0; t < targets; t++)
        if (ptr[t + 1] - ptr[t] > most)
            most = ptr[t + 1] - ptr[t];
    return most;
}

/* e^x for x <= 0 (a softmax's shifted logits), in arithmetic the compiler vectorises over a buffer (libm's expf is
 * a call per value): e^x = 2^n e^r with n = round(x / ln 2), |r| <= ln 2 / 2 (r by Cody-Waite in two parts), and
 * Cephes' degree-6 polynomial for e^r; within 2 ulp of expf. Below -87 (e^x under float's normal range) it gives 0;
 * NaN stays NaN. */
static inline float exp_nonpositive(float x)
{
    const float clamped = x >= -87.0f ? x : -87.0f;  /* NaN too: the conversion below stays defined */
    const float n = __builtin_rintf(clamped * 1.44269504088896341f);
    const float r = (clamped - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { uint32_t i; float f; } scale = {.i = (uint32_t)((int32_t)n + 127) << 23};
    return x >= -87.0f ? p * scale.f : (x != x ? x : 0.0f);
}

static void exp_shifted(float *restrict logit, int64_t count, const float *restrict shift)
{
    for (int64_t j = 0; j < count; j++)
        for (int h = 0; h < HEADS; h++)
            logit[j * HEADS + h] = exp_nonpositive(logit[j * HEADS + h] - shift[h]);
}

/* scale * q . (k + b) of each head */
static inline void logits(const float *restrict q, const float *restrict k, const float *restrict b, float scale,
                          float *restrict out)
{
    float product[WIDTH];
    for (int i = 0; i < WIDTH; i++)
        product[i] = q[i] * (k[i] + b[i]);
    for (int h = 0; h < HEADS; h++) {
        float s = 0.0f;
        for (int d = 0; d < DIM; d++)
            s += product[h * DIM + d];
        out[h] = s * scale;
    }
}

int graphsr_attention_forward(int64_t targets, int64_t q_stride, int64_t kv_stride, const float *restrict q,
                              const float *restrict kv,
                              const float *restrict table, const int64_t *restrict source,
                              const int64_t *restrict row, const int64_t *restrict order,
                              const int64_t *restrict ptr, float scale, float *restrict out, float *restrict lse)
{
    float *logit = malloc(sizeof(float) * most_edges(targets, ptr) * HEADS);
    if (!logit)
        return 1;
    for (int64_t t = 0; t < targets; t++) {
        const int64_t begin = ptr[t], count = ptr[t + 1] - begin;
        const float *qt = q + t * q_stride;
        float maximum[HEADS], total[HEADS], acc[WIDTH];
        for (int h = 0; h < HEADS; h++)
            maximum[h] = -INFINITY, total[h] = 0.0f;
        for (int i = 0; i < WIDTH; i++)
            acc[i] = 0.0f;
        for (int64_t j = 0; j < count; j++) {
            const int64_t e = order[begin + j];
            logits(qt, kv + source[e] * kv_stride, terms(table, row, e), scale, logit + j * HEADS);
            for (int h = 0; h < HEADS; h++)
                maximum[h] = logit[j * HEADS + h] > maximum[h] ? logit[j * HEADS + h] : maximum[h];
        }
        exp_shifted(logit, count, maximum);
        for (int64_t j = 0; j < count; j++)
            for (int h = 0; h < HEADS; h++)
                total[h] += logit[j * HEADS + h];
        for (int64_t j = 0; j < count; j++) {
            const int64_t e = order[begin + j];
            const float *v = kv + source[e] * kv_stride + WIDTH, *b = terms(table, row, e) + WIDTH;
            float weight[WIDTH];
            for (int h = 0; h < HEADS; h++)
                for (int d = 0; d < DIM; d++)
                    weight[h * DIM + d] = logit[j * HEADS + h];
            for (int i = 0; i < WIDTH; i++)
                acc[i] += weight[i] * (v[i] + b[i]);
        }
        float *o = out + t * WIDTH;
        for (int h = 0; h < HEADS; h++) {
            const float inverse = count ? 1.0f / total[h] : 0.0f;
            for (int d = 0; d < DIM; d++)
                o[h * DIM + d] = acc[h * DIM + d] * inverse;
            lse[t * HEADS + h] = count ? maximum[h] + logf(total[h]) : 0.0f;
        }
    }
    free(logit);
    return 0;
}

int graphsr_attention_backward(int64_t targets, int64_t q_stride, int64_t kv_stride, const float *restrict q,
                               const float *restrict kv,
                               const float *restrict table, const int64_t *restrict source,
                               const int64_t *restrict row, const int64_t *restrict order,
                               const int64_t *restrict ptr, float scale, const float *restrict out,
                               const float *restrict lse, const float *restrict dout, float *restrict dq,
                               float *restrict dkv, float *restrict dtable)
{
    const int64_t most = most_edges(targets, ptr);
    float *p = malloc(sizeof(float) * most * HEADS), *dp = malloc(sizeof(float) * most * HEADS);
    if (!p || !dp) {
        free(p), free(dp);
        return 1;
    }
    for (int64_t t = 0; t < targets; t++) {
        const int64_t begin = ptr[t], count = ptr[t + 1] - begin;
        const float *qt = q + t * q_stride, *g = dout + t * WIDTH, *o = out + t * WIDTH;
        float delta[HEADS], dqt[WIDTH];
        for (int h = 0; h < HEADS; h++) {  /* sum_e p_e (dout . v_e) = dout . out */
            float s = 0.0f;
            for (int d = 0; d < DIM; d++)
                s += g[h * DIM + d] * o[h * DIM + d];
            delta[h] = s;
        }
        for (int64_t j = 0; j < count; j++) {  /* the logits again, and dout . v_e */
            const int64_t e = order[begin + j];
            const float *k = kv + source[e] * kv_stride, *b = terms(table, row, e);
            logits(qt, k, b, scale, p + j * HEADS);
            logits(g, k + WIDTH, b + WIDTH, 1.0f, dp + j * HEADS);
        }
        exp_shifted(p, count, lse + t * HEADS);  /* the forward's weights */
        for (int i = 0; i < WIDTH; i++)
            dqt[i] = 0.0f;
        for (int64_t j = 0; j < count; j++) {
            const int64_t e = order[begin + j];
            const float *k = kv + source[e] * kv_stride, *b = terms(table, row, e);
            float *dk = dkv + source[e] * 2 * WIDTH;
            float weight[WIDTH], ds[WIDTH];
            for (int h = 0; h < HEADS; h++)
                for (int d = 0; d < DIM; d++) {  /* d loss / d logit, times d logit / d (q . k) */
                    weight[h * DIM + d] = p[j * HEADS + h];
                    ds[h * DIM + d] = p[j * HEADS + h] * (dp[j * HEADS + h] - delta[h]) * scale;
                }
            for (int i = 0; i < WIDTH; i++) {
                dqt[i] += ds[i] * (k[i] + b[i]);
                dk[i] += ds[i] * qt[i];
                dk[WIDTH + i] += weight[i] * g[i];
            }
            if (table) {
                float *db = dtable + row[e] * 2 * WIDTH;
                for (int i = 0; i < WIDTH; i++) {
                    db[i] += ds[i] * qt[i];
                    db[WIDTH + i] += weight[i] * g[i];
                }
            }
        }
        for (int i = 0; i < WIDTH; i++)
            dq[t * WIDTH + i] = dqt[i];
    }
    free(p), free(dp);
    return 0;
}

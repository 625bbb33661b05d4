// Bidirectional attention over a packed bf16 batch (head size 64) with AVX512-BF16 dot products.
//
// Same arithmetic as PyTorch's CPU flash kernel for bf16: products of bf16 inputs summed in
// float32, softmax in float32, the unnormalised probabilities rounded to bf16 for the product
// with the values, float32 sums, one rounding of the output to bf16. What differs is the work
// split: one task per (sequence, head) packs its keys and values once into the pair layout
// VDPBF16PS reads, then runs rows in blocks of R against every key (a row's scores fit in L1),
// so nearly every instruction of the two products is a 16-lane dot product.
// Built and loaded by app/engine/cpu_kernel.py.
#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define D 64
#define DP (D / 2)
#define R 6

typedef struct {
    const uint16_t *qkv;
    uint16_t *out;
    const int32_t *cu;
    const int32_t *order;
    int heads;
    int tasks;
    float scale;
    int max_len;
    atomic_int next;
    atomic_int failed;
} job_t;

static inline __m512 exp512(__m512 x) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693359375f);
    const __m512 ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
    r = _mm512_fnmadd_ps(n, ln2_lo, r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// One (sequence, head): keys packed as [DP][Lp] pairs, values as [Lp/2][D] pairs.
static void head_attention(const job_t *job, int seq, int head, uint32_t *kp, uint32_t *vp,
                           float *s, uint16_t *p) {
    const int start = job->cu[seq], len = job->cu[seq + 1] - start;
    const int lp = (len + 63) & ~63;
    const int hd = job->heads * D, row = 3 * hd;
    const uint16_t *base = job->qkv + (size_t)start * row + head * D;

    for (int j = 0; j < len; j++) {
        const uint32_t *k = (const uint32_t *)(base + (size_t)j * row + hd);
        for (int d = 0; d < DP; d++) kp[d * lp + j] = k[d];
    }
    for (int d = 0; d < DP; d++) memset(kp + d * lp + len, 0, (lp - len) * 4);
    const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9,
                                        40, 8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1,
                                        32, 0);
    const __m512i hi = _mm512_set_epi16(63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57,
                                        25, 56, 24, 55, 23, 54, 22, 53, 21, 52, 20, 51, 19, 50,
                                        18, 49, 17, 48, 16);
    for (int j = 0; j < lp; j += 2) {
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, b0 = a0, b1 = a0;
        if (j < len) {
            const uint16_t *v = base + (size_t)j * row + 2 * hd;
            a0 = _mm512_loadu_si512(v);
            a1 = _mm512_loadu_si512(v + 32);
        }
        if (j + 1 < len) {
            const uint16_t *v = base + (size_t)(j + 1) * row + 2 * hd;
            b0 = _mm512_loadu_si512(v);
            b1 = _mm512_loadu_si512(v + 32);
        }
        uint32_t *dst = vp + (size_t)(j / 2) * D;
        _mm512_storeu_si512(dst, _mm512_permutex2var_epi16(a0, lo, b0));
        _mm512_storeu_si512(dst + 16, _mm512_permutex2var_epi16(a0, hi, b0));
        _mm512_storeu_si512(dst + 32, _mm512_permutex2var_epi16(a1, lo, b1));
        _mm512_storeu_si512(dst + 48, _mm512_permutex2var_epi16(a1, hi, b1));
    }

    for (int i0 = 0; i0 < len; i0 += R) {
        const int rows = len - i0 < R ? len - i0 : R;
        uint32_t q[R][DP];
        for (int i = 0; i < R; i++) {
            if (i < rows)
                memcpy(q[i], base + (size_t)(i0 + i) * row, D * 2);
            else
                memset(q[i], 0, D * 2);
        }
        for (int j0 = 0; j0 < lp; j0 += 64) {
            __m512 acc[R][4];
            for (int i = 0; i < R; i++)
                for (int c = 0; c < 4; c++) acc[i][c] = _mm512_setzero_ps();
            for (int d = 0; d < DP; d++) {
                const uint32_t *kr = kp + d * lp + j0;
                __m512bh k0 = (__m512bh)_mm512_loadu_si512(kr);
                __m512bh k1 = (__m512bh)_mm512_loadu_si512(kr + 16);
                __m512bh k2 = (__m512bh)_mm512_loadu_si512(kr + 32);
                __m512bh k3 = (__m512bh)_mm512_loadu_si512(kr + 48);
                for (int i = 0; i < R; i++) {
                    __m512bh b = (__m512bh)_mm512_set1_epi32((int)q[i][d]);
                    acc[i][0] = _mm512_dpbf16_ps(acc[i][0], b, k0);
                    acc[i][1] = _mm512_dpbf16_ps(acc[i][1], b, k1);
                    acc[i][2] = _mm512_dpbf16_ps(acc[i][2], b, k2);
                    acc[i][3] = _mm512_dpbf16_ps(acc[i][3], b, k3);
                }
            }
            for (int i = 0; i < R; i++)
                for (int c = 0; c < 4; c++) _mm512_storeu_ps(s + i * lp + j0 + c * 16, acc[i][c]);
        }
        float total[R];
        const __m512 scale = _mm512_set1_ps(job->scale);
        for (int i = 0; i < R; i++) {
            float *si = s + i * lp;
            uint16_t *pi = p + i * lp;
            if (i >= rows) {
                memset(pi, 0, lp * 2);
                total[i] = 1.0f;
                continue;
            }
            __m512 m = _mm512_set1_ps(-__builtin_inff());
            for (int j = 0; j < len; j += 16) {
                __mmask16 mask = len - j >= 16 ? 0xFFFF : (__mmask16)((1u << (len - j)) - 1);
                m = _mm512_max_ps(m, _mm512_mask_loadu_ps(m, mask, si + j));
            }
            const __m512 shift = _mm512_set1_ps(-_mm512_reduce_max_ps(m) * job->scale);
            __m512 sum = _mm512_setzero_ps();
            for (int j = 0; j < lp; j += 16) {
                __mmask16 mask = j >= len ? 0
                               : len - j >= 16 ? 0xFFFF : (__mmask16)((1u << (len - j)) - 1);
                __m512 e = exp512(_mm512_fmadd_ps(_mm512_loadu_ps(si + j), scale, shift));
                e = _mm512_maskz_mov_ps(mask, e);
                sum = _mm512_add_ps(sum, e);
                _mm256_storeu_si256((__m256i *)(pi + j), (__m256i)_mm512_cvtneps_pbh(e));
            }
            total[i] = _mm512_reduce_add_ps(sum);
        }
        __m512 acc[R][4];
        for (int i = 0; i < R; i++)
            for (int c = 0; c < 4; c++) acc[i][c] = _mm512_setzero_ps();
        for (int jp = 0; jp < lp / 2; jp++) {
            const uint32_t *vr = vp + (size_t)jp * D;
            __m512bh v0 = (__m512bh)_mm512_loadu_si512(vr);
            __m512bh v1 = (__m512bh)_mm512_loadu_si512(vr + 16);
            __m512bh v2 = (__m512bh)_mm512_loadu_si512(vr + 32);
            __m512bh v3 = (__m512bh)_mm512_loadu_si512(vr + 48);
            for (int i = 0; i < R; i++) {
                __m512bh b = (__m512bh)_mm512_set1_epi32(((const int32_t *)(p + i * lp))[jp]);
                acc[i][0] = _mm512_dpbf16_ps(acc[i][0], b, v0);
                acc[i][1] = _mm512_dpbf16_ps(acc[i][1], b, v1);
                acc[i][2] = _mm512_dpbf16_ps(acc[i][2], b, v2);
                acc[i][3] = _mm512_dpbf16_ps(acc[i][3], b, v3);
            }
        }
        for (int i = 0; i < rows; i++) {
            const __m512 inv = _mm512_set1_ps(1.0f / total[i]);
            uint16_t *o = job->out + (size_t)(start + i0 + i) * hd + head * D;
            for (int c = 0; c < 4; c++)
                _mm256_storeu_si256((__m256i *)(o + c * 16),
                                    (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc[i][c], inv)));
        }
    }
}

static void *worker(void *arg) {
    job_t *job = arg;
    const int lp = (job->max_len + 63) & ~63;
    uint32_t *kp = aligned_alloc(64, (size_t)lp * DP * 4);
    uint32_t *vp = aligned_alloc(64, (size_t)lp * DP * 4);
    float *s = aligned_alloc(64, (size_t)lp * R * 4);
    uint16_t *p = aligned_alloc(64, (size_t)lp * R * 2 + 64);
    if (!kp || !vp || !s || !p) {
        atomic_store(&job->failed, 1);
        atomic_store(&job->next, job->tasks);  // the other threads stop taking tasks too
    }
    while (!atomic_load(&job->failed)) {
        int t = atomic_fetch_add(&job->next, 1);
        if (t >= job->tasks) break;
        head_attention(job, job->order[t / job->heads], t % job->heads, kp, vp, s, p);
    }
    free(kp);
    free(vp);
    free(s);
    free(p);
    return NULL;
}

// qkv [T, 3, heads, 64] bf16 (contiguous), out [T, heads, 64] bf16, cu [nseq + 1] int32.
// Returns 0, or -1 when memory could not be allocated (out is then incomplete).
int attention_bf16(const uint16_t *qkv, uint16_t *out, const int32_t *cu, int nseq, int heads,
                   float scale, int threads) {
    int32_t *order = malloc((size_t)nseq * 4);
    if (!order) return -1;
    for (int i = 0; i < nseq; i++) order[i] = i;
    for (int i = 1; i < nseq; i++) {  // longest first, so the last tasks are short ones
        int32_t x = order[i], j = i;
        for (; j > 0 && cu[order[j - 1] + 1] - cu[order[j - 1]] < cu[x + 1] - cu[x]; j--)
            order[j] = order[j - 1];
        order[j] = x;
    }
    job_t job = {qkv, out, cu, order, heads, nseq * heads, scale, 0, 0, 0};
    for (int i = 0; i < nseq; i++)
        if (cu[i + 1] - cu[i] > job.max_len) job.max_len = cu[i + 1] - cu[i];
    pthread_t ids[64];
    int started = 0;
    for (; started < threads - 1 && started < 64; started++)
        if (pthread_create(&ids[started], NULL, worker, &job)) break;
    worker(&job);
    for (int i = 0; i < started; i++) pthread_join(ids[i], NULL);
    free(order);
    return atomic_load(&job.failed) ? -1 : 0;
}

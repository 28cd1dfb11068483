// agentbox's CUDA kernels for the Llama-family forward pass, compiled at run time by NVRTC.
//
// Activations and weights are bf16, stored as raw 16-bit words (no CUDA headers needed, so
// NVRTC compiles this file alone); every reduction accumulates in f32. The paged KV cache
// has the CPU path's layout: per layer [block][kv_head][slot][head_dim], BLOCK_SIZE slots
// per block, and a block table per sequence.

typedef unsigned short bf16;

#define BLOCK_SIZE 16
#define WARP 32
#define INFINITY __int_as_float(0x7f800000)

__device__ __forceinline__ float bf16_to_f32(bf16 h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even, as PyTorch and the CPU path do.
__device__ __forceinline__ bf16 f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (bf16)((u >> 16) | 0x40u);  // a quiet NaN stays NaN
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = WARP / 2; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = WARP / 2; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// The sum of `v` over the whole thread block (blockDim.x a multiple of 32, at most 1024).
__device__ float block_sum(float v) {
    __shared__ float partial[WARP];
    int lane = threadIdx.x % WARP;
    int warp = threadIdx.x / WARP;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    int warps = blockDim.x / WARP;
    v = (threadIdx.x < warps) ? partial[threadIdx.x] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) partial[0] = v;
    __syncthreads();
    return partial[0];
}

// out[t, :] = table[ids[t], :]. Grid: one block per token.
extern "C" __global__ void embedding_gather(
    const bf16* __restrict__ table, const unsigned int* __restrict__ ids,
    bf16* __restrict__ out, int dim) {
    const bf16* row = table + (size_t)ids[blockIdx.x] * dim;
    bf16* dst = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = row[i];
}

// out[r, :] = x[r, :] / rms(x[r, :]) * weight. Grid: one block per row.
extern "C" __global__ void rms_norm(
    const bf16* __restrict__ x, const bf16* __restrict__ weight,
    bf16* __restrict__ out, int dim, float eps) {
    const bf16* row = x + (size_t)blockIdx.x * dim;
    float squares = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = bf16_to_f32(row[i]);
        squares += v * v;
    }
    float scale = rsqrtf(block_sum(squares) / dim + eps);
    bf16* dst = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        // As transformers' LlamaRMSNorm: normalise in f32, round to bf16, then scale.
        float normed = bf16_to_f32(f32_to_bf16(bf16_to_f32(row[i]) * scale));
        dst[i] = f32_to_bf16(normed * bf16_to_f32(weight[i]));
    }
}

// residual[r, :] += x[r, :] (rounded to bf16), then out[r, :] = rms_norm(residual[r, :]).
// The residual add and the next layer's norm in one pass. Grid: one block per row.
extern "C" __global__ void add_rms_norm(
    bf16* __restrict__ residual, const bf16* __restrict__ x,
    const bf16* __restrict__ weight, bf16* __restrict__ out, int dim, float eps) {
    bf16* res = residual + (size_t)blockIdx.x * dim;
    const bf16* add = x + (size_t)blockIdx.x * dim;
    float squares = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        bf16 sum = f32_to_bf16(bf16_to_f32(res[i]) + bf16_to_f32(add[i]));
        res[i] = sum;
        float v = bf16_to_f32(sum);
        squares += v * v;
    }
    float scale = rsqrtf(block_sum(squares) / dim + eps);
    bf16* dst = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float normed = bf16_to_f32(f32_to_bf16(bf16_to_f32(res[i]) * scale));
        dst[i] = f32_to_bf16(normed * bf16_to_f32(weight[i]));
    }
}

// a[i] += b[i] for n elements.
extern "C" __global__ void add_in_place(bf16* __restrict__ a, const bf16* __restrict__ b, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
}

// out[r, j] = silu(gate_up[r, j]) * gate_up[r, inter + j]: the MLP's activation over the
// fused gate|up projection. Grid: ceil(rows * inter / blockDim).
extern "C" __global__ void silu_mul(
    const bf16* __restrict__ gate_up, bf16* __restrict__ out, int rows, int inter) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * inter) return;
    size_t r = i / inter, j = i % inter;
    float g = bf16_to_f32(gate_up[r * 2 * inter + j]);
    float u = bf16_to_f32(gate_up[r * 2 * inter + inter + j]);
    // transformers rounds silu(g) to bf16 before the product.
    float act = bf16_to_f32(f32_to_bf16(g / (1.0f + __expf(-g))));
    out[i] = f32_to_bf16(act * u);
}

// Rotary embedding in place on q [tokens, n_heads, head_dim] and k [tokens, n_kv_heads,
// head_dim], rotating pairs (i, i + head_dim/2) as transformers' rotate_half does.
// `inv_freq` has head_dim/2 entries (any rope scaling already applied on the host).
// Grid: (tokens, n_heads + n_kv_heads); block: head_dim/2 threads.
extern "C" __global__ void rope(
    bf16* __restrict__ q, bf16* __restrict__ k, const int* __restrict__ positions,
    const float* __restrict__ inv_freq, int n_heads, int n_kv_heads, int head_dim) {
    int t = blockIdx.x;
    int h = blockIdx.y;
    int half = head_dim / 2;
    int i = threadIdx.x;
    if (i >= half) return;
    bf16* v = (h < n_heads) ? q + ((size_t)t * n_heads + h) * head_dim
                            : k + ((size_t)t * n_kv_heads + (h - n_heads)) * head_dim;
    float angle = (float)positions[t] * inv_freq[i];
    float s, c;
    sincosf(angle, &s, &c);
    // transformers keeps cos and sin in the activation dtype.
    c = bf16_to_f32(f32_to_bf16(c));
    s = bf16_to_f32(f32_to_bf16(s));
    float x0 = bf16_to_f32(v[i]);
    float x1 = bf16_to_f32(v[i + half]);
    v[i] = f32_to_bf16(bf16_to_f32(f32_to_bf16(x0 * c)) - bf16_to_f32(f32_to_bf16(x1 * s)));
    v[i + half] = f32_to_bf16(bf16_to_f32(f32_to_bf16(x1 * c)) + bf16_to_f32(f32_to_bf16(x0 * s)));
}

// Writes new keys and values [tokens, n_kv_heads, head_dim] into their cache slots;
// `slots[t]` is block * BLOCK_SIZE + slot. Grid: (tokens, n_kv_heads); block: head_dim.
extern "C" __global__ void kv_cache_write(
    const bf16* __restrict__ k, const bf16* __restrict__ v,
    bf16* __restrict__ k_cache, bf16* __restrict__ v_cache,
    const unsigned int* __restrict__ slots, int n_kv_heads, int head_dim) {
    int t = blockIdx.x, h = blockIdx.y;
    unsigned int block = slots[t] / BLOCK_SIZE, slot = slots[t] % BLOCK_SIZE;
    size_t src = ((size_t)t * n_kv_heads + h) * head_dim;
    size_t dst = (((size_t)block * n_kv_heads + h) * BLOCK_SIZE + slot) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        k_cache[dst + d] = k[src + d];
        v_cache[dst + d] = v[src + d];
    }
}

#define ATTN_WARPS 4
#define MAX_HEAD_DIM 256

// Attention over the paged cache for a batch of query tokens from any sequences: query i
// reads block-table row query_rows[i] and attends its first context_lens[i] tokens (for
// a prompt token at position p, p + 1: causal; its key is already written). Decode steps
// and prompt chunks go through the same kernel. q, out: [queries, n_heads, head_dim];
// block_tables: [rows, max_blocks]. Each warp runs an online softmax over every
// ATTN_WARPS-th token; the warps then merge. Grid: (n_heads, queries); block:
// ATTN_WARPS * 32 threads.
extern "C" __global__ void paged_attention(
    const bf16* __restrict__ q, const bf16* __restrict__ k_cache,
    const bf16* __restrict__ v_cache, const unsigned int* __restrict__ block_tables,
    const unsigned int* __restrict__ query_rows, const int* __restrict__ context_lens,
    bf16* __restrict__ out, int n_heads, int n_kv_heads, int head_dim, int max_blocks,
    float scale) {
    const int DIMS_PER_LANE = MAX_HEAD_DIM / WARP;
    int head = blockIdx.x, seq = blockIdx.y;
    int kv_head = head / (n_heads / n_kv_heads);
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    int per_lane = head_dim / WARP;  // head_dim is a multiple of 32
    const bf16* qv = q + ((size_t)seq * n_heads + head) * head_dim;
    float qr[DIMS_PER_LANE];
    float acc[DIMS_PER_LANE];
    for (int j = 0; j < per_lane; j++) {
        qr[j] = bf16_to_f32(qv[lane * per_lane + j]) * scale;
        acc[j] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    int len = context_lens[seq];
    const unsigned int* table = block_tables + (size_t)query_rows[seq] * max_blocks;
    for (int t = warp; t < len; t += ATTN_WARPS) {
        size_t base = (((size_t)table[t / BLOCK_SIZE] * n_kv_heads + kv_head) * BLOCK_SIZE
                       + t % BLOCK_SIZE) * head_dim + lane * per_lane;
        float dot = 0.0f;
        for (int j = 0; j < per_lane; j++) dot += qr[j] * bf16_to_f32(k_cache[base + j]);
        float s = warp_sum(dot);
        float m_new = fmaxf(m, s);
        float old = __expf(m - m_new), p = __expf(s - m_new);
        l = l * old + p;
        for (int j = 0; j < per_lane; j++) acc[j] = acc[j] * old + p * bf16_to_f32(v_cache[base + j]);
        m = m_new;
    }
    __shared__ float warp_m[ATTN_WARPS], warp_l[ATTN_WARPS];
    __shared__ float warp_acc[ATTN_WARPS][MAX_HEAD_DIM];
    if (lane == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
    for (int j = 0; j < per_lane; j++) warp_acc[warp][lane * per_lane + j] = acc[j];
    __syncthreads();
    float m_all = -INFINITY;
    for (int w = 0; w < ATTN_WARPS; w++) m_all = fmaxf(m_all, warp_m[w]);
    float l_all = 0.0f;
    for (int w = 0; w < ATTN_WARPS; w++) {
        if (warp_l[w] > 0.0f) l_all += warp_l[w] * __expf(warp_m[w] - m_all);
    }
    bf16* o = out + ((size_t)seq * n_heads + head) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float sum = 0.0f;
        for (int w = 0; w < ATTN_WARPS; w++) {
            if (warp_l[w] > 0.0f) sum += warp_acc[w][d] * __expf(warp_m[w] - m_all);
        }
        o[d] = f32_to_bf16(l_all > 0.0f ? sum / l_all : 0.0f);
    }
}

// The block-wide argmax of (v, i) pairs, the lowest index on ties; every thread gets the
// index (0xffffffff when no thread had a candidate). Block: a multiple of 32 threads.
__device__ unsigned int block_argmax(float best, unsigned int best_i) {
    __shared__ float warp_best[WARP];
    __shared__ unsigned int warp_index[WARP];
    __shared__ unsigned int winner;
    for (int offset = WARP / 2; offset > 0; offset >>= 1) {
        float v = __shfl_xor_sync(0xffffffffu, best, offset);
        unsigned int vi = __shfl_xor_sync(0xffffffffu, best_i, offset);
        if (v > best || (v == best && vi < best_i)) {
            best = v;
            best_i = vi;
        }
    }
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    __syncthreads();
    if (lane == 0) {
        warp_best[warp] = best;
        warp_index[warp] = best_i;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x / WARP); w++) {
            if (warp_best[w] > best || (warp_best[w] == best && warp_index[w] < best_i)) {
                best = warp_best[w];
                best_i = warp_index[w];
            }
        }
        winner = best_i;
    }
    __syncthreads();
    return winner;
}

// The largest logit of a row and its index (lowest on ties), over finite values.
__device__ unsigned int row_argmax(const float* row, int vocab) {
    float best = -INFINITY;
    unsigned int best_i = 0xffffffffu;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = row[i];
        if (v > best || (v == best && (unsigned int)i < best_i)) {
            best = v;
            best_i = i;
        }
    }
    unsigned int i = block_argmax(best, best_i);
    return i == 0xffffffffu ? 0u : i;
}

// Greedy sampling: out[r] = argmax(logits[r, :]), the lowest index on ties. Grid: one block
// per row; block: 1024 threads.
extern "C" __global__ void argmax_f32(const float* __restrict__ logits, unsigned int* __restrict__ out, int vocab) {
    unsigned int i = row_argmax(logits + (size_t)blockIdx.x * vocab, vocab);
    if (threadIdx.x == 0) out[blockIdx.x] = i;
}

__device__ float block_max(float v) {
    __shared__ float partial[WARP];
    int lane = threadIdx.x % WARP;
    int warp = threadIdx.x / WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    int warps = blockDim.x / WARP;
    v = (threadIdx.x < warps) ? partial[threadIdx.x] : -INFINITY;
    if (warp == 0) v = warp_max(v);
    if (threadIdx.x == 0) partial[0] = v;
    __syncthreads();
    return partial[0];
}

__device__ __forceinline__ unsigned long long mix64(unsigned long long x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

// A uniform draw in (0, 1) keyed by (seed, step, token) alone: counter-based, so a row's
// draw depends on nothing but its own inputs, whatever else shares the batch. 23 random
// bits plus one half: every value, 2^-24 to 1 - 2^-24, is exact in f32, so the draw is
// never 0 or 1 (whose logarithms would make one token win whatever its weight).
__device__ __forceinline__ float uniform_open(unsigned long long seed, unsigned int step, unsigned int token) {
    unsigned long long x = mix64(seed + 0x9e3779b97f4a7c15ULL * ((unsigned long long)step + 1ULL));
    x = mix64(x ^ (0xd1b54a32d192ed03ULL * ((unsigned long long)token + 1ULL)));
    return ((float)(x >> 41) + 0.5f) * (1.0f / 8388608.0f);
}

// One row's sampling parameters, as `backend/cuda/sampling.rs` packs them: eight 32-bit
// words.
struct SampleParams {
    float temperature;  // <= 0: greedy
    float top_p;        // 1: off
    float min_p;        // 0: off
    unsigned int top_k; // 0: off
    unsigned int seed_lo;
    unsigned int seed_hi;
    unsigned int step;  // tokens this sequence sampled before
    unsigned int reserved;
};

// A logit over the temperature, rounded as the maximum was (no fused multiply-add), so
// the top token's weight is exactly 1.
__device__ __forceinline__ float scaled_logit(float logit, float inv_t) {
    return __fmul_rn(logit, inv_t);
}

// The weight exp((l - max) / T) of a logit; 0 for non-finite ones, which are never picked.
__device__ __forceinline__ float token_weight(float logit, float inv_t, float max_scaled) {
    return isfinite(logit) ? expf(scaled_logit(logit, inv_t) - max_scaled) : 0.0f;
}

// Counts (or sums the weights of) a row's tokens whose weight's bits are at least `bits`.
// Weights are positive floats, whose bit patterns order as their values.
__device__ float mass_at_least(const float* row, int vocab, float inv_t, float max_scaled, unsigned int bits, bool count) {
    float acc = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float w = token_weight(row[i], inv_t, max_scaled);
        if (w > 0.0f && __float_as_uint(w) >= bits) acc += count ? 1.0f : w;
    }
    return block_sum(acc);
}

// The largest threshold (as float bits, in [lo, 1.0]) whose kept mass is still at least
// `target`: a bisection over the bit patterns, exact in about 30 block reductions.
__device__ unsigned int largest_threshold(const float* row, int vocab, float inv_t, float max_scaled,
                                          unsigned int lo, float target, bool count) {
    unsigned int hi = 0x3f800000u;  // 1.0f: the largest weight
    while (lo < hi) {
        unsigned int mid = lo + (hi - lo + 1u) / 2u;
        if (mass_at_least(row, vocab, inv_t, max_scaled, mid, count) >= target) {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    return lo;
}

// Sampling on the GPU, so that only token ids cross PCIe. Per row, as the CPU sampler
// (sampling/mod.rs) filters: temperature, then top-k, then min-p (relative to the most
// likely token), then top-p over the probabilities normalised within the top-k. Then one
// draw from the kept tokens in proportion to their weights, by the exponential race
// (argmax of weight / Exp(1)), with the randomness keyed by (seed, step, token).
// Ties at a top-k boundary keep every tied token. Grid: one block per row; block: 1024.
extern "C" __global__ void sample_rows(
    const float* __restrict__ logits, const SampleParams* __restrict__ params,
    unsigned int* __restrict__ out, int vocab) {
    const float* row = logits + (size_t)blockIdx.x * vocab;
    SampleParams p = params[blockIdx.x];
    if (!(p.temperature > 0.0f)) {
        unsigned int i = row_argmax(row, vocab);
        if (threadIdx.x == 0) out[blockIdx.x] = i;
        return;
    }
    float inv_t = 1.0f / p.temperature;
    float local_max = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float l = row[i];
        if (isfinite(l)) local_max = fmaxf(local_max, scaled_logit(l, inv_t));
    }
    float max_scaled = block_max(local_max);
    if (!isfinite(max_scaled)) {  // no finite logit: what the CPU sampler does too
        unsigned int i = row_argmax(row, vocab);
        if (threadIdx.x == 0) out[blockIdx.x] = i;
        return;
    }
    unsigned int threshold = 1u;  // the smallest positive float: every finite token
    if (p.top_k > 0u && p.top_k < (unsigned int)vocab) {
        threshold = largest_threshold(row, vocab, inv_t, max_scaled, threshold, (float)p.top_k, true);
    }
    float top_k_mass = mass_at_least(row, vocab, inv_t, max_scaled, threshold, false);
    if (p.min_p > 0.0f) {
        // Relative to the top token, whose weight is 1.
        threshold = max(threshold, __float_as_uint(p.min_p));
    }
    if (p.top_p < 1.0f) {
        float target = p.top_p * top_k_mass;
        if (mass_at_least(row, vocab, inv_t, max_scaled, threshold, false) >= target) {
            threshold = largest_threshold(row, vocab, inv_t, max_scaled, threshold, target, false);
        }
    }
    unsigned long long seed = ((unsigned long long)p.seed_hi << 32) | p.seed_lo;
    float best = -INFINITY;
    unsigned int best_i = 0xffffffffu;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float w = token_weight(row[i], inv_t, max_scaled);
        if (w > 0.0f && __float_as_uint(w) >= threshold) {
            // log(w) is the scaled logit minus the maximum; accurate logarithms, as the
            // fast ones err near 1.
            float race = (scaled_logit(row[i], inv_t) - max_scaled)
                - logf(-logf(uniform_open(seed, p.step, (unsigned int)i)));
            if (race > best || (race == best && (unsigned int)i < best_i)) {
                best = race;
                best_i = i;
            }
        }
    }
    unsigned int winner = block_argmax(best, best_i);
    if (winner == 0xffffffffu) winner = row_argmax(row, vocab);  // uniform across the block
    if (threadIdx.x == 0) out[blockIdx.x] = winner;
}

// Softmax cross-entropy with the z-loss of PaLM, per row of logits, vocabulary-sharded: logits are
// columns [v0, v0 + V) of the vocabulary and targets are global ids.
// Forward: logZ = max + log Σ_j exp(logit_j − max) over this shard's columns; targetLogit = logit[target − v0]
// when the target is in the shard, else 0 (one device: loss = logZ − targetLogit). The exponent is ≤ 0
// so nothing overflows; the sum and logZ are carried in double where the device has fp64 (REAL).
// Backward: dlogits = scale · (p·(1 + 2·zLoss·logZ) − onehot), p = exp(logit − logZ) with the global logZ,
// the one-hot term only in the target's shard: the gradient of scale · Σ_rows (loss + zLoss·logZ²).
// Elementwise, so dlogits may alias logits. Shards combine their logZ as M + log Σ_m exp(logZ_m − M),
// M = max_m logZ_m: logsumexp_shift and logsumexp_finish run around a max and a sum all-reduce.
// The forward uses one work-group of CE_WG work-items per row and a fixed local-memory tree, so the
// sum has the same bits on every run. A negative target is reported through `errors` (the host raises
// it at the next synchronisation) and its row's targetLogit is NaN.
//
// Dimensions: N = B·T rows, V columns of this shard, n any count.
//
// crossentropy_forward:  logits (N,V), targets (N) -> logZ (N), targetLogit (N)
// crossentropy_backward: logits (N,V), logZ (N), targets (N) -> dlogits (N,V) (may alias logits)
// logsumexp_shift:       logZ (n), max (n) -> out (n) = exp(logZ − max)
// logsumexp_finish:      max (n), sumExp (n) -> logZ (n) = max + log(sumExp)

#ifndef CE_WG
#define CE_WG 64   // work-items per row in the forward (power of two)
#endif
#define CE_VEC 16     // elements per vector: work-items walk a row in float16 pieces
#define CE_FLUSH 16   // vectors summed in float before the partial sum moves to REAL

#ifdef PALM_FP64
typedef double REAL;
#else
typedef float REAL;
#endif

__kernel __attribute__((reqd_work_group_size(CE_WG, 1, 1)))
void crossentropy_forward(__global float* logZ, __global float* targetLogit, __global const float* logits,
                          __global const int* targets, __global int* errors, const int N, const int V, const int v0)
{
    __local float max_scratch[CE_WG];
    __local REAL sum_scratch[CE_WG];
    const int n = get_group_id(0), lid = get_local_id(0);
    const __global float* x = logits + (long)n * V;
    const int vectors = V / CE_VEC, tail = vectors * CE_VEC;

    // Row max: work-item lid takes vectors lid, lid + CE_WG, ... and the tail elements lid, lid + CE_WG, ...
    float16 m16 = (float16)(-INFINITY);
    for (int c = lid; c < vectors; c += CE_WG) m16 = fmax(m16, vload16(c, x));
    float8 m8 = fmax(m16.lo, m16.hi);
    float4 m4 = fmax(m8.lo, m8.hi);
    float2 m2 = fmax(m4.lo, m4.hi);
    float m = fmax(m2.lo, m2.hi);
    for (int j = tail + lid; j < V; j += CE_WG) m = fmax(m, x[j]);
    max_scratch[lid] = m;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = CE_WG / 2; stride > 0; stride >>= 1) {
        if (lid < stride) max_scratch[lid] = fmax(max_scratch[lid], max_scratch[lid + stride]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    m = max_scratch[0];

    // Σ exp(x − max): every term is in (0, 1]; float vectors over short runs, then REAL.
    REAL s = 0;
    int c = lid;
    while (c < vectors) {
        float16 s16 = (float16)(0.0f);
        for (int k = 0; k < CE_FLUSH && c < vectors; k++, c += CE_WG) s16 += exp(vload16(c, x) - m);
        const float8 s8 = s16.lo + s16.hi;
        const float4 s4 = s8.lo + s8.hi;
        const float2 s2 = s4.lo + s4.hi;
        s += (REAL)(s2.lo + s2.hi);
    }
    for (int j = tail + lid; j < V; j += CE_WG) s += (REAL)exp(x[j] - m);
    sum_scratch[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = CE_WG / 2; stride > 0; stride >>= 1) {
        if (lid < stride) sum_scratch[lid] = sum_scratch[lid] + sum_scratch[lid + stride];
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    if (lid == 0) {
        const int target = targets[n];
        logZ[n] = (float)((REAL)m + log(sum_scratch[0]));
        if (target < 0) {
            errors[3] = n + 1;   // errors[3..5] = (1 + row, target, 0) of a negative target
            errors[4] = target;
            errors[5] = 0;
            targetLogit[n] = NAN;
        } else {
            const int j = target - v0;   // no overflow: target ≥ 0, v0 ≥ 0
            targetLogit[n] = j >= 0 && j < V ? x[j] : 0.0f;
        }
    }
}

// One work-item per CE_VEC consecutive logits of a row; the last piece of a row may be shorter.
__kernel void crossentropy_backward(__global float* dlogits, __global const float* logits, __global const float* logZ,
                                    __global const int* targets, const float scale, const float zLoss, const int N, const int V,
                                    const int v0)
{
    const int piece = get_global_id(0), n = get_global_id(1);
    const int j0 = piece * CE_VEC;
    if (j0 >= V || n >= N) return;
    const float lz = logZ[n];
    const float factor = scale * (1.0f + 2.0f * zLoss * lz);   // the z-loss only rescales the softmax part
    const int global_target = targets[n];
    const int target = global_target < 0 ? -1 : global_target - v0;   // outside [0, V): no one-hot term here
    const long row = (long)n * V;
    if (j0 + CE_VEC <= V) {
        float16 d = exp(vload16(0, logits + row + j0) - lz) * factor;
        vstore16(d, 0, dlogits + row + j0);
        if (target >= j0 && target < j0 + CE_VEC) dlogits[row + target] = dlogits[row + target] - scale;
    } else {
        for (int j = j0; j < V; j++) {
            float d = exp(logits[row + j] - lz) * factor;
            if (j == target) d -= scale;
            dlogits[row + j] = d;
        }
    }
}

__kernel void logsumexp_shift(__global float* out, __global const float* logZ, __global const float* mx, const long n)
{
    const long i = get_global_id(0);
    if (i < n) out[i] = exp(logZ[i] - mx[i]);
}

__kernel void logsumexp_finish(__global float* logZ, __global const float* mx, __global const float* sumExp, const long n)
{
    const long i = get_global_id(0);
    if (i < n) logZ[i] = (float)((REAL)mx[i] + log((REAL)sumExp[i]));
}

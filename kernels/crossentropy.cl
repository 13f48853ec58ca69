// Softmax cross-entropy with the z-loss of PaLM, per row of logits.
// Forward: logZ = max + log Σ_j exp(logit_j − max), loss = logZ − logit[target]. The exponent is ≤ 0 so
// nothing overflows; the sum and logZ are carried in double where the device has fp64 (REAL), and the
// loss is rounded once from (logZ − logit) so a tiny loss keeps its digits.
// Backward: dlogits = scale · (p·(1 + 2·zLoss·logZ) − onehot), p = exp(logit − logZ), the gradient of
// scale · Σ_rows (loss + zLoss·logZ²). Elementwise, so dlogits may alias logits.
// The forward uses one work-group of CE_WG work-items per row and a fixed local-memory tree, so the
// sum has the same bits on every run. A target outside [0, V) is reported through `errors` (the host
// raises it at the next synchronisation) and its row's loss is NaN.
//
// Dimensions: N = B·T rows, V vocabulary.
//
// crossentropy_forward:  logits (N,V), targets (N) -> losses (N), logZ (N)
// crossentropy_backward: logits (N,V), logZ (N), targets (N) -> dlogits (N,V) (may alias logits)

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
void crossentropy_forward(__global float* losses, __global float* logZ, __global const float* logits,
                          __global const int* targets, __global int* errors, const int N, const int V)
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
        const REAL lz = (REAL)m + log(sum_scratch[0]);
        const int target = targets[n];
        logZ[n] = (float)lz;
        if (target < 0 || target >= V) {
            errors[3] = n + 1;   // errors[3..5] = (1 + row, target, V) of a bad target
            errors[4] = target;
            errors[5] = V;
            losses[n] = NAN;
        } else {
            losses[n] = (float)(lz - (REAL)x[target]);
        }
    }
}

// One work-item per CE_VEC consecutive logits of a row; the last piece of a row may be shorter.
__kernel void crossentropy_backward(__global float* dlogits, __global const float* logits, __global const float* logZ,
                                    __global const int* targets, const float scale, const float zLoss, const int N, const int V)
{
    const int piece = get_global_id(0), n = get_global_id(1);
    const int j0 = piece * CE_VEC;
    if (j0 >= V || n >= N) return;
    const float lz = logZ[n];
    const float factor = scale * (1.0f + 2.0f * zLoss * lz);   // the z-loss only rescales the softmax part
    const int target = targets[n];
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

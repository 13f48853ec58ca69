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
#define CE_WG 64   // work-items per row (power of two)
#endif

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

    float m = -INFINITY;
    for (int j = lid; j < V; j += CE_WG) m = fmax(m, x[j]);
    max_scratch[lid] = m;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = CE_WG / 2; stride > 0; stride >>= 1) {
        if (lid < stride) max_scratch[lid] = fmax(max_scratch[lid], max_scratch[lid + stride]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    m = max_scratch[0];

    REAL s = 0;
    for (int j = lid; j < V; j += CE_WG) s += (REAL)exp(x[j] - m);
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

__kernel void crossentropy_backward(__global float* dlogits, __global const float* logits, __global const float* logZ,
                                    __global const int* targets, const float scale, const float zLoss, const int N, const int V)
{
    const long i = get_global_id(0);             // n·V + j
    if (i >= (long)N * V) return;
    const int n = (int)(i / V), j = (int)(i - (long)n * V);
    const float lz = logZ[n];
    const float factor = scale * (1.0f + 2.0f * zLoss * lz);   // the z-loss only rescales the softmax part
    float d = exp(logits[i] - lz) * factor;
    if (j == targets[n]) d -= scale;
    dlogits[i] = d;
}

// Softmax cross-entropy with the z-loss of PaLM, per row of logits.
// Forward: logZ = log Σ_j exp(logit_j) (max-shifted for range), loss = logZ − logit[target].
// Backward: dlogits = scale · (p − onehot + 2·zLoss·logZ·p), p = exp(logit − logZ), which is the
// gradient of scale · Σ_rows (loss + zLoss·logZ²). Backward is elementwise and may run in place.
// The forward uses one work-group of CE_WG work-items per row and a fixed local-memory tree, so the
// sum has the same bits on every run.
//
// Dimensions: N = B·T rows, V vocabulary.
//
// crossentropy_forward:  logits (N,V), targets (N) -> losses (N), logZ (N)
// crossentropy_backward: logits (N,V), logZ (N), targets (N) -> dlogits (N,V) (may alias logits)

#ifndef CE_WG
#define CE_WG 64   // work-items per row (power of two)
#endif

inline float wg_reduce(const float x, __local float* scratch, const int is_max)
{
    const int lid = get_local_id(0);
    scratch[lid] = x;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = CE_WG / 2; stride > 0; stride >>= 1) {
        if (lid < stride) {
            const float a = scratch[lid], b = scratch[lid + stride];
            scratch[lid] = is_max ? fmax(a, b) : a + b;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float total = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return total;
}

__kernel __attribute__((reqd_work_group_size(CE_WG, 1, 1)))
void crossentropy_forward(__global float* losses, __global float* logZ, __global const float* logits,
                          __global const int* targets, const int N, const int V)
{
    __local float scratch[CE_WG];
    const int n = get_group_id(0), lid = get_local_id(0);
    const __global float* x = logits + (long)n * V;

    float m = -INFINITY;
    for (int j = lid; j < V; j += CE_WG) m = fmax(m, x[j]);
    m = wg_reduce(m, scratch, 1);

    float s = 0.0f;
    for (int j = lid; j < V; j += CE_WG) s += exp(x[j] - m);
    s = wg_reduce(s, scratch, 0);

    if (lid == 0) {
        const float lz = m + log(s);
        logZ[n] = lz;
        losses[n] = lz - x[targets[n]];
    }
}

__kernel void crossentropy_backward(__global float* dlogits, __global const float* logits, __global const float* logZ,
                                    __global const int* targets, const float scale, const float zLoss, const int N, const int V)
{
    const long i = get_global_id(0);             // n·V + j
    if (i >= (long)N * V) return;
    const int n = (int)(i / V), j = (int)(i - (long)n * V);
    const float lz = logZ[n];
    const float p = exp(logits[i] - lz);
    const float onehot = j == targets[n] ? 1.0f : 0.0f;
    dlogits[i] = scale * (p - onehot + 2.0f * zLoss * lz * p);
}

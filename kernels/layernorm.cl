// Layer norm with a scale and no bias (PaLM): out = (x − mean)·rstd·w, rstd = 1/√(var + 1e-5),
// var the biased variance over D. Forward keeps mean and rstd per row for the backward.
// One work-group of LN_WG work-items per row; each work-item sums a strided slice of the row and a
// fixed tree in local memory combines the slices, so the sums have the same bits on every run.
// dweight is a column sum over all N rows: rows are cut into fixed chunks of LN_ROWS_PER_CHUNK, each
// chunk is summed in row order into a partial, and the partials are then summed in chunk order.
//
// Dimensions: N = B·T rows, D model width.
//
// layernorm_forward:                 inp (N,D), weight (D) -> out (N,D), mean (N), rstd (N)
// layernorm_backward_dinput:         dout (N,D), inp, weight, mean, rstd -> dinp (N,D) (= or += when accumulate)
// layernorm_backward_dweight_partial: dout (N,D), inp, mean, rstd -> partial (chunks,D)
// layernorm_backward_dweight_reduce: partial (chunks,D) -> dweight (D) +=

#ifndef LN_WG
#define LN_WG 64               // work-items per row (power of two)
#endif
#ifndef LN_ROWS_PER_CHUNK
#define LN_ROWS_PER_CHUNK 64   // rows per dweight partial sum
#endif
#define LN_EPS 1e-5f

// Tree sum over the work-group; every work-item receives the total.
inline float wg_sum(const float x, __local float* scratch)
{
    const int lid = get_local_id(0);
    scratch[lid] = x;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = LN_WG / 2; stride > 0; stride >>= 1) {
        if (lid < stride) scratch[lid] = scratch[lid] + scratch[lid + stride];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float total = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);   // scratch is reused by the next call
    return total;
}

__kernel __attribute__((reqd_work_group_size(LN_WG, 1, 1)))
void layernorm_forward(__global float* out, __global float* mean, __global float* rstd,
                       __global const float* inp, __global const float* weight, const int N, const int D)
{
    __local float scratch[LN_WG];
    const int n = get_group_id(0), lid = get_local_id(0);
    const __global float* x = inp + (long)n * D;

    float s = 0.0f;
    for (int d = lid; d < D; d += LN_WG) s += x[d];
    const float mu = wg_sum(s, scratch) / D;

    float v = 0.0f;   // two-pass variance: no cancellation when |mean| ≫ std
    for (int d = lid; d < D; d += LN_WG) { const float diff = x[d] - mu; v += diff * diff; }
    const float var = wg_sum(v, scratch) / D;
    const float rs = 1.0f / sqrt(var + LN_EPS);

    __global float* o = out + (long)n * D;
    for (int d = lid; d < D; d += LN_WG) o[d] = (x[d] - mu) * rs * weight[d];
    if (lid == 0) { mean[n] = mu; rstd[n] = rs; }
}

// dinp = rstd · (dxhat − mean(dxhat) − xhat · mean(dxhat·xhat)), dxhat = dout·w.
__kernel __attribute__((reqd_work_group_size(LN_WG, 1, 1)))
void layernorm_backward_dinput(__global float* dinp, __global const float* dout, __global const float* inp,
                               __global const float* weight, __global const float* mean, __global const float* rstd,
                               const int N, const int D, const int accumulate)
{
    __local float scratch[LN_WG];
    const int n = get_group_id(0), lid = get_local_id(0);
    const long row = (long)n * D;
    const float mu = mean[n], rs = rstd[n];

    float s1 = 0.0f, s2 = 0.0f;
    for (int d = lid; d < D; d += LN_WG) {
        const float dxhat = dout[row + d] * weight[d];
        const float xhat = (inp[row + d] - mu) * rs;
        s1 += dxhat;
        s2 += dxhat * xhat;
    }
    const float mean_dxhat = wg_sum(s1, scratch) / D;
    const float mean_dxhat_xhat = wg_sum(s2, scratch) / D;

    for (int d = lid; d < D; d += LN_WG) {
        const float dxhat = dout[row + d] * weight[d];
        const float xhat = (inp[row + d] - mu) * rs;
        const float g = (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * rs;
        dinp[row + d] = accumulate ? dinp[row + d] + g : g;
    }
}

__kernel void layernorm_backward_dweight_partial(__global float* partial, __global const float* dout, __global const float* inp,
                                                 __global const float* mean, __global const float* rstd, const int N, const int D)
{
    const int d = get_global_id(0), chunk = get_global_id(1);
    if (d >= D) return;
    const int n0 = chunk * LN_ROWS_PER_CHUNK, n1 = min(N, n0 + LN_ROWS_PER_CHUNK);
    float s = 0.0f;
    for (int n = n0; n < n1; n++) {
        const long i = (long)n * D + d;
        s += dout[i] * ((inp[i] - mean[n]) * rstd[n]);
    }
    partial[(long)chunk * D + d] = s;
}

__kernel void layernorm_backward_dweight_reduce(__global float* dweight, __global const float* partial, const int D, const int chunks)
{
    const int d = get_global_id(0);
    if (d >= D) return;
    float s = 0.0f;
    for (int c = 0; c < chunks; c++) s += partial[(long)c * D + d];
    dweight[d] = dweight[d] + s;
}

// Layer norm with a scale and no bias (PaLM): out = (x − mean)·rstd·w, rstd = 1/√(var + 1e-5),
// var the biased variance over D. Forward keeps mean and rstd per row for the backward.
// One work-group of LN_WG work-items per row; each work-item sums a strided set of float16 pieces of
// the row and a fixed tree in local memory combines them, so the sums have the same bits on every run.
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
// Rows are walked in float16 pieces: work-item lid takes pieces lid, lid + LN_WG, ... and then the
// D mod 16 tail elements lid, lid + LN_WG, ...

inline float hsum16(const float16 v)
{
    const float8 a = v.lo + v.hi;
    const float4 b = a.lo + a.hi;
    const float2 c = b.lo + b.hi;
    return c.lo + c.hi;
}

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
    const int pieces = D / 16, tail = pieces * 16;
    const __global float* x = inp + (long)n * D;

    float16 s16 = 0.0f;
    for (int c = lid; c < pieces; c += LN_WG) s16 += vload16(c, x);
    float s = hsum16(s16);
    for (int d = tail + lid; d < D; d += LN_WG) s += x[d];
    const float mu = wg_sum(s, scratch) / D;

    float16 v16 = 0.0f;   // two-pass variance: no cancellation when |mean| ≫ std
    for (int c = lid; c < pieces; c += LN_WG) { const float16 diff = vload16(c, x) - mu; v16 += diff * diff; }
    float v = hsum16(v16);
    for (int d = tail + lid; d < D; d += LN_WG) { const float diff = x[d] - mu; v += diff * diff; }
    const float var = wg_sum(v, scratch) / D;
    const float rs = 1.0f / sqrt(var + LN_EPS);

    __global float* o = out + (long)n * D;
    for (int c = lid; c < pieces; c += LN_WG) vstore16((vload16(c, x) - mu) * rs * vload16(c, weight), c, o);
    for (int d = tail + lid; d < D; d += LN_WG) o[d] = (x[d] - mu) * rs * weight[d];
    if (lid == 0) { mean[n] = mu; rstd[n] = rs; }
}

// dinp = rstd · (g − mean(g) − xhat · mean(g·xhat)), g = dout·w, xhat = (x − mean)·rstd.
// All sums of a row finish (barriers) before any dinp element is written, so dinp may alias dout.
__kernel __attribute__((reqd_work_group_size(LN_WG, 1, 1)))
void layernorm_backward_dinput(__global float* dinp, __global const float* dout, __global const float* inp,
                               __global const float* weight, __global const float* mean, __global const float* rstd,
                               const int N, const int D, const int accumulate)
{
    __local float scratch[LN_WG];
    const int n = get_group_id(0), lid = get_local_id(0);
    const int pieces = D / 16, tail = pieces * 16;
    const long row = (long)n * D;
    const __global float* x = inp + row;
    const __global float* dy = dout + row;
    __global float* dx = dinp + row;
    const float mu = mean[n], rs = rstd[n];

    float16 g16 = 0.0f, gx16 = 0.0f;
    for (int c = lid; c < pieces; c += LN_WG) {
        const float16 g = vload16(c, dy) * vload16(c, weight);
        g16 += g;
        gx16 += g * ((vload16(c, x) - mu) * rs);
    }
    float sum_g = hsum16(g16), sum_gx = hsum16(gx16);
    for (int d = tail + lid; d < D; d += LN_WG) {
        const float g = dy[d] * weight[d];
        sum_g += g;
        sum_gx += g * ((x[d] - mu) * rs);
    }
    const float mean_g = wg_sum(sum_g, scratch) / D;
    const float mean_gx = wg_sum(sum_gx, scratch) / D;

    for (int c = lid; c < pieces; c += LN_WG) {
        const float16 g = vload16(c, dy) * vload16(c, weight);
        float16 value = rs * (g - mean_g - ((vload16(c, x) - mu) * rs) * mean_gx);
        if (accumulate) value += vload16(c, dx);
        vstore16(value, c, dx);
    }
    for (int d = tail + lid; d < D; d += LN_WG) {
        const float g = dy[d] * weight[d];
        const float value = rs * (g - mean_g - ((x[d] - mu) * rs) * mean_gx);
        dx[d] = accumulate ? dx[d] + value : value;
    }
}

// partial[chunk][d] = Σ_{n in chunk} dout[n][d]·xhat[n][d]; a work-item owns 16 columns of one chunk.
__kernel void layernorm_backward_dweight_partial(__global float* partial, __global const float* dout, __global const float* inp,
                                                 __global const float* mean, __global const float* rstd, const int N, const int D)
{
    const int piece = get_global_id(0), chunk = get_global_id(1);
    const int d0 = piece * 16;
    if (d0 >= D) return;
    const int n0 = chunk * LN_ROWS_PER_CHUNK, n1 = min(N, n0 + LN_ROWS_PER_CHUNK);
    __global float* p = partial + (long)chunk * D + d0;
    if (d0 + 16 <= D) {
        float16 s = 0.0f;
        for (int n = n0; n < n1; n++) {
            const long i = (long)n * D + d0;
            s += vload16(0, dout + i) * ((vload16(0, inp + i) - mean[n]) * rstd[n]);
        }
        vstore16(s, 0, p);
    } else {
        for (int d = 0; d < D - d0; d++) {
            float s = 0.0f;
            for (int n = n0; n < n1; n++) {
                const long i = (long)n * D + d0 + d;
                s += dout[i] * ((inp[i] - mean[n]) * rstd[n]);
            }
            p[d] = s;
        }
    }
}

__kernel void layernorm_backward_dweight_reduce(__global float* dweight, __global const float* partial, const int D, const int chunks)
{
    const int d = get_global_id(0);
    if (d >= D) return;
    float s = 0.0f;
    for (int c = 0; c < chunks; c++) s += partial[(long)c * D + d];
    dweight[d] = dweight[d] + s;
}

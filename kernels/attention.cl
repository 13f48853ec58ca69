// Causal self-attention with multi-query support (G key/value heads shared by H query heads; G = 1 is
// multi-query, G = H multi-head). Query head h reads kv head h / (H/G). Scores are q·k/√K.
// Forward is tiled with an online softmax (flash-attention style): a work-group owns BQ query rows of
// one (batch, head), one row per work-item, and streams the causally visible keys in tiles of BK rows
// through local memory, keeping a running max m, normaliser l and output accumulator per row. No T×T
// matrix is ever stored; lse = m + log l is kept for the backward.
// Backward recomputes probabilities from lse, P_ij = exp(s_ij − lse_i), with Δ_i = Σ_k dout_ik·out_ik:
//   dV_j = Σ_i P_ij dout_i      dS_ij = P_ij (dout_i·v_j − Δ_i)
//   dQ_i = Σ_j dS_ij k_j / √K   dK_j = Σ_i dS_ij q_i / √K     (i over all heads sharing kv head)
// To stay deterministic without atomics it runs two passes: dq owned per query row, dk/dv owned per
// key row, each summing its terms in a fixed order.
//
// Dimensions: B batch, T time, H query heads, G kv heads, K head dim (= HEAD_DIM, fixed at build time).
//
// attention_forward:        q (B,T,H,K), k (B,T,G,K), v (B,T,G,K) -> out (B,T,H,K), lse (B,H,T)
// attention_backward_delta: dout (B,T,H,K), out (B,T,H,K) -> delta (B,H,T)
// attention_backward_dq:    dout, q, k, v, lse, delta -> dq (B,T,H,K)
// attention_backward_dkdv:  dout, q, k, v, lse, delta -> dk (B,T,G,K), dv (B,T,G,K)

#ifndef HEAD_DIM
#error "HEAD_DIM must be given at build time (-D HEAD_DIM=K)"
#endif
#ifndef BQ
#define BQ 16   // query rows per work-group in forward and dq; query tile length in dk/dv
#endif
#ifndef BK
#define BK 16   // key rows per tile in forward and dq; key rows per work-group in dk/dv
#endif

inline float dot_local(const float* a, __local const float* b)
{
    float s = 0.0f;
    for (int d = 0; d < HEAD_DIM; d++) s = fma(a[d], b[d], s);
    return s;
}

// Cooperative copy of `rows` rows of HEAD_DIM floats (row r at src + r·stride) into dst; rows past
// `valid` are zeroed so no work-item reads garbage.
inline void load_tile(__local float* dst, __global const float* src, const long stride, const int rows, const int valid,
                      const int lid, const int nthreads)
{
    for (int e = lid; e < rows * HEAD_DIM; e += nthreads) {
        const int r = e / HEAD_DIM, d = e - r * HEAD_DIM;
        dst[e] = r < valid ? src[r * stride + d] : 0.0f;
    }
}

__kernel __attribute__((reqd_work_group_size(BQ, 1, 1)))
void attention_forward(__global float* out, __global float* lse, __global const float* q, __global const float* k,
                       __global const float* v, const int B, const int T, const int H, const int G, const float scale)
{
    __local float k_tile[BK * HEAD_DIM];
    __local float v_tile[BK * HEAD_DIM];
    const int lid = get_local_id(0);
    const int q0 = get_group_id(0) * BQ, i = q0 + lid;
    const int bh = get_group_id(1), b = bh / H, h = bh % H, g = h / (H / G);
    const bool active = i < T;
    const long q_row = ((long)(b * T + i) * H + h) * HEAD_DIM;
    const long kv_base = ((long)b * T * G + g) * HEAD_DIM, kv_stride = (long)G * HEAD_DIM;

    float qi[HEAD_DIM], acc[HEAD_DIM];
    for (int d = 0; d < HEAD_DIM; d++) { qi[d] = active ? q[q_row + d] : 0.0f; acc[d] = 0.0f; }
    float m = -INFINITY, l = 0.0f;

    const int last = min(T, q0 + BQ);   // keys this group can see: [0, last)
    for (int k0 = 0; k0 < last; k0 += BK) {
        const int valid = min(BK, T - k0);
        load_tile(k_tile, k + kv_base + k0 * kv_stride, kv_stride, BK, valid, lid, BQ);
        load_tile(v_tile, v + kv_base + k0 * kv_stride, kv_stride, BK, valid, lid, BQ);
        barrier(CLK_LOCAL_MEM_FENCE);
        if (active && k0 <= i) {
            const int visible = min(BK, i - k0 + 1);
            float s[BK];
            float tile_max = -INFINITY;
            for (int j = 0; j < visible; j++) {
                s[j] = dot_local(qi, k_tile + j * HEAD_DIM) * scale;
                tile_max = fmax(tile_max, s[j]);
            }
            const float m_new = fmax(m, tile_max);
            const float correction = exp(m - m_new);   // 0 on the first tile (m = −∞)
            l *= correction;
            for (int d = 0; d < HEAD_DIM; d++) acc[d] *= correction;
            for (int j = 0; j < visible; j++) {
                const float p = exp(s[j] - m_new);
                l += p;
                for (int d = 0; d < HEAD_DIM; d++) acc[d] = fma(p, v_tile[j * HEAD_DIM + d], acc[d]);
            }
            m = m_new;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (active) {
        const float inv_l = 1.0f / l;
        for (int d = 0; d < HEAD_DIM; d++) out[q_row + d] = acc[d] * inv_l;
        lse[(long)bh * T + i] = m + log(l);
    }
}

__kernel void attention_backward_delta(__global float* delta, __global const float* dout, __global const float* out,
                                       const int B, const int T, const int H)
{
    const int i = get_global_id(0), bh = get_global_id(1);
    if (i >= T || bh >= B * H) return;
    const int b = bh / H, h = bh % H;
    const long row = ((long)(b * T + i) * H + h) * HEAD_DIM;
    float s = 0.0f;
    for (int d = 0; d < HEAD_DIM; d++) s = fma(dout[row + d], out[row + d], s);
    delta[(long)bh * T + i] = s;
}

__kernel __attribute__((reqd_work_group_size(BQ, 1, 1)))
void attention_backward_dq(__global float* dq, __global const float* dout, __global const float* q, __global const float* k,
                           __global const float* v, __global const float* lse, __global const float* delta,
                           const int B, const int T, const int H, const int G, const float scale)
{
    __local float k_tile[BK * HEAD_DIM];
    __local float v_tile[BK * HEAD_DIM];
    const int lid = get_local_id(0);
    const int q0 = get_group_id(0) * BQ, i = q0 + lid;
    const int bh = get_group_id(1), b = bh / H, h = bh % H, g = h / (H / G);
    const bool active = i < T;
    const long q_row = ((long)(b * T + i) * H + h) * HEAD_DIM;
    const long kv_base = ((long)b * T * G + g) * HEAD_DIM, kv_stride = (long)G * HEAD_DIM;

    float qi[HEAD_DIM], doi[HEAD_DIM], acc[HEAD_DIM];
    for (int d = 0; d < HEAD_DIM; d++) {
        qi[d] = active ? q[q_row + d] : 0.0f;
        doi[d] = active ? dout[q_row + d] : 0.0f;
        acc[d] = 0.0f;
    }
    const float lse_i = active ? lse[(long)bh * T + i] : 0.0f;
    const float delta_i = active ? delta[(long)bh * T + i] : 0.0f;

    const int last = min(T, q0 + BQ);
    for (int k0 = 0; k0 < last; k0 += BK) {
        const int valid = min(BK, T - k0);
        load_tile(k_tile, k + kv_base + k0 * kv_stride, kv_stride, BK, valid, lid, BQ);
        load_tile(v_tile, v + kv_base + k0 * kv_stride, kv_stride, BK, valid, lid, BQ);
        barrier(CLK_LOCAL_MEM_FENCE);
        if (active && k0 <= i) {
            const int visible = min(BK, i - k0 + 1);
            for (int j = 0; j < visible; j++) {
                const float p = exp(dot_local(qi, k_tile + j * HEAD_DIM) * scale - lse_i);
                const float ds = p * (dot_local(doi, v_tile + j * HEAD_DIM) - delta_i);
                for (int d = 0; d < HEAD_DIM; d++) acc[d] = fma(ds, k_tile[j * HEAD_DIM + d], acc[d]);
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (active)
        for (int d = 0; d < HEAD_DIM; d++) dq[q_row + d] = acc[d] * scale;
}

__kernel __attribute__((reqd_work_group_size(BK, 1, 1)))
void attention_backward_dkdv(__global float* dk, __global float* dv, __global const float* dout, __global const float* q,
                             __global const float* k, __global const float* v, __global const float* lse,
                             __global const float* delta, const int B, const int T, const int H, const int G, const float scale)
{
    __local float q_tile[BQ * HEAD_DIM];
    __local float do_tile[BQ * HEAD_DIM];
    __local float lse_tile[BQ];
    __local float delta_tile[BQ];
    const int lid = get_local_id(0);
    const int k0 = get_group_id(0) * BK, j = k0 + lid;
    const int bg = get_group_id(1), b = bg / G, g = bg % G;
    const int heads_per_kv = H / G;
    const bool active = j < T;
    const long kv_row = ((long)(b * T + j) * G + g) * HEAD_DIM;

    float kj[HEAD_DIM], vj[HEAD_DIM], dk_acc[HEAD_DIM], dv_acc[HEAD_DIM];
    for (int d = 0; d < HEAD_DIM; d++) {
        kj[d] = active ? k[kv_row + d] : 0.0f;
        vj[d] = active ? v[kv_row + d] : 0.0f;
        dk_acc[d] = 0.0f;
        dv_acc[d] = 0.0f;
    }

    for (int hh = 0; hh < heads_per_kv; hh++) {
        const int h = g * heads_per_kv + hh, bh = b * H + h;
        const long q_base = ((long)b * T * H + h) * HEAD_DIM, q_stride = (long)H * HEAD_DIM;
        for (int i0 = k0; i0 < T; i0 += BQ) {   // queries before k0 cannot see any key of this group
            const int valid = min(BQ, T - i0);
            load_tile(q_tile, q + q_base + i0 * q_stride, q_stride, BQ, valid, lid, BK);
            load_tile(do_tile, dout + q_base + i0 * q_stride, q_stride, BQ, valid, lid, BK);
            for (int r = lid; r < BQ; r += BK) {
                lse_tile[r] = r < valid ? lse[(long)bh * T + i0 + r] : 0.0f;
                delta_tile[r] = r < valid ? delta[(long)bh * T + i0 + r] : 0.0f;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            if (active) {
                for (int r = max(0, j - i0); r < valid; r++) {   // causal: query i0 + r ≥ j
                    const float p = exp(dot_local(kj, q_tile + r * HEAD_DIM) * scale - lse_tile[r]);
                    const float ds = p * (dot_local(vj, do_tile + r * HEAD_DIM) - delta_tile[r]);
                    for (int d = 0; d < HEAD_DIM; d++) {
                        dv_acc[d] = fma(p, do_tile[r * HEAD_DIM + d], dv_acc[d]);
                        dk_acc[d] = fma(ds, q_tile[r * HEAD_DIM + d], dk_acc[d]);
                    }
                }
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
    }
    if (active)
        for (int d = 0; d < HEAD_DIM; d++) {
            dk[kv_row + d] = dk_acc[d] * scale;
            dv[kv_row + d] = dv_acc[d];
        }
}

// Causal self-attention with multi-query support (G key/value heads shared by H query heads; G = 1 is
// multi-query, G = H multi-head). Query head h reads kv head h / (H/G). Scores are q·k/√K.
// Forward is tiled with an online softmax (flash-attention style): each work-item owns one query row
// and walks the causally visible keys in tiles of BK, keeping a running max m, normaliser l and output
// accumulator. No T×T matrix is ever stored; lse = m + log l is kept for the backward.
// Backward recomputes probabilities from lse, P_ij = exp(s_ij − lse_i), with Δ_i = Σ_k dout_ik·out_ik:
//   dV_j = Σ_i P_ij dout_i      dS_ij = P_ij (dout_i·v_j − Δ_i)
//   dQ_i = Σ_j dS_ij k_j / √K   dK_j = Σ_i dS_ij q_i / √K     (i over all heads sharing kv head)
// To stay deterministic without atomics it runs two passes: dq owned per query row, dk/dv owned per
// key row, each summing its terms in a fixed order (tile by tile, row by row, head by head).
// Vectorisation: the operand that is scored against (k, v in forward/dq; q, dout in dk/dv) is first
// packed into transposed tiles, (B, heads, Tp/W, K, W) for tile width W, zero past T, so a whole tile
// is one contiguous block and is scored as one W-wide vector with one fma per d (four interleaved
// chains over d). Accumulators over the head dim are DV-wide vectors kept in registers. Work-items are
// independent: no local memory, no barriers, so CPU devices run each one straight through with the
// tiles in cache, and GPUs read the same tile from cache for every query row of a work-group.
//
// Dimensions: B batch, T time, H query heads, G kv heads, K head dim (= HEAD_DIM, fixed at build time),
//             W tile width (BK for k and v, BQ for q and dout), Tp = T rounded up to a multiple of W.
//
// attention_pack_tiles:     x (B,T,Hs,K) -> x_t (B,Hs,Tp/W,K,W), zero past T
// attention_forward:        q (B,T,H,K), k_t (B,G,Tp/BK,K,BK), v (B,T,G,K) -> out (B,T,H,K), lse (B,H,T)
// attention_backward_delta: dout (B,T,H,K), out (B,T,H,K) -> delta (B,H,T)
// attention_backward_dq:    dout, q, k, k_t, v_t, lse, delta -> dq (B,T,H,K)
// attention_backward_dkdv:  k, v, q, q_t, dout, dout_t, lse, delta -> dk (B,T,G,K), dv (B,T,G,K)

#ifndef HEAD_DIM
#error "HEAD_DIM must be given at build time (-D HEAD_DIM=K)"
#endif
#ifndef BQ
#define BQ 16   // query rows per work-group in forward and dq; query tile in dk/dv: 2, 4, 8 or 16
#endif
#ifndef BK
#define BK 16   // key tile in forward and dq; key rows per work-group in dk/dv: 2, 4, 8 or 16
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

// Vector width over the head dim: the widest of 16, 8, 4, 2 that divides it.
#if HEAD_DIM % 16 == 0
  #define DV 16
#elif HEAD_DIM % 8 == 0
  #define DV 8
#elif HEAD_DIM % 4 == 0
  #define DV 4
#elif HEAD_DIM % 2 == 0
  #define DV 2
#else
  #define DV 1
#endif
#if DV == 1
  #define floatDV float
  #define LOAD_DV(i, p) (p)[i]
  #define STORE_DV(x, i, p) ((p)[i] = (x))
#else
  #define floatDV CAT(float, DV)
  #define LOAD_DV(i, p) CAT(vload, DV)(i, p)
  #define STORE_DV(x, i, p) CAT(vstore, DV)(x, i, p)
#endif

__constant int lane_ids[16] = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 };

// Fixed-order horizontal reductions (pairwise halves), so sums have the same bits on every run.
inline float hsum2(float2 v) { return v.s0 + v.s1; }
inline float hsum4(float4 v) { return hsum2(v.lo + v.hi); }
inline float hsum8(float8 v) { return hsum4(v.lo + v.hi); }
inline float hsum16(float16 v) { return hsum8(v.lo + v.hi); }
inline float hmax2(float2 v) { return fmax(v.s0, v.s1); }
inline float hmax4(float4 v) { return hmax2(fmax(v.lo, v.hi)); }
inline float hmax8(float8 v) { return hmax4(fmax(v.lo, v.hi)); }
inline float hmax16(float16 v) { return hmax8(fmax(v.lo, v.hi)); }

// result (BW lanes) = Σ_d a[d]·tile[d·BW + lane]: dot products of a against every row of one packed
// transposed tile, four interleaved fma chains over d (d mod 4), then a fixed pairwise sum.
#define DOT_TILE(BW, a, tile, result)                                                            \
    do {                                                                                         \
        CAT(float, BW) acc0 = 0.0f, acc1 = 0.0f, acc2 = 0.0f, acc3 = 0.0f;                       \
        const __global float* col = (tile);                                                      \
        int d = 0;                                                                               \
        for (; d + 4 <= HEAD_DIM; d += 4, col += 4 * BW) {                                       \
            acc0 = fma((CAT(float, BW))((a)[d]), CAT(vload, BW)(0, col), acc0);                  \
            acc1 = fma((CAT(float, BW))((a)[d + 1]), CAT(vload, BW)(1, col), acc1);              \
            acc2 = fma((CAT(float, BW))((a)[d + 2]), CAT(vload, BW)(2, col), acc2);              \
            acc3 = fma((CAT(float, BW))((a)[d + 3]), CAT(vload, BW)(3, col), acc3);              \
        }                                                                                        \
        for (; d < HEAD_DIM; d++, col += BW) acc0 = fma((CAT(float, BW))((a)[d]), CAT(vload, BW)(0, col), acc0); \
        (result) = (acc0 + acc1) + (acc2 + acc3);                                                \
    } while (0)

// acc = acc·scale + Σ_{r < count} weight[r]·row_r, rows in order, row_r at rows + r·stride; the
// accumulator lives in registers for the loop.
inline void accumulate_rows(floatDV* acc, const float scale, const float* weight, __global const float* rows,
                            const long stride, const int count)
{
    floatDV a[HEAD_DIM / DV];
    #pragma unroll
    for (int c = 0; c < HEAD_DIM / DV; c++) a[c] = acc[c] * scale;
    for (int r = 0; r < count; r++) {
        const floatDV w = (floatDV)(weight[r]);
        const __global float* row = rows + r * stride;
        #pragma unroll
        for (int c = 0; c < HEAD_DIM / DV; c++) a[c] = fma(w, LOAD_DV(c, row), a[c]);
    }
    #pragma unroll
    for (int c = 0; c < HEAD_DIM / DV; c++) acc[c] = a[c];
}

// BW values from p[0..valid) into a vector, zero past valid (no read past the end of the array).
#define LOAD_PARTIAL(BW, p, valid, result)                                  \
    do {                                                                    \
        if ((valid) == BW) (result) = CAT(vload, BW)(0, p);                 \
        else {                                                              \
            float tmp_[BW];                                                 \
            for (int r_ = 0; r_ < BW; r_++) tmp_[r_] = r_ < (valid) ? (p)[r_] : 0.0f; \
            (result) = CAT(vload, BW)(0, tmp_);                             \
        }                                                                   \
    } while (0)

__kernel void attention_pack_tiles(__global float* x_t, __global const float* x, const int B, const int T, const int Hs,
                                   const int Tp, const int W)
{
    const int t = get_global_id(0), bh = get_global_id(1);
    if (t >= Tp || bh >= B * Hs) return;
    const int b = bh / Hs, h = bh % Hs;
    __global float* dst = x_t + (long)bh * HEAD_DIM * Tp + (long)(t / W) * HEAD_DIM * W + t % W;
    const __global float* src = x + ((long)(b * T + t) * Hs + h) * HEAD_DIM;
    for (int d = 0; d < HEAD_DIM; d++) dst[d * W] = t < T ? src[d] : 0.0f;
}

// Start of the packed tile that holds position t0 (a multiple of W) of head bh.
#define TILE(x_t, bh, t0, W, Tp) ((x_t) + (long)(bh) * HEAD_DIM * (Tp) + (long)(t0) * HEAD_DIM)

__kernel __attribute__((reqd_work_group_size(BQ, 1, 1)))
void attention_forward(__global float* out, __global float* lse, __global const float* q, __global const float* k_t,
                       __global const float* v, const int B, const int T, const int H, const int G, const int Tp,
                       const float scale)
{
    const int i = get_global_id(0), bh = get_global_id(1);
    if (i >= T) return;
    const int b = bh / H, h = bh % H, g = h / (H / G);
    const long q_row = ((long)(b * T + i) * H + h) * HEAD_DIM;
    const __global float* vg = v + ((long)b * T * G + g) * HEAD_DIM;
    const long v_stride = (long)G * HEAD_DIM;
    const CAT(int, BK) lanes = CAT(vload, BK)(0, lane_ids);

    float qi[HEAD_DIM];
    for (int d = 0; d < HEAD_DIM; d++) qi[d] = q[q_row + d];
    floatDV acc[HEAD_DIM / DV];
    for (int c = 0; c < HEAD_DIM / DV; c++) acc[c] = (floatDV)(0.0f);
    float m = -INFINITY, l = 0.0f;

    for (int k0 = 0; k0 <= i; k0 += BK) {
        CAT(float, BK) s;
        DOT_TILE(BK, qi, TILE(k_t, b * G + g, k0, BK, Tp), s);
        s = select(s * scale, (CAT(float, BK))(-INFINITY), lanes + k0 > (CAT(int, BK))(i));   // causal mask
        const float m_new = fmax(m, CAT(hmax, BK)(s));
        const float correction = exp(m - m_new);   // 0 on the first tile (m = −∞)
        const CAT(float, BK) p = exp(s - m_new);
        l = l * correction + CAT(hsum, BK)(p);
        float pj[BK];
        CAT(vstore, BK)(p, 0, pj);
        accumulate_rows(acc, correction, pj, vg + k0 * v_stride, v_stride, min(BK, i - k0 + 1));
        m = m_new;
    }
    const float inv_l = 1.0f / l;
    for (int c = 0; c < HEAD_DIM / DV; c++) STORE_DV(acc[c] * inv_l, c, out + q_row);
    lse[(long)bh * T + i] = m + log(l);
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
                           __global const float* k_t, __global const float* v_t, __global const float* lse,
                           __global const float* delta, const int B, const int T, const int H, const int G, const int Tp,
                           const float scale)
{
    const int i = get_global_id(0), bh = get_global_id(1);
    if (i >= T) return;
    const int b = bh / H, h = bh % H, g = h / (H / G);
    const long q_row = ((long)(b * T + i) * H + h) * HEAD_DIM;
    const __global float* kg = k + ((long)b * T * G + g) * HEAD_DIM;
    const long k_stride = (long)G * HEAD_DIM;
    const CAT(int, BK) lanes = CAT(vload, BK)(0, lane_ids);

    float qi[HEAD_DIM], doi[HEAD_DIM];
    for (int d = 0; d < HEAD_DIM; d++) { qi[d] = q[q_row + d]; doi[d] = dout[q_row + d]; }
    floatDV acc[HEAD_DIM / DV];
    for (int c = 0; c < HEAD_DIM / DV; c++) acc[c] = (floatDV)(0.0f);
    const float lse_i = lse[(long)bh * T + i], delta_i = delta[(long)bh * T + i];

    for (int k0 = 0; k0 <= i; k0 += BK) {
        CAT(float, BK) s, dp;
        DOT_TILE(BK, qi, TILE(k_t, b * G + g, k0, BK, Tp), s);
        DOT_TILE(BK, doi, TILE(v_t, b * G + g, k0, BK, Tp), dp);
        const CAT(float, BK) p = select(exp(s * scale - lse_i), (CAT(float, BK))(0.0f), lanes + k0 > (CAT(int, BK))(i));
        float ds[BK];
        CAT(vstore, BK)(p * (dp - delta_i), 0, ds);
        accumulate_rows(acc, 1.0f, ds, kg + k0 * k_stride, k_stride, min(BK, i - k0 + 1));
    }
    for (int c = 0; c < HEAD_DIM / DV; c++) STORE_DV(acc[c] * scale, c, dq + q_row);
}

__kernel __attribute__((reqd_work_group_size(BK, 1, 1)))
void attention_backward_dkdv(__global float* dk, __global float* dv, __global const float* k, __global const float* v,
                             __global const float* q, __global const float* q_t, __global const float* dout,
                             __global const float* dout_t, __global const float* lse, __global const float* delta,
                             const int B, const int T, const int H, const int G, const int Tp, const float scale)
{
    const int j = get_global_id(0), bg = get_global_id(1);
    if (j >= T) return;
    const int b = bg / G, g = bg % G, heads_per_kv = H / G;
    const long kv_row = ((long)(b * T + j) * G + g) * HEAD_DIM;
    const long q_stride = (long)H * HEAD_DIM;
    const CAT(int, BQ) lanes = CAT(vload, BQ)(0, lane_ids);

    float kj[HEAD_DIM], vj[HEAD_DIM];
    for (int d = 0; d < HEAD_DIM; d++) { kj[d] = k[kv_row + d]; vj[d] = v[kv_row + d]; }
    floatDV dk_acc[HEAD_DIM / DV], dv_acc[HEAD_DIM / DV];
    for (int c = 0; c < HEAD_DIM / DV; c++) { dk_acc[c] = (floatDV)(0.0f); dv_acc[c] = (floatDV)(0.0f); }

    for (int hh = 0; hh < heads_per_kv; hh++) {
        const int h = g * heads_per_kv + hh, bh = b * H + h;
        const __global float* qh = q + ((long)b * T * H + h) * HEAD_DIM;
        const __global float* doh = dout + ((long)b * T * H + h) * HEAD_DIM;
        for (int i0 = j - j % BQ; i0 < T; i0 += BQ) {   // queries before j's tile cannot see key j
            const int valid = min(BQ, T - i0);
            CAT(float, BQ) s, dp, lse_v, delta_v;
            DOT_TILE(BQ, kj, TILE(q_t, bh, i0, BQ, Tp), s);
            DOT_TILE(BQ, vj, TILE(dout_t, bh, i0, BQ, Tp), dp);
            LOAD_PARTIAL(BQ, lse + (long)bh * T + i0, valid, lse_v);
            LOAD_PARTIAL(BQ, delta + (long)bh * T + i0, valid, delta_v);
            // Causal: query i0 + r sees key j only when i0 + r ≥ j; lanes past T are padding.
            const CAT(int, BQ) hidden = (lanes + i0 < (CAT(int, BQ))(j)) | (lanes >= (CAT(int, BQ))(valid));
            const CAT(float, BQ) p = select(exp(s * scale - lse_v), (CAT(float, BQ))(0.0f), hidden);
            float pr[BQ], dsr[BQ];
            CAT(vstore, BQ)(p, 0, pr);
            CAT(vstore, BQ)(p * (dp - delta_v), 0, dsr);
            const int first = max(0, j - i0);   // rows before it are masked (weight 0): skip them
            accumulate_rows(dv_acc, 1.0f, pr + first, doh + (i0 + first) * q_stride, q_stride, valid - first);
            accumulate_rows(dk_acc, 1.0f, dsr + first, qh + (i0 + first) * q_stride, q_stride, valid - first);
        }
    }
    for (int c = 0; c < HEAD_DIM / DV; c++) {
        STORE_DV(dk_acc[c] * scale, c, dk + kv_row);
        STORE_DV(dv_acc[c], c, dv + kv_row);
    }
}

// Causal self-attention with multi-query support (G key/value heads shared by H query heads; G = 1 is
// multi-query, G = H multi-head). Query head h reads kv head h / (H/G). Scores are q·k/√K.
// Forward is tiled with an online softmax (flash-attention style): each work-item owns RPI consecutive
// query rows and walks the causally visible keys in tiles of BK, keeping per row a running max m,
// normaliser l and output accumulator; every key tile and value row it loads serves all RPI rows.
// No T×T matrix is ever stored; lse = m + log l is kept for the backward.
// Backward recomputes probabilities from lse, P_ij = exp(s_ij − lse_i), with Δ_i = Σ_k dout_ik·out_ik:
//   dV_j = Σ_i P_ij dout_i      dS_ij = P_ij (dout_i·v_j − Δ_i)
//   dQ_i = Σ_j dS_ij k_j / √K   dK_j = Σ_i dS_ij q_i / √K     (i over all heads sharing kv head)
// To stay deterministic without atomics it runs two passes: dq owned per query row, dk/dv owned per
// key row (RPI of them per work-item), each summing its terms in a fixed order (head by head, tile by
// tile, row by row).
// Vectorisation: the operand that is scored against (k, v in forward/dq; q, dout in dk/dv) is first
// packed into transposed tiles, (B, heads, Tp/W, K, W) for tile width W, zero past T, so a whole tile
// is one contiguous block and is scored as one W-wide vector with one fma per d (two interleaved
// chains over d per row). Accumulators over the head dim are DV-wide vectors kept in registers. Work-items are
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
#ifndef RPI
#define RPI 2   // rows per work-item (query rows in forward/dq, key rows in dk/dv); divides BQ and BK
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

// result[r] (BW lanes) = Σ_d a[r][d]·tile[d·BW + lane] for r < RPI: dot products of RPI rows against
// every row of one packed transposed tile. Each tile vector is loaded once for all rows; two fma chains
// per row (d even, d odd) keep the FMA units busy; result = even + odd.
#define DOT_TILE(BW, a, tile, result)                                                            \
    do {                                                                                         \
        CAT(float, BW) even_[RPI], odd_[RPI];                                                    \
        _Pragma("unroll") for (int r_ = 0; r_ < RPI; r_++) { even_[r_] = 0.0f; odd_[r_] = 0.0f; } \
        const __global float* col_ = (tile);                                                     \
        int d_ = 0;                                                                              \
        for (; d_ + 2 <= HEAD_DIM; d_ += 2, col_ += 2 * BW) {                                    \
            const CAT(float, BW) x0_ = CAT(vload, BW)(0, col_), x1_ = CAT(vload, BW)(1, col_);   \
            _Pragma("unroll") for (int r_ = 0; r_ < RPI; r_++) {                                 \
                even_[r_] = fma((CAT(float, BW))((a)[r_][d_]), x0_, even_[r_]);                  \
                odd_[r_] = fma((CAT(float, BW))((a)[r_][d_ + 1]), x1_, odd_[r_]);                \
            }                                                                                    \
        }                                                                                        \
        if (d_ < HEAD_DIM) {                                                                     \
            const CAT(float, BW) x0_ = CAT(vload, BW)(0, col_);                                  \
            _Pragma("unroll") for (int r_ = 0; r_ < RPI; r_++)                                   \
                even_[r_] = fma((CAT(float, BW))((a)[r_][d_]), x0_, even_[r_]);                  \
        }                                                                                        \
        _Pragma("unroll") for (int r_ = 0; r_ < RPI; r_++) (result)[r_] = even_[r_] + odd_[r_];  \
    } while (0)

// acc[r] = acc[r]·scale[r] + Σ_{j < count} weight[r][j]·row_j for r < RPI, rows j in order, row_j at
// rows + j·stride. Each row chunk is loaded once for all RPI accumulators, which stay in registers.
inline void accumulate_rows(floatDV acc[RPI][HEAD_DIM / DV], const float* scale, float weight[RPI][16],
                            __global const float* rows, const long stride, const int count)
{
    floatDV a[RPI][HEAD_DIM / DV];
    #pragma unroll
    for (int r = 0; r < RPI; r++)
        #pragma unroll
        for (int c = 0; c < HEAD_DIM / DV; c++) a[r][c] = acc[r][c] * scale[r];
    for (int j = 0; j < count; j++) {
        const __global float* row = rows + j * stride;
        #pragma unroll
        for (int c = 0; c < HEAD_DIM / DV; c++) {
            const floatDV x = LOAD_DV(c, row);
            #pragma unroll
            for (int r = 0; r < RPI; r++) a[r][c] = fma((floatDV)(weight[r][j]), x, a[r][c]);
        }
    }
    #pragma unroll
    for (int r = 0; r < RPI; r++)
        #pragma unroll
        for (int c = 0; c < HEAD_DIM / DV; c++) acc[r][c] = a[r][c];
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

// Loads rows i0.. i0+RPI-1 (those below T; the rest zero) of one head of x (B,T,Hs,K) into dst.
inline void load_rows(float dst[RPI][HEAD_DIM], __global const float* x, const int b, const int i0, const int T,
                      const int Hs, const int h)
{
    #pragma unroll
    for (int r = 0; r < RPI; r++) {
        const __global float* src = x + ((long)(b * T + i0 + r) * Hs + h) * HEAD_DIM;
        for (int d = 0; d < HEAD_DIM; d++) dst[r][d] = i0 + r < T ? src[d] : 0.0f;
    }
}

// A work-item owns query rows i0 .. i0+RPI-1 of one (batch, head); they lie in one key tile, so they
// walk the same tiles and differ only in the causal mask of the last one.
__kernel __attribute__((reqd_work_group_size(BQ / RPI, 1, 1)))
void attention_forward(__global float* out, __global float* lse, __global const float* q, __global const float* k_t,
                       __global const float* v, const int B, const int T, const int H, const int G, const int Tp,
                       const float scale)
{
    const int i0 = get_global_id(0) * RPI, bh = get_global_id(1);
    if (i0 >= T) return;
    const int b = bh / H, h = bh % H, g = h / (H / G);
    const int i_last = min(T, i0 + RPI) - 1;
    const __global float* vg = v + ((long)b * T * G + g) * HEAD_DIM;
    const long v_stride = (long)G * HEAD_DIM;
    const CAT(int, BK) lanes = CAT(vload, BK)(0, lane_ids);

    float qr[RPI][HEAD_DIM];
    load_rows(qr, q, b, i0, T, H, h);
    floatDV acc[RPI][HEAD_DIM / DV];
    float m[RPI], l[RPI];
    #pragma unroll
    for (int r = 0; r < RPI; r++) {
        for (int c = 0; c < HEAD_DIM / DV; c++) acc[r][c] = (floatDV)(0.0f);
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }

    for (int k0 = 0; k0 <= i_last; k0 += BK) {
        CAT(float, BK) s[RPI];
        DOT_TILE(BK, qr, TILE(k_t, b * G + g, k0, BK, Tp), s);
        float correction[RPI], p[RPI][16];
        #pragma unroll
        for (int r = 0; r < RPI; r++) {
            const CAT(float, BK) sr = select(s[r] * scale, (CAT(float, BK))(-INFINITY), lanes + k0 > (CAT(int, BK))(i0 + r));
            const float m_new = fmax(m[r], CAT(hmax, BK)(sr));
            correction[r] = exp(m[r] - m_new);   // 0 on the first tile (m = −∞)
            const CAT(float, BK) pr = exp(sr - m_new);
            l[r] = l[r] * correction[r] + CAT(hsum, BK)(pr);
            CAT(vstore, BK)(pr, 0, p[r]);
            m[r] = m_new;
        }
        accumulate_rows(acc, correction, p, vg + k0 * v_stride, v_stride, min(BK, i_last - k0 + 1));
    }
    #pragma unroll
    for (int r = 0; r < RPI; r++) {
        const int i = i0 + r;
        if (i < T) {
            const float inv_l = 1.0f / l[r];
            for (int c = 0; c < HEAD_DIM / DV; c++) STORE_DV(acc[r][c] * inv_l, c, out + ((long)(b * T + i) * H + h) * HEAD_DIM);
            lse[(long)bh * T + i] = m[r] + log(l[r]);
        }
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

__kernel __attribute__((reqd_work_group_size(BQ / RPI, 1, 1)))
void attention_backward_dq(__global float* dq, __global const float* dout, __global const float* q, __global const float* k,
                           __global const float* k_t, __global const float* v_t, __global const float* lse,
                           __global const float* delta, const int B, const int T, const int H, const int G, const int Tp,
                           const float scale)
{
    const int i0 = get_global_id(0) * RPI, bh = get_global_id(1);
    if (i0 >= T) return;
    const int b = bh / H, h = bh % H, g = h / (H / G);
    const int i_last = min(T, i0 + RPI) - 1;
    const __global float* kg = k + ((long)b * T * G + g) * HEAD_DIM;
    const long k_stride = (long)G * HEAD_DIM;
    const CAT(int, BK) lanes = CAT(vload, BK)(0, lane_ids);

    float qr[RPI][HEAD_DIM], dor[RPI][HEAD_DIM];
    load_rows(qr, q, b, i0, T, H, h);
    load_rows(dor, dout, b, i0, T, H, h);
    floatDV acc[RPI][HEAD_DIM / DV];
    float lse_r[RPI], delta_r[RPI], ones[RPI];
    #pragma unroll
    for (int r = 0; r < RPI; r++) {
        for (int c = 0; c < HEAD_DIM / DV; c++) acc[r][c] = (floatDV)(0.0f);
        const bool valid = i0 + r < T;
        lse_r[r] = valid ? lse[(long)bh * T + i0 + r] : 0.0f;
        delta_r[r] = valid ? delta[(long)bh * T + i0 + r] : 0.0f;
        ones[r] = 1.0f;
    }

    for (int k0 = 0; k0 <= i_last; k0 += BK) {
        CAT(float, BK) s[RPI], dp[RPI];
        DOT_TILE(BK, qr, TILE(k_t, b * G + g, k0, BK, Tp), s);
        DOT_TILE(BK, dor, TILE(v_t, b * G + g, k0, BK, Tp), dp);
        float ds[RPI][16];
        #pragma unroll
        for (int r = 0; r < RPI; r++) {
            const CAT(float, BK) p = select(exp(s[r] * scale - lse_r[r]), (CAT(float, BK))(0.0f), lanes + k0 > (CAT(int, BK))(i0 + r));
            CAT(vstore, BK)(p * (dp[r] - delta_r[r]), 0, ds[r]);
        }
        accumulate_rows(acc, ones, ds, kg + k0 * k_stride, k_stride, min(BK, i_last - k0 + 1));
    }
    #pragma unroll
    for (int r = 0; r < RPI; r++)
        if (i0 + r < T)
            for (int c = 0; c < HEAD_DIM / DV; c++) STORE_DV(acc[r][c] * scale, c, dq + ((long)(b * T + i0 + r) * H + h) * HEAD_DIM);
}

// A work-item owns key rows j0 .. j0+RPI-1 of one (batch, kv head); they lie in one query tile, so they
// walk the same query tiles (all heads of the group) and differ only in the causal mask of the first.
__kernel __attribute__((reqd_work_group_size(BK / RPI, 1, 1)))
void attention_backward_dkdv(__global float* dk, __global float* dv, __global const float* k, __global const float* v,
                             __global const float* q, __global const float* q_t, __global const float* dout,
                             __global const float* dout_t, __global const float* lse, __global const float* delta,
                             const int B, const int T, const int H, const int G, const int Tp, const float scale)
{
    const int j0 = get_global_id(0) * RPI, bg = get_global_id(1);
    if (j0 >= T) return;
    const int b = bg / G, g = bg % G, heads_per_kv = H / G;
    const long q_stride = (long)H * HEAD_DIM;
    const CAT(int, BQ) lanes = CAT(vload, BQ)(0, lane_ids);

    float kr[RPI][HEAD_DIM], vr[RPI][HEAD_DIM];
    load_rows(kr, k, b, j0, T, G, g);
    load_rows(vr, v, b, j0, T, G, g);
    floatDV dk_acc[RPI][HEAD_DIM / DV], dv_acc[RPI][HEAD_DIM / DV];
    float ones[RPI];
    #pragma unroll
    for (int r = 0; r < RPI; r++) {
        for (int c = 0; c < HEAD_DIM / DV; c++) { dk_acc[r][c] = (floatDV)(0.0f); dv_acc[r][c] = (floatDV)(0.0f); }
        ones[r] = 1.0f;
    }

    for (int hh = 0; hh < heads_per_kv; hh++) {
        const int h = g * heads_per_kv + hh, bh = b * H + h;
        const __global float* qh = q + ((long)b * T * H + h) * HEAD_DIM;
        const __global float* doh = dout + ((long)b * T * H + h) * HEAD_DIM;
        for (int i0 = j0 - j0 % BQ; i0 < T; i0 += BQ) {   // queries before j0's tile cannot see these keys
            const int valid = min(BQ, T - i0);
            CAT(float, BQ) s[RPI], dp[RPI], lse_v, delta_v;
            DOT_TILE(BQ, kr, TILE(q_t, bh, i0, BQ, Tp), s);
            DOT_TILE(BQ, vr, TILE(dout_t, bh, i0, BQ, Tp), dp);
            LOAD_PARTIAL(BQ, lse + (long)bh * T + i0, valid, lse_v);
            LOAD_PARTIAL(BQ, delta + (long)bh * T + i0, valid, delta_v);
            float p[RPI][16], ds[RPI][16];
            #pragma unroll
            for (int r = 0; r < RPI; r++) {
                // Causal: query i0 + lane sees key j0 + r only when i0 + lane ≥ j0 + r; lanes past T are padding.
                const CAT(int, BQ) hidden = (lanes + i0 < (CAT(int, BQ))(j0 + r)) | (lanes >= (CAT(int, BQ))(valid));
                const CAT(float, BQ) pr = select(exp(s[r] * scale - lse_v), (CAT(float, BQ))(0.0f), hidden);
                CAT(vstore, BQ)(pr, 0, p[r]);
                CAT(vstore, BQ)(pr * (dp[r] - delta_v), 0, ds[r]);
            }
            // Query rows before j0 are masked for every key of this item (weight 0): start at the first visible one.
            const int first = max(0, j0 - i0);
            if (first > 0) {
                #pragma unroll
                for (int r = 0; r < RPI; r++)
                    for (int x = 0; x + first < BQ; x++) { p[r][x] = p[r][x + first]; ds[r][x] = ds[r][x + first]; }
            }
            accumulate_rows(dv_acc, ones, p, doh + (i0 + first) * q_stride, q_stride, valid - first);
            accumulate_rows(dk_acc, ones, ds, qh + (i0 + first) * q_stride, q_stride, valid - first);
        }
    }
    #pragma unroll
    for (int r = 0; r < RPI; r++)
        if (j0 + r < T) {
            const long kv_row = ((long)(b * T + j0 + r) * G + g) * HEAD_DIM;
            for (int c = 0; c < HEAD_DIM / DV; c++) {
                STORE_DV(dk_acc[r][c] * scale, c, dk + kv_row);
                STORE_DV(dv_acc[r][c], c, dv + kv_row);
            }
        }
}

// attention_decode: q (B,H,K), k_cache, v_cache (B,Tmax,G,K), lengths (B) -> out (B,H,K), scores scratch (B,H,Tmax)
// One query row per sequence (incremental decoding) against cache rows [0, lengths[b]). One work-group of DECODE_WG
// per (b, h): item i scores rows i, i + DECODE_WG, ... (dot over d in order), the max and Σ exp are fixed
// tree reductions in local memory, and item i owns output dims i, i + DECODE_WG, ..., summing rows in order.
#ifndef DECODE_WG
#define DECODE_WG 64
#endif
__kernel __attribute__((reqd_work_group_size(DECODE_WG, 1, 1)))
void attention_decode(__global float* out, __global float* scores, __global const float* q,
                      __global const float* k_cache, __global const float* v_cache, __global const int* lengths,
                      const int B, const int Tmax, const int H, const int G, const float scale)
{
    __local float red[DECODE_WG];
    const int lid = get_local_id(0);
    const int bh = get_group_id(1);              // b·H + h
    const int b = bh / H, h = bh - b * H, g = h / (H / G);
    const int len = clamp(lengths[b], 1, Tmax);
    __global const float* qr = q + (long)bh * HEAD_DIM;
    __global float* sr = scores + (long)bh * Tmax;
    float m = -INFINITY;
    for (int j = lid; j < len; j += DECODE_WG)
    {
        __global const float* kr = k_cache + (((long)b * Tmax + j) * G + g) * HEAD_DIM;
        float dot = 0.0f;
        for (int d = 0; d < HEAD_DIM; d++) dot = fma(qr[d], kr[d], dot);
        dot *= scale;
        sr[j] = dot;
        m = fmax(m, dot);
    }
    red[lid] = m;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int w = DECODE_WG / 2; w > 0; w /= 2)
    {
        if (lid < w) red[lid] = fmax(red[lid], red[lid + w]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    m = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    float l = 0.0f;
    for (int j = lid; j < len; j += DECODE_WG)
    {
        const float p = exp(sr[j] - m);
        sr[j] = p;
        l += p;
    }
    red[lid] = l;
    barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
    for (int w = DECODE_WG / 2; w > 0; w /= 2)
    {
        if (lid < w) red[lid] += red[lid + w];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float inv = 1.0f / red[0];
    for (int d = lid; d < HEAD_DIM; d += DECODE_WG)
    {
        float acc = 0.0f;
        for (int j = 0; j < len; j++) acc = fma(sr[j], v_cache[(((long)b * Tmax + j) * G + g) * HEAD_DIM + d], acc);
        out[(long)bh * HEAD_DIM + d] = acc * inv;
    }
}

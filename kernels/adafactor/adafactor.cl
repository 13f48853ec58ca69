// Adafactor update for one parameter tensor viewed as (R rows, C cols), the same arithmetic as the
// CPU backend (CpuAdafactor.cs) operation for operation, so results agree to the last bit where the
// device rounds divide and sqrt correctly and has fp64.
//
//   g   = gs · grad                                          gs: global-norm clip factor
//   v   = β2·v + (1−β2)·(g² + ε1)                            or its rank-1 factorisation vRow·vColᵀ / mean(vRow)
//   u   = g / √v ;  u /= max(1, RMS(u) / d)                  update clipping
//   m   = β1·m + (1−β1)·u                                    (m = u without momentum)
//   p  -= max(ε2, RMS(p)) · ρ · m  +  wd · p                 parameter scaling; decoupled weight decay
//
// Reductions: row and column means walk their row/column in index order (one work-item each);
// Σu² and Σp² are summed per fixed chunk of ADA_CHUNK elements in index order, then the chunks in
// order, which also derives the clip factor and step size into `scalars` so the update needs no trip
// to the host. scalars: [0] √mean(vRow), [1] clip, [2] step size.
// The CPU sums a chunk strictly in index order, and these kernels must give its bits, so a chunk is one
// work-group of ADA_WG: all lanes compute their element's v, u², p² (loads, divide, sqrt) into local
// memory a tile at a time, and lanes 0 and 1 add the previous tile's u² and p² in order while the others
// compute the next tile (two buffers). The same holds for the chunk totals and the mean of vRow: the
// work-group loads in parallel, one lane adds in order. On CPU devices (ADA_WG 1) a work-item is a core's
// loop and walks its chunk alone. The order, hence the bits, is the same for every ADA_WG.
//
// Segmented (a flat arena, unfactored): table (S,3) longs: offset, count, first chunk of each segment;
// chunks are cut from each segment's start, so every segment gets the fused update's bits.
//
// Dimensions: R rows, C cols, count = R·C, chunks = ⌈count / ADA_CHUNK⌉ (per segment when segmented).
//
// adafactor_row_moments:    grad (R,C) -> vRow (R) updated
// adafactor_col_moments:    grad (R,C) -> vCol (C) updated
// adafactor_row_mean:       vRow (R) -> scalars[0]
// adafactor_pass1:          grad, param, v | vRow+vCol -> v updated (unfactored), partial (chunks, 2)
// adafactor_finish:         partial (chunks, 2) -> scalars[1], scalars[2]
// adafactor_pass2:          grad, v | vRow+vCol, scalars -> momentum updated, param updated
// adafactor_segment_pass1:  grad, param, v (flat), table (S,3) -> v updated, partial (chunks, 2)
// adafactor_segment_totals: partial (chunks, 2), table (S,3) -> sums (S, 2)
// adafactor_segment_pass2:  grad, v (flat), table (S,3), factors (S, 2) clip and step size -> momentum, param updated

#ifndef ADA_CHUNK
#define ADA_CHUNK 16384   // must equal CpuAdafactor.Chunk for bit parity
#endif

#ifndef ADA_WG
#define ADA_WG 128        // work-items per chunk: 1 (CPU devices) or a power of two ≥ 2 (OpenClTuning.ReductionGroup)
#endif

#ifdef PALM_FP64
typedef double REAL;
#define REAL_SQRT(x) sqrt(x)
#else
typedef float REAL;
#define REAL_SQRT(x) sqrt(x)
#endif

// Math.Max semantics: NaN wins, so a NaN gradient poisons the step visibly instead of being dropped.
inline float max_nan(const float a, const float b) { return (isnan(a) || isnan(b)) ? NAN : (a > b ? a : b); }

__kernel void adafactor_row_moments(__global float* vRow, __global const float* grad, const float gs, const float b2,
                                    const float e1, const int R, const int C)
{
    const int i = get_global_id(0);
    if (i >= R) return;
    const __global float* row = grad + (long)i * C;
    REAL acc = 0;
    for (int j = 0; j < C; j++) { const float g = row[j] * gs; acc += (REAL)(g * g + e1); }
    vRow[i] = b2 * vRow[i] + (1 - b2) * (float)(acc / C);
}

__kernel void adafactor_col_moments(__global float* vCol, __global const float* grad, const float gs, const float b2,
                                    const float e1, const int R, const int C)
{
    const int j = get_global_id(0);
    if (j >= C) return;
    REAL acc = 0;
    for (int i = 0; i < R; i++) { const float g = grad[(long)i * C + j] * gs; acc += (REAL)(g * g + e1); }
    vCol[j] = b2 * vCol[j] + (1 - b2) * (float)(acc / R);
}

// Σ vals[0..n) in index order by a work-group of ADA_WG: tiles loaded in parallel, lane 0 adds. Every lane returns the sum.
inline REAL ordered_sum(__local REAL* tile, __global const float* vals, const int n)
{
    const int lid = get_local_id(0);
    REAL acc = 0;
    for (int base = 0; base < n; base += ADA_WG) {
        if (base + lid < n) tile[lid] = vals[base + lid];
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lid == 0) for (int k = 0; k < min(ADA_WG, n - base); k++) acc += tile[k];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) tile[0] = acc;
    barrier(CLK_LOCAL_MEM_FENCE);
    return tile[0];
}

__kernel __attribute__((reqd_work_group_size(ADA_WG, 1, 1)))
void adafactor_row_mean(__global float* scalars, __global const float* vRow, const int R)
{
    __local REAL tile[ADA_WG];
    const REAL mean = ordered_sum(tile, vRow, R) / R;
    if (get_local_id(0) == 0) scalars[0] = (float)REAL_SQRT(mean);
}

// u = g · (√mean(vRow) / √vRow_i) · (1 / √vCol_j), the CPU's rowScale·colScale product in the same order.
inline float factored_u(const float g, const long idx, const int C, __global const float* vRow, __global const float* vCol,
                        const float sqrt_mean)
{
    const float row_scale = sqrt_mean / sqrt(vRow[idx / C]);
    const float col_scale = 1.0f / sqrt(vCol[idx % C]);
    return g * row_scale * col_scale;
}

// Pass 1 of one element: the scaled gradient's update u; unfactored, v[idx] takes its new second moment first.
inline float pass1_u(__global float* v, __global const float* grad, __global const float* vRow, __global const float* vCol,
                     const float sqrt_mean, const float gs, const float b2, const float e1, const int C, const long idx, const int factored)
{
    const float g = grad[idx] * gs;
    if (factored) return factored_u(g, idx, C, vRow, vCol, sqrt_mean);
    const float vv = b2 * v[idx] + (1 - b2) * (g * g + e1);
    v[idx] = vv;
    return g / sqrt(vv);
}

// One chunk [start, end) by the work-group: v updated when unfactored; out[0] = Σu², out[1] = Σp², in index order.
// With ADA_WG 1 (CPU devices, where a work-item is a core's loop) the one work-item walks the chunk itself.
inline void chunk_pass1(__global REAL* out, __local REAL (*tiles)[2][ADA_WG], __global float* v, __global const float* param,
                        __global const float* grad, __global const float* vRow, __global const float* vCol, const float sqrt_mean,
                        const float gs, const float b2, const float e1, const int C, const long start, const long end, const int factored)
{
    const int lid = get_local_id(0);
#if ADA_WG == 1
    REAL u2 = 0, p2 = 0;
    for (long idx = start; idx < end; idx++) {
        const float u = pass1_u(v, grad, vRow, vCol, sqrt_mean, gs, b2, e1, C, idx, factored);
        u2 += (REAL)u * u;
        p2 += (REAL)param[idx] * param[idx];
    }
    out[0] = u2;
    out[1] = p2;
#else
    REAL acc = 0;   // lane 0: Σu², lane 1: Σp²
    for (long base = start, t = 0; ; base += ADA_WG, t++) {
        const int buf = (int)(t & 1);
        if (base < end && base + lid < end) {
            const long idx = base + lid;
            const float u = pass1_u(v, grad, vRow, vCol, sqrt_mean, gs, b2, e1, C, idx, factored);
            tiles[buf][0][lid] = (REAL)u * u;
            tiles[buf][1][lid] = (REAL)param[idx] * param[idx];
        }
        if (t > 0 && lid < 2) {   // the previous tile, while the other lanes fill this one
            const int n = (int)min((long)ADA_WG, end - (base - ADA_WG));
            __local const REAL* prev = tiles[buf ^ 1][lid];
            for (int k = 0; k < n; k++) acc += prev[k];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (base >= end) break;
    }
    if (lid < 2) out[lid] = acc;
#endif
}

__kernel __attribute__((reqd_work_group_size(ADA_WG, 1, 1)))
void adafactor_pass1(__global REAL* partial, __global float* v, __global const float* param, __global const float* grad,
                     __global const float* vRow, __global const float* vCol, __global const float* scalars,
                     const float gs, const float b2, const float e1, const int C, const long count, const int factored)
{
    __local REAL tiles[2][2][ADA_WG];
    const long chunk = get_group_id(0);
    const long start = chunk * ADA_CHUNK;
    const long end = min(count, start + ADA_CHUNK);
    const float sqrt_mean = factored ? scalars[0] : 0.0f;
    chunk_pass1(partial + 2 * chunk, tiles, v, param, grad, vRow, vCol, sqrt_mean, gs, b2, e1, C, start, end, factored);
}

// Σ over chunks [first, next) of partial (chunks, 2) in chunk order, by the work-group (tiles loaded in parallel,
// lanes 0 and 1 add; with ADA_WG 1 the one work-item adds both): total[0] = Σu², total[1] = Σp², seen by every lane.
inline void ordered_chunk_sums(__local REAL* total, __local REAL (*tile)[ADA_WG], __global const REAL* partial, const long first, const long next)
{
    const int lid = get_local_id(0);
    REAL acc = 0, acc2 = 0;
    for (long base = first; base < next; base += ADA_WG) {
        if (base + lid < next) { tile[0][lid] = partial[2 * (base + lid)]; tile[1][lid] = partial[2 * (base + lid) + 1]; }
        barrier(CLK_LOCAL_MEM_FENCE);
        const int n = (int)min((long)ADA_WG, next - base);
#if ADA_WG == 1
        for (int k = 0; k < n; k++) { acc += tile[0][k]; acc2 += tile[1][k]; }
#else
        if (lid < 2) for (int k = 0; k < n; k++) acc += tile[lid][k];
#endif
        barrier(CLK_LOCAL_MEM_FENCE);
    }
#if ADA_WG == 1
    total[0] = acc;
    total[1] = acc2;
#else
    if (lid < 2) total[lid] = acc;
#endif
    barrier(CLK_LOCAL_MEM_FENCE);
}

__kernel __attribute__((reqd_work_group_size(ADA_WG, 1, 1)))
void adafactor_finish(__global float* scalars, __global const REAL* partial, const int chunks, const long count,
                      const float clip_threshold, const float eps2, const float lr)
{
    __local REAL tile[2][ADA_WG];
    __local REAL total[2];
    ordered_chunk_sums(total, tile, partial, 0, chunks);
    if (get_local_id(0) != 0) return;
    const float rms_u = (float)REAL_SQRT(total[0] / count);
    const float rms_p = (float)REAL_SQRT(total[1] / count);
    scalars[1] = 1.0f / max_nan(1.0f, rms_u / clip_threshold);
    scalars[2] = max_nan(eps2, rms_p) * lr;
}

// The segment that owns global chunk c: the last s with first[s] ≤ c (table column 2).
// Pass 2's update of one element from its unscaled update u: clip, momentum, the step and the decoupled decay.
inline void apply_update(__global float* param, __global float* momentum, const long idx, float u, const float clip, const float step,
                         const float b1, const float wd, const int has_momentum)
{
    u *= clip;
    float m = u;
    if (has_momentum) {
        m = b1 * momentum[idx] + (1 - b1) * u;
        momentum[idx] = m;
    }
    const float p = param[idx];
    param[idx] = p - step * m - wd * p;
}

inline int segment_of(__global const long* table, const int S, const long c)
{
    int lo = 0, hi = S - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (table[3 * mid + 2] <= c) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// One work-group per chunk of any segment.
__kernel __attribute__((reqd_work_group_size(ADA_WG, 1, 1)))
void adafactor_segment_pass1(__global REAL* partial, __global float* v, __global const float* param, __global const float* grad,
                             __global const long* table, const int S, const float gs, const float b2, const float e1)
{
    __local REAL tiles[2][2][ADA_WG];
    const long chunk = get_group_id(0);
    const int s = segment_of(table, S, chunk);
    const long start = table[3 * s] + (chunk - table[3 * s + 2]) * ADA_CHUNK;
    const long end = min(table[3 * s] + table[3 * s + 1], start + ADA_CHUNK);
    chunk_pass1(partial + 2 * chunk, tiles, v, param, grad, v, v, 0.0f, gs, b2, e1, 1, start, end, 0);
}

// One work-group per segment.
__kernel __attribute__((reqd_work_group_size(ADA_WG, 1, 1)))
void adafactor_segment_totals(__global REAL* sums, __global const REAL* partial, __global const long* table, const int S, const long chunks)
{
    __local REAL tile[2][ADA_WG];
    __local REAL total[2];
    const int s = get_group_id(0), lid = get_local_id(0);
    const long first = table[3 * s + 2], next = s + 1 < S ? table[3 * (s + 1) + 2] : chunks;
    ordered_chunk_sums(total, tile, partial, first, next);
    if (lid == 0) { sums[2 * s] = total[0]; sums[2 * s + 1] = total[1]; }
}

// One work-group per chunk of any segment; lanes stride the chunk.
__kernel __attribute__((reqd_work_group_size(ADA_WG, 1, 1)))
void adafactor_segment_pass2(__global float* param, __global float* momentum, __global const float* grad, __global const float* v,
                             __global const long* table, __global const float* factors, const int S,
                             const float gs, const float b1, const float wd, const int has_momentum)
{
    const long chunk = get_group_id(0);
    const int s = segment_of(table, S, chunk);
    const long start = table[3 * s] + (chunk - table[3 * s + 2]) * ADA_CHUNK;
    const long end = min(table[3 * s] + table[3 * s + 1], start + ADA_CHUNK);
    const float clip = factors[2 * s], step = factors[2 * s + 1];
    for (long idx = start + get_local_id(0); idx < end; idx += ADA_WG)
        apply_update(param, momentum, idx, grad[idx] * gs / sqrt(v[idx]), clip, step, b1, wd, has_momentum);
}

__kernel void adafactor_pass2(__global float* param, __global float* momentum, __global const float* grad, __global const float* v,
                              __global const float* vRow, __global const float* vCol, __global const float* scalars,
                              const float gs, const float b1, const float wd, const int C, const long count,
                              const int factored, const int has_momentum)
{
    const long idx = get_global_id(0);
    if (idx >= count) return;
    const float clip = scalars[1], step = scalars[2];
    const float g = grad[idx] * gs;
    apply_update(param, momentum, idx, factored ? factored_u(g, idx, C, vRow, vCol, scalars[0]) : g / sqrt(v[idx]), clip, step, b1, wd, has_momentum);
}

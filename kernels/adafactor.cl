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
// order by a single work-item, which also derives the clip factor and step size into `scalars` so
// the update needs no trip to the host. scalars: [0] √mean(vRow), [1] clip, [2] step size.
//
// Dimensions: R rows, C cols, count = R·C, chunks = ⌈count / ADA_CHUNK⌉.
//
// adafactor_row_moments: grad (R,C) -> vRow (R) updated
// adafactor_col_moments: grad (R,C) -> vCol (C) updated
// adafactor_row_mean:    vRow (R) -> scalars[0]
// adafactor_pass1:       grad, param, v | vRow+vCol -> v updated (unfactored), partial (chunks, 2)
// adafactor_finish:      partial (chunks, 2) -> scalars[1], scalars[2]
// adafactor_pass2:       grad, v | vRow+vCol, scalars -> momentum updated, param updated

#ifndef ADA_CHUNK
#define ADA_CHUNK 16384   // must equal CpuAdafactor.Chunk for bit parity
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

__kernel void adafactor_row_mean(__global float* scalars, __global const float* vRow, const int R)
{
    if (get_global_id(0) != 0) return;
    REAL mean = 0;
    for (int i = 0; i < R; i++) mean += vRow[i];
    mean /= R;
    scalars[0] = (float)REAL_SQRT(mean);
}

// u = g · (√mean(vRow) / √vRow_i) · (1 / √vCol_j), the CPU's rowScale·colScale product in the same order.
inline float factored_u(const float g, const long idx, const int C, __global const float* vRow, __global const float* vCol,
                        const float sqrt_mean)
{
    const float row_scale = sqrt_mean / sqrt(vRow[idx / C]);
    const float col_scale = 1.0f / sqrt(vCol[idx % C]);
    return g * row_scale * col_scale;
}

__kernel void adafactor_pass1(__global REAL* partial, __global float* v, __global const float* param, __global const float* grad,
                              __global const float* vRow, __global const float* vCol, __global const float* scalars,
                              const float gs, const float b2, const float e1, const int C, const long count, const int factored)
{
    const long chunk = get_global_id(0);
    const long start = chunk * ADA_CHUNK;
    if (start >= count) return;
    const long end = min(count, start + ADA_CHUNK);
    const float sqrt_mean = factored ? scalars[0] : 0.0f;
    REAL u2 = 0, p2 = 0;
    for (long idx = start; idx < end; idx++) {
        const float g = grad[idx] * gs;
        float u;
        if (factored) u = factored_u(g, idx, C, vRow, vCol, sqrt_mean);
        else {
            const float vv = b2 * v[idx] + (1 - b2) * (g * g + e1);
            v[idx] = vv;
            u = g / sqrt(vv);
        }
        u2 += (REAL)u * u;
        p2 += (REAL)param[idx] * param[idx];
    }
    partial[2 * chunk] = u2;
    partial[2 * chunk + 1] = p2;
}

__kernel void adafactor_finish(__global float* scalars, __global const REAL* partial, const int chunks, const long count,
                               const float clip_threshold, const float eps2, const float lr)
{
    if (get_global_id(0) != 0) return;
    REAL total_u2 = 0, total_p2 = 0;
    for (int c = 0; c < chunks; c++) { total_u2 += partial[2 * c]; total_p2 += partial[2 * c + 1]; }
    const float rms_u = (float)REAL_SQRT(total_u2 / count);
    const float rms_p = (float)REAL_SQRT(total_p2 / count);
    scalars[1] = 1.0f / max_nan(1.0f, rms_u / clip_threshold);
    scalars[2] = max_nan(eps2, rms_p) * lr;
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
    float u = factored ? factored_u(g, idx, C, vRow, vCol, scalars[0]) : g / sqrt(v[idx]);
    u *= clip;
    float m = u;
    if (has_momentum) {
        m = b1 * momentum[idx] + (1 - b1) * u;
        momentum[idx] = m;
    }
    const float p = param[idx];
    param[idx] = p - step * m - wd * p;
}

// Sum of squares of a tensor, for the global gradient norm. Accumulates in double where the device
// has fp64 (REAL), otherwise in float. Two stages with a fixed order: every work-item sums one run
// of SUMSQ_RUN consecutive elements into a partial, then one work-group of SUMSQ_WG sums the partials
// (strided slices, then a fixed tree). The host reads back the single scalar.
// The segmented form does the same per segment of a flat buffer (runs cut from each segment's start,
// one work-group per segment for the partials), so all tensors of an arena cost two launches and one
// read-back; CpuReduce.SumOfSquaresSegments sums in the same order, to the bit with fp64.
// table (S,3) longs: offset, count, first run of each segment (empty segments own no run).
//
// Dimensions: n elements (any shape flattened); runs = ⌈n / SUMSQ_RUN⌉ (per segment when segmented).
//
// sum_squares_partial:        x (n) -> partial (runs)
// sum_partials:               partial (runs) -> total (1)
// sum_squares_segment_runs:   x (flat), table (S,3) -> partial (runs)
// sum_squares_segment_totals: partial (runs), table (S,3) -> sums (S)

#ifndef SUMSQ_RUN
#define SUMSQ_RUN 1024   // elements per partial (a multiple of 16)
#endif
#ifndef SUMSQ_WG
#define SUMSQ_WG 64      // work-items of the final reduction (power of two)
#endif

#ifdef PALM_FP64
typedef double REAL;
typedef double8 REAL8;
typedef double4 REAL4;
typedef double2 REAL2;
#define convert_REAL8 convert_double8
#else
typedef float REAL;
typedef float8 REAL8;
typedef float4 REAL4;
typedef float2 REAL2;
#define convert_REAL8 convert_float8
#endif

// A run is summed as two 8-lane accumulators over float16 pieces (squares formed in REAL, exact for
// fp64), then lanes pairwise in a fixed order, then the tail of a short last run element by element.
inline REAL sum_squares_run(__global const float* x, const long i0, const long i1)
{
    const long pieces_end = i0 + (i1 - i0) / 16 * 16;
    REAL8 lo = 0, hi = 0;
    for (long i = i0; i < pieces_end; i += 16) {
        const float16 v = vload16(0, x + i);
        const REAL8 a = convert_REAL8(v.lo), b = convert_REAL8(v.hi);
        lo += a * a;
        hi += b * b;
    }
    const REAL8 s8 = lo + hi;
    const REAL4 s4 = s8.lo + s8.hi;
    const REAL2 s2 = s4.lo + s4.hi;
    REAL s = s2.lo + s2.hi;
    for (long i = pieces_end; i < i1; i++) { const REAL v = x[i]; s += v * v; }
    return s;
}

// partial[0..runs) by SUMSQ_WG work-items: strided slices in order, then a fixed tree; the result in scratch[0].
inline void sum_partials_group(__local REAL* scratch, __global const REAL* partial, const long runs)
{
    const int lid = get_local_id(0);
    REAL s = 0;
    for (long r = lid; r < runs; r += SUMSQ_WG) s += partial[r];
    scratch[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = SUMSQ_WG / 2; stride > 0; stride >>= 1) {
        if (lid < stride) scratch[lid] = scratch[lid] + scratch[lid + stride];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
}

__kernel void sum_squares_partial(__global REAL* partial, __global const float* x, const long n)
{
    const long run = get_global_id(0);
    const long i0 = run * SUMSQ_RUN;
    if (i0 >= n) return;
    partial[run] = sum_squares_run(x, i0, min(n, i0 + SUMSQ_RUN));
}

__kernel __attribute__((reqd_work_group_size(SUMSQ_WG, 1, 1)))
void sum_partials(__global REAL* total, __global const REAL* partial, const long runs)
{
    __local REAL scratch[SUMSQ_WG];
    sum_partials_group(scratch, partial, runs);
    if (get_local_id(0) == 0) total[0] = scratch[0];
}

// The segment that owns global tile t: the last s with first[s] ≤ t (table column 2).
inline int segment_of(__global const long* table, const int S, const long t)
{
    int lo = 0, hi = S - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (table[3 * mid + 2] <= t) lo = mid; else hi = mid - 1;
    }
    return lo;
}

__kernel void sum_squares_segment_runs(__global REAL* partial, __global const float* x, __global const long* table,
                                       const int S, const long runs)
{
    const long run = get_global_id(0);
    if (run >= runs) return;
    const int s = segment_of(table, S, run);
    const long end = table[3 * s] + table[3 * s + 1];
    const long i0 = table[3 * s] + (run - table[3 * s + 2]) * SUMSQ_RUN;
    partial[run] = sum_squares_run(x, i0, min(end, i0 + SUMSQ_RUN));
}

// One work-group per segment.
__kernel __attribute__((reqd_work_group_size(SUMSQ_WG, 1, 1)))
void sum_squares_segment_totals(__global REAL* sums, __global const REAL* partial, __global const long* table,
                                const int S, const long runs)
{
    __local REAL scratch[SUMSQ_WG];
    const int s = get_group_id(0);
    const long first = table[3 * s + 2], next = s + 1 < S ? table[3 * (s + 1) + 2] : runs;
    sum_partials_group(scratch, partial + first, next - first);
    if (get_local_id(0) == 0) sums[s] = scratch[0];
}

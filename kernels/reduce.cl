// Sum of squares of a tensor, for the global gradient norm. Accumulates in double where the device
// has fp64 (REAL), otherwise in float. Two stages with a fixed order: every work-item sums one run
// of SUMSQ_RUN consecutive elements in index order into a partial, then one work-group of SUMSQ_WG
// sums the partials (strided slices, then a fixed tree). The host reads back the single scalar.
//
// Dimensions: n elements (any shape flattened); runs = ⌈n / SUMSQ_RUN⌉.
//
// sum_squares_partial: x (n) -> partial (runs)
// sum_partials:        partial (runs) -> total (1)

#ifndef SUMSQ_RUN
#define SUMSQ_RUN 1024   // elements per partial
#endif
#ifndef SUMSQ_WG
#define SUMSQ_WG 64      // work-items of the final reduction (power of two)
#endif

#ifdef PALM_FP64
typedef double REAL;
#else
typedef float REAL;
#endif

__kernel void sum_squares_partial(__global REAL* partial, __global const float* x, const long n)
{
    const long run = get_global_id(0);
    const long i0 = run * SUMSQ_RUN;
    if (i0 >= n) return;
    const long i1 = min(n, i0 + SUMSQ_RUN);
    REAL s = 0;
    for (long i = i0; i < i1; i++) { const REAL v = x[i]; s += v * v; }
    partial[run] = s;
}

__kernel __attribute__((reqd_work_group_size(SUMSQ_WG, 1, 1)))
void sum_partials(__global REAL* total, __global const REAL* partial, const long runs)
{
    __local REAL scratch[SUMSQ_WG];
    const int lid = get_local_id(0);
    REAL s = 0;
    for (long r = lid; r < runs; r += SUMSQ_WG) s += partial[r];
    scratch[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int stride = SUMSQ_WG / 2; stride > 0; stride >>= 1) {
        if (lid < stride) scratch[lid] = scratch[lid] + scratch[lid + stride];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) total[0] = scratch[0];
}

// Token embedding lookup and its backward (scatter-add into the table), vocabulary-sharded: the table
// holds rows [v0, v0 + Vl) of the vocabulary and tokens are global ids. Forward copies row token − v0
// of the table, or writes a zero row for a token of another shard, so the shards' outputs sum to the
// unsharded lookup. Backward must add several rows of dout into the same table row when a token
// repeats; to stay deterministic without atomics, a work-group owns a block of `rows_per_group` table rows and
// EMB_WG columns (one per work-item), walks the tokens n = 0..N-1 in order (loaded EMB_WG at a time into
// local memory) and adds the rows of dout of the tokens in its block. Every table element therefore
// receives its contributions in token order on every run and every device, as on the CPU, whatever the
// block size (the host picks it so that the groups just fill the device: each group reads all N tokens).
//
// A negative token is reported through `errors` (the host raises it at the next synchronisation):
// forward writes NaN for that row and backward skips it, so no memory outside the table is touched.
//
// Dimensions: N = B·T tokens, D model width, Vl rows of this shard.
//
// embedding_forward:  tokens (N), table (Vl,D) -> out (N,D)
// embedding_backward: tokens (N), dout (N,D) -> dtable (Vl,D) +=

#ifndef EMB_WG
#define EMB_WG 64      // columns per work-group in the backward, and tokens per local-memory load
#endif

// errors[0..2] = (1 + position, token, 0) of a negative token; several bad tokens may overwrite each other,
// which only changes which one the error message names.
inline void report_bad_token(__global int* errors, const int n, const int token)
{
    errors[0] = n + 1;
    errors[1] = token;
    errors[2] = 0;
}

__kernel void embedding_forward(__global float* out, __global const int* tokens, __global const float* table,
                                __global int* errors, const int N, const int D, const int v0, const int Vl)
{
    const long i = get_global_id(0);           // n·D + d
    if (i >= (long)N * D) return;
    const int n = (int)(i / D), d = (int)(i - (long)n * D);
    const int token = tokens[n];
    if (token < 0) {
        if (d == 0) report_bad_token(errors, n, token);
        out[i] = NAN;
        return;
    }
    const int row = token - v0;                // no overflow: token ≥ 0, v0 ≥ 0
    out[i] = row >= 0 && row < Vl ? table[(long)row * D + d] : 0.0f;
}

// Global (⌈D/EMB_WG⌉·EMB_WG, ⌈Vl/rows_per_group⌉), local (EMB_WG, 1).
__kernel __attribute__((reqd_work_group_size(EMB_WG, 1, 1)))
void embedding_backward(__global float* dtable, __global const int* tokens, __global const float* dout,
                        __global int* errors, const int N, const int D, const int v0, const int Vl, const int rows_per_group)
{
    __local int rows[EMB_WG];
    const int lid = get_local_id(0), d = get_global_id(0);
    const int r0 = get_group_id(1) * rows_per_group, r1 = min(Vl, r0 + rows_per_group);
    const bool reporter = get_group_id(0) == 0 && get_group_id(1) == 0;
    for (int n0 = 0; n0 < N; n0 += EMB_WG) {
        const int n = n0 + lid;
        int row = -1;                           // -1: not a row of this block
        if (n < N) {
            const int token = tokens[n];
            if (token < 0) { if (reporter) report_bad_token(errors, n, token); }
            else if (token - v0 >= r0 && token - v0 < r1) row = token - v0;
        }
        rows[lid] = row;
        barrier(CLK_LOCAL_MEM_FENCE);
        const int count = min(EMB_WG, N - n0);
        if (d < D)
            for (int k = 0; k < count; k++) {
                const int r = rows[k];
                if (r < 0) continue;
                const long at = (long)r * D + d;
                dtable[at] = dtable[at] + dout[(long)(n0 + k) * D + d];
            }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
}

// Token embedding lookup and its backward (scatter-add into the table).
// Forward copies row tokens[n] of the table. Backward must add several rows of dout into the same
// table row when a token repeats; to stay deterministic without atomics each work-item owns one
// column d of the table and walks the tokens n = 0..N-1 in order, so every table element receives
// its contributions in the same fixed order on every run and every device.
//
// Dimensions: N = B·T tokens, D model width, V vocabulary.
//
// embedding_forward:  tokens (N), table (V,D) -> out (N,D)
// embedding_backward: tokens (N), dout (N,D) -> dtable (V,D) +=

__kernel void embedding_forward(__global float* out, __global const int* tokens, __global const float* table,
                                const int N, const int D)
{
    const long i = get_global_id(0);           // n·D + d
    if (i >= (long)N * D) return;
    const int n = (int)(i / D), d = (int)(i - (long)n * D);
    out[i] = table[(long)tokens[n] * D + d];
}

__kernel void embedding_backward(__global float* dtable, __global const int* tokens, __global const float* dout,
                                 const int N, const int D)
{
    const int d = get_global_id(0);
    if (d >= D) return;
    for (int n = 0; n < N; n++) {
        const long row = (long)tokens[n] * D;
        dtable[row + d] = dtable[row + d] + dout[(long)n * D + d];
    }
}

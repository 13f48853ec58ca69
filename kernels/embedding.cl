// Token embedding lookup and its backward (scatter-add into the table).
// Forward copies row tokens[n] of the table. Backward must add several rows of dout into the same
// table row when a token repeats; to stay deterministic without atomics each work-item owns one
// column d of the table and walks the tokens n = 0..N-1 in order, so every table element receives
// its contributions in the same fixed order on every run and every device.
//
// A token outside [0, V) is reported through `errors` (the host raises it at the next synchronisation):
// forward writes NaN for that row and backward skips it, so no memory outside the table is touched.
//
// Dimensions: N = B·T tokens, D model width, V vocabulary.
//
// embedding_forward:  tokens (N), table (V,D) -> out (N,D)
// embedding_backward: tokens (N), dout (N,D) -> dtable (V,D) +=

// errors[0..2] = (1 + position, token, V) of a bad token; several bad tokens may overwrite each other,
// which only changes which one the error message names.
inline void report_bad_token(__global int* errors, const int n, const int token, const int V)
{
    errors[0] = n + 1;
    errors[1] = token;
    errors[2] = V;
}

__kernel void embedding_forward(__global float* out, __global const int* tokens, __global const float* table,
                                __global int* errors, const int N, const int D, const int V)
{
    const long i = get_global_id(0);           // n·D + d
    if (i >= (long)N * D) return;
    const int n = (int)(i / D), d = (int)(i - (long)n * D);
    const int token = tokens[n];
    if (token < 0 || token >= V) {
        if (d == 0) report_bad_token(errors, n, token, V);
        out[i] = NAN;
        return;
    }
    out[i] = table[(long)token * D + d];
}

__kernel void embedding_backward(__global float* dtable, __global const int* tokens, __global const float* dout,
                                 __global int* errors, const int N, const int D, const int V)
{
    const int d = get_global_id(0);
    if (d >= D) return;
    for (int n = 0; n < N; n++) {
        const int token = tokens[n];
        if (token < 0 || token >= V) {
            if (d == 0) report_bad_token(errors, n, token, V);
            continue;
        }
        const long row = (long)token * D;
        dtable[row + d] = dtable[row + d] + dout[(long)n * D + d];
    }
}

// Token embedding lookup and its backward (the ILGPU twin of embedding.cl), vocabulary-sharded: the table holds
// rows [v0, v0 + Vl) of the vocabulary and tokens are global ids. Forward copies row token − v0, or a zero row for
// a token of another shard, so the shards' outputs sum to the unsharded lookup. Backward adds rows of dout into
// the table; a token may repeat, so to stay deterministic without atomics a group owns a block of table rows and
// EG columns (one per thread), walks the tokens n = 0..N-1 in order (EG at a time through shared memory) and adds
// the rows of dout whose token falls in its block: every table element receives its tokens in token order, on
// every run and every device, as on the CPU.
// A negative token is reported through `errors` (raised on the host at the next synchronisation): forward writes
// NaN for that row and backward skips it, so nothing outside the table is touched.
//
// Dimensions: N = B·T tokens, D model width, Vl rows of this shard; backward grid (⌈D/EG⌉, ⌈Vl/rowsPerGroup⌉), group EG.
//
// Forward:  tokens (N), table (Vl,D) -> out (N,D)
// Backward: tokens (N), dout (N,D) -> dtable (Vl,D) +=

using ILGPU;

namespace Palm.Gpu.Kernels;

public static class EmbeddingKernels
{
    // errors[0..2] = (1 + position, token, 0) of a negative token; several may overwrite each other, which only changes
    // which one the message names.
    static void ReportBadToken(ArrayView<int> errors, long n, int token)
    {
        errors[0] = (int)n + 1;
        errors[1] = token;
        errors[2] = 0;
    }

    public static void Forward(ArrayView<float> output, ArrayView<int> tokens, ArrayView<float> table, ArrayView<int> errors,
                               int n, int d, int v0, int rows)
    {
        long total = (long)n * d, stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < total; i += stride)
        {
            long t = i / d;
            int col = (int)(i - t * d);
            int token = tokens[t];
            if (token < 0)
            {
                if (col == 0) ReportBadToken(errors, t, token);
                output[i] = float.NaN;
                continue;
            }
            int row = token - v0;
            output[i] = row >= 0 && row < rows ? table[(long)row * d + col] : 0f;
        }
    }

    public static void Backward(ArrayView<float> dtable, ArrayView<int> tokens, ArrayView<float> dout, ArrayView<int> errors,
                                int n, int d, int v0, int rows, int rowsPerGroup)
    {
        var blockRows = SharedMemory.GetDynamic<int>();   // (EG): this block's row of each staged token, or −1
        int lid = Group.IdxX, group = Group.DimX;
        int col = Grid.IdxX * group + lid;
        int r0 = Grid.IdxY * rowsPerGroup, r1 = r0 + rowsPerGroup < rows ? r0 + rowsPerGroup : rows;
        bool reporter = Grid.IdxX == 0 && Grid.IdxY == 0;
        for (int n0 = 0; n0 < n; n0 += group)
        {
            int t = n0 + lid, row = -1;
            if (t < n)
            {
                int token = tokens[t];
                if (token < 0) { if (reporter) ReportBadToken(errors, t, token); }
                else if (token - v0 >= r0 && token - v0 < r1) row = token - v0;
            }
            blockRows[lid] = row;
            Group.Barrier();
            int count = n - n0 < group ? n - n0 : group;
            if (col < d)
                for (int q = 0; q < count; q++)
                {
                    int r = blockRows[q];
                    if (r < 0) continue;
                    long at = (long)r * d + col;
                    dtable[at] = dtable[at] + dout[(long)(n0 + q) * d + col];
                }
            Group.Barrier();
        }
    }
}

using System.Runtime.Intrinsics;

namespace Palm.Gpu.Backends.Cpu;

// Token embedding on the CPU (the table is shared with the output logits in PaLM), vocabulary-sharded.
// Dimension legend: B batch, T time, N = B·T rows, D model width, Vl rows of this shard [v0, v0 + Vl).
//
//   Forward   tokens (N) global ids, table (Vl,D) -> out (N,D) = table[token − v0], a zero row outside the shard
//   Backward  dout (N,D), tokens (N)  -> dtable (Vl,D) += scatter-add of dout rows by token, shard rows only
//
// The backward is deterministic without atomics: the D columns are cut into fixed blocks, one block per
// work item, and every work item walks all N rows in order. A table row that several tokens hit is
// therefore always summed in row order, whatever the thread count (and as the OpenCL kernel sums it).
// Negative tokens are checked up front (O(N), before any write); ids past the shard are another shard's.
internal static unsafe class CpuEmbedding
{
    const int ColumnBlock = 128;

    public static void Forward(int threads, CpuView<float> output, CpuView<int> tokens, CpuView<float> table, int n, int d, int v0, int vl)
    {
        CheckTokens(tokens, n);
        CpuParallel.For(threads, n, row =>
        {
            long local = (long)tokens[row] - v0;
            if ((ulong)local < (ulong)vl) table.AsSpan(local * d, d).CopyTo(output.AsSpan((long)row * d, d));
            else output.AsSpan((long)row * d, d).Clear();
        });
    }

    public static void Backward(int threads, CpuView<float> dtable, CpuView<int> tokens, CpuView<float> dout, int n, int d, int v0, int vl)
    {
        CheckTokens(tokens, n);
        int blocks = (d + ColumnBlock - 1) / ColumnBlock;
        CpuParallel.For(threads, blocks, block =>
        {
            int j0 = block * ColumnBlock, width = Math.Min(ColumnBlock, d - j0);
            fixed (float* pdt = dtable, pdo = dout)
            fixed (int* ptok = tokens)
            {
                for (long row = 0; row < n; row++)
                {
                    long local = (long)ptok[row] - v0;
                    if ((ulong)local >= (ulong)vl) continue;
                    float* target = pdt + local * d + j0;   // dtable[token] += dout[row], this block's columns
                    CpuResidual.AddRange(target, target, pdo + row * d + j0, width);
                }
            }
        });
    }

    static void CheckTokens(CpuView<int> tokens, int n)
    {
        for (int i = 0; i < n; i++)
            if (tokens[i] < 0)
                throw new IndexOutOfRangeException(
                    $"embedding: token {tokens[i]} at position {i} is negative; token ids are vocabulary rows from 0.");
    }
}

using System.Runtime.Intrinsics;

namespace Palm.Gpu.Backends.Cpu;

// Token embedding on the CPU (the table is shared with the output logits in PaLM).
// Dimension legend: B batch, T time, N = B·T rows, D model width, V vocabulary.
//
//   Forward   tokens (N), table (V,D) -> out (N,D) = table[tokens]
//   Backward  dout (N,D), tokens (N)  -> dtable (V,D) += scatter-add of dout rows by token
//
// The backward is deterministic without atomics: the D columns are cut into fixed blocks, one block per
// work item, and every work item walks all N rows in order. A table row that several tokens hit is
// therefore always summed in row order, whatever the thread count.
// Tokens are checked up front (O(N), before any write): an out-of-range id would otherwise read or write
// another row of the table.
internal static unsafe class CpuEmbedding
{
    const int ColumnBlock = 128;

    public static void Forward(int threads, CpuView<float> output, CpuView<int> tokens, CpuView<float> table, int n, int d)
    {
        CheckTokens(tokens, n, (int)(table.Length / d), "table");
        CpuParallel.For(threads, n, row =>
        {
            long token = tokens[row];
            table.AsSpan(token * d, d).CopyTo(output.AsSpan((long)row * d, d));
        });
    }

    public static void Backward(int threads, CpuView<float> dtable, CpuView<int> tokens, CpuView<float> dout, int n, int d, int v)
    {
        CheckTokens(tokens, n, v, "dtable");
        int blocks = (d + ColumnBlock - 1) / ColumnBlock;
        CpuParallel.For(threads, blocks, block =>
        {
            int j0 = block * ColumnBlock, width = Math.Min(ColumnBlock, d - j0);
            fixed (float* pdt = dtable, pdo = dout)
            fixed (int* ptok = tokens)
            {
                for (long row = 0; row < n; row++)
                {
                    float* target = pdt + ptok[row] * (long)d + j0;   // dtable[token] += dout[row], this block's columns
                    CpuResidual.AddRange(target, target, pdo + row * d + j0, width);
                }
            }
        });
    }

    static void CheckTokens(CpuView<int> tokens, int n, int vocab, string tableName)
    {
        for (int i = 0; i < n; i++)
            if ((uint)tokens[i] >= (uint)vocab)
                throw new IndexOutOfRangeException(
                    $"embedding: token {tokens[i]} at position {i} is outside the vocabulary [0, {vocab}) of '{tableName}'; check the tokenizer's vocabulary size against the model config.");
    }
}

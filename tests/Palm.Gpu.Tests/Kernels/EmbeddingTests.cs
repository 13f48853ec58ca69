using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tensors;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

public class EmbeddingTests
{
    const int Threads = 2;

    // out (N,D) = table[tokens − v0] in double, a zero row for tokens outside [v0, v0 + rows).
    static double[] Reference(int[] tokens, double[] table, int n, int d, int v0 = 0, int rows = int.MaxValue)
    {
        var y = new double[n * d];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++)
                y[i * d + j] = tokens[i] - v0 >= 0 && tokens[i] - v0 < rows ? table[(tokens[i] - v0) * d + j] : 0;
        return y;
    }

    [Theory]
    [InlineData(3, 7, 5)]
    [InlineData(5, 37, 11)]
    [InlineData(9, 130, 4)]
    public void Forward_GathersRows(int n, int d, int v)
    {
        var tokens = TestData.Tokens(41, n, v);
        tokens[0] = v - 1; // last row of the table
        var table = TestData.Uniform(42, v * d);
        var output = new float[n * d];
        CpuEmbedding.Forward(Threads, output, tokens, table, n, d, 0, v);
        Tolerance.AssertClose(Reference(tokens, TestData.ToDouble(table), n, d), output, 0, 0, "embedding gather");
    }

    // L = Σ w ⊙ table[tokens − v0]; repeated tokens make rows of dtable sum several upstream rows;
    // dtable starts non-zero because it accumulates. A shard (v0, rows) of a vocabulary of v: tokens of other
    // shards contribute nothing.
    [Theory]
    [InlineData(3, 7, 5, 0, 5)]
    [InlineData(7, 37, 4, 0, 4)]
    [InlineData(6, 133, 3, 0, 3)]
    [InlineData(9, 7, 9, 3, 3)]
    [InlineData(12, 19, 8, 4, 4)]
    public void Backward_MatchesFiniteDifferences(int n, int d, int v, int v0, int rows)
    {
        var tokens = TestData.Tokens(43, n, v);
        tokens[0] = tokens[n - 1] = v0 + rows - 1; // at least one repeat, inside the shard
        var table = TestData.ToDouble(TestData.Uniform(44, rows * d));
        var w = TestData.Uniform(45, n * d);
        var wd = TestData.ToDouble(w);
        var dtable = TestData.Uniform(46, rows * d);
        var expected = TestData.NumericGradient(t => TestData.Dot(wd, Reference(tokens, t, n, d, v0, rows)), table);
        for (int i = 0; i < expected.Length; i++) expected[i] += dtable[i];

        CpuEmbedding.Backward(Threads, dtable, tokens, w, n, d, v0, rows);
        Tolerance.AssertClose(expected, dtable, 1e-6, 1e-5, "dtable");
    }

    [Fact]
    public void Backward_SameBitsForAnyThreadCount()
    {
        const int n = 600, d = 300, v = 9; // 3 column blocks; every token repeats ~67 times
        var tokens = TestData.Tokens(47, n, v);
        var dout = TestData.Uniform(48, n * d);
        for (int i = 0; i < dout.Length; i += 13) dout[i] *= 1000f; // make the summation order visible in the bits
        var start = TestData.Uniform(49, v * d);
        int[]? reference = null;
        foreach (int threads in new[] { 1, 2, 3 })
        {
            var dtable = (float[])start.Clone();
            CpuEmbedding.Backward(threads, dtable, tokens, dout, n, d, 0, v);
            var bits = Array.ConvertAll(dtable, BitConverter.SingleToInt32Bits);
            if (reference is null) reference = bits;
            else Assert.Equal(reference, bits);
        }
    }

    // A shard holds rows [v0, v0 + rows) of the vocabulary: ids past it (another shard's, or past V) give zero rows
    // and no gradient; the shards' lookups sum to the unsharded one bit for bit (each row comes from one shard).
    [Theory]
    [InlineData(11, 7, 12, 3)]
    [InlineData(40, 33, 10, 2)]
    public void Shards_SumToUnsharded(int n, int d, int v, int shards)
    {
        var tokens = TestData.Tokens(53, n, v);
        tokens[0] = v - 1;
        tokens[1] = 0;
        var table = TestData.Uniform(54, v * d);
        var full = new float[n * d];
        CpuEmbedding.Forward(Threads, full, tokens, table, n, d, 0, v);
        var summed = new float[n * d];
        var dout = TestData.Uniform(55, n * d);
        var dfull = TestData.Uniform(56, v * d);
        var dsharded = (float[])dfull.Clone();
        CpuEmbedding.Backward(Threads, dfull, tokens, dout, n, d, 0, v);
        int rows = v / shards;
        for (int m = 0; m < shards; m++)
        {
            var part = table.AsSpan(m * rows * d, rows * d).ToArray();
            var output = new float[n * d];
            output.AsSpan().Fill(float.NaN);   // every row is written, inside the shard or not
            CpuEmbedding.Forward(Threads, output, tokens, part, n, d, m * rows, rows);
            Tolerance.AssertClose(Reference(tokens, TestData.ToDouble(part), n, d, m * rows, rows), output, 0, 0, $"shard {m}");
            for (int i = 0; i < summed.Length; i++) summed[i] += output[i];

            var dpart = dsharded.AsSpan(m * rows * d, rows * d).ToArray();
            CpuEmbedding.Backward(Threads, dpart, tokens, dout, n, d, m * rows, rows);
            dpart.CopyTo(dsharded, m * rows * d);
        }
        Assert.Equal(Bits(full), Bits(summed));
        Assert.Equal(Bits(dfull), Bits(dsharded));
    }

    static int[] Bits(float[] x) => Array.ConvertAll(x, BitConverter.SingleToInt32Bits);

    [Fact]
    public void NegativeToken_ThrowsAndWritesNothing()
    {
        const int n = 4, d = 5, v = 6;
        var table = TestData.Uniform(50, v * d);
        var dtable = TestData.Uniform(51, v * d);
        var before = (float[])dtable.Clone();
        var dout = TestData.Uniform(52, n * d);
        var tokens = new[] { 0, 1, -1, 2 };
        var e = Assert.Throws<IndexOutOfRangeException>(() => CpuEmbedding.Backward(Threads, dtable, tokens, dout, n, d, 0, v));
        Assert.Contains("-1", e.Message);
        Assert.Equal(before, dtable);
        Assert.Throws<IndexOutOfRangeException>(() => CpuEmbedding.Forward(Threads, new float[n * d], tokens, table, n, d, 0, v));
    }

    // The backend entry points check the shard's table and rows against the sizes before any pointer arithmetic.
    [Fact]
    public void Backend_RejectsBuffersTooSmallForTheShard()
    {
        using var be = new CpuBackend(2);
        using var tokens = be.Allocate("tokens", 4, ElementType.I32);
        using var table = be.Allocate("table", 3 * 8);
        using var rows = be.Allocate("rows", 4 * 8);
        be.EmbeddingBackward(table, tokens, rows, 4, 8, 5, 3);
        var e = Assert.Throws<ArgumentException>(() => be.EmbeddingBackward(table, tokens, rows, 4, 8, 5, 4));
        Assert.Contains("table", e.Message);
        Assert.Throws<ArgumentException>(() => be.EmbeddingForward(rows, tokens, table, 5, 8, 0, 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => be.EmbeddingForward(rows, tokens, table, 4, 8, -1, 3));
    }
}

using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

public class EmbeddingTests
{
    const int Threads = 2;

    // out (N,D) = table[tokens] in double.
    static double[] Reference(int[] tokens, double[] table, int n, int d)
    {
        var y = new double[n * d];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++) y[i * d + j] = table[tokens[i] * d + j];
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
        CpuEmbedding.Forward(Threads, output, tokens, table, n, d);
        Tolerance.AssertClose(Reference(tokens, TestData.ToDouble(table), n, d), output, 0, 0, "embedding gather");
    }

    // L = Σ w ⊙ table[tokens]; repeated tokens make rows of dtable sum several upstream rows;
    // dtable starts non-zero because it accumulates.
    [Theory]
    [InlineData(3, 7, 5)]
    [InlineData(7, 37, 4)]
    [InlineData(6, 133, 3)]
    public void Backward_MatchesFiniteDifferences(int n, int d, int v)
    {
        var tokens = TestData.Tokens(43, n, v);
        tokens[0] = tokens[n - 1] = v - 1; // at least one repeat
        var table = TestData.ToDouble(TestData.Uniform(44, v * d));
        var w = TestData.Uniform(45, n * d);
        var wd = TestData.ToDouble(w);
        var dtable = TestData.Uniform(46, v * d);
        var expected = TestData.NumericGradient(t => TestData.Dot(wd, Reference(tokens, t, n, d)), table);
        for (int i = 0; i < expected.Length; i++) expected[i] += dtable[i];

        CpuEmbedding.Backward(Threads, dtable, tokens, w, n, d, v);
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
            CpuEmbedding.Backward(threads, dtable, tokens, dout, n, d, v);
            var bits = Array.ConvertAll(dtable, BitConverter.SingleToInt32Bits);
            if (reference is null) reference = bits;
            else Assert.Equal(reference, bits);
        }
    }

    [Fact]
    public void OutOfRangeToken_ThrowsAndWritesNothing()
    {
        const int n = 4, d = 5, v = 6;
        var table = TestData.Uniform(50, v * d);
        var dtable = TestData.Uniform(51, v * d);
        var before = (float[])dtable.Clone();
        var dout = TestData.Uniform(52, n * d);
        foreach (int bad in new[] { v, -1 })
        {
            var tokens = new[] { 0, 1, bad, 2 };
            var e = Assert.Throws<IndexOutOfRangeException>(() => CpuEmbedding.Backward(Threads, dtable, tokens, dout, n, d, v));
            Assert.Contains(bad.ToString(), e.Message);
            Assert.Equal(before, dtable);
            Assert.Throws<IndexOutOfRangeException>(() => CpuEmbedding.Forward(Threads, new float[n * d], tokens, table, n, d));
        }
    }
}

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

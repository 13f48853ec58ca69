using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

// The CPU kernels' own check of token ids read from memory; the embedding itself, sharded or not, is tested on every
// backend in Conformance/EmbeddingConformance.cs.
public class EmbeddingTests
{
    const int Threads = 2;

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
}

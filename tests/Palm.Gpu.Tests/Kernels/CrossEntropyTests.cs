using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

// The CPU kernels' own check of token ids read from memory; cross-entropy itself, sharded or not, is tested on every
// backend in Conformance/CrossEntropyConformance.cs.
public class CrossEntropyTests
{
    const int Threads = 2;

    [Fact]
    public void NegativeTarget_Throws()
    {
        const int n = 2, v = 5;
        var logits = TestData.Uniform(89, n * v);
        var e = Assert.Throws<IndexOutOfRangeException>(() =>
            CpuCrossEntropy.Forward(Threads, new float[n], new float[n], logits, new[] { 1, -2 }, n, v, 0));
        Assert.Contains("target -2", e.Message);
        Assert.Throws<IndexOutOfRangeException>(() =>
            CpuCrossEntropy.Backward(Threads, new float[n * v], logits, new float[n], new[] { -1, 0 }, 1f, 0f, n, v, 0));
    }
}

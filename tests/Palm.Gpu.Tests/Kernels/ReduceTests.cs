using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

public class ReduceTests
{
    // 0 and 1: degenerate; 37: vectors plus a tail; 3·65536+123: several fixed chunks plus a partial one.
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(37)]
    [InlineData(3 * 65536 + 123)]
    public void SumOfSquares_MatchesReference(int count)
    {
        var x = TestData.Uniform(21, count, 3f);
        double expected = 0;
        foreach (var v in x) expected += (double)v * v;
        double actual = CpuReduce.SumOfSquares(2, x, count);
        Tolerance.AssertClose(new[] { expected }, new[] { actual }, 0, 1e-12, "Σx²");
    }

    [Fact]
    public void SumOfSquares_ReadsOnlyCount()
    {
        var x = TestData.Uniform(22, 40);
        double expected = 0;
        for (int i = 0; i < 33; i++) expected += (double)x[i] * x[i];
        x[35] = float.NaN; // beyond count: must not be read
        double actual = CpuReduce.SumOfSquares(2, x, 33);
        Tolerance.AssertClose(new[] { expected }, new[] { actual }, 0, 1e-12, "Σx² over the first 33");
    }

    [Fact]
    public void SumOfSquares_SameBitsForAnyThreadCount()
    {
        const int count = 3 * 65536 + 123;
        // Wide dynamic range so that a different summation order would change the last bits.
        var x = TestData.Uniform(23, count, 1f);
        for (int i = 0; i < count; i += 97) x[i] *= 1e4f;
        long one = BitConverter.DoubleToInt64Bits(CpuReduce.SumOfSquares(1, x, count));
        Assert.Equal(one, BitConverter.DoubleToInt64Bits(CpuReduce.SumOfSquares(2, x, count)));
        Assert.Equal(one, BitConverter.DoubleToInt64Bits(CpuReduce.SumOfSquares(3, x, count)));
    }
}

using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

// Σ x² (double, to the host) on every backend: against a double reference, only count elements read, the same
// bits on every run. Backends sum in their own fixed trees, so across backends it is close, not bit-equal.
[Collection(ConformanceCollection.Name)]
public class ReduceConformance(ConformanceFixture fx)
{
    public static IEnumerable<object[]> Sizes => ConformanceBackends.Cross([0], [1], [37], [1000], [3 * 65536 + 123]);

    double Run(string backend, float[] x, int count)
    {
        var be = fx.Get(backend);
        using var buf = be.Allocate("x", Math.Max(1, x.Length));
        if (x.Length > 0) be.Upload(buf, x);
        return be.SumOfSquares(buf, count);
    }

    [Theory]
    [MemberData(nameof(Sizes))]
    public void SumOfSquares_matches_reference_and_cpu(string backend, int count)
    {
        var x = TestData.Uniform(21, count, 3f);
        for (int i = 0; i < count; i += 97) x[i] *= 1e3f;   // a wide range: a different order changes the last bits
        double expected = 0;
        foreach (var v in x) expected += (double)v * v;
        double actual = Run(backend, x, count), cpu = Run("cpu", x, count);
        Tolerance.AssertClose(new[] { expected }, new[] { actual }, 0, 1e-12, $"{backend}: Σx²");
        if (fx.SameBitsAsCpu(backend)) Assert.Equal(BitConverter.DoubleToInt64Bits(cpu), BitConverter.DoubleToInt64Bits(actual));
        else Tolerance.AssertClose(new[] { cpu }, new[] { actual }, 0, 1e-12, $"{backend}: Σx² vs cpu");
        Assert.Equal(BitConverter.DoubleToInt64Bits(actual), BitConverter.DoubleToInt64Bits(Run(backend, x, count)));
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void SumOfSquares_reads_only_count(string backend)
    {
        var x = TestData.Uniform(22, 40);
        double expected = 0;
        for (int i = 0; i < 33; i++) expected += (double)x[i] * x[i];
        x[35] = float.NaN;   // beyond count: must not be read
        Tolerance.AssertClose(new[] { expected }, new[] { Run(backend, x, 33) }, 0, 1e-12, $"{backend}: Σx² over the first 33");
    }
}


using Palm.Gpu.Backends;
using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

// Σ x² (double, to the host) on every backend: against a double reference, only count elements read, the same
// bits on every run. Backends sum in their own fixed trees, so across backends it is close, not bit-equal.
// Per segment of a flat buffer (x (flat), segments (S) -> Σ x² (S)): one order written out below, which every
// backend that reduces in double gives to the bit.
[Collection(ConformanceCollection.Name)]
public class ReduceConformance(ConformanceFixture fx)
{
    public static IEnumerable<object[]> Sizes => ConformanceBackends.Cross([0], [1], [37], [1000], [3 * 65536 + 123], [200_003]);

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

    // ---- segments of a flat buffer ---------------------------------------------------------------------

    /// <summary>
    /// The segmented order written out in scalar code (runs of 1024 from each segment's start; 16 lanes folded
    /// k+8, k+4, k+2, k+1; the run's tail; runs into 64 strided partials folded by a tree). Any backend must give
    /// these bits; a SIMD or tiling change that reorders the sum fails here on any machine.
    /// </summary>
    static double OrderedSegmentSum(float[] x, Segment sg)
    {
        var partials = new double[64];
        long runs = (sg.Count + 1023) / 1024;
        for (long r = 0; r < runs; r++)
        {
            long i0 = sg.Offset + r * 1024, i1 = Math.Min(sg.Offset + sg.Count, i0 + 1024), whole = i0 + (i1 - i0) / 16 * 16;
            var lane = new double[16];
            for (long i = i0; i < whole; i++) lane[(i - i0) % 16] += (double)x[i] * x[i];
            for (int w = 8; w >= 1; w /= 2)
                for (int k = 0; k < w; k++) lane[k] = lane[k] + lane[k + w];
            double s = lane[0];
            for (long i = whole; i < i1; i++) s += (double)x[i] * x[i];
            partials[r % 64] += s;
        }
        for (int w = 32; w >= 1; w /= 2)
            for (int k = 0; k < w; k++) partials[k] = partials[k] + partials[k + w];
        return partials[0];
    }

    /// <summary>Segments of 1, 7, 16, 1024, 1025, 16385 and 70001 elements (and an empty one) with gaps of NaN between them.</summary>
    internal static (float[] X, Segment[] Segments) SegmentedData(int seed)
    {
        int[] sizes = [1, 7, 0, 16, 1024, 1025, 16385, 70001];
        var segments = new List<Segment>();
        long at = 5;
        foreach (int n in sizes) { segments.Add(new Segment(at, n)); at += n + 3; }
        var x = TestData.Uniform(seed, (int)at, 2f);
        for (int i = 0; i < x.Length; i += 89) x[i] *= 1e4f;   // a wide range, so order shows in the bits
        var inside = new bool[x.Length];
        foreach (var sg in segments) for (long i = sg.Offset; i < sg.Offset + sg.Count; i++) inside[i] = true;
        for (int i = 0; i < x.Length; i++) if (!inside[i]) x[i] = float.NaN;   // must not be read
        return (x, segments.ToArray());
    }

    internal static double[] RunSegments(IBackend be, float[] x, Segment[] segments)
    {
        using var buffer = be.Allocate("x", x.Length);
        be.Upload(buffer, x);
        var sums = new double[segments.Length];
        be.SumOfSquaresSegments(buffer, segments, sums);
        return sums;
    }

    public static IEnumerable<object[]> Seeds => ConformanceBackends.Cross([24], [72]);

    // Against the double reference and, where the backend reduces in double, the written-out order to the bit; the
    // same bits on a second run and the CPU's where promised (every thread count); in one launch pair and one read-back.
    [Theory]
    [MemberData(nameof(Seeds))]
    public void SumOfSquaresSegments_match_reference_and_its_order(string backend, int seed)
    {
        var (x, segments) = SegmentedData(seed);
        var be = fx.Get(backend);
        var sums = RunSegments(be, x, segments);
        bool fp64 = be is not OpenClBackend o || o.Device.HasFp64;
        for (int i = 0; i < segments.Length; i++)
        {
            double expected = 0;
            for (long j = segments[i].Offset; j < segments[i].Offset + segments[i].Count; j++) expected += (double)x[j] * x[j];
            Tolerance.AssertClose(new[] { expected }, new[] { sums[i] }, 0, fp64 ? 1e-12 : 1e-5, $"{backend}: Σx² of segment {i}");
            if (fp64) Assert.Equal(BitConverter.DoubleToInt64Bits(OrderedSegmentSum(x, segments[i])), BitConverter.DoubleToInt64Bits(sums[i]));
        }
        Assert.Equal(Array.ConvertAll(sums, BitConverter.DoubleToInt64Bits), Array.ConvertAll(RunSegments(be, x, segments), BitConverter.DoubleToInt64Bits));
        if (fx.SameBitsAsCpu(backend))
            Assert.Equal(Array.ConvertAll(RunSegments(fx.Cpu, x, segments), BitConverter.DoubleToInt64Bits), Array.ConvertAll(sums, BitConverter.DoubleToInt64Bits));
    }

    // An empty list is no work; a list of only empty segments sums to zero; segments outside the buffer and
    // per-segment spans of the wrong length are refused.
    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void SumOfSquaresSegments_empty_and_invalid_lists(string backend)
    {
        var be = fx.Get(backend);
        using var x = be.Allocate("x", 10);
        be.Upload(x, TestData.Uniform(26, 10));
        be.SumOfSquaresSegments(x, [], []);
        var one = new double[] { 5 };
        be.SumOfSquaresSegments(x, [new Segment(9, 0)], one);
        Assert.Equal(0, one[0]);
        Assert.Throws<ArgumentOutOfRangeException>(() => be.SumOfSquaresSegments(x, [new Segment(5, 6)], new double[1]));
        Assert.Throws<ArgumentException>(() => be.SumOfSquaresSegments(x, [new Segment(0, 6)], new double[2]));
    }
}

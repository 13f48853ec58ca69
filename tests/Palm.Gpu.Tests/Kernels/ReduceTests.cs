using Palm.Gpu.Backends;
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

    // ---- segments of a flat buffer ---------------------------------------------------------------------

    /// <summary>
    /// The segmented order written out in scalar code (runs of 1024 from each segment's start; 16 lanes folded
    /// k+8, k+4, k+2, k+1; the run's tail; runs into 64 strided partials folded by a tree). Any backend must give
    /// these bits; a SIMD or tiling change that reorders the sum fails here on any machine.
    /// </summary>
    internal static double OrderedSegmentSum(float[] x, Segment sg)
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

    [Fact]
    public void SumOfSquaresSegments_MatchesReferenceAndItsOrder()
    {
        var (x, segments) = SegmentedData(24);
        var sums = new double[segments.Length];
        CpuReduce.SumOfSquaresSegments(2, x, segments, sums);
        for (int i = 0; i < segments.Length; i++)
        {
            double expected = 0;
            for (long j = segments[i].Offset; j < segments[i].Offset + segments[i].Count; j++) expected += (double)x[j] * x[j];
            Tolerance.AssertClose(new[] { expected }, new[] { sums[i] }, 0, 1e-12, $"Σx² of segment {i}");
            Assert.Equal(BitConverter.DoubleToInt64Bits(OrderedSegmentSum(x, segments[i])), BitConverter.DoubleToInt64Bits(sums[i]));
        }
    }

    [Fact]
    public void SumOfSquaresSegments_SameBitsForAnyThreadCount()
    {
        var (x, segments) = SegmentedData(25);
        long[]? reference = null;
        foreach (int threads in new[] { 1, 2, 3 })
        {
            var sums = new double[segments.Length];
            CpuReduce.SumOfSquaresSegments(threads, x, segments, sums);
            var bits = Array.ConvertAll(sums, BitConverter.DoubleToInt64Bits);
            if (reference is null) reference = bits;
            else Assert.Equal(reference, bits);
        }
    }

    [Fact]
    public void SumOfSquaresSegments_ValidatesThroughTheBackend()
    {
        using var be = new CpuBackend(2);
        using var x = be.Allocate("x", 10);
        be.SumOfSquaresSegments(x, [], []);   // an empty list is no work
        Assert.Throws<ArgumentOutOfRangeException>(() => be.SumOfSquaresSegments(x, [new Segment(5, 6)], new double[1]));
        Assert.Throws<ArgumentException>(() => be.SumOfSquaresSegments(x, [new Segment(0, 6)], new double[2]));
    }
}

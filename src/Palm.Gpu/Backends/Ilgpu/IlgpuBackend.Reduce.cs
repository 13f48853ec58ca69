using ILGPU;
using ILGPU.Runtime;
using Palm.Gpu.Kernels;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Ilgpu;

// sums of squares (gradient norm) and the log-sum-exp pieces: kernels/reduce/ReduceKernels.cs, kernels/crossentropy/LogSumExpKernels.cs
public sealed partial class IlgpuBackend
{
    // Segment tables, (S,3) longs: offset, count, first run. Uploaded when the list changes (the optimizer passes the same
    // list every step), so a step's reductions need no upload.
    Segment[]? knownSegments;
    long knownRuns;

    (ArrayView<long> Table, long Runs) SegmentTable(IReadOnlyList<Segment> segments) =>
        SegmentTable("sumsq.table", segments, ReduceKernels.Run, ref knownSegments, ref knownRuns);

    /// <summary>
    /// The segment table on the device, (offset, count, first tile) per segment, tiles of <paramref name="tile"/> from each
    /// segment's start, and the number of tiles; uploaded only when the segments differ from the last call's (<paramref name="known"/>).
    /// </summary>
    (ArrayView<long> Table, long Tiles) SegmentTable(string name, IReadOnlyList<Segment> segments, long tile, ref Segment[]? known, ref long knownTiles)
    {
        var table = Scratch<long>(name, 3L * segments.Count);
        if (known is not null && known.AsSpan().SequenceEqual(segments.ToArray())) return (table, knownTiles);
        var first = Segments.FirstTiles(segments, tile);
        var host = new long[3 * segments.Count];
        for (int i = 0; i < segments.Count; i++) { host[3 * i] = segments[i].Offset; host[3 * i + 1] = segments[i].Count; host[3 * i + 2] = first[i]; }
        Upload(stream, table, host.AsSpan());
        stream.Synchronize();
        known = [.. segments];
        knownTiles = first[segments.Count];
        return (table, knownTiles);
    }

    void SumSquares(ArrayView<float> x, IReadOnlyList<Segment> segments, Span<double> sums)
    {
        int count = segments.Count;
        var (table, runs) = SegmentTable(segments);
        if (runs == 0) { sums.Clear(); return; }
        var partial = Scratch<double>("sumsq.partial", runs);
        var totals = Scratch<double>("sumsq.totals", count);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<double>, ArrayView<float>, ArrayView<long>, int, long>>(ReduceKernels.SegmentRuns)(
            stream, Elementwise(runs), partial, x, table, count, runs);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<double>, ArrayView<double>, ArrayView<long>, int, long>>(ReduceKernels.SegmentTotals)(
            stream, new KernelConfig(count, Tuning.ReductionGroup), totals, partial, table, count, runs);
        Download(stream, totals, sums[..count]);
        stream.Synchronize();
        ThrowDeviceErrors();
    }

    protected override double SumOfSquaresCore(DeviceBuffer x, long count)
    {
        if (count == 0) return 0;
        Span<double> sum = stackalloc double[1];
        SumSquares(Buf(x).F, [new Segment(0, count)], sum);
        return sum[0];
    }

    protected override void SumOfSquaresSegmentsCore(DeviceBuffer x, IReadOnlyList<Segment> segments, Span<double> sums)
    {
        if (segments.Count == 0) return;
        SumSquares(Buf(x).Kernel, segments, sums);
    }

    protected override void LogSumExpShiftCore(DeviceBuffer output, DeviceBuffer logZ, DeviceBuffer max, long n)
    {
        if (n == 0) return;
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, long>>(LogSumExpKernels.Shift)(
            stream, Elementwise(n), Buf(output).F, Buf(logZ).F, Buf(max).F, n);
    }

    protected override void LogSumExpFinishCore(DeviceBuffer logZ, DeviceBuffer max, DeviceBuffer sumExp, long n)
    {
        if (n == 0) return;
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, long>>(LogSumExpKernels.Finish)(
            stream, Elementwise(n), Buf(logZ).F, Buf(max).F, Buf(sumExp).F, n);
    }
}

// device collectives: kernels/collectives/CollectivesKernels.cs (driven by Sharding/IlgpuCollectives.cs)
public sealed partial class IlgpuBackend
{
    /// <summary>A staging area of <paramref name="length"/> floats on this device, kept for the next collective.</summary>
    internal ArrayView<float> CollectiveStage(long length) => Scratch<float>("collectives.stage", length);

    /// <summary>stage (P, stride) -> dst (n): the ranks' values summed (or maxed) in rank order in double, on this device's stream.</summary>
    internal void ReduceRanks(ArrayView<float> dst, ArrayView<float> stage, int ranks, long n, long stride, bool max)
    {
        if (n == 0) return;
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, int, long, long, int>>(CollectivesKernels.ReduceRanks)(
            stream, Elementwise(n), dst, stage, ranks, n, stride, max ? 1 : 0);
    }
}

// peak: kernels/peak/PeakKernels.cs
public sealed partial class IlgpuBackend
{
    /// <summary>
    /// fp32 FMA peak in GFLOP/s: eight FMA chains per thread over enough groups to fill every multiprocessor (the
    /// simulator: one group per core), the best of five launches.
    /// </summary>
    internal double MeasurePeakGflops()
    {
        int group = IsSimulator ? Math.Min(Environment.ProcessorCount, Device.MaxNumThreadsPerGroup) : 256;   // simulator: a thread per core
        int groups = IsSimulator ? 1 : Math.Max(1, Device.NumMultiprocessors) * 8;
        int iterations = IsSimulator ? 200_000 : 20_000;
        var output = Scratch<float>("peak.out", (long)group * groups);
        var launch = Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, int, float, float>>(PeakKernels.FmaChains);
        launch(stream, new KernelConfig(groups, group), output, 1, 0.9999f, 1e-4f);   // compiles it
        stream.Synchronize();
        double best = 0;
        for (int r = 0; r < 5; r++)
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            launch(stream, new KernelConfig(groups, group), output, iterations, 0.9999f, 1e-4f);
            stream.Synchronize();
            best = Math.Max(best, 16.0 * iterations * group * groups / clock.Elapsed.TotalSeconds / 1e9);
        }
        return best;
    }
}

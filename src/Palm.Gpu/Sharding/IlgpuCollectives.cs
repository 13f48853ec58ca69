using ILGPU;
using ILGPU.Runtime;
using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Ilgpu;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Sharding;

/// <summary>
/// Collectives between ILGPU devices of one process without the host: buffers move by device-to-device copies
/// (CUDA: peer copies between GPUs of one node where the provider enabled peer access, otherwise the driver's own
/// staging; CPU accelerators: copies between their memories) and are combined on the group's first device by
/// kernels/collectives/CollectivesKernels.cs. Every collective first waits for each rank's queued work, gathers on
/// rank 0's stream, reduces there, copies the results back and waits again, so nothing queued before or after it on
/// any rank can overlap it (simple, not bandwidth-optimal: a ring would spread the traffic over the links).
///
/// Shapes (P = group size, n = count):
///   AllReduce      buffer[r] (n) for every r -> stage (P, n) on rank 0; ReduceRanks -> stage[P·n ..); copy to every buffer
///   ReduceScatter  input[r] (P·n) -> stage (P, P·n); ReduceRanks -> stage[P·P·n ..); block r to output[r] (n)
///   AllGather      input[r'] (n) -> output[r] block r' for every r, r'
///   Broadcast      buffer[root] -> buffer[r] for r ≠ root
/// Elements are reduced in rank order in double and rounded once: the bits of <see cref="InProcessCollectives"/>.
/// Calls and ring bytes are counted as the host collectives count them.
/// </summary>
public sealed class IlgpuCollectives : ICollectives
{
    readonly IlgpuBackend[] _ranks;
    readonly CollectiveCounters _counters;

    public IlgpuCollectives(IReadOnlyList<IlgpuBackend> ranks, CollectiveCounters counters)
    {
        if (ranks.Count == 0) throw new ArgumentException("a collective group needs at least one rank");
        if (WhyNot([.. ranks]) is { } problem) throw new ArgumentException($"device-side collectives cannot serve this group: {problem}", nameof(ranks));
        _ranks = [.. ranks];
        _counters = counters;
    }

    public int Size => _ranks.Length;

    /// <summary>Why these backends cannot copy between each other on the device, or null when they can.</summary>
    public static string? WhyNot(IReadOnlyList<IBackend> ranks)
    {
        if (ranks.Count == 0) return "the group is empty";
        for (int r = 0; r < ranks.Count; r++)
        {
            if (ranks[r] is not IlgpuBackend b) return $"rank {r} runs on the {ranks[r].Name} backend; these collectives copy between ILGPU devices";
            for (int q = 0; q < r; q++)
                if (ReferenceEquals(ranks[q], b)) return $"the group lists one backend twice (ranks {q} and {r})";
        }
        var kind = ((IlgpuBackend)ranks[0]).Accelerator.AcceleratorType;
        if (kind == AcceleratorType.OpenCL) return "ILGPU copies between OpenCL devices only through the host";
        if (ranks.Any(x => ((IlgpuBackend)x).Accelerator.AcceleratorType != kind)) return "the group mixes CUDA GPUs and CPU accelerators";
        return null;
    }

    static ArrayView<float> View(DeviceBuffer b, long count) => ((IlgpuBuffer)b).FRange(0, count);

    static void CopyTo(AcceleratorStream stream, ArrayView<float> from, ArrayView<float> to)
    {
        if (from.Length == 0) return;
        ArrayView1D<float, Stride1D.Dense> source = from;
        source.CopyTo(stream, to);
    }

    void WaitAll()
    {
        foreach (var r in _ranks) r.Synchronize();
    }

    IlgpuBackend Root => _ranks[0];

    public void AllReduce(IReadOnlyList<DeviceBuffer> buffers, long count, ReduceOp op = ReduceOp.Sum)
    {
        using var timer = _counters.Time(_ranks);
        Check(buffers, count);
        _counters.CountAllReduce(RingBytes(2, count));
        if (Size == 1 || count == 0) return;
        WaitAll();
        var stage = Root.CollectiveStage((Size + 1) * count);
        for (int r = 0; r < Size; r++) CopyTo(Root.Stream, View(buffers[r], count), stage.SubView(r * count, count));
        var result = stage.SubView(Size * count, count);
        Root.ReduceRanks(result, stage, Size, count, count, op == ReduceOp.Max);
        for (int r = 0; r < Size; r++) CopyTo(Root.Stream, result, View(buffers[r], count));
        Root.Synchronize();
    }

    public void ReduceScatter(IReadOnlyList<DeviceBuffer> outputs, IReadOnlyList<DeviceBuffer> inputs, long countPerRank)
    {
        using var timer = _counters.Time(_ranks);
        Check(inputs, countPerRank * Size);
        Check(outputs, countPerRank);
        long total = countPerRank * Size;
        _counters.CountReduceScatter(RingBytes(1, total));
        if (total == 0) return;
        WaitAll();
        var stage = Root.CollectiveStage((Size + 1) * total);
        for (int r = 0; r < Size; r++) CopyTo(Root.Stream, View(inputs[r], total), stage.SubView(r * total, total));
        var result = stage.SubView(Size * total, total);
        Root.ReduceRanks(result, stage, Size, total, total, max: false);
        for (int r = 0; r < Size; r++) CopyTo(Root.Stream, result.SubView(r * countPerRank, countPerRank), View(outputs[r], countPerRank));
        Root.Synchronize();
    }

    public void AllGather(IReadOnlyList<DeviceBuffer> outputs, IReadOnlyList<DeviceBuffer> inputs, long countPerRank)
    {
        using var timer = _counters.Time(_ranks);
        Check(inputs, countPerRank);
        Check(outputs, countPerRank * Size);
        _counters.CountAllGather(RingBytes(1, countPerRank * Size));
        if (countPerRank == 0) return;
        WaitAll();
        for (int r = 0; r < Size; r++)
            for (int q = 0; q < Size; q++)
                CopyTo(_ranks[r].Stream, View(inputs[q], countPerRank), ((IlgpuBuffer)outputs[r]).FRange(q * countPerRank, countPerRank));
        WaitAll();
    }

    public void Broadcast(IReadOnlyList<DeviceBuffer> buffers, long count, int root)
    {
        using var timer = _counters.Time(_ranks);
        Check(buffers, count);
        if ((uint)root >= (uint)Size) throw new ArgumentOutOfRangeException(nameof(root), $"root {root} is outside the group of {Size}");
        _counters.CountBroadcast(RingBytes(1, count));
        if (Size == 1 || count == 0) return;
        WaitAll();
        for (int r = 0; r < Size; r++)
            if (r != root) CopyTo(_ranks[r].Stream, View(buffers[root], count), View(buffers[r], count));
        WaitAll();
    }

    // A ring all-reduce sends 2·(P−1)/P of the data per rank; all-gather and reduce-scatter (P−1)/P.
    long RingBytes(int passes, long count) => passes * 4 * count * (Size - 1) / Size;

    void Check(IReadOnlyList<DeviceBuffer> buffers, long count)
    {
        if (buffers.Count != Size) throw new ArgumentException($"expected one buffer per rank ({Size}), got {buffers.Count}");
        for (int r = 0; r < Size; r++)
        {
            if (!ReferenceEquals(buffers[r].Owner, _ranks[r])) throw new ArgumentException($"buffer {buffers[r].Name} is not a buffer of rank {r}'s device");
            if (buffers[r].Length < count) throw new ArgumentException($"buffer {buffers[r].Name} holds {buffers[r].Length} values, fewer than {count}");
        }
    }
}

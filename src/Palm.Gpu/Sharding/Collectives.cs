using System.Runtime.Intrinsics;
using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Sharding;

/// <summary>Reduction applied by <see cref="ICollectives.AllReduce"/>.</summary>
public enum ReduceOp { Sum, Max }

/// <summary>
/// Collective operations over one group of ranks (a row or column of a <see cref="DeviceMesh"/>).
/// Every call names one buffer per rank of the group, index = rank within the group, so a
/// single-controller process drives all ranks at once; a multi-process implementation (MPI, NCCL)
/// keeps the same signatures and uses only its own rank's entry.
///
/// Shapes (P = group size, n = count):
///   AllReduce      buf[r] (n)                      -> buf[r] (n) = op over r' of buf[r']
///   AllGather      input[r] (n)                    -> output[r] (P·n), block r' = input[r']
///   ReduceScatter  input[r] (P·n)                  -> output[r] (n) = Σ_r' input[r'][r·n ..)
///   Broadcast      buf[root] (n)                   -> buf[r] (n) = buf[root]
///
/// Implementations are deterministic: a reduction adds ranks in rank order, so the result is the
/// same bits on every run and on every rank.
/// </summary>
public interface ICollectives
{
    int Size { get; }
    void AllReduce(IReadOnlyList<DeviceBuffer> buffers, long count, ReduceOp op = ReduceOp.Sum);
    void AllGather(IReadOnlyList<DeviceBuffer> outputs, IReadOnlyList<DeviceBuffer> inputs, long countPerRank);
    void ReduceScatter(IReadOnlyList<DeviceBuffer> outputs, IReadOnlyList<DeviceBuffer> inputs, long countPerRank);
    void Broadcast(IReadOnlyList<DeviceBuffer> buffers, long count, int root);
}

/// <summary>Calls and bytes sent per rank, counted by collective kind (shared by all groups of a mesh).</summary>
public sealed class CollectiveCounters
{
    long _allReduce, _allGather, _reduceScatter, _broadcast, _bytes;
    public long AllReduce => Interlocked.Read(ref _allReduce);
    public long AllGather => Interlocked.Read(ref _allGather);
    public long ReduceScatter => Interlocked.Read(ref _reduceScatter);
    public long Broadcast => Interlocked.Read(ref _broadcast);
    /// <summary>Bytes one rank sends under a ring algorithm, summed over calls (the plan's communication volume).</summary>
    public long BytesPerRank => Interlocked.Read(ref _bytes);

    internal void Count(ref long field, long bytes) { Interlocked.Increment(ref field); Interlocked.Add(ref _bytes, bytes); }
    internal void CountAllReduce(long b) => Count(ref _allReduce, b);
    internal void CountAllGather(long b) => Count(ref _allGather, b);
    internal void CountReduceScatter(long b) => Count(ref _reduceScatter, b);
    internal void CountBroadcast(long b) => Count(ref _broadcast, b);

    long _ticks;
    /// <summary>Wall time spent inside collectives (all groups, all calls), for `palm bench --mesh`.</summary>
    public TimeSpan Elapsed => System.Diagnostics.Stopwatch.GetElapsedTime(0, Interlocked.Read(ref _ticks));

    /// <summary>
    /// When set, every collective first waits (untimed) for its group's queued work, so <see cref="Elapsed"/> is the
    /// collectives' own time. Otherwise it also holds the wait for kernels still running on asynchronous devices,
    /// which is what a step pays at that point. `palm bench --mesh` measures both ways.
    /// </summary>
    public bool DrainBeforeTiming { get; set; }

    /// <summary>Times one collective call over <paramref name="ranks"/>: `using var _ = counters.Time(ranks);`.</summary>
    internal Timer Time(IEnumerable<IBackend> ranks)
    {
        if (DrainBeforeTiming) foreach (var r in ranks) r.Synchronize();
        return new(this);
    }

    internal readonly struct Timer(CollectiveCounters owner) : IDisposable
    {
        readonly long _start = System.Diagnostics.Stopwatch.GetTimestamp();
        public void Dispose() => Interlocked.Add(ref owner._ticks, System.Diagnostics.Stopwatch.GetTimestamp() - _start);
    }

    public void Reset() { _allReduce = _allGather = _reduceScatter = _broadcast = _bytes = _ticks = 0; }
}

/// <summary>
/// Collectives between devices of one process: every rank's buffer is downloaded, combined on the host
/// in rank order (sums in double, rounded once), and uploaded back. Deterministic regardless of thread
/// timing because the order of the reduction is the rank order, never the arrival order.
/// </summary>
public sealed class InProcessCollectives : ICollectives
{
    readonly IReadOnlyList<IBackend> _ranks;
    readonly CollectiveCounters _counters;

    public InProcessCollectives(IReadOnlyList<IBackend> ranks, CollectiveCounters counters)
    {
        if (ranks.Count == 0) throw new ArgumentException("a collective group needs at least one rank");
        _ranks = ranks;
        _counters = counters;
    }

    public int Size => _ranks.Count;

    public void AllReduce(IReadOnlyList<DeviceBuffer> buffers, long count, ReduceOp op = ReduceOp.Sum)
    {
        using var timer = _counters.Time(_ranks);
        Check(buffers, count);
        _counters.CountAllReduce(RingBytes(2, count));
        if (Size == 1) return;
        var host = HostFloats(count);
        var acc = HostDoubles(count);
        for (int r = 0; r < Size; r++)
        {
            _ranks[r].Download(buffers[r], host);
            if (r == 0) HostMath.Widen(host, acc);
            else if (op == ReduceOp.Sum) HostMath.AddWidened(acc, host);
            else for (int i = 0; i < host.Length; i++) acc[i] = Math.Max(acc[i], host[i]);
        }
        HostMath.Narrow(acc, host);
        for (int r = 0; r < Size; r++) _ranks[r].Upload(buffers[r], host);
    }

    public void AllGather(IReadOnlyList<DeviceBuffer> outputs, IReadOnlyList<DeviceBuffer> inputs, long countPerRank)
    {
        using var timer = _counters.Time(_ranks);
        Check(inputs, countPerRank);
        Check(outputs, countPerRank * Size);
        _counters.CountAllGather(RingBytes(1, countPerRank * Size));
        var all = HostFloats(countPerRank * Size);
        for (int r = 0; r < Size; r++) _ranks[r].Download(inputs[r], all.Slice((int)(r * countPerRank), (int)countPerRank));
        for (int r = 0; r < Size; r++) _ranks[r].Upload(outputs[r], all);
    }

    public void ReduceScatter(IReadOnlyList<DeviceBuffer> outputs, IReadOnlyList<DeviceBuffer> inputs, long countPerRank)
    {
        using var timer = _counters.Time(_ranks);
        Check(inputs, countPerRank * Size);
        Check(outputs, countPerRank);
        _counters.CountReduceScatter(RingBytes(1, countPerRank * Size));
        long total = countPerRank * Size;
        var host = HostFloats(total);
        var acc = HostDoubles(total);
        for (int r = 0; r < Size; r++)
        {
            _ranks[r].Download(inputs[r], host);
            if (r == 0) HostMath.Widen(host, acc);
            else HostMath.AddWidened(acc, host);
        }
        HostMath.Narrow(acc, host);
        for (int r = 0; r < Size; r++) _ranks[r].Upload(outputs[r], host.Slice((int)(r * countPerRank), (int)countPerRank));
    }

    public void Broadcast(IReadOnlyList<DeviceBuffer> buffers, long count, int root)
    {
        using var timer = _counters.Time(_ranks);
        Check(buffers, count);
        if ((uint)root >= (uint)Size) throw new ArgumentOutOfRangeException(nameof(root), $"root {root} is outside the group of {Size}");
        _counters.CountBroadcast(RingBytes(1, count));
        if (Size == 1) return;
        var host = HostFloats(count);
        _ranks[root].Download(buffers[root], host);
        for (int r = 0; r < Size; r++) if (r != root) _ranks[r].Upload(buffers[r], host);
    }

    // Host staging reused across calls (a step makes hundreds; fresh arrays of a gradient's size each time
    // cost more than the copies). One controller thread drives a group, so one set per group suffices.
    float[] _floats = [];
    double[] _doubles = [];
    Span<float> HostFloats(long n) => (_floats.LongLength >= n ? _floats : _floats = new float[n]).AsSpan(0, (int)n);
    Span<double> HostDoubles(long n) => (_doubles.LongLength >= n ? _doubles : _doubles = new double[n]).AsSpan(0, (int)n);

    // A ring all-reduce sends 2·(P−1)/P of the data per rank; all-gather and reduce-scatter (P−1)/P.
    long RingBytes(int passes, long count) => passes * 4 * count * (Size - 1) / Size;

    void Check(IReadOnlyList<DeviceBuffer> buffers, long count)
    {
        if (buffers.Count != Size) throw new ArgumentException($"expected one buffer per rank ({Size}), got {buffers.Count}");
        foreach (var b in buffers)
            if (b.Length < count) throw new ArgumentException($"buffer {b.Name} holds {b.Length} values, fewer than {count}");
    }
}

/// <summary>
/// Element-wise float ↔ double staging for host reductions, eight lanes at a time. Each element is widened
/// exactly, added in the caller's rank order and rounded once, so the result is the scalar loop's bit for bit.
/// </summary>
internal static class HostMath
{
    public static void Widen(ReadOnlySpan<float> x, Span<double> dst)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; i + 8 <= x.Length; i += 8)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Create(x.Slice(i, 8)));
                lo.CopyTo(dst.Slice(i, 4));
                hi.CopyTo(dst.Slice(i + 4, 4));
            }
        for (; i < x.Length; i++) dst[i] = x[i];
    }

    public static void AddWidened(Span<double> acc, ReadOnlySpan<float> x)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; i + 8 <= x.Length; i += 8)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Create(x.Slice(i, 8)));
                (Vector256.Create((ReadOnlySpan<double>)acc.Slice(i, 4)) + lo).CopyTo(acc.Slice(i, 4));
                (Vector256.Create((ReadOnlySpan<double>)acc.Slice(i + 4, 4)) + hi).CopyTo(acc.Slice(i + 4, 4));
            }
        for (; i < x.Length; i++) acc[i] += x[i];
    }

    public static void Narrow(ReadOnlySpan<double> x, Span<float> dst)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; i + 8 <= x.Length; i += 8)
                Vector256.Narrow(Vector256.Create(x.Slice(i, 4)), Vector256.Create(x.Slice(i + 4, 4))).CopyTo(dst.Slice(i, 8));
        for (; i < x.Length; i++) dst[i] = (float)x[i];
    }
}

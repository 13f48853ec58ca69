using Palm.Gpu.Backends;
using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Sharding;

/// <summary>
/// Collectives between OpenCL devices of one shared context (<see cref="OpenClContext.CreateShared"/>): data moves
/// between the ranks' buffers with clEnqueueCopyBuffer and is combined by a small kernel (kernels/collectives/collectives.cl),
/// never through the host. Each rank keeps its own in-order queue; the phases of a collective are ordered across
/// queues with events: every queue first enqueues a marker ("my buffers are ready"), every queue then puts a
/// barrier on all those markers before reading other ranks' buffers, and so on for each phase, so no queue reads
/// data before it is written nor overwrites data another queue is still reading. The host waits for the final
/// markers before returning: the wall time <see cref="CollectiveCounters.Time"/> measures is the collective's, and
/// whatever is queued next on any queue runs after it.
///
/// Shapes (P = group size, n = count; chunk c = ⌈n / P⌉, rank r's chunk [r·c, min(n, (r+1)·c)) of length n_r):
///   AllReduce      copy chunk r of every rank into stage_r (P, c); reduce_ranks -> stage_r[P·c ..) ;
///                  barrier; every rank copies the P reduced chunks into its buffer      (reduce-scatter + all-gather)
///   ReduceScatter  copy slice r of every rank's input into stage_r (P, n); reduce_ranks -> output[r]
///   AllGather      copy input[r'] into output[r] block r' for every r'
///   Broadcast      copy buffer[root] into buffer[r] for r ≠ root
///
/// Deterministic and equal to <see cref="InProcessCollectives"/> bit for bit where the devices have fp64:
/// elements are reduced in rank order, accumulated in double and rounded once (without fp64: in float, still in
/// rank order). Calls and ring bytes are counted exactly as the host collectives count them.
/// </summary>
public sealed class OpenClCollectives : ICollectives, IDisposable
{
    readonly OpenClBackend[] _ranks;
    readonly CollectiveCounters _counters;
    readonly OpenClBuffer?[] _stage;
    bool _disposed;

    public OpenClCollectives(IReadOnlyList<OpenClBackend> ranks, CollectiveCounters counters)
    {
        if (ranks.Count == 0) throw new ArgumentException("a collective group needs at least one rank");
        if (WhyNotShared(ranks.Cast<IBackend>().ToArray()) is { } problem)
            throw new ArgumentException($"device-side collectives cannot serve this group: {problem}", nameof(ranks));
        for (int i = 0; i < ranks.Count; i++)
            for (int j = 0; j < i; j++)
                if (ReferenceEquals(ranks[i], ranks[j]))
                    throw new ArgumentException($"the group lists one backend twice (ranks {j} and {i}); each rank is its own device", nameof(ranks));
        _ranks = ranks.ToArray();
        _counters = counters;
        _stage = new OpenClBuffer?[_ranks.Length];
    }

    public int Size => _ranks.Length;

    /// <summary>
    /// Why <paramref name="ranks"/> cannot use device-side collectives (not all OpenCL backends, not one shared
    /// context, a platform older than OpenCL 1.2), or null when they can.
    /// </summary>
    public static string? WhyNotShared(IReadOnlyList<IBackend> ranks)
    {
        if (ranks.Count == 0) return "the group is empty";
        for (int r = 0; r < ranks.Count; r++)
            if (ranks[r] is not OpenClBackend)
                return $"rank {r} runs on the {ranks[r].Name} backend; device-side collectives copy between OpenCL devices";
        var first = (OpenClBackend)ranks[0];
        for (int r = 1; r < ranks.Count; r++)
            if (!((OpenClBackend)ranks[r]).Context.SharesContextWith(first.Context))
                return $"ranks 0 and {r} have separate OpenCL contexts; open the devices in one (OpenClContext.CreateShared, as DeviceMesh.Create does)";
        return WhyNotShareable(first.Context.Devices);
    }

    /// <summary>Why <paramref name="devices"/> cannot share one context for collectives, or null when they can.</summary>
    public static string? WhyNotShareable(IReadOnlyList<OpenClDevice> devices)
    {
        if (OpenClContext.WhyNotShareable(devices) is { } problem) return problem;
        if (devices.Count > 0 && devices[0].Platform.ApiVersion < new Version(1, 2))
            return $"platform '{devices[0].Platform.Name}' implements \"{devices[0].Platform.Version}\"; ordering queues with " +
                   "clEnqueueMarkerWithWaitList/clEnqueueBarrierWithWaitList needs OpenCL 1.2";
        return null;
    }

    // ---- collectives --------------------------------------------------------------------------

    public void AllReduce(IReadOnlyList<DeviceBuffer> buffers, long count, ReduceOp op = ReduceOp.Sum)
    {
        using var timer = _counters.Time(_ranks);
        var bufs = Resolve(buffers, count, "buffer");
        Distinct(bufs, "buffers");
        _counters.CountAllReduce(RingBytes(2, count));
        if (Size == 1 || count == 0) return;
        int p = Size;
        long chunk = (count + p - 1) / p;
        long Length(int r) => Math.Clamp(count - r * chunk, 0, chunk);
        var stage = new OpenClBuffer[p];
        for (int r = 0; r < p; r++) stage[r] = Stage(r, (p + 1) * chunk);   // before anything is queued: allocation waits on the queue

        using var events = new EventSet(p);
        var ready = events.Markers(_ranks);
        for (int r = 0; r < p; r++)
        {
            // Reduce-scatter: rank r gathers chunk r of every rank, in rank order, and reduces it behind the copies.
            var q = Queue(r);
            q.Barrier(ready);
            long n = Length(r);
            for (int src = 0; src < p; src++) q.Copy(stage[r], bufs[src], src * chunk * 4, r * chunk * 4, n * 4);
            _ranks[r].ReduceRanks(stage[r], p * chunk, stage[r], p, n, chunk, op == ReduceOp.Max);
        }
        var reduced = events.Markers(_ranks);
        for (int r = 0; r < p; r++)
        {
            // All-gather: once every chunk is reduced (and so every read of the ranks' buffers is done), each rank
            // copies the P reduced chunks into its own buffer. Only rank r writes buffer r.
            var q = Queue(r);
            q.Barrier(reduced);
            for (int src = 0; src < p; src++) q.Copy(bufs[r], stage[src], src * chunk * 4, p * chunk * 4, Length(src) * 4);
        }
        events.WaitForAll(_ranks, "all-reduce");
    }

    public void AllGather(IReadOnlyList<DeviceBuffer> outputs, IReadOnlyList<DeviceBuffer> inputs, long countPerRank)
    {
        using var timer = _counters.Time(_ranks);
        var ins = Resolve(inputs, countPerRank, "input");
        var outs = Resolve(outputs, countPerRank * Size, "output");
        Distinct(outs, "outputs");
        _counters.CountAllGather(RingBytes(1, countPerRank * Size));
        if (countPerRank == 0) return;
        int p = Size;
        long n = countPerRank, bytes = n * 4;
        bool aliased = Aliased(outs, ins);
        var stage = aliased ? Enumerable.Range(0, p).Select(r => Stage(r, n)).ToArray() : null;

        using var events = new EventSet(p);
        var ready = events.Markers(_ranks);
        var sources = ins;
        if (stage is not null)
        {
            // An output is also an input: take every input aside first, so no rank overwrites what another still reads.
            for (int r = 0; r < p; r++)
            {
                Queue(r).Barrier(ready);
                Queue(r).Copy(stage[r], ins[r], 0, 0, bytes);
            }
            ready = events.Markers(_ranks);
            sources = stage;
        }
        for (int r = 0; r < p; r++)
        {
            var q = Queue(r);
            q.Barrier(ready);
            for (int src = 0; src < p; src++) q.Copy(outs[r], sources[src], src * bytes, 0, bytes);
        }
        events.WaitForAll(_ranks, "all-gather");
    }

    public void ReduceScatter(IReadOnlyList<DeviceBuffer> outputs, IReadOnlyList<DeviceBuffer> inputs, long countPerRank)
    {
        using var timer = _counters.Time(_ranks);
        var ins = Resolve(inputs, countPerRank * Size, "input");
        var outs = Resolve(outputs, countPerRank, "output");
        Distinct(outs, "outputs");
        _counters.CountReduceScatter(RingBytes(1, countPerRank * Size));
        if (countPerRank == 0) return;
        int p = Size;
        long n = countPerRank;
        var stage = new OpenClBuffer[p];
        for (int r = 0; r < p; r++) stage[r] = Stage(r, p * n);

        using var events = new EventSet(p);
        var ready = events.Markers(_ranks);
        for (int r = 0; r < p; r++)
        {
            var q = Queue(r);
            q.Barrier(ready);
            for (int src = 0; src < p; src++) q.Copy(stage[r], ins[src], src * n * 4, r * n * 4, n * 4);
        }
        if (Aliased(outs, ins))
        {
            // An output is also an input: write it only after every rank has taken its slice.
            var gathered = events.Markers(_ranks);
            for (int r = 0; r < p; r++) Queue(r).Barrier(gathered);
        }
        for (int r = 0; r < p; r++) _ranks[r].ReduceRanks(outs[r], 0, stage[r], p, n, n, max: false);
        events.WaitForAll(_ranks, "reduce-scatter");
    }

    public void Broadcast(IReadOnlyList<DeviceBuffer> buffers, long count, int root)
    {
        using var timer = _counters.Time(_ranks);
        var bufs = Resolve(buffers, count, "buffer");
        if ((uint)root >= (uint)Size) throw new ArgumentOutOfRangeException(nameof(root), $"root {root} is outside the group of {Size}");
        Distinct(bufs, "buffers");
        _counters.CountBroadcast(RingBytes(1, count));
        if (Size == 1 || count == 0) return;
        using var events = new EventSet(Size);
        var ready = events.Markers(_ranks);
        for (int r = 0; r < Size; r++)
        {
            if (r == root) continue;
            var q = Queue(r);
            q.Barrier(ready);
            q.Copy(bufs[r], bufs[root], 0, 0, count * 4);
        }
        events.WaitForAll(_ranks, "broadcast");
    }

    // A ring all-reduce sends 2·(P−1)/P of the data per rank; all-gather and reduce-scatter (P−1)/P (as InProcessCollectives).
    long RingBytes(int passes, long count) => passes * 4 * count * (Size - 1) / Size;

    OpenClQueue Queue(int rank) => _ranks[rank].Context.Queue;

    /// <summary>Rank <paramref name="rank"/>'s staging buffer of at least <paramref name="length"/> floats (kept, grown on demand).</summary>
    OpenClBuffer Stage(int rank, long length)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var b = _stage[rank];
        if (b is not null && b.Length >= length) return b;
        b?.Dispose();
        _stage[rank] = null;
        return _stage[rank] = _ranks[rank].Context.CreateBuffer($"collective staging (rank {rank})", Math.Max(length, 1), ElementType.F32);
    }

    OpenClBuffer[] Resolve(IReadOnlyList<DeviceBuffer> buffers, long count, string role)
    {
        if (buffers.Count != Size) throw new ArgumentException($"expected one {role} per rank ({Size}), got {buffers.Count}");
        var context = _ranks[0].Context;
        var result = new OpenClBuffer[Size];
        for (int r = 0; r < Size; r++)
        {
            var b = buffers[r];
            if (b is not OpenClBuffer ocl)
                throw new ArgumentException($"{role} {b.Name} of rank {r} is a {b.GetType().Name}; device-side collectives take buffers of the group's shared OpenCL context");
            if (!ocl.Context.SharesContextWith(context))
                throw new ArgumentException($"{role} {b.Name} of rank {r} belongs to an OpenCL context outside this group's shared context; allocate it on the rank's backend");
            if (ocl.Type != ElementType.F32)
                throw new ArgumentException($"{role} {b.Name} of rank {r} holds {ocl.Type}; collectives combine fp32 values");
            if (b.Length < count) throw new ArgumentException($"buffer {b.Name} holds {b.Length} values, fewer than {count}");
            result[r] = ocl;
        }
        return result;
    }

    static void Distinct(OpenClBuffer[] buffers, string role)
    {
        for (int i = 0; i < buffers.Length; i++)
            for (int j = 0; j < i; j++)
                if (ReferenceEquals(buffers[i], buffers[j]))
                    throw new ArgumentException($"{role} of ranks {j} and {i} are the same buffer {buffers[i].Name}; each rank writes its own");
    }

    static bool Aliased(OpenClBuffer[] outputs, OpenClBuffer[] inputs) => outputs.Any(o => inputs.Any(i => ReferenceEquals(o, i)));

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        for (int r = 0; r < _stage.Length; r++) { _stage[r]?.Dispose(); _stage[r] = null; }
    }

    /// <summary>
    /// The events of one collective: markers enqueued phase by phase on every rank's queue (flushed at once, since a
    /// queue waiting on another's event needs that event's commands submitted), waited for at the end, all released.
    /// </summary>
    sealed class EventSet(int ranks) : IDisposable
    {
        readonly List<nint> _all = new();

        /// <summary>One marker per rank after everything queued so far on it; flushes every queue.</summary>
        public nint[] Markers(OpenClBackend[] backends)
        {
            var markers = new nint[ranks];
            for (int r = 0; r < ranks; r++)
            {
                markers[r] = backends[r].Context.Queue.Marker();
                _all.Add(markers[r]);
            }
            foreach (var b in backends) b.Context.Queue.Flush();
            return markers;
        }

        /// <summary>Marks the end of the collective on every queue and blocks the host until all of them are reached.</summary>
        public void WaitForAll(OpenClBackend[] backends, string what)
        {
            var done = Markers(backends);
            OpenClQueue.WaitFor(done, what);
        }

        public void Dispose()
        {
            foreach (var e in _all) OpenClQueue.Release(e);
            _all.Clear();
        }
    }
}

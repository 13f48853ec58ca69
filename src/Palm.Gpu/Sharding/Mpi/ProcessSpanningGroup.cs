using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Sharding.Mpi;

/// <summary>
/// A group whose ranks live in several processes, L consecutive group ranks in each (process p holds group ranks
/// p·L .. p·L+L−1). Hierarchical, like <see cref="InProcessGroup"/> with one more level: the process's L rank threads
/// meet at a rendezvous, the local leader downloads their buffers, exchanges them with the other processes
/// (one all-gather over <see cref="IProcessGroup"/>, MPI between processes) and every process then combines all
/// P·L contributions itself in group-rank order — widened to double, added rank 0, 1, 2, … and rounded once, exactly
/// <see cref="InProcessCollectives"/>' arithmetic — and uploads the result to its ranks. So a mesh split over any
/// number of processes gives the bits of the in-process mesh of the same shape; the price is that reductions move
/// every contribution (P·L·n values per process) instead of a ring's 2·n.
///
/// Shapes (G = P·L group ranks, n = count):
///   AllReduce      buf (n)        -> buf (n)   = op over the G ranks in rank order
///   AllGather      input (n)      -> output (G·n)
///   ReduceScatter  input (G·n)    -> output (n) = Σ over ranks of block [rank·n, (rank+1)·n)
///   SumHost        values (k)     -> values (k) = 0 + v₀ + v₁ + … in rank order
/// </summary>
internal sealed class ProcessSpanningGroup : IGroupCommunicator
{
    readonly Rendezvous _meeting;
    readonly int _localRank;
    readonly IReadOnlyList<IBackend>? _devices;   // the local ranks' devices in local order; null: host values only
    readonly IProcessGroup _processes;
    readonly CollectiveCounters _counters;

    public ProcessSpanningGroup(Rendezvous meeting, int localRank, IReadOnlyList<IBackend>? devices, IProcessGroup processes, CollectiveCounters counters)
    {
        _meeting = meeting;
        _localRank = localRank;
        _devices = devices;
        _processes = processes;
        _counters = counters;
    }

    int Local => _meeting.Size;
    public int Size => Local * _processes.Count;
    public int Rank => _processes.Index * Local + _localRank;

    IReadOnlyList<IBackend> Devices => _devices ?? throw new InvalidOperationException("this group exchanges host values only");

    long RingBytes(int passes, long count) => passes * 4 * count * (Size - 1) / Size;

    public void AllReduce(DeviceBuffer buffer, long count, ReduceOp op = ReduceOp.Sum)
    {
        _meeting.Meet(_localRank, buffer, slots =>
        {
            using var timer = _counters.Time(Devices);
            _counters.CountAllReduce(RingBytes(2, count));
            var all = Exchange(slots.Select(s => (DeviceBuffer)s!).ToArray(), count);
            var acc = new double[count];
            var result = new float[count];
            for (int r = 0; r < Size; r++)
            {
                var x = all.AsSpan((int)(r * count), (int)count);
                if (r == 0) HostMath.Widen(x, acc);
                else if (op == ReduceOp.Sum) HostMath.AddWidened(acc, x);
                else for (int i = 0; i < x.Length; i++) acc[i] = Math.Max(acc[i], x[i]);
            }
            HostMath.Narrow(acc, result);
            for (int l = 0; l < Local; l++) Devices[l].Upload((DeviceBuffer)slots[l]!, result);
        });
    }

    public void AllGather(DeviceBuffer output, DeviceBuffer input, long countPerRank)
    {
        _meeting.Meet(_localRank, (output, input), slots =>
        {
            using var timer = _counters.Time(Devices);
            _counters.CountAllGather(RingBytes(1, countPerRank * Size));
            var pairs = slots.Select(s => ((DeviceBuffer, DeviceBuffer))s!).ToArray();
            var all = Exchange(pairs.Select(p => p.Item2).ToArray(), countPerRank);
            for (int l = 0; l < Local; l++) Devices[l].Upload(pairs[l].Item1, all);
        });
    }

    public void ReduceScatter(DeviceBuffer output, DeviceBuffer input, long countPerRank)
    {
        _meeting.Meet(_localRank, (output, input), slots =>
        {
            using var timer = _counters.Time(Devices);
            _counters.CountReduceScatter(RingBytes(1, countPerRank * Size));
            var pairs = slots.Select(s => ((DeviceBuffer, DeviceBuffer))s!).ToArray();
            long total = countPerRank * Size;
            var all = Exchange(pairs.Select(p => p.Item2).ToArray(), total);
            var acc = new double[countPerRank];
            var result = new float[countPerRank];
            for (int l = 0; l < Local; l++)
            {
                long block = (long)Rank - _localRank + l;   // this local rank's group rank: its block of every input
                for (int r = 0; r < Size; r++)
                {
                    var x = all.AsSpan((int)(r * total + block * countPerRank), (int)countPerRank);
                    if (r == 0) HostMath.Widen(x, acc);
                    else HostMath.AddWidened(acc, x);
                }
                HostMath.Narrow(acc, result);
                Devices[l].Upload(pairs[l].Item1, result);
            }
        });
    }

    public void SumHost(Span<double> values)
    {
        var mine = values.ToArray();
        _meeting.Meet(_localRank, mine, slots =>
        {
            int k = mine.Length;
            var local = new double[Local * k];
            for (int l = 0; l < Local; l++)
            {
                var v = (double[])slots[l]!;
                if (v.Length != k) throw new InvalidOperationException($"SumHost: ranks passed {v.Length} and {k} values");
                v.CopyTo(local, l * k);
            }
            var all = new double[Size * k];
            _processes.AllGather<double>(local, all);
            var total = new double[k];
            for (int r = 0; r < Size; r++)
                for (int i = 0; i < k; i++) total[i] += all[r * k + i];
            for (int l = 0; l < Local; l++) total.CopyTo((double[])slots[l]!, 0);
        });
        mine.CopyTo(values);
    }

    /// <summary>The first n values of every local buffer, exchanged: all (G·n), block r = group rank r's.</summary>
    float[] Exchange(DeviceBuffer[] buffers, long n)
    {
        var local = new float[Local * n];
        for (int l = 0; l < Local; l++) Devices[l].Download(buffers[l], local.AsSpan((int)(l * n), (int)n));
        var all = new float[Size * n];
        _processes.AllGather<float>(local, all);
        return all;
    }
}

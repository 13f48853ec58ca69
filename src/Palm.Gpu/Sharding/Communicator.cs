using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Sharding;

/// <summary>
/// One rank's handle on a group of ranks (its row or column of a mesh, or the whole mesh), SPMD style: every rank
/// of the group makes the same calls in the same order, each with its own buffer, as ranks under MPI or NCCL do.
/// This is the only coupling between ranks; the model code never sees another rank's buffers.
///
/// Shapes (P = group size, n = count):
///   AllReduce      buf (n)           -> buf (n) = op over the group's buffers
///   AllGather      input (n)         -> output (P·n), block r = rank r's input
///   ReduceScatter  input (P·n)       -> output (n) = Σ over ranks of their input block [rank·n, (rank+1)·n)
///   SumHost        values (k)        -> values (k) = Σ over ranks in rank order, identical on every rank
///
/// Reductions add ranks in rank order, never in arrival order, so results are the same bits on every run.
/// </summary>
public interface IGroupCommunicator
{
    /// <summary>Ranks in the group.</summary>
    int Size { get; }
    /// <summary>This rank's index within the group.</summary>
    int Rank { get; }
    void AllReduce(DeviceBuffer buffer, long count, ReduceOp op = ReduceOp.Sum);
    void AllGather(DeviceBuffer output, DeviceBuffer input, long countPerRank);
    void ReduceScatter(DeviceBuffer output, DeviceBuffer input, long countPerRank);
    /// <summary>Host values (scalars such as loss sums and per-tensor norms) summed over the group in rank order.</summary>
    void SumHost(Span<double> values);
}

/// <summary>
/// In-process group: the ranks are threads of one process. Each call is a rendezvous — every rank leaves its
/// buffer in a slot, the group's rank 0 runs the whole collective over all slots with the group's
/// <see cref="ICollectives"/> (host staging or device copies), and everyone leaves together. A group of one
/// returns at once, so one device pays nothing for the model's communication points.
/// </summary>
public sealed class InProcessGroup : IGroupCommunicator
{
    readonly Rendezvous _meeting;
    readonly ICollectives? _collectives;

    internal InProcessGroup(Rendezvous meeting, int rank, ICollectives? collectives)
    {
        _meeting = meeting;
        Rank = rank;
        _collectives = collectives;
    }

    public int Size => _meeting.Size;
    public int Rank { get; }

    ICollectives Collectives => _collectives ?? throw new InvalidOperationException("this group exchanges host values only");

    public void AllReduce(DeviceBuffer buffer, long count, ReduceOp op = ReduceOp.Sum)
    {
        if (Size == 1) { Collectives.AllReduce([buffer], count, op); return; }
        _meeting.Meet(Rank, buffer, slots => Collectives.AllReduce(Buffers(slots), count, op));
    }

    public void AllGather(DeviceBuffer output, DeviceBuffer input, long countPerRank)
    {
        if (Size == 1) { Collectives.AllGather([output], [input], countPerRank); return; }
        _meeting.Meet(Rank, (output, input), slots =>
            Collectives.AllGather(slots.Select(s => ((ValueTuple<DeviceBuffer, DeviceBuffer>)s!).Item1).ToArray(),
                                  slots.Select(s => ((ValueTuple<DeviceBuffer, DeviceBuffer>)s!).Item2).ToArray(), countPerRank));
    }

    public void ReduceScatter(DeviceBuffer output, DeviceBuffer input, long countPerRank)
    {
        if (Size == 1) { Collectives.ReduceScatter([output], [input], countPerRank); return; }
        _meeting.Meet(Rank, (output, input), slots =>
            Collectives.ReduceScatter(slots.Select(s => ((ValueTuple<DeviceBuffer, DeviceBuffer>)s!).Item1).ToArray(),
                                      slots.Select(s => ((ValueTuple<DeviceBuffer, DeviceBuffer>)s!).Item2).ToArray(), countPerRank));
    }

    public void SumHost(Span<double> values)
    {
        if (Size == 1) return;
        var mine = values.ToArray();
        double[] total = [];
        _meeting.Meet(Rank, mine, slots =>
        {
            total = new double[mine.Length];
            foreach (var s in slots)
            {
                var v = (double[])s!;
                if (v.Length != total.Length) throw new InvalidOperationException($"SumHost: ranks passed {v.Length} and {total.Length} values");
                for (int i = 0; i < v.Length; i++) total[i] += v[i];
            }
            for (int i = 0; i < slots.Length; i++) total.CopyTo((double[])slots[i]!, 0);
        });
        mine.CopyTo(values);
    }

    static DeviceBuffer[] Buffers(object?[] slots) => slots.Select(s => (DeviceBuffer)s!).ToArray();
}

/// <summary>
/// The meeting point of one group's threads. Meet: leave a payload, wait for all, rank 0 acts on every payload,
/// wait again. Waits observe the run's cancellation, so a rank that fails releases the others instead of
/// leaving them blocked forever.
/// </summary>
internal sealed class Rendezvous
{
    readonly SpmdRunner _runner;
    readonly object?[] _slots;
    Barrier _barrier;

    public Rendezvous(SpmdRunner runner, int size)
    {
        _runner = runner;
        _slots = new object?[size];
        _barrier = new Barrier(size);
        runner.Register(this);
    }

    public int Size => _slots.Length;

    public void Meet(int rank, object payload, Action<object?[]> leader)
    {
        var token = _runner.Token;
        _slots[rank] = payload;
        _barrier.SignalAndWait(token);
        try
        {
            if (rank == 0) leader(_slots);
        }
        finally
        {
            // The leader's failure is reported by the runner; the others must still be let go.
            _barrier.SignalAndWait(token);
        }
    }

    /// <summary>After a failed run the barrier's phase is undefined: start a fresh one.</summary>
    internal void Reset()
    {
        _barrier.Dispose();
        _barrier = new Barrier(_slots.Length);
        Array.Clear(_slots);
    }
}

/// <summary>
/// Runs one body per rank, each on its own thread, and waits for all (the SPMD launch). One rank runs inline on
/// the caller's thread. If a rank throws, the run is cancelled — ranks waiting in a collective wake with
/// <see cref="OperationCanceledException"/> — and the first real exception is rethrown on the caller.
/// </summary>
public sealed class SpmdRunner
{
    readonly List<Rendezvous> _meetings = [];
    CancellationTokenSource _cts = new();
    bool _broken;

    public SpmdRunner(int ranks)
    {
        if (ranks < 1) throw new ArgumentOutOfRangeException(nameof(ranks), $"a run needs at least one rank, got {ranks}");
        Ranks = ranks;
    }

    public int Ranks { get; }
    internal CancellationToken Token => _cts.Token;
    internal void Register(Rendezvous r) => _meetings.Add(r);

    public void Run(Action<int> body)
    {
        if (_broken)
        {
            _cts.Dispose();
            _cts = new CancellationTokenSource();
            foreach (var m in _meetings) m.Reset();
            _broken = false;
        }
        if (Ranks == 1) { body(0); return; }
        var errors = new Exception?[Ranks];
        var threads = new Thread[Ranks];
        for (int r = 0; r < Ranks; r++)
        {
            int rank = r;
            threads[r] = new Thread(() =>
            {
                try { body(rank); }
                catch (Exception e)
                {
                    errors[rank] = e;
                    try { _cts.Cancel(); } catch (ObjectDisposedException) { }
                }
            }, maxStackSize: 16 << 20) { IsBackground = true, Name = $"palm-rank-{rank}" };
            threads[r].Start();
        }
        foreach (var t in threads) t.Join();
        if (errors.All(e => e is null)) return;
        _broken = true;
        var first = errors.FirstOrDefault(e => e is not null and not OperationCanceledException) ?? errors.First(e => e is not null)!;
        System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(first).Throw();
    }
}

/// <summary>
/// What one rank of a mesh knows: its device, its coordinates (data index d, model index m of a D × M mesh) and
/// its three groups — the model group (same d: tensor-parallel shards of one replica), the data group (same m:
/// replicas, or slices when fully sharded) and the world (every rank, host values only). One device is the
/// 1 × 1 case, whose groups are all of size one.
/// </summary>
public sealed class RankContext
{
    public RankContext(IBackend backend, int dataRank, int modelRank, int dataSize, int modelSize,
                       IGroupCommunicator modelGroup, IGroupCommunicator dataGroup, IGroupCommunicator world)
    {
        Backend = backend;
        DataRank = dataRank;
        ModelRank = modelRank;
        DataSize = dataSize;
        ModelSize = modelSize;
        ModelGroup = modelGroup;
        DataGroup = dataGroup;
        World = world;
    }

    /// <summary>A lone device: a 1 × 1 mesh of its own.</summary>
    public static RankContext Single(IBackend backend)
    {
        var runner = new SpmdRunner(1);
        var counters = new CollectiveCounters();
        IGroupCommunicator Solo(bool buffers) => new InProcessGroup(new Rendezvous(runner, 1), 0, buffers ? new InProcessCollectives([backend], counters) : null);
        return new RankContext(backend, 0, 0, 1, 1, Solo(true), Solo(true), Solo(false));
    }

    public IBackend Backend { get; }
    public int DataRank { get; }
    public int ModelRank { get; }
    public int DataSize { get; }
    public int ModelSize { get; }
    public IGroupCommunicator ModelGroup { get; }
    public IGroupCommunicator DataGroup { get; }
    public IGroupCommunicator World { get; }
}

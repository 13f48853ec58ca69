namespace Palm.Gpu.Backends;

/// <summary>Which part of a training step a kernel call belongs to (set by the caller before each part).</summary>
public enum ProfilePhase { Forward, Backward, Optimizer, Collectives, Other }

/// <summary>Accumulated cost of one kernel in one phase.</summary>
internal sealed class OpStats
{
    public long Calls { get; internal set; }
    public double Seconds { get; internal set; }
    public double Flops { get; internal set; }
    public double Bytes { get; internal set; }
}

/// <summary>One row of a profile: kernel × phase.</summary>
public sealed record OpProfile(string Kernel, ProfilePhase Phase, long Calls, double Seconds, double Flops, double Bytes)
{
    public double Gflops => Seconds > 0 ? Flops / Seconds / 1e9 : 0;
    public double GBps => Seconds > 0 ? Bytes / Seconds / 1e9 : 0;
}

/// <summary>
/// Per kernel and <see cref="Phase"/>: calls, seconds, FLOPs and bytes (counted by <see cref="OpCosts"/>). Attached to
/// a backend with <see cref="IBackend.Profiler"/>, which then synchronises before and after every public call and
/// records it here; detached, the backend records nothing and does not synchronise. Timing serialises an asynchronous
/// backend, so throughput is measured with no profiler attached and the profile says where the time goes. Several
/// backends (the ranks of a mesh) may share one profiler: recording is locked.
/// </summary>
public sealed class BackendProfiler
{
    readonly Dictionary<(string Kernel, ProfilePhase Phase), OpStats> stats = [];

    /// <summary>The phase the next calls are attributed to.</summary>
    public ProfilePhase Phase { get; set; } = ProfilePhase.Other;

    /// <summary>Forgets every measurement.</summary>
    public void Reset()
    {
        lock (stats) stats.Clear();
    }

    /// <summary>Adds one measurement under the current phase.</summary>
    public void Record(in OpCost cost, double seconds) => Record(cost.Kernel, Phase, seconds, cost.Flops, cost.Bytes);

    /// <summary>Adds a measurement taken outside the kernel contract (e.g. a collective), under the given phase.</summary>
    public void Record(string kernel, ProfilePhase phase, double seconds, double flops = 0, double bytes = 0)
    {
        lock (stats)
        {
            if (!stats.TryGetValue((kernel, phase), out var s)) stats[(kernel, phase)] = s = new OpStats();
            s.Calls++;
            s.Seconds += seconds;
            s.Flops += flops;
            s.Bytes += bytes;
        }
    }

    /// <summary>Every (kernel, phase) measured so far, by phase then by time, largest first.</summary>
    public IReadOnlyList<OpProfile> Snapshot()
    {
        lock (stats)
            return [.. stats.Select(kv => new OpProfile(kv.Key.Kernel, kv.Key.Phase, kv.Value.Calls, kv.Value.Seconds, kv.Value.Flops, kv.Value.Bytes))
                            .OrderBy(p => p.Phase).ThenByDescending(p => p.Seconds).ThenBy(p => p.Kernel, StringComparer.Ordinal)];
    }
}

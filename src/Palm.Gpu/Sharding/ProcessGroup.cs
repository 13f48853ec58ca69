using System.Runtime.InteropServices;

namespace Palm.Gpu.Sharding;

/// <summary>
/// The processes of a multi-process job (one per machine or per GPU, launched by mpiexec or srun), or a subset
/// of them with a channel of its own. Every member makes the same calls in the same order (SPMD), like the ranks
/// of <see cref="IGroupCommunicator"/>; a mesh that spans processes is built on these (Sharding/Mpi).
///
/// Shapes (P = Count):
///   AllGather  mine (n bytes)  -> all (P·n bytes), block p = process p's mine
/// </summary>
public interface IProcessGroup
{
    /// <summary>Processes in the group.</summary>
    int Count { get; }
    /// <summary>This process's index (0 .. Count−1); 0 is the leader that logs and writes shared files.</summary>
    int Index { get; }
    bool IsLeader => Index == 0;
    /// <summary>Processes of the group on this machine (this one included): they share its cores.</summary>
    int OnThisMachine { get; }
    void AllGather(ReadOnlySpan<byte> mine, Span<byte> all);
    /// <summary>A new group of the same processes with a channel of its own, so different threads can run collectives on each at once.</summary>
    IProcessGroup Duplicate();
    /// <summary>"process 1 (pid 4242 on node3)", for messages.</summary>
    string Describe(int process);
}

/// <summary>Helpers over <see cref="IProcessGroup"/>: typed gathers, variable-size gathers, agreement and barriers.</summary>
public static class ProcessGroups
{
    /// <summary>
    /// The job's processes when palm was launched as several (set once at start-up by the CLI); null for a plain
    /// single process, which never loads MPI.
    /// </summary>
    public static IProcessGroup? World { get; set; }

    /// <summary>
    /// Marks an error that every process of the job raises alike: decided from the shared command line, the job's
    /// shape or an <see cref="Agree"/> result. The CLI then holds each process at a barrier until process 0 has
    /// reported it, since the launcher kills the others as soon as one process exits with an error.
    /// </summary>
    public static T JobWide<T>(T error) where T : Exception
    {
        error.Data[JobWideKey] = true;
        return error;
    }

    /// <summary>Whether <paramref name="error"/> was raised alike by every process (<see cref="JobWide"/>).</summary>
    public static bool IsJobWide(Exception error) => error.Data[JobWideKey] is true;

    const string JobWideKey = "palm.job-wide";

    public static void AllGather<T>(this IProcessGroup g, ReadOnlySpan<T> mine, Span<T> all) where T : unmanaged =>
        g.AllGather(MemoryMarshal.AsBytes(mine), MemoryMarshal.AsBytes(all));

    /// <summary>Every process's byte string, in process order (sizes may differ).</summary>
    public static byte[][] AllGatherVariable(this IProcessGroup g, ReadOnlySpan<byte> mine)
    {
        var lengths = new long[g.Count];
        g.AllGather<long>([mine.Length], lengths);
        long max = lengths.Max();
        var padded = new byte[max];
        mine.CopyTo(padded);
        var all = new byte[max * g.Count];
        g.AllGather(padded, all);
        return Enumerable.Range(0, g.Count).Select(p => all.AsSpan((int)(p * max), (int)lengths[p]).ToArray()).ToArray();
    }

    /// <summary>Waits for every process.</summary>
    public static void Barrier(this IProcessGroup g) => g.AllGather<byte>([0], new byte[g.Count]);

    /// <summary>
    /// Collective agreement on a step that may fail on some processes only: each passes its own problem (null when
    /// fine); every process gets the first problem in process order, prefixed with the process, or null when all succeeded.
    /// </summary>
    public static string? Agree(this IProcessGroup g, string? problem)
    {
        var all = g.AllGatherVariable(problem is null ? [] : System.Text.Encoding.UTF8.GetBytes("\u0001" + problem));
        for (int p = 0; p < all.Length; p++)
            if (all[p].Length > 0) return g.Count == 1 ? System.Text.Encoding.UTF8.GetString(all[p], 1, all[p].Length - 1)
                                                       : $"{g.Describe(p)}: {System.Text.Encoding.UTF8.GetString(all[p], 1, all[p].Length - 1)}";
        return null;
    }

    /// <summary>Process 0's bytes on every process.</summary>
    public static byte[] FromLeader(this IProcessGroup g, ReadOnlySpan<byte> mine) => g.AllGatherVariable(g.IsLeader ? mine : [])[0];
}

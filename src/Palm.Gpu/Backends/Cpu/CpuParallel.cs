namespace Palm.Gpu.Backends.Cpu;

/// <summary>
/// Deterministic parallel loops. Work is partitioned by index, never by timing: each index is
/// processed by exactly one worker and every reduction is done in a fixed order afterwards, so
/// results are the same bits for any thread count.
/// </summary>
internal static class CpuParallel
{
    /// <summary>Runs body(i) for i in [0, count) on up to <paramref name="threads"/> threads.</summary>
    public static void For(int threads, int count, Action<int> body)
    {
        if (count <= 0) return;
        if (threads <= 1 || count == 1)
        {
            for (int i = 0; i < count; i++) body(i);
            return;
        }
        // Each worker claims one index at a time. Parallel.For over the indices themselves hands out ranges, and a worker
        // that joined late found the caller had taken most of a short loop: the small preset's attention backward (4
        // equal items) took 3/4 of its one-thread time on 2 threads.
        int workers = Math.Min(threads, count), next = -1;
        Parallel.For(0, workers, new ParallelOptions { MaxDegreeOfParallelism = workers }, _ =>
        {
            for (int i; (i = Interlocked.Increment(ref next)) < count;) body(i);
        });
    }

    /// <summary>Splits [0, total) into fixed-size chunks (independent of the thread count) and runs body(start, end) per chunk.</summary>
    public static void ForChunks(int threads, long total, long chunk, Action<long, long> body)
    {
        if (total <= 0) return;
        int chunks = (int)((total + chunk - 1) / chunk);
        For(threads, chunks, c =>
        {
            long start = c * chunk;
            body(start, Math.Min(total, start + chunk));
        });
    }
}

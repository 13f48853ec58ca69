using System.Diagnostics;
using System.Runtime.ExceptionServices;

namespace Palm.Gpu.Backends.Cpu;

/// <summary>
/// Deterministic parallel loops. Work is partitioned by index, never by timing: each index is
/// processed by exactly one worker and every reduction is done in a fixed order afterwards, so
/// results are the same bits for any thread count.
/// </summary>
/// <remarks>
/// The loops run on a team of worker threads that stay awake for <see cref="SpinSeconds"/> after a loop ends, as
/// OpenBLAS's and OpenMP's threads do: a step is hundreds of loops back to back, and a worker that went to sleep
/// between them has to be woken by the OS, and under a hypervisor its idle vCPU by the host. On a loaded Zen 3 VM
/// (2 vCPUs), against the thread pool's workers in the same process: 512×2048×2048 ᵀA mean call 102.5 → 118.6 GFLOP/s,
/// the fused 2048×4736×512 139.8 → 147.4, and `palm bench --preset small` 965 → 1,040 tokens/s over 7 alternating
/// pairs. A loop started while the team is busy (nested in another, or a second device of a mesh on its own thread)
/// runs on the thread pool instead.
/// </remarks>
internal static class CpuParallel
{
    /// <summary>How long an idle worker keeps looking for the next loop before it blocks (yielding to other threads meanwhile).</summary>
    internal const double SpinSeconds = 0.005;

    /// <summary>Runs body(i) for i in [0, count) on up to <paramref name="threads"/> threads.</summary>
    public static void For(int threads, int count, Action<int> body)
    {
        if (count <= 0) return;
        if (threads <= 1 || count == 1)
        {
            for (int i = 0; i < count; i++) body(i);
            return;
        }
        int workers = Math.Min(threads, count);
        if (Team.TryRun(workers, count, body)) return;
        // Each worker claims one index at a time. Parallel.For over the indices themselves hands out ranges, and a worker
        // that joined late found the caller had taken most of a short loop: the small preset's attention backward (4
        // equal items) took 3/4 of its one-thread time on 2 threads.
        int next = -1;
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

    /// <summary>
    /// The process's worker threads (grown to the most a loop has asked for, less the caller, who works too). One loop at a
    /// time: the caller publishes it, the workers it needs claim indices with the caller, and the caller returns when they
    /// have all left it. An exception stops further claims and is rethrown to the caller.
    /// </summary>
    sealed class Team
    {
        static readonly Team Shared = new();
        int _busy;                      // 1 while a caller owns the team
        int _started;                   // worker threads so far (workers 0 .. _started − 1)
        readonly object _wake = new();  // sleeping workers wait on it
        int _sleepers;
        Loop? _loop;                    // the latest loop; a new object for each, so a worker can tell them apart

        /// <summary>One loop: its body and counters. Workers 0 .. Helpers − 1 take part in it.</summary>
        sealed class Loop(Action<int> body, int count, int helpers)
        {
            public Action<int>? Body = body;
            public readonly int Count = count, Helpers = helpers;
            public int Next = -1, Left = helpers;
            public Exception? Error;

            public void Claim()
            {
                var body = Body!;
                try
                {
                    for (int i; (i = Interlocked.Increment(ref Next)) < Count;) body(i);
                }
                catch (Exception e)
                {
                    Interlocked.CompareExchange(ref Error, e, null);
                    Volatile.Write(ref Next, Count);   // the others stop at their next claim
                }
            }
        }

        public static bool TryRun(int workers, int count, Action<int> body)
        {
            var team = Shared;
            if (Interlocked.CompareExchange(ref team._busy, 1, 0) != 0) return false;
            try
            {
                team.Run(workers - 1, count, body);
                return true;
            }
            finally
            {
                Volatile.Write(ref team._busy, 0);
            }
        }

        void Run(int helpers, int count, Action<int> body)
        {
            for (; _started < helpers; _started++)
            {
                int index = _started;
                new Thread(() => Work(index)) { IsBackground = true, Name = $"palm-cpu-{index + 1}" }.Start();
            }
            var loop = new Loop(body, count, helpers);
            Interlocked.Exchange(ref _loop, loop);
            if (Volatile.Read(ref _sleepers) > 0) lock (_wake) Monitor.PulseAll(_wake);

            loop.Claim();
            var spin = new SpinWait();
            while (Volatile.Read(ref loop.Left) > 0) spin.SpinOnce(sleep1Threshold: -1);
            loop.Body = null;   // the workers are done with it: let the closure go
            if (loop.Error is { } e) ExceptionDispatchInfo.Capture(e).Throw();
        }

        void Work(int index)
        {
            Loop? seen = null;
            while (true)
            {
                // Spin (yielding the core to any other runnable thread) for the next loop, then sleep until one comes.
                var loop = Volatile.Read(ref _loop);
                if (loop == seen)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    var spin = new SpinWait();
                    while ((loop = Volatile.Read(ref _loop)) == seen && Stopwatch.GetElapsedTime(t0).TotalSeconds < SpinSeconds)
                        spin.SpinOnce(sleep1Threshold: -1);
                    if (loop == seen)
                    {
                        lock (_wake)
                        {
                            Interlocked.Increment(ref _sleepers);
                            while ((loop = Volatile.Read(ref _loop)) == seen) Monitor.Wait(_wake);
                            Interlocked.Decrement(ref _sleepers);
                        }
                    }
                }
                seen = loop;
                if (index >= loop!.Helpers) continue;   // this loop needs fewer workers
                loop.Claim();
                Interlocked.Decrement(ref loop.Left);
            }
        }
    }
}

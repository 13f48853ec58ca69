using Palm.Gpu.Backends.Cpu;
using Xunit;

namespace Palm.Gpu.Tests.Backends;

/// <summary>The CPU backend's parallel loops: every index exactly once at any thread count, errors reach the caller.</summary>
public class CpuParallelTests
{
    [Theory]
    [InlineData(1, 0)]
    [InlineData(1, 7)]
    [InlineData(2, 1)]
    [InlineData(2, 4)]
    [InlineData(2, 1000)]
    [InlineData(3, 5)]
    [InlineData(8, 3)]
    public void For_runs_every_index_once(int threads, int count)
    {
        var visits = new int[count];
        CpuParallel.For(threads, count, i => Interlocked.Increment(ref visits[i]));
        Assert.All(visits, v => Assert.Equal(1, v));
    }

    [Theory]
    [InlineData(1, 0, 8)]
    [InlineData(2, 100, 8)]
    [InlineData(2, 64, 64)]
    [InlineData(3, 1, 8)]
    public void ForChunks_covers_the_range_in_fixed_chunks(int threads, long total, long chunk)
    {
        var covered = new int[total];
        var bounds = new System.Collections.Concurrent.ConcurrentBag<(long, long)>();
        CpuParallel.ForChunks(threads, total, chunk, (s, e) =>
        {
            bounds.Add((s, e));
            for (long i = s; i < e; i++) Interlocked.Increment(ref covered[i]);
        });
        Assert.All(covered, v => Assert.Equal(1, v));
        Assert.All(bounds, b => Assert.True(b.Item1 % chunk == 0 && b.Item2 == Math.Min(total, b.Item1 + chunk), $"chunk {b}"));
    }

    [Fact]
    public void An_exception_in_the_body_reaches_the_caller()
    {
        var e = Assert.ThrowsAny<Exception>(() => CpuParallel.For(2, 10, i => { if (i == 7) throw new InvalidOperationException("item 7"); }));
        var inner = e is AggregateException a ? a.Flatten().InnerExceptions.Single() : e;
        Assert.Equal("item 7", inner.Message);
    }

    [Fact]
    public void After_an_exception_the_next_loops_run_every_index_once()
    {
        Assert.ThrowsAny<Exception>(() => CpuParallel.For(2, 10, i => { if (i == 3) throw new InvalidOperationException("item 3"); }));
        // Loops of different widths in turn: a worker the last loop did not need must not take part in a later one twice.
        foreach (var (threads, count) in new[] { (8, 3), (2, 1000), (8, 100), (3, 2), (2, 50) })
            for (int rep = 0; rep < 20; rep++)
            {
                var visits = new int[count];
                CpuParallel.For(threads, count, i => Interlocked.Increment(ref visits[i]));
                Assert.All(visits, v => Assert.Equal(1, v));
            }
    }

    [Fact]
    public void Loops_nested_or_from_several_threads_at_once_run_every_index_once()
    {
        // One loop holds the worker team; a loop started inside it, or beside it on another thread, runs on the thread pool.
        var nested = new int[6 * 40];
        CpuParallel.For(2, 6, i => CpuParallel.For(2, 40, j => Interlocked.Increment(ref nested[i * 40 + j])));
        Assert.All(nested, v => Assert.Equal(1, v));

        var side = Enumerable.Range(0, 4).Select(_ => new int[500]).ToArray();
        Parallel.For(0, side.Length, new ParallelOptions { MaxDegreeOfParallelism = side.Length }, t =>
        {
            for (int rep = 0; rep < 20; rep++)
                CpuParallel.For(2, side[t].Length / 20, i => Interlocked.Increment(ref side[t][rep * (side[t].Length / 20) + i]));
        });
        Assert.All(side, a => Assert.All(a, v => Assert.Equal(1, v)));
    }
}

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
}

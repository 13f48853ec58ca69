using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Ilgpu;
using Palm.Gpu.Sharding;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Palm.Gpu.Tensors;
using Xunit;

namespace Palm.Gpu.Tests.Ilgpu;

/// <summary>
/// Device collectives between two and three ILGPU CPU accelerators give the host collectives' bits (sums in rank
/// order in double, rounded once) for every kind, odd lengths included, and refuse groups they cannot serve.
/// </summary>
public class IlgpuCollectivesTests
{
    static IlgpuBackend[] Open(int count) => [.. Enumerable.Range(0, count).Select(_ => new IlgpuBackend(IlgpuDevices.SimulatorIndex))];

    static DeviceBuffer[] Put(IlgpuBackend[] ranks, int seed, long length)
    {
        var list = new DeviceBuffer[ranks.Length];
        for (int r = 0; r < ranks.Length; r++)
        {
            list[r] = ranks[r].Allocate($"x{r}", length);
            var x = TestData.Uniform(seed + r, (int)length, 1e3f);   // wide range: a different order or rounding shows
            ranks[r].Upload(list[r], x);
        }
        return list;
    }

    static float[][] Get(IlgpuBackend[] ranks, DeviceBuffer[] buffers) => [.. ranks.Select((b, r) => b.ToHost(buffers[r]))];

    static void Same(float[][] host, float[][] device, string what)
    {
        for (int r = 0; r < host.Length; r++) Bits.AssertIdentical(host[r], device[r], $"{what}: rank {r}");
    }

    [Theory]
    [InlineData(2, 1001)]
    [InlineData(3, 77)]
    public void Every_collective_gives_the_host_bits(int size, int n)
    {
        var ranks = Open(size);
        try
        {
            var counters = new CollectiveCounters();
            var device = new IlgpuCollectives(ranks, counters);
            var host = new InProcessCollectives(ranks, new CollectiveCounters());
            foreach (var op in new[] { ReduceOp.Sum, ReduceOp.Max })
            {
                var a = Put(ranks, 10, n); var b = Put(ranks, 10, n);
                host.AllReduce(a, n, op);
                device.AllReduce(b, n, op);
                Same(Get(ranks, a), Get(ranks, b), $"all-reduce {op}");
            }
            {
                var inA = Put(ranks, 20, (long)n * size); var inB = Put(ranks, 20, (long)n * size);
                var outA = Put(ranks, 30, n); var outB = Put(ranks, 30, n);
                host.ReduceScatter(outA, inA, n);
                device.ReduceScatter(outB, inB, n);
                Same(Get(ranks, outA), Get(ranks, outB), "reduce-scatter");
            }
            {
                var inA = Put(ranks, 40, n);
                var outA = Put(ranks, 50, (long)n * size); var outB = Put(ranks, 50, (long)n * size);
                host.AllGather(outA, inA, n);
                device.AllGather(outB, inA, n);
                Same(Get(ranks, outA), Get(ranks, outB), "all-gather");
            }
            {
                var a = Put(ranks, 60, n); var b = Put(ranks, 60, n);
                host.Broadcast(a, n, size - 1);
                device.Broadcast(b, n, size - 1);
                Same(Get(ranks, a), Get(ranks, b), "broadcast");
            }
            Assert.Equal(2, counters.AllReduce);
            Assert.Equal(1, counters.ReduceScatter);
        }
        finally { foreach (var r in ranks) r.Dispose(); }
    }

    [Fact]
    public void Groups_they_cannot_serve_are_refused()
    {
        using var one = new IlgpuBackend(IlgpuDevices.SimulatorIndex);
        using var cpu = BackendRegistry.Create("cpu", 0, 1);
        Assert.Contains("twice", IlgpuCollectives.WhyNot([one, one]));
        Assert.Contains("cpu backend", IlgpuCollectives.WhyNot([one, cpu]));
        Assert.Throws<ArgumentException>(() => new IlgpuCollectives([one, one], new CollectiveCounters()));
        Assert.Null(BackendRegistry.Get("ilgpu").WhyNoDeviceCollectives(2));
    }
}

using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Sharding;
using Palm.Gpu.Tensors;
using Palm.Gpu.Tests.OpenCl;
using Xunit;

namespace Palm.Gpu.Tests.Sharding;

/// <summary>
/// Groups of 2, 3 and 4 OpenCL devices in one shared context (PoCL pthread devices), each driven once by the
/// device-side collectives and once by the host collectives over the very same backends and buffers. Built once
/// for the class: a group compiles one small program per device.
/// </summary>
public sealed class SharedContextGroups : IDisposable
{
    readonly Dictionary<int, Group> groups = new();

    public sealed class Group(OpenClBackend[] ranks)
    {
        public OpenClBackend[] Ranks { get; } = ranks;
        public CollectiveCounters DeviceCounters { get; } = new();
        public CollectiveCounters HostCounters { get; } = new();
        public OpenClCollectives Device => device ??= new OpenClCollectives(Ranks, DeviceCounters);
        public InProcessCollectives Host => host ??= new InProcessCollectives(Ranks, HostCounters);
        OpenClCollectives? device;
        InProcessCollectives? host;

        public void Dispose()
        {
            device?.Dispose();
            foreach (var r in Ranks) r.Dispose();
        }
    }

    public Group Of(int ranks)
    {
        if (groups.TryGetValue(ranks, out var g)) return g;
        var views = OpenClContext.CreateShared(OpenClTestDevices.OnOnePlatform(ranks));
        return groups[ranks] = new Group(views.Select(v => new OpenClBackend(v)).ToArray());
    }

    public void Dispose()
    {
        foreach (var g in groups.Values) g.Dispose();
    }
}

/// <summary>
/// Device-side collectives (OpenClCollectives) against the host ones (InProcessCollectives): for every collective,
/// group size and odd count, the same bits on every rank, equal to a double-precision reference rounded once, with
/// inputs spanning twelve decades so that a float sum in another order would differ; the values past the count
/// untouched; outputs that alias inputs handled like the host does; no byte through the host; counters equal; bad
/// arguments refused with a message naming the problem.
/// </summary>
[Collection(OpenClCollection.Name)]
public class OpenClCollectivesTests(OpenClFixture fx, SharedContextGroups groups) : IClassFixture<SharedContextGroups>
{
    public static TheoryData<int, int> Sizes()
    {
        var data = new TheoryData<int, int>();
        foreach (int p in new[] { 2, 3, 4 })
            foreach (int n in new[] { 1, 7, 1001 })
                data.Add(p, n);
        return data;
    }

    /// <summary>Seeded values whose magnitudes span 1e-6 .. 1e6 with both signs, so float sums depend on order.</summary>
    static float[] Values(int seed, long n, int extra = 0)
    {
        var rng = new Random(seed);
        var x = new float[n + extra];
        for (long i = 0; i < x.Length; i++)
            x[i] = (float)((rng.Next(2) == 0 ? -1 : 1) * Math.Pow(10, rng.NextDouble() * 12 - 6) * (1 + rng.NextDouble()));
        return x;
    }

    static DeviceBuffer[] Upload(SharedContextGroups.Group g, float[][] data, string name)
    {
        var buffers = new DeviceBuffer[data.Length];
        for (int r = 0; r < data.Length; r++)
        {
            buffers[r] = g.Ranks[r].Allocate($"{name}{r}", data[r].Length);
            g.Ranks[r].Upload(buffers[r], data[r]);
        }
        return buffers;
    }

    static float[][] Download(SharedContextGroups.Group g, DeviceBuffer[] buffers)
    {
        var result = new float[buffers.Length][];
        for (int r = 0; r < buffers.Length; r++)
        {
            result[r] = new float[buffers[r].Length];
            g.Ranks[r].Download(buffers[r], result[r]);
        }
        return result;
    }

    /// <summary>Runs <paramref name="op"/> on fresh copies of <paramref name="data"/> with one transport; returns the buffers' contents.</summary>
    static float[][] Run(SharedContextGroups.Group g, ICollectives c, float[][] data, Action<ICollectives, DeviceBuffer[]> op)
    {
        var buffers = Upload(g, data, "x");
        try
        {
            op(c, buffers);
            return Download(g, buffers);
        }
        finally { foreach (var b in buffers) b.Dispose(); }
    }

    static void AssertSameOnBothTransports(SharedContextGroups.Group g, float[][] data, Action<ICollectives, DeviceBuffer[]> op, string what, out float[][] device)
    {
        device = Run(g, g.Device, data, op);
        var host = Run(g, g.Host, data, op);
        for (int r = 0; r < data.Length; r++) Bits.AssertIdentical(host[r], device[r], $"{what}, rank {r}: device vs host");
    }

    [Theory]
    [MemberData(nameof(Sizes))]
    public void AllReduceSum_IsTheHostsBits_AndTheDoubleSumRoundedOnce(int p, int n)
    {
        var g = groups.Of(p);
        const int tail = 3;   // values past the count must stay as they were
        var data = Enumerable.Range(0, p).Select(r => Values(100 * p + r + n, n, tail)).ToArray();
        AssertSameOnBothTransports(g, data, (c, b) => c.AllReduce(b, n), $"all-reduce sum P={p} n={n}", out var device);

        int orderMatters = 0;
        for (int i = 0; i < n; i++)
        {
            double sum = 0;
            float floatSum = 0;
            for (int r = 0; r < p; r++) { sum += data[r][i]; floatSum += data[r][i]; }
            float expected = (float)sum;
            for (int r = 0; r < p; r++)
                Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(device[r][i]),
                            $"element {i} on rank {r}: {device[r][i]:R}, double reference {expected:R}");
            if (floatSum != expected) orderMatters++;
        }
        for (int r = 0; r < p; r++)
            for (int i = n; i < n + tail; i++)
                Assert.Equal(data[r][i], device[r][i]);
        // The inputs discriminate: a float sum (another rounding order) differs somewhere, so equal bits mean double + rank order.
        if (p >= 3 && n > 100) Assert.True(orderMatters > 0, "inputs too tame: float and double sums agree everywhere");
    }

    [Theory]
    [MemberData(nameof(Sizes))]
    public void AllReduceMax_IsTheHostsBits_WithSignedZerosAndNaN(int p, int n)
    {
        var g = groups.Of(p);
        var data = Enumerable.Range(0, p).Select(r => Values(200 * p + r + n, n)).ToArray();
        if (n >= 7)
        {
            for (int r = 0; r < p; r++) data[r][1] = r % 2 == 0 ? -0f : 0f;   // IEEE maximum: +0 beats -0
            for (int r = 0; r < p; r++) data[r][2] = -0f;
            data[p - 1][3] = float.NaN;                                         // a NaN wins
            data[0][4] = float.NaN;
        }
        AssertSameOnBothTransports(g, data, (c, b) => c.AllReduce(b, n, ReduceOp.Max), $"all-reduce max P={p} n={n}", out var device);
        for (int i = 0; i < n; i++)
        {
            float expected = data.Select(d => d[i]).Aggregate(MathF.Max);
            for (int r = 0; r < p; r++)
                Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(device[r][i]),
                            $"max element {i} on rank {r}: {device[r][i]:R}, expected {expected:R}");
        }
        if (n >= 7)
        {
            Assert.Equal(0, BitConverter.SingleToInt32Bits(device[0][1]));
            Assert.True(float.IsNegative(device[0][2]) && device[0][2] == 0);
            Assert.True(float.IsNaN(device[0][3]) && float.IsNaN(device[p - 1][4]));
        }
    }

    [Theory]
    [MemberData(nameof(Sizes))]
    public void ReduceScatter_IsTheHostsBits_AndTheDoubleSumOfEachSlice(int p, int n)
    {
        var g = groups.Of(p);
        var inputs = Enumerable.Range(0, p).Select(r => Values(300 * p + r + n, (long)p * n)).ToArray();
        var outInit = Enumerable.Range(0, p).Select(r => Values(350 + r, n + 2)).ToArray();
        float[][] Scatter(ICollectives c)
        {
            var ins = Upload(g, inputs, "in");
            var outs = Upload(g, outInit, "out");
            try
            {
                c.ReduceScatter(outs, ins, n);
                Assert.Equal(inputs, Download(g, ins));   // inputs are read, not written
                return Download(g, outs);
            }
            finally { foreach (var b in ins.Concat(outs)) b.Dispose(); }
        }
        var device = Scatter(g.Device);
        var host = Scatter(g.Host);
        for (int r = 0; r < p; r++)
        {
            Bits.AssertIdentical(host[r], device[r], $"reduce-scatter P={p} n={n}, rank {r}");
            for (int i = 0; i < n; i++)
            {
                double sum = 0;
                for (int q = 0; q < p; q++) sum += inputs[q][r * n + i];
                Assert.Equal((float)sum, device[r][i]);
            }
            Assert.Equal(outInit[r][n..], device[r][n..]);
        }
    }

    [Theory]
    [MemberData(nameof(Sizes))]
    public void AllGather_IsTheHostsBits_AndTheInputsInRankOrder(int p, int n)
    {
        var g = groups.Of(p);
        var inputs = Enumerable.Range(0, p).Select(r => Values(400 * p + r + n, n)).ToArray();
        var outInit = Enumerable.Range(0, p).Select(r => Values(450 + r, (long)p * n + 1)).ToArray();
        float[][] Gather(ICollectives c)
        {
            var ins = Upload(g, inputs, "in");
            var outs = Upload(g, outInit, "out");
            try
            {
                c.AllGather(outs, ins, n);
                return Download(g, outs);
            }
            finally { foreach (var b in ins.Concat(outs)) b.Dispose(); }
        }
        var device = Gather(g.Device);
        var host = Gather(g.Host);
        var expected = inputs.SelectMany(x => x).ToArray();
        for (int r = 0; r < p; r++)
        {
            Bits.AssertIdentical(host[r], device[r], $"all-gather P={p} n={n}, rank {r}");
            Assert.Equal(expected, device[r][..(p * n)]);
            Assert.Equal(outInit[r][^1], device[r][^1]);
        }
    }

    [Theory]
    [InlineData(2, 7)]
    [InlineData(3, 1001)]
    public void OutputsThatAreAlsoInputs_GiveWhatTheHostGives(int p, int n)
    {
        // Each rank's output buffer is its input buffer (input = the first n values): every rank must read the
        // others' inputs before anyone overwrites them.
        var g = groups.Of(p);
        var data = Enumerable.Range(0, p).Select(r => Values(500 * p + r, (long)p * n)).ToArray();
        AssertSameOnBothTransports(g, data, (c, b) => c.AllGather(b, b, n), $"in-place all-gather P={p}", out var gathered);
        var expected = data.SelectMany(x => x[..n]).ToArray();
        for (int r = 0; r < p; r++) Assert.Equal(expected, gathered[r]);

        AssertSameOnBothTransports(g, data, (c, b) => c.ReduceScatter(b, b, n), $"in-place reduce-scatter P={p}", out var scattered);
        for (int r = 0; r < p; r++)
            for (int i = 0; i < n; i++)
                Assert.Equal((float)data.Sum(x => (double)x[r * n + i]), scattered[r][i]);
    }

    [Theory]
    [InlineData(2, 1001)]
    [InlineData(3, 7)]
    [InlineData(4, 1)]
    public void Broadcast_FromEveryRoot_IsTheHostsBits(int p, int n)
    {
        var g = groups.Of(p);
        var data = Enumerable.Range(0, p).Select(r => Values(600 * p + r, n + 1)).ToArray();
        for (int root = 0; root < p; root++)
        {
            int rt = root;
            AssertSameOnBothTransports(g, data, (c, b) => c.Broadcast(b, n, rt), $"broadcast P={p} root {root}", out var device);
            for (int r = 0; r < p; r++)
            {
                Assert.Equal(data[root][..n], device[r][..n]);
                Assert.Equal(data[r][n], device[r][n]);
            }
        }
    }

    [Fact]
    public void DeviceCollectives_MoveNoBytesThroughTheHost_AndCountLikeTheHost()
    {
        var g = groups.Of(3);
        const int n = 1001;
        var data = Enumerable.Range(0, 3).Select(r => Values(700 + r, 3L * n)).ToArray();
        var buffers = Upload(g, data, "x");
        var outs = Upload(g, data, "y");
        try
        {
            void Everything(ICollectives c)
            {
                c.AllReduce(buffers, n);
                c.AllReduce(buffers, n, ReduceOp.Max);
                c.ReduceScatter(outs, buffers, n);
                c.AllGather(buffers, outs, n);
                c.Broadcast(buffers, n, 2);
            }
            foreach (var b in g.Ranks) b.Synchronize();   // the uploads above are done and counted
            g.DeviceCounters.Reset();
            g.HostCounters.Reset();
            var before = g.Ranks.Select(b => b.HostTransferBytes).ToArray();
            Everything(g.Device);
            for (int r = 0; r < 3; r++)
                Assert.True(g.Ranks[r].HostTransferBytes == before[r],
                            $"rank {r}: the device collectives moved {g.Ranks[r].HostTransferBytes - before[r]} bytes through the host");

            before = g.Ranks.Select(b => b.HostTransferBytes).ToArray();
            Everything(g.Host);
            // The counter sees host round trips: the host all-reduce alone downloads and uploads n values per rank.
            for (int r = 0; r < 3; r++) Assert.True(g.Ranks[r].HostTransferBytes - before[r] >= 2L * 4 * n, $"rank {r}: host transfers not counted");

            var (d, h) = (g.DeviceCounters, g.HostCounters);
            Assert.Equal((2, 1, 1, 1), (d.AllReduce, d.ReduceScatter, d.AllGather, d.Broadcast));
            Assert.Equal((h.AllReduce, h.ReduceScatter, h.AllGather, h.Broadcast, h.BytesPerRank),
                         (d.AllReduce, d.ReduceScatter, d.AllGather, d.Broadcast, d.BytesPerRank));
            Assert.True(d.Elapsed > TimeSpan.Zero);
        }
        finally { foreach (var b in buffers.Concat(outs)) b.Dispose(); }
    }

    [Fact]
    public void BadArguments_AreRefusedWithTheReason()
    {
        var g = groups.Of(2);
        using var a = g.Ranks[0].Allocate("a", 8);
        using var b = g.Ranks[1].Allocate("b", 8);
        using var outside = fx.Ocl.Allocate("outside", 8);
        using var cpu = new CpuBackend(1);
        using var onCpu = cpu.Allocate("on cpu", 8);
        using var ints = g.Ranks[1].Allocate("ints", 8, ElementType.I32);

        Assert.Contains("one buffer per rank (2), got 1", Assert.Throws<ArgumentException>(() => g.Device.AllReduce([a], 8)).Message);
        Assert.Contains("fewer than 9", Assert.Throws<ArgumentException>(() => g.Device.AllReduce([a, b], 9)).Message);
        Assert.Contains("outside this group's shared context", Assert.Throws<ArgumentException>(() => g.Device.AllReduce([a, outside], 8)).Message);
        Assert.Contains("CpuBuffer", Assert.Throws<ArgumentException>(() => g.Device.Broadcast([onCpu, b], 8, 0)).Message);
        Assert.Contains("I32", Assert.Throws<ArgumentException>(() => g.Device.AllReduce([a, ints], 8)).Message);
        Assert.Contains("same buffer", Assert.Throws<ArgumentException>(() => g.Device.AllReduce([a, a], 8)).Message);
        Assert.Contains("fewer than 16", Assert.Throws<ArgumentException>(() => g.Device.AllGather([a, b], [a, b], 8)).Message);
        Assert.Contains("fewer than 16", Assert.Throws<ArgumentException>(() => g.Device.ReduceScatter([a, b], [a, b], 8)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => g.Device.Broadcast([a, b], 8, 2));

        // Backends with contexts of their own cannot form a device-side group.
        var separate = Assert.Throws<ArgumentException>(() => new OpenClCollectives([g.Ranks[0], fx.Ocl], new CollectiveCounters()));
        Assert.Contains("separate OpenCL contexts", separate.Message);
        Assert.Contains("listed twice", Assert.Throws<ArgumentException>(() => OpenClContext.CreateShared([fx.Ocl.Device, fx.Ocl.Device])).Message);
        Assert.Contains("one backend twice", Assert.Throws<ArgumentException>(() => new OpenClCollectives([g.Ranks[0], g.Ranks[0]], new CollectiveCounters())).Message);
    }

    [Fact]
    public void SharedContextViews_AreIndependentDevices_ThatOutliveEachOther()
    {
        var devices = OpenClTestDevices.OnOnePlatform(2);
        var views = OpenClContext.CreateShared(devices);
        Assert.True(views[0].SharesContextWith(views[1]));
        Assert.False(views[0].SharesContextWith(fx.Ocl.Context));
        Assert.Equal(devices.Length, views[1].Devices.Count);
        Assert.NotSame(views[0].Queue, views[1].Queue);
        var first = new OpenClBackend(views[0]);
        using var second = new OpenClBackend(views[1]);
        first.Dispose();   // releases its view's reference to the native context only
        Assert.Throws<ObjectDisposedException>(() => views[0].Queue.Finish());
        var got = new OpCase().F("a", [1, 2, 3]).F("b", [10, 20, 30]).Run(second, t => second.Add(t("a"), t("a"), t("b"), 3), "a");
        Assert.Equal(new float[] { 11, 22, 33 }, got["a"]);
    }
}

using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Model;
using Palm.Gpu.Sharding;
using Palm.Gpu.Tensors;
using Palm.Gpu.Tests.Support;
using Palm.Gpu.Training;
using Xunit;
using Xunit.Abstractions;

namespace Palm.Gpu.Tests.Sharding;

/// <summary>
/// Data × model sharding on CPU logical devices: every mesh trains the tiny preset to the same losses
/// as one device, each mesh is bit-identical with itself, a parallel block all-reduces once per layer
/// (serial twice), and a mesh that does not divide the model or the batch is refused up front.
/// </summary>
public class MeshTests(ITestOutputHelper output)
{
    const int Batch = 4, Steps = 20;
    const ulong Seed = 11;
    static ModelConfig Tiny => ModelConfig.Preset("tiny");
    static AdafactorConfig Opt => new() { PeakLearningRate = 1e-2f };

    sealed record Run(double[] Losses, Dictionary<string, float[]> Weights);

    static Run Train(int data, int model, ModelConfig? config = null, int steps = Steps, bool shard = false)
        => Train(data, model, config, steps, shard, out _);

    static Run Train(int data, int model, ModelConfig? config, int steps, bool shard, out long persistentBytes)
    {
        var c = config ?? Tiny;
        using var mesh = DeviceMesh.Create("cpu", data, model, threadsPerDevice: 1);
        using var t = new MeshTrainer(mesh, c, Batch, Opt, Seed, shardWeights: shard);
        persistentBytes = t.WeightBytesPerDevice + t.StateBytesPerDevice;
        var losses = new double[steps];
        for (int s = 0; s < steps; s++)
        {
            var (x, y) = MeshTrainer.SyntheticBatch(c, Batch, Seed, s);
            losses[s] = t.TrainStep(x, y).Loss.Total;
        }
        return new Run(losses, t.GatherWeights());
    }

    static readonly Lazy<Run> Reference = new(() => Train(1, 1));

    [Fact]
    public void SingleDeviceMeshIsPalmModelBitForBit()
    {
        // One model path: the engine's 1x1 mesh and a PalmModel stepped by hand run the same code, so every loss and
        // every final weight must be the same bits.
        var c = Tiny;
        using var be = new CpuBackend(1);
        using var model = new PalmModel(be, c, Batch);
        model.Initialize(Seed);
        using var opt = new AdafactorOptimizer(model, Opt);
        var reference = Reference.Value;
        for (int s = 0; s < Steps; s++)
        {
            var (x, y) = MeshTrainer.SyntheticBatch(c, Batch, Seed, s);
            double loss = TrainStep.Run(model, opt, x, y, Batch, s + 1).Loss.Total;
            Assert.Equal(reference.Losses[s], loss);
        }
        Assert.True(reference.Losses[^1] < reference.Losses[0] - 0.05, $"training should lower the loss: {reference.Losses[0]} -> {reference.Losses[^1]}");
        foreach (var p in model.Parameters)
            Assert.True(be.ToHost(p.Value).AsSpan().SequenceEqual(reference.Weights[p.Name]), $"{p.Name}: PalmModel and mesh 1x1 differ");
    }

    [Theory]
    [InlineData(2, 1)]
    [InlineData(1, 2)]
    [InlineData(2, 2)]
    [InlineData(4, 1)]
    [InlineData(1, 4)]
    public void MeshTrainsLikeOneDeviceAndRepeatsBitwise(int data, int model)
    {
        var reference = Reference.Value;
        var run = Train(data, model);
        double worstLoss = 0;
        for (int s = 0; s < Steps; s++)
        {
            double rel = Math.Abs(run.Losses[s] - reference.Losses[s]) / Math.Abs(reference.Losses[s]);
            worstLoss = Math.Max(worstLoss, rel);
            Assert.True(rel <= 1e-5, $"mesh {data}x{model} step {s + 1}: loss {run.Losses[s]:R} vs 1x1 {reference.Losses[s]:R} (relative {rel:E2})");
        }
        // Final weights after 20 steps: split GEMM sums and the vocab-parallel softmax round differently, nothing more.
        double worstWeight = 0;
        foreach (var (name, w) in reference.Weights)
        {
            for (int i = 0; i < w.Length; i++) worstWeight = Math.Max(worstWeight, Math.Abs(w[i] - run.Weights[name][i]));
            Tolerance.AssertClose(w, run.Weights[name], 2e-6, 1e-5, $"mesh {data}x{model} final {name}");
        }
        output.WriteLine($"mesh {data}x{model}: worst relative loss difference {worstLoss:E2} over {Steps} steps; worst final-weight |difference| {worstWeight:E2}");

        var again = Train(data, model);
        Assert.Equal(run.Losses, again.Losses);
        foreach (var (name, w) in run.Weights) Assert.True(w.AsSpan().SequenceEqual(again.Weights[name]), $"mesh {data}x{model}: {name} differs between two runs");
    }

    [Theory]
    [InlineData(4, 1)]
    [InlineData(2, 2)]
    public void FullyShardedMatchesReplicatedAtAQuarterOfTheMemory(int data, int model)
    {
        var replicated = Train(data, model, null, 10, shard: false, out long replicatedBytes);
        var sharded = Train(data, model, null, 10, shard: true, out long shardedBytes);
        double ratio = (double)shardedBytes / replicatedBytes;
        output.WriteLine($"mesh {data}x{model}: weights + Adafactor state per device {replicatedBytes} B replicated, {shardedBytes} B fully sharded (ratio {ratio:F4}, 1/{data} = {1.0 / data:F4})");
        Assert.InRange(ratio, 1.0 / data, 1.0 / data * 1.01); // only slice padding above 1/D
        double worst = 0;
        for (int s = 0; s < 10; s++)
        {
            double rel = Math.Abs(sharded.Losses[s] - replicated.Losses[s]) / replicated.Losses[s];
            worst = Math.Max(worst, rel);
            Assert.True(rel <= 1e-6, $"fully sharded {data}x{model} step {s + 1}: {sharded.Losses[s]:R} vs replicated {replicated.Losses[s]:R}");
        }
        output.WriteLine($"  worst relative loss difference {worst:E2}");
        foreach (var (name, w) in replicated.Weights) Tolerance.AssertClose(w, sharded.Weights[name], 1e-6, 1e-5, $"fully sharded {data}x{model} {name}");
        var again = Train(data, model, null, 10, shard: true, out _);
        Assert.Equal(sharded.Losses, again.Losses);
    }

    [Fact]
    public void FullyShardedGathersAndScattersEveryLayer()
    {
        var c = Tiny;
        using var mesh = DeviceMesh.Create("cpu", 2, 1, threadsPerDevice: 1);
        using var model = new MeshTrainer(mesh, c, Batch, optimizer: null, Seed, shardWeights: true);
        var (x, y) = MeshTrainer.SyntheticBatch(c, Batch, Seed, 0);
        // One collective per unit (a layer's tensors are one contiguous range of the arena): every layer and the final
        // norm gathered once in forward, the embedding twice (lookup and logits); nothing is reduce-scattered.
        int units = c.Layers + 3;
        model.Forward(x, y, Batch);
        Assert.Equal(units, mesh.Counters.AllGather);
        Assert.Equal(0, mesh.Counters.ReduceScatter);
        mesh.Counters.Reset();
        model.Backward();
        Assert.Equal(units, mesh.Counters.AllGather);
        Assert.Equal(units, mesh.Counters.ReduceScatter);
        // No all-reduce at all: model groups of one rank skip their communication points, and data-axis gradients are
        // reduce-scattered, never all-reduced, when fully sharded.
        Assert.Equal(0, mesh.Counters.AllReduce);
    }

    [Fact]
    public void SameBitsForAnyThreadCountAndRankScheduling()
    {
        // Worker threads per device (1 vs 3) and however the ranks' threads are scheduled must not change a bit.
        double[] Losses(int threads)
        {
            using var mesh = DeviceMesh.Create("cpu", 2, 2, threadsPerDevice: threads);
            using var t = new MeshTrainer(mesh, Tiny, Batch, Opt, Seed, shardWeights: true);
            return Enumerable.Range(0, 4).Select(s =>
            {
                var (x, y) = MeshTrainer.SyntheticBatch(Tiny, Batch, Seed, s);
                return t.TrainStep(x, y).Loss.Total;
            }).ToArray();
        }
        var a = Losses(1);
        Assert.Equal(a, Losses(3));
        Assert.Equal(a, Losses(2));
    }

    [Theory]
    [InlineData(BlockKind.Parallel, false)]
    [InlineData(BlockKind.Serial, true)]
    public void RematerialisedMeshGivesTheSameBits(BlockKind block, bool shard)
    {
        var c = Tiny with { Block = block };
        var stored = Train(2, 2, c, 4, shard, out _);
        var remat = Train(2, 2, c with { Rematerialize = true }, 4, shard, out _);
        Assert.Equal(stored.Losses, remat.Losses);
        foreach (var (name, w) in stored.Weights) Assert.True(w.AsSpan().SequenceEqual(remat.Weights[name]), $"{block} remat: {name} differs");
    }

    [Fact]
    public void SerialBlocksTrainLikeOneDeviceOnAModelAxis()
    {
        var serial = Tiny with { Block = BlockKind.Serial, Attention = AttentionKind.MultiHead };
        var one = Train(1, 1, serial, steps: 5);
        var two = Train(2, 2, serial, steps: 5);
        for (int s = 0; s < 5; s++)
            Assert.True(Math.Abs(two.Losses[s] - one.Losses[s]) <= 1e-5 * Math.Abs(one.Losses[s]), $"serial multi-head step {s + 1}: {two.Losses[s]:R} vs {one.Losses[s]:R}");
    }

    /// <summary>All-reduces of one forward and one backward pass on mesh 1x2 for a model of <paramref name="layers"/> layers.</summary>
    static (long Forward, long Backward) CountAllReduces(BlockKind block, int layers)
    {
        var c = Tiny with { Block = block, Layers = layers };
        using var mesh = DeviceMesh.Create("cpu", 1, 2, threadsPerDevice: 1);
        using var model = new MeshTrainer(mesh, c, Batch, optimizer: null, Seed);
        var (x, y) = MeshTrainer.SyntheticBatch(c, Batch, Seed, 0);
        mesh.Counters.Reset();
        model.Forward(x, y, Batch);
        long fwd = mesh.Counters.AllReduce;
        mesh.Counters.Reset();
        model.Backward();
        return (fwd, mesh.Counters.AllReduce);
    }

    [Theory]
    [InlineData(BlockKind.Parallel, 1)]
    [InlineData(BlockKind.Serial, 2)]
    public void AllReducesPerLayer(BlockKind block, int perLayer)
    {
        // The difference between L = 3 and L = 2 isolates one layer from the embedding, head and gradient sync.
        var (f2, b2) = CountAllReduces(block, 2);
        var (f3, b3) = CountAllReduces(block, 3);
        output.WriteLine($"{block}: forward {f2} (L=2) / {f3} (L=3), backward {b2} / {b3}");
        Assert.Equal(perLayer, f3 - f2);
        // Backward adds the layer's dh all-reduce(s) plus the replicated K/V head's two gradient sums (Wk, Wv).
        Assert.Equal(perLayer + 2, b3 - b2);
    }

    [Theory]
    [InlineData(1, 3, "heads 4")]
    [InlineData(1, 8, "heads 4")]
    [InlineData(3, 1, "batch of 4")]
    public void MeshThatDoesNotDivideIsRefused(int data, int model, string names)
    {
        var e = Assert.Throws<ConfigException>(() => DeviceMesh.Validate(Tiny, data, model, Batch));
        Assert.Contains(names, e.Message);
        var vocab = Assert.Throws<ConfigException>(() => DeviceMesh.Validate(Tiny with { Vocab = 66, Heads = 2, DModel = 32 }, 1, 4, Batch));
        Assert.Contains("vocab 66", vocab.Message);
        Assert.Contains("heads 2", vocab.Message);
        Assert.Throws<ConfigException>(() => DeviceMesh.Create("cpu", 16, 16));
        Assert.Throws<ConfigException>(() => DeviceMesh.Parse("2by2"));
        Assert.Equal((2, 4), DeviceMesh.Parse("2x4"));
    }

    [Fact]
    public void CollectivesCombineInRankOrder()
    {
        var devs = Enumerable.Range(0, 3).Select(_ => (IBackend)new CpuBackend(1)).ToArray();
        var counters = new CollectiveCounters();
        var g = new InProcessCollectives(devs, counters);
        DeviceBuffer[] Bufs(long n, Func<int, int, float> f) => devs.Select((d, r) =>
        {
            var b = d.Allocate("b", n);
            d.Upload(b, Enumerable.Range(0, (int)n).Select(i => f(r, i)).ToArray());
            return b;
        }).ToArray();
        float[] Get(int r, DeviceBuffer b) { var h = new float[b.Length]; devs[r].Download(b, h); return h; }

        // Large + small + (−large): the fixed order (1e8 + 1) − 1e8 in double keeps the 1 on every rank.
        var sum = Bufs(5, (r, i) => r == 0 ? 1e8f : r == 1 ? 1f + i : -1e8f);
        g.AllReduce(sum, 5);
        for (int r = 0; r < 3; r++) Assert.Equal(new float[] { 1, 2, 3, 4, 5 }, Get(r, sum[r]));
        var max = Bufs(4, (r, i) => (r - 1) * (i + 1));
        g.AllReduce(max, 4, ReduceOp.Max);
        Assert.Equal(new float[] { 1, 2, 3, 4 }, Get(2, max[2]));

        var inp = Bufs(2, (r, i) => 10 * r + i);
        var all = Bufs(6, (_, _) => 0);
        g.AllGather(all, inp, 2);
        Assert.Equal(new float[] { 0, 1, 10, 11, 20, 21 }, Get(1, all[1]));

        var full = Bufs(6, (r, i) => r * 100 + i); // rank 1 keeps block 1: Σ_r (100·r + 2 + i)
        var part = Bufs(2, (_, _) => 0);
        g.ReduceScatter(part, full, 2);
        Assert.Equal(new float[] { 306, 309 }, Get(1, part[1]));

        var bc = Bufs(3, (r, i) => r + i);
        g.Broadcast(bc, 3, root: 2);
        Assert.Equal(new float[] { 2, 3, 4 }, Get(0, bc[0]));
        Assert.Equal((2, 1, 1, 1), (counters.AllReduce, counters.AllGather, counters.ReduceScatter, counters.Broadcast));
        foreach (var d in devs) d.Dispose();
    }
}

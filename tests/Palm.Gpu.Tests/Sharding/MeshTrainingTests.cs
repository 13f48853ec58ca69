using Palm.Gpu.Model;
using Palm.Gpu.Sharding;
using Palm.Gpu.Tests.Support;
using Palm.Gpu.Training;
using Xunit;

namespace Palm.Gpu.Tests.Sharding;

/// <summary>
/// `train --mesh` through the Trainer: the same data, schedule and seed as one device give the same losses;
/// checkpoints on a mesh resume bit for bit, load onto other meshes (resharding) exactly, and the spike guard
/// rolls back on a mesh as it does on one device. Bad meshes fail before anything is allocated.
/// </summary>
public class MeshTrainingTests
{
    static ModelConfig Tiny => ModelConfig.Preset("tiny");
    static ModelConfig Short => ModelConfig.Preset("tiny") with { SeqLen = 16 };
    static TrainOptions Options => new() { Steps = 4, BatchSchedule = "0:4,2:8", Seed = 3, Threads = 1, PeakGflops = 100 };

    static TrainOptions Checkpointed(string dir, long steps, string? mesh, bool shard = false) => new()
    {
        Steps = steps, BatchSchedule = "0:2,6:4", Seed = 7, Threads = 2, PeakGflops = 100, OutDir = dir, CheckpointEvery = 3,
        Mesh = mesh, ShardWeights = shard,
        SpikeGuard = new SpikeGuardConfig { MinHistory = 5, Window = 20, RollbackSteps = 10, SkipMargin = 5, MinSkip = 20, MaxSkip = 50 },
    };

    [Theory]
    [InlineData("2x2", false, false)]
    [InlineData("2x1", true, false)]
    [InlineData("1x2", false, true)]    // split tensors take the host update path: "0 = off" must reach it as off
    [InlineData("2x1", true, true)]
    public void MeshRunMatchesTheSingleDeviceRun(string mesh, bool shard, bool clipsAndDecayOff)
    {
        var options = clipsAndDecayOff
            ? Options with { Optimizer = new AdafactorConfig { PeakLearningRate = 0.05f, UpdateClip = 0, GradClipNorm = 0, WeightDecayExponent = 0 } }
            : Options;
        using var single = new Trainer(Tiny, options, vocabFromTokenizer: true);
        using var run = new Trainer(Tiny, options with { Mesh = mesh, ShardWeights = shard }, vocabFromTokenizer: true);
        Assert.Equal(single.Config, run.Config);
        Assert.Equal(mesh, run.Engine.Mesh);
        for (int s = 0; s < 4; s++)
        {
            var a = single.TrainStep();
            var b = run.TrainStep();
            Assert.Equal(a.Batch, b.Batch);
            Assert.True(Math.Abs(a.Loss - b.Loss) <= 1e-5 * a.Loss, $"step {s + 1} on {mesh}: mesh {b.Loss:R} vs one device {a.Loss:R}");
            Assert.True(Math.Abs(a.GradNorm - b.GradNorm) <= 1e-4 * a.GradNorm, $"step {s + 1} on {mesh}: grad norm {b.GradNorm:R} vs {a.GradNorm:R}");
        }
        double ea = single.Evaluate(8), eb = run.Evaluate(8);
        Assert.True(Math.Abs(ea - eb) <= 1e-5 * ea, $"eval on {mesh}: {eb:R} vs {ea:R}");
    }

    [Fact]
    public void BadMeshesFailAtStartUp()
    {
        var odd = Assert.Throws<ConfigException>(() => new Trainer(Tiny, Options with { BatchSchedule = "0:4,2:6", Mesh = "4x1" }, true));
        Assert.Contains("does not divide the batch of 6", odd.Message);
        var heads = Assert.Throws<ConfigException>(() => new Trainer(Tiny, Options with { Mesh = "1x8" }, true));
        Assert.Contains("heads 4", heads.Message);
        var factored = Assert.Throws<ConfigException>(() => new Trainer(Tiny, Options with { Mesh = "1x2", Optimizer = new AdafactorConfig { Factored = true } }, true));
        Assert.Contains("factored", factored.Message);
        var shardAlone = Assert.Throws<ConfigException>(() => new Trainer(Tiny, Options with { ShardWeights = true }, true));
        Assert.Contains("--mesh", shardAlone.Message);
    }

    [Theory]
    [InlineData("2x2", false)]
    [InlineData("2x2", true)]
    [InlineData("1x2", false)]
    public void ResumeOnTheSameMeshIsBitIdentical(string mesh, bool shard)
    {
        string a = CliRunner.TempDir(), b = CliRunner.TempDir();
        var lossesA = new List<double>();
        float[] straight;
        using (var t = new Trainer(Short, Checkpointed(a, 10, mesh, shard), true))
        {
            t.Run(10, m => lossesA.Add(m.Loss));
            straight = TrainerState.WeightsAndOptimizer(t);
        }
        var lossesB = new List<double>();
        using (var t = new Trainer(Short, Checkpointed(b, 6, mesh, shard), true)) t.Run(6, m => lossesB.Add(m.Loss));
        using (var t = new Trainer(Short, Checkpointed(b, 10, mesh, shard), true))
        {
            var ckpt = t.Checkpoints!.LoadLatestValid()!;
            Assert.Equal(6, ckpt.Manifest.Step);
            Assert.Equal(mesh, ckpt.Manifest.Mesh);
            t.Restore(ckpt);
            t.Run(10, m => lossesB.Add(m.Loss));
            Assert.True(straight.AsSpan().SequenceEqual(TrainerState.WeightsAndOptimizer(t)), $"weights or optimizer state differ after resuming on {mesh}");
        }
        Assert.Equal(lossesA, lossesB);
    }

    [Fact]
    public void AMeshCheckpointHoldsOneFilePairPerDistinctShardAndEachIsVerified()
    {
        string replicated = CliRunner.TempDir(), sharded = CliRunner.TempDir();
        using (var t = new Trainer(Short, Checkpointed(replicated, 3, "2x2"), true)) t.Run(3);
        using (var t = new Trainer(Short, Checkpointed(sharded, 3, "2x2", shard: true), true)) t.Run(3);

        string Files(string run) => string.Join(" ", Directory.GetFiles(Path.Combine(run, "checkpoints", "step-000000003")).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        // Replicated over the data axis: the two model shards of data rank 0; fully sharded: all four slices.
        Assert.Equal("manifest.json optimizer.d0-m0.safetensors optimizer.d0-m1.safetensors weights.d0-m0.safetensors weights.d0-m1.safetensors", Files(replicated));
        Assert.Equal(9, Files(sharded).Split(' ').Length);

        string step3 = Path.Combine(sharded, "checkpoints", "step-000000003");
        var ckpt = CheckpointStore.Load(step3);
        Assert.True(ckpt.Manifest.ShardWeights);
        Assert.Equal("cols", ckpt.Manifest.Layout!["layers.0.attn.wq"].Axis);
        Assert.Equal("replicated", ckpt.Manifest.Layout["layers.0.attn.wk"].Axis);   // the shared K/V head of multi-query attention
        Assert.Equal("rows", ckpt.Manifest.Layout["embedding"].Axis);
        var embedding = ckpt.Weights["embedding"];   // joined from the model ranks' row blocks and the data ranks' slices
        Assert.Equal(Short.DModel, embedding.Shape[1]);
        Assert.Equal(embedding.Shape[0] * embedding.Shape[1], embedding.Data.LongLength);

        string victim = Path.Combine(step3, "weights.d1-m1.safetensors");
        var bytes = File.ReadAllBytes(victim);
        bytes[^3] ^= 0x40;
        File.WriteAllBytes(victim, bytes);
        var e = Assert.Throws<InvalidDataException>(() => CheckpointStore.Load(step3));
        Assert.Contains("weights.d1-m1.safetensors fails its checksum", e.Message);
        File.Delete(victim);
        e = Assert.Throws<InvalidDataException>(() => CheckpointStore.Load(step3));
        Assert.Contains("weights.d1-m1.safetensors is missing", e.Message);
    }

    [Fact]
    public void ACheckpointLoadsOntoAnyMeshExactlyAndTrainingContinues()
    {
        string source = CliRunner.TempDir();
        float[] atSix;
        var straight = new List<double>();
        using (var t = new Trainer(Short, Checkpointed(source, 9, "2x2", shard: true) with { BatchSchedule = "4" }, true))
        {
            t.Run(6, m => straight.Add(m.Loss));
            atSix = TrainerState.WeightsAndOptimizer(t);
            t.Run(9, m => straight.Add(m.Loss));
        }
        var ckpt = CheckpointStore.Load(Path.Combine(source, "checkpoints", "step-000000006"));
        foreach (var (mesh, shard) in new (string?, bool)[] { (null, false), ("1x2", false), ("4x1", true), ("2x1", false) })
        {
            using var t = new Trainer(Short, Checkpointed(CliRunner.TempDir(), 9, mesh, shard) with { BatchSchedule = "4" }, true);
            t.Restore(ckpt);
            Assert.True(atSix.AsSpan().SequenceEqual(TrainerState.WeightsAndOptimizer(t)), $"state loaded onto {mesh ?? "one device"} differs from the 2x2 run's");
            var resumed = new List<double>();
            t.Run(9, m => resumed.Add(m.Loss));
            for (int i = 0; i < 3; i++)
                Assert.True(Math.Abs(resumed[i] - straight[6 + i]) <= 1e-5 * straight[6 + i],
                            $"step {7 + i} on {mesh ?? "one device"} after resharding: {resumed[i]:R} vs {straight[6 + i]:R} on 2x2");
        }
    }

    [Fact]
    public void TheSpikeGuardRollsBackOnAMeshExactlyAsOnOneDevice()
    {
        RollbackEvent Run(string? mesh)
        {
            var opts = Checkpointed(CliRunner.TempDir(), 40, mesh) with { CheckpointEvery = 5, BatchSchedule = "2", InjectSpike = "30" };
            using var t = new Trainer(Short, opts, true);
            var events = new List<TrainingEvent>();
            t.Run(40, onEvent: events.Add);
            Assert.Equal(40, t.Step);
            Assert.Single(events, e => e.Kind == "rollback");
            return Assert.Single(t.Rollbacks);
        }
        var one = Run(null);
        var mesh = Run("2x1");
        Assert.Equal(30, mesh.SpikeStep);
        Assert.Equal(20, mesh.RestoredStep);
        Assert.Equal(one with { Reason = "" }, mesh with { Reason = "" });
    }
}

using Palm.Gpu.Model;
using Palm.Gpu.Sharding;
using Palm.Gpu.Training;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Sharding;

/// <summary>`palm plan --mesh`: the analytic communication volume equals what the collectives count on a real mesh, and PaLM 540B fits.</summary>
public class MeshPlanTests
{
    const int Batch = 4;
    static ModelConfig Tiny => ModelConfig.Preset("tiny");

    static (long Forward, long Backward) Measured(ModelConfig c, int data, int model, bool shard = false)
    {
        using var mesh = DeviceMesh.Create("cpu", data, model, threadsPerDevice: 1);
        using var m = new MeshTrainer(mesh, c, Batch, optimizer: null, 3, shardWeights: shard);
        var (x, y) = MeshTrainer.SyntheticBatch(c, Batch, 3, 0);
        mesh.Counters.Reset();
        m.Forward(x, y, Batch);
        long f = mesh.Counters.BytesPerRank;
        mesh.Counters.Reset();
        m.Backward();
        return (f, mesh.Counters.BytesPerRank);
    }

    [Theory]
    [InlineData(BlockKind.Parallel)]
    [InlineData(BlockKind.Serial)]
    public void ModelAxisTrafficMatchesThePlan(BlockKind block)
    {
        var c = Tiny with { Block = block };
        var (f, b) = Measured(c, 1, 2);
        var plan = MeshPlan.Of(c, 1, 2, shardWeights: false, Batch, rematerialize: false);
        Assert.Equal(plan.ModelAxisForwardBytes, f);
        Assert.Equal(plan.ModelAxisBackwardBytes, b);
        Assert.Equal(0, plan.DataAxisBytes);
    }

    [Fact]
    public void DataAxisTrafficMatchesThePlan()
    {
        var (f, b) = Measured(Tiny, 2, 1);
        var plan = MeshPlan.Of(Tiny, 2, 1, shardWeights: false, Batch / 2, rematerialize: false);
        Assert.Equal(0, f);
        Assert.Equal(plan.DataAxisBytes, b); // one all-reduce of every gradient
        Assert.Equal(4 * ModelMath.Parameters(Tiny), plan.DataAxisBytes); // 2·(P−1)/P = 1 for P = 2
    }

    [Fact]
    public void FullyShardedDataAxisTrafficMatchesThePlan()
    {
        var (f, b) = Measured(Tiny, 2, 1, shard: true);
        var plan = MeshPlan.Of(Tiny, 2, 1, shardWeights: true, Batch / 2, rematerialize: false);
        Assert.Equal(plan.DataAxisBytes, f + b); // gathers in both passes, reduce-scatter in backward
        Assert.True(plan.WorkspaceBytes > 0);
    }

    [Fact]
    public void Palm540bFitsOn256x12FullySharded()
    {
        var c = ModelConfig.Preset("palm-540b");
        var sharded = MeshPlan.Of(c, 256, 12, shardWeights: true, 1, rematerialize: true);
        var replicated = MeshPlan.Of(c, 256, 12, shardWeights: false, 1, rematerialize: true);
        // Model shards hold 1/12 of the split tensors; sharding over 256 data ranks divides weights + state by 256.
        Assert.InRange(sharded.ParametersPerModelShard, ModelMath.Parameters(c) / 12, ModelMath.Parameters(c) / 11);
        double ratio = (double)(sharded.WeightBytes + sharded.OptimizerBytes) / (replicated.WeightBytes + replicated.OptimizerBytes);
        Assert.InRange(ratio, 1.0 / 256, 1.0001 / 256);
        Assert.True(sharded.TotalBytes < 32L << 30, $"540B on 256x12 needs {sharded.TotalBytes / (double)(1L << 30):F2} GiB per device");
        Assert.True(replicated.TotalBytes > 256L << 30);
        Assert.Equal(256008, MeshPlan.PaddedVocab(c.Vocab, 12));
    }
}

/// <summary>The `palm plan --mesh` command line: the 540B report and one-line errors for meshes that do not fit the model.</summary>
public class MeshPlanCliTests
{
    [Fact]
    public void PlanWithMeshPrintsPerDeviceMemoryAndTraffic()
    {
        var r = Palm.Gpu.Tests.Support.CliRunner.Run("plan", "palm-540b", "--mesh", "256x12", "--shard-weights");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("mesh 256x12 (3072 devices: 256 data × 12 model), fully sharded weights", r.Stdout);
        Assert.Contains("vocab 256000 padded to 256008", r.Stdout);
        Assert.Contains("heads 4 of 48, d_ff 6144 of 73728", r.Stdout);
        Assert.Contains("communication per device per step", r.Stdout);

        var bad = Palm.Gpu.Tests.Support.CliRunner.Run("plan", "palm-540b", "--mesh", "1x5");
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("model axis 5 of mesh 1x5 does not divide heads 48, d_ff 73728", bad.Stderr);
        Assert.Single(bad.Stderr.Trim().Split('\n'));
        var alone = Palm.Gpu.Tests.Support.CliRunner.Run("plan", "tiny", "--shard-weights");
        Assert.Equal(2, alone.ExitCode);
        Assert.Contains("--shard-weights needs --mesh", alone.Stderr);
    }
}

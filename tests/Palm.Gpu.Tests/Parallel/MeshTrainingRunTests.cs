using Palm.Gpu.Data;
using Palm.Gpu.Model;
using Palm.Gpu.Sharding;
using Palm.Gpu.Training;
using Xunit;

namespace Palm.Gpu.Tests.Sharding;

/// <summary>`train --mesh`: the same data, schedule and seed as the single-device Trainer give the same losses; bad meshes fail before allocation.</summary>
public class MeshTrainingRunTests
{
    static ModelConfig Tiny => ModelConfig.Preset("tiny");
    static TrainOptions Options => new() { Steps = 4, BatchSchedule = "0:4,2:8", Seed = 3, Threads = 1, PeakGflops = 100 };

    [Theory]
    [InlineData("2x2", false)]
    [InlineData("2x1", true)]
    public void MeshRunMatchesTheTrainer(string mesh, bool shard)
    {
        using var single = new Trainer(Tiny, Options, vocabFromTokenizer: true);
        using var run = new MeshTrainingRun(Tiny, Options, vocabFromTokenizer: true, mesh, shard);
        Assert.Equal(single.Config, run.Config);
        for (int s = 0; s < 4; s++)
        {
            var a = single.TrainStep();
            var b = run.TrainStep();
            Assert.Equal(a.Batch, b.Batch);
            Assert.True(Math.Abs(a.Loss - b.Loss) <= 1e-5 * a.Loss, $"step {s + 1} on {mesh}: mesh {b.Loss:R} vs trainer {a.Loss:R}");
            Assert.True(Math.Abs(a.GradNorm - b.GradNorm) <= 1e-4 * a.GradNorm, $"step {s + 1} on {mesh}: grad norm {b.GradNorm:R} vs {a.GradNorm:R}");
        }
    }

    [Fact]
    public void BadMeshesFailAtStartUp()
    {
        var odd = Assert.Throws<ConfigException>(() => new MeshTrainingRun(Tiny, Options with { BatchSchedule = "0:4,2:6" }, true, "4x1", false));
        Assert.Contains("does not divide the batch of 6", odd.Message);
        var heads = Assert.Throws<ConfigException>(() => new MeshTrainingRun(Tiny, Options, true, "1x8", false));
        Assert.Contains("heads 4", heads.Message);
        var factored = Assert.Throws<ConfigException>(() => new MeshTrainingRun(Tiny, Options with { Optimizer = new AdafactorConfig { Factored = true } }, true, "1x2", false));
        Assert.Contains("factored", factored.Message);
    }
}

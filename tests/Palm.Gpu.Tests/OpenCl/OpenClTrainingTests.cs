using Palm.Gpu.Model;
using Palm.Gpu.Training;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.OpenCl;

/// <summary>
/// Whole training runs on OpenCL: the losses follow the CPU backend's step by step, and an OpenCL run
/// repeats itself bit for bit. The tiny preset runs by default; the small preset's shapes are opt-in
/// (PALM_LONG_TESTS=1 ./test).
/// </summary>
[Collection(OpenClCollection.Name)]
public class OpenClTrainingTests
{
    static (List<double> Losses, float[] Weights) Train(string backend, ModelConfig config, int steps, string batch)
    {
        var options = new TrainOptions { Steps = steps, BatchSchedule = batch, Seed = 11, Backend = backend, Threads = 2, PeakGflops = 100 };
        using var t = new Trainer(config, options, vocabFromTokenizer: true);
        var losses = new List<double>();
        t.Run(steps, m => losses.Add(m.Loss));
        var weights = TrainerState.Weights(t);
        return (losses, weights);
    }

    static void AssertParity(ModelConfig config, int steps, string batch)
    {
        var cpu = Train("cpu", config, steps, batch);
        var ocl = Train("opencl", config, steps, batch);
        var again = Train("opencl", config, steps, batch);
        Assert.True(ocl.Weights.AsSpan().SequenceEqual(again.Weights), "two OpenCL runs gave different weights");
        Assert.Equal(ocl.Losses, again.Losses);
        for (int i = 0; i < steps; i++)
        {
            double rel = Math.Abs(ocl.Losses[i] - cpu.Losses[i]) / Math.Abs(cpu.Losses[i]);
            Assert.True(rel < 2e-3, $"step {i + 1}: OpenCL loss {ocl.Losses[i]:F6} vs CPU {cpu.Losses[i]:F6} (relative {rel:E2})");
        }
        Assert.True(cpu.Losses[^1] < cpu.Losses[0] - 0.5, "the run did not learn");
    }

    [Fact]
    public void TinyPresetFollowsTheCpuBackendAndRepeatsItself() =>
        AssertParity(ModelConfig.Preset("tiny") with { SeqLen = 32, Block = BlockKind.Serial }, steps: 30, batch: "4");

    [Fact]
    [Trait("Category", "Long")]
    public void SmallPresetFiftyStepsFollowTheCpuBackend() =>
        AssertParity(ModelConfig.Preset("small") with { SeqLen = 128 }, steps: 50, batch: "2");
}

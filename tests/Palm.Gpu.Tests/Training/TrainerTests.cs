using Palm.Gpu.Model;
using Palm.Gpu.Training;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Training;

public class TrainerTests
{
    static ModelConfig Tiny => ModelConfig.Preset("tiny") with { SeqLen = 32 };

    static TrainOptions Options(int threads, ulong seed = 1) => new()
    {
        Steps = 0, BatchSchedule = "4", Seed = seed, Threads = threads, PeakGflops = 100,
    };

    static float[] Weights(Trainer t) => TrainerState.Weights(t);

    [Fact]
    public void LossFallsOnTheSyntheticCorpus()
    {
        using var t = new Trainer(Tiny, Options(2), vocabFromTokenizer: true);
        var first = t.TrainStep();
        Assert.InRange(first.Loss, Math.Log(t.Config.Vocab) - 1, Math.Log(t.Config.Vocab) + 2);
        StepMetrics last = first;
        for (int i = 0; i < 60; i++) last = t.TrainStep();
        Assert.True(last.Loss < first.Loss - 1.5, $"loss went from {first.Loss:F3} to {last.Loss:F3} in 60 steps");
        Assert.True(double.IsFinite(last.GradNorm) && last.GradNorm > 0);
        Assert.Equal(1e-2, last.Lr, 6);
    }

    [Fact]
    public void SameSeedGivesBitIdenticalWeightsForAnyThreadCount()
    {
        float[] Run(int threads)
        {
            using var t = new Trainer(Tiny with { Block = BlockKind.Serial }, Options(threads), vocabFromTokenizer: true);
            for (int i = 0; i < 5; i++) t.TrainStep();
            return Weights(t);
        }
        var a = Run(1);
        var b = Run(2);
        var c = Run(2);
        Assert.True(a.AsSpan().SequenceEqual(b), "1 thread and 2 threads gave different weights");
        Assert.True(b.AsSpan().SequenceEqual(c), "two runs with the same seed gave different weights");
    }

    [Fact]
    public void DifferentSeedsGiveDifferentWeights()
    {
        using var a = new Trainer(Tiny, Options(2, seed: 1), true);
        using var b = new Trainer(Tiny, Options(2, seed: 2), true);
        Assert.False(Weights(a).AsSpan().SequenceEqual(Weights(b)));
    }

    [Fact]
    public void LearningRateAndBeta2FollowPaLM()
    {
        var c = new AdafactorConfig();
        Assert.Equal(1e-2f, c.LearningRate(1));
        Assert.Equal(1e-2f, c.LearningRate(10_000));
        Assert.Equal(1f / MathF.Sqrt(40_000), c.LearningRate(40_000), 6);
        Assert.Equal(0f, c.Beta2(1));
        Assert.Equal(1 - MathF.Pow(100, -0.8f), c.Beta2(100), 6);
    }

    [Fact]
    public void BatchScheduleSwitchesAtTheGivenSteps()
    {
        var s = BatchSchedule.Parse("0:2,3:4,10:8");
        Assert.Equal([2, 2, 2, 4, 4, 8], new[] { 0, 1, 2, 3, 9, 10 }.Select(k => s.At(k)));
        Assert.Equal(8, s.Max);
        Assert.Throws<ConfigException>(() => BatchSchedule.Parse("5:2"));
        Assert.Throws<ConfigException>(() => BatchSchedule.Parse("0:2,x"));

        using var t = new Trainer(Tiny, Options(2) with { BatchSchedule = "0:2,2:3" }, true);
        Assert.Equal([2, 2, 3, 3], Enumerable.Range(0, 4).Select(_ => t.TrainStep().Batch));
    }
}

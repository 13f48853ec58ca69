using Palm.Gpu.Training;
using Xunit;

namespace Palm.Gpu.Tests.Training;

/// <summary>The spike detector's default thresholds on loss and gradient-norm patterns seen in real runs.</summary>
public class SpikeDetectorTests
{
    /// <summary>A detector with the defaults fed 50 healthy steps: loss 2.65 ± 0.05, grad norm 0.15 ± 0.03 (seeded).</summary>
    static SpikeDetector Warmed()
    {
        var d = new SpikeDetector(new SpikeGuardConfig());
        var rng = new Random(3);
        for (int i = 0; i < 50; i++)
            d.Record(2.65 + 0.05 * (rng.NextDouble() * 2 - 1), 0.15 + 0.03 * (rng.NextDouble() * 2 - 1));
        return d;
    }

    [Fact]
    public void NoiseAndAOneStepGradientBurstAreNotSpikes()
    {
        var d = Warmed();
        Assert.Null(d.Check(2.75, 0.2));   // ordinary noise
        Assert.Null(d.Check(2.80, 3.78));  // 25× grad norm with the loss in range: seen at lr 0.3, harmless
    }

    [Fact]
    public void LossJumpsHugeGradientsAndNonFiniteValuesAreSpikes()
    {
        var d = Warmed();
        Assert.Contains("loss 4.0560", d.Check(4.056, 10.5)!.Reason); // the first step of the real divergence
        Assert.Contains("gradient norm", d.Check(2.66, 150)!.Reason);  // a bad batch: 1000× the median
        Assert.Contains("non-finite", d.Check(double.NaN, 0.1)!.Reason);
        Assert.Contains("non-finite", d.Check(2.6, double.PositiveInfinity)!.Reason);
    }

    [Fact]
    public void NothingIsJudgedBeforeTheMinimumHistory()
    {
        var d = new SpikeDetector(new SpikeGuardConfig());
        for (int i = 0; i < 19; i++) d.Record(2.6, 0.15);
        Assert.Null(d.Check(10, 100));
        d.Record(2.6, 0.15);
        Assert.NotNull(d.Check(10, 100));
    }
}

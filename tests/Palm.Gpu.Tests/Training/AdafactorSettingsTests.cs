using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Model;
using Palm.Gpu.Training;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Training;

/// <summary>
/// The optimizer settings researchers ablate (update clip, gradient clip, weight-decay exponent): 0 means
/// off and must behave exactly like "never clips" / "no decay" rather than reaching the kernel as a 0 that
/// would zero the update, the gradient or the weights.
/// </summary>
public class AdafactorSettingsTests
{
    static readonly ModelConfig Tiny = ModelConfig.Preset("tiny") with { SeqLen = 16 };

    /// <summary>Runs Adafactor on the tiny model's parameters with seeded gradients, step k scaled by scales[k−1]; returns all weights.</summary>
    static float[] Train(AdafactorConfig config, params float[] scales)
    {
        using var be = new CpuBackend(2);
        using var model = new PalmModel(be, Tiny, 1);
        model.Initialize(7);
        var ps = model.Parameters;
        using var opt = new AdafactorOptimizer(model, config);
        var rng = new Random(11);
        for (int k = 1; k <= scales.Length; k++)
        {
            foreach (var p in ps)
            {
                var g = new float[p.Count];
                for (int i = 0; i < g.Length; i++) g[i] = scales[k - 1] * (float)(rng.NextDouble() * 2 - 1);
                be.Upload(p.Grad, g);
            }
            opt.Step(k, opt.GradientNorm());
        }
        return ps.SelectMany(p => { var h = new float[p.Count]; be.Download(p.Value, h); return h; }).ToArray();
    }

    // Gradients growing 100× at step 2 make the update RMS ≈ 1/√(1−β2(2)) ≈ 1.3 > 1, so d = 1 clips it
    // (and unit-norm clipping changes the step-1/step-2 gradient ratio, which Adafactor's update sees).
    static readonly float[] Growing = [1f, 100f];

    [Fact]
    public void UpdateClipZeroMeansNoClipping()
    {
        var baseline = new AdafactorConfig { GradClipNorm = 0 };
        var off = Train(baseline with { UpdateClip = 0 }, Growing);
        Assert.All(off, x => Assert.True(float.IsFinite(x)));
        Assert.Equal(Train(baseline with { UpdateClip = 1e30f }, Growing), off);
        Assert.NotEqual(Train(baseline, Growing), off); // d = 1 does clip here, so the test can tell
        Assert.NotEqual(Train(baseline, 0f), Train(baseline with { UpdateClip = 0 }, 1f)); // and 0 is not "no update"
    }

    [Fact]
    public void GradClipZeroMeansNoClipping()
    {
        var off = Train(new AdafactorConfig { GradClipNorm = 0 }, Growing);
        Assert.Equal(Train(new AdafactorConfig { GradClipNorm = 1e30f }, Growing), off);
        Assert.NotEqual(Train(new AdafactorConfig(), Growing), off);
        Assert.Equal(1f, new AdafactorConfig { GradClipNorm = 0 }.GradientScale(1e6));
        Assert.Equal(0.5f, new AdafactorConfig { GradClipNorm = 2 }.GradientScale(4));
    }

    [Fact]
    public void WeightDecayExponentZeroMeansNoDecay()
    {
        // With zero gradients the update is 0, so only the decay moves the weights.
        var start = Train(new AdafactorConfig());
        var none = Train(new AdafactorConfig { WeightDecayExponent = 0, PeakLearningRate = 0.5f }, 0f, 0f);
        Assert.Equal(start, none);
        var palm = Train(new AdafactorConfig { PeakLearningRate = 0.5f }, 0f, 0f);
        var expected = start.Select(x => (double)x * (1 - 0.25) * (1 - 0.25)).ToArray(); // lr² = 0.25 per step
        Tolerance.AssertClose(expected, palm, 1e-7, 1e-5, "weights after two steps of lr² decay");
    }

    [Fact]
    public void WarmupAndBeta2DecayAreHonoured()
    {
        var c = new AdafactorConfig { PeakLearningRate = 0.05f, WarmSteps = 3, Beta2DecayExponent = 0.5f };
        Assert.Equal(0.05f, c.LearningRate(3));
        Assert.Equal(0.5f, c.LearningRate(4));
        Assert.Equal(1 - 1 / MathF.Sqrt(9), c.Beta2(9), 6);
    }

    [Theory]
    [InlineData("lr", -0.1f)]
    [InlineData("lr", 0f)]
    [InlineData("update", -1f)]
    [InlineData("update", float.NaN)]
    [InlineData("grad", -1f)]
    [InlineData("grad", float.PositiveInfinity)]
    [InlineData("decay", -2f)]
    [InlineData("beta2", -0.8f)]
    public void NonsenseSettingsAreRejected(string which, float value)
    {
        var c = which switch
        {
            "lr" => new AdafactorConfig { PeakLearningRate = value },
            "update" => new AdafactorConfig { UpdateClip = value },
            "grad" => new AdafactorConfig { GradClipNorm = value },
            "decay" => new AdafactorConfig { WeightDecayExponent = value },
            _ => new AdafactorConfig { Beta2DecayExponent = value },
        };
        Assert.Throws<ConfigException>(() => c.Validate());
        Assert.Throws<ConfigException>(() => new AdafactorConfig { WarmSteps = -1 }.Validate());
        new AdafactorConfig { UpdateClip = 0, GradClipNorm = 0, WeightDecayExponent = 0, WarmSteps = 0 }.Validate();
    }
}

using Palm.Gpu.Backends;
using Palm.Gpu.Model;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Training;

/// <summary>Adafactor settings; the defaults are PaLM's (section 5 of the paper).</summary>
public sealed record AdafactorConfig
{
    public float PeakLearningRate { get; init; } = 1e-2f;  // ρ for the first WarmSteps steps
    public int WarmSteps { get; init; } = 10_000;           // then ρ_k = 1/√k (continuous at k = 10⁴)
    public float Beta1 { get; init; } = 0.9f;               // momentum
    public float Beta2DecayExponent { get; init; } = 0.8f;  // β2 = 1 − k^−0.8
    public float Epsilon1 { get; init; } = 1e-30f;          // added to g² in the second moment
    public float Epsilon2 { get; init; } = 1e-3f;           // floor of the parameter RMS in parameter scaling
    public float UpdateClip { get; init; } = 1.0f;          // d: clip the RMS of the unscaled update; 0 = off
    public float GradClipNorm { get; init; } = 1.0f;        // global-norm gradient clipping; 0 = off
    public float WeightDecayExponent { get; init; } = 2.0f; // PaLM's dynamic weight decay lr^2; 0 = no decay
    public bool Factored { get; init; }                      // factored second moments for matrices (PaLM: off)

    /// <summary>ρ_k for step k (1-based).</summary>
    public float LearningRate(long k) => k <= WarmSteps ? PeakLearningRate : 1f / MathF.Sqrt(k);

    /// <summary>β2 for step k (1-based): 1 − k^−0.8, which is 0 at k = 1 (the first step sees only g²).</summary>
    public float Beta2(long k) => 1f - MathF.Pow(k, -Beta2DecayExponent);

    // "Off" is 0 in the settings but must not reach the kernels as 0: a threshold d = 0 makes the clip
    // factor 1/max(1, RMS(u)/0) = 0 (no update at all), a clip norm of 0 scales every gradient to 0, and
    // lr^0 = 1 would decay every weight to 0 in one step. So the host turns them into "never clips" / 0.

    /// <summary>The update-clipping threshold d the kernel gets: +∞ when clipping is off.</summary>
    public float ClipThreshold() => UpdateClip > 0 ? UpdateClip : float.PositiveInfinity;

    /// <summary>Factor applied to every gradient for global-norm clipping (1 when off or within the norm).</summary>
    public float GradientScale(double gradNorm) =>
        GradClipNorm > 0 && double.IsFinite(gradNorm) && gradNorm > GradClipNorm ? (float)(GradClipNorm / gradNorm) : 1f;

    /// <summary>Decoupled weight decay of a step at rate lr: lr^e, or 0 when decay is off.</summary>
    public float WeightDecay(float lr) => WeightDecayExponent > 0 ? MathF.Pow(lr, WeightDecayExponent) : 0f;

    /// <summary>What the update kernel is told for step k (1-based) with the gradients' global norm: one place for both optimizers.</summary>
    public AdafactorStep StepFor(long k, double gradNorm)
    {
        float lr = LearningRate(k);
        return new AdafactorStep(lr, Beta1, Beta2(k), Epsilon1, Epsilon2, ClipThreshold(), GradientScale(gradNorm), WeightDecay(lr));
    }

    /// <summary>Rejects settings the update cannot mean (negative or non-finite rates, clips, exponents).</summary>
    public AdafactorConfig Validate()
    {
        static bool Ok(float x) => float.IsFinite(x) && x >= 0;
        if (!float.IsFinite(PeakLearningRate) || PeakLearningRate <= 0)
            throw new ConfigException($"--lr must be a positive number, got {PeakLearningRate}");
        if (WarmSteps < 0) throw new ConfigException($"--warmup-steps must be ≥ 0, got {WarmSteps}");
        if (!Ok(UpdateClip)) throw new ConfigException($"--update-clip must be a number ≥ 0 (0 = off), got {UpdateClip}");
        if (!Ok(GradClipNorm)) throw new ConfigException($"--grad-clip must be a number ≥ 0 (0 = off), got {GradClipNorm}");
        if (!Ok(WeightDecayExponent)) throw new ConfigException($"--weight-decay-exponent must be a number ≥ 0 (0 = no decay), got {WeightDecayExponent}");
        if (!Ok(Beta2DecayExponent)) throw new ConfigException($"--beta2-decay must be a number ≥ 0, got {Beta2DecayExponent}");
        if (!(Beta1 >= 0 && Beta1 < 1)) throw new ConfigException($"β1 must be in [0, 1), got {Beta1}");
        return this;
    }
}

/// <summary>
/// Adafactor as PaLM used it, over a model's <see cref="ParameterSet"/>: global-norm clipping, then one
/// fused update kernel per tensor (see CpuAdafactor.cs for the maths). State lives on the device.
/// </summary>
public sealed class AdafactorOptimizer : IDisposable
{
    readonly IBackend _be;
    readonly ParameterSet _params;
    readonly List<(Parameter P, AdafactorBuffers S)> _state = [];

    public AdafactorOptimizer(IBackend backend, ParameterSet parameters, AdafactorConfig config)
    {
        _be = backend;
        _params = parameters;
        Config = config.Validate();
        foreach (var p in parameters.All)
        {
            bool factor = config.Factored && !p.IsVector && p.Rows > 1 && p.Cols > 1;
            var s = new AdafactorBuffers(
                config.Beta1 > 0 ? Zeroed("adafactor.m." + p.Name, p.Count) : null,
                factor ? null : Zeroed("adafactor.v." + p.Name, p.Count),
                factor ? Zeroed("adafactor.v_row." + p.Name, p.Rows) : null,
                factor ? Zeroed("adafactor.v_col." + p.Name, p.Cols) : null);
            _state.Add((p, s));
        }
    }

    public AdafactorConfig Config { get; }

    /// <summary>Optimizer-state tensors in a fixed order, named for checkpoints.</summary>
    public IEnumerable<DeviceBuffer> StateBuffers =>
        _state.SelectMany(e => new[] { e.S.Momentum, e.S.SecondMoment, e.S.RowMoment, e.S.ColMoment }).OfType<DeviceBuffer>();

    public long StateBytes => StateBuffers.Sum(b => b.Bytes);

    /// <summary>Global L2 norm of all gradients (fixed tensor order, double accumulation).</summary>
    public double GradientNorm()
    {
        double sum = 0;
        foreach (var p in _params.All) sum += _be.SumOfSquares(p.Grad, p.Count);
        return Math.Sqrt(sum);
    }

    /// <summary>Applies step k (1-based) to every parameter; returns the learning rate used.</summary>
    public float Step(long k, double gradNorm)
    {
        if (k < 1) throw new ArgumentOutOfRangeException(nameof(k), "Adafactor steps are counted from 1");
        var step = Config.StepFor(k, gradNorm);
        foreach (var (p, s) in _state)
            _be.AdafactorUpdate(p.Value, p.Grad, s, p.Rows, p.Cols, step);
        return step.LearningRate;
    }

    DeviceBuffer Zeroed(string name, long n)
    {
        var b = _be.Allocate(name, n);
        _be.Fill(b, 0f, n);
        return b;
    }

    public void Dispose()
    {
        foreach (var b in StateBuffers) b.Dispose();
    }
}

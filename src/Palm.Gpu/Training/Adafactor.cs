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
    public float UpdateClip { get; init; } = 1.0f;          // d: clip the RMS of the unscaled update
    public float GradClipNorm { get; init; } = 1.0f;        // global-norm gradient clipping
    public float WeightDecayExponent { get; init; } = 2.0f; // PaLM's dynamic weight decay lr^2
    public bool Factored { get; init; }                      // factored second moments for matrices (PaLM: off)

    /// <summary>ρ_k for step k (1-based).</summary>
    public float LearningRate(long k) => k <= WarmSteps ? PeakLearningRate : 1f / MathF.Sqrt(k);

    /// <summary>β2 for step k (1-based): 1 − k^−0.8, which is 0 at k = 1 (the first step sees only g²).</summary>
    public float Beta2(long k) => 1f - MathF.Pow(k, -Beta2DecayExponent);
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
        Config = config;
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
        float lr = Config.LearningRate(k);
        float gradScale = double.IsFinite(gradNorm) && gradNorm > Config.GradClipNorm ? (float)(Config.GradClipNorm / gradNorm) : 1f;
        var step = new AdafactorStep(lr, Config.Beta1, Config.Beta2(k), Config.Epsilon1, Config.Epsilon2,
                                     Config.UpdateClip, gradScale, MathF.Pow(lr, Config.WeightDecayExponent));
        foreach (var (p, s) in _state)
            _be.AdafactorUpdate(p.Value, p.Grad, s, p.Rows, p.Cols, step);
        return lr;
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

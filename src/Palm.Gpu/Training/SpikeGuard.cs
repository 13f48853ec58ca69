namespace Palm.Gpu.Training;

/// <summary>Settings of the loss-spike guard; defaults argued in the README.</summary>
public sealed record SpikeGuardConfig
{
    public bool Enabled { get; init; } = true;
    public int Window { get; init; } = 50;              // recent steps forming the robust baseline
    public int MinHistory { get; init; } = 20;          // steps needed before a finite loss can be called a spike
    public double MadThreshold { get; init; } = 8;      // loss > median + k·1.4826·MAD …
    public double MinRelativeRise { get; init; } = 0.2; // … and > median·(1 + r): ignore noise on a flat curve
    // or grad norm > f·median grad norm. 50, not 20: on the small preset at lr 0.6 with clipping off, a
    // single harmless step at 25× the median grad norm (loss within noise, the next step normal) occurred,
    // while the real divergence (docs/runs/README.md) was caught by the loss rule; injected or bad-batch
    // gradients are hundreds of times the median and non-finite ones are always caught.
    public double GradNormFactor { get; init; } = 50;
    public long RollbackSteps { get; init; } = 100;     // restore the newest checkpoint at or before spike − this
    public long SkipMargin { get; init; } = 100;        // batches skipped beyond the spike step
    public long MinSkip { get; init; } = 200;           // PaLM: 200–500 batches
    public long MaxSkip { get; init; } = 500;
    public int MaxRollbacks { get; init; } = 5;          // stop rather than loop

    public void Validate()
    {
        if (Window < 2 || MinHistory < 2 || MinHistory > Window)
            throw new Model.ConfigException($"spike guard: need 2 ≤ min-history ({MinHistory}) ≤ window ({Window})");
        if (MinSkip < 1 || MaxSkip < MinSkip)
            throw new Model.ConfigException($"spike guard: need 1 ≤ min-skip ({MinSkip}) ≤ max-skip ({MaxSkip})");
        if (RollbackSteps < 0 || MaxRollbacks < 0 || MadThreshold <= 0 || GradNormFactor <= 1)
            throw new Model.ConfigException("spike guard: rollback steps and max rollbacks must be ≥ 0, the MAD threshold > 0 and the grad-norm factor > 1");
    }
}

/// <summary>Why a step was judged a spike, or null when it was not.</summary>
public sealed record SpikeVerdict(string Reason, double Median, double Threshold);

/// <summary>
/// Detects loss spikes over a window of recent steps: a non-finite loss or gradient norm always
/// counts; otherwise a loss far above the window's robust centre (median + k·MAD, and at least a
/// relative rise) or a gradient norm many times its median. The window is part of the checkpoint
/// so that a resumed run makes the same decisions.
/// </summary>
public sealed class SpikeDetector(SpikeGuardConfig config)
{
    readonly List<double> _losses = [];
    readonly List<double> _gradNorms = [];

    public IReadOnlyList<double> Losses => _losses;
    public IReadOnlyList<double> GradNorms => _gradNorms;

    public SpikeVerdict? Check(double loss, double gradNorm)
    {
        if (!double.IsFinite(loss)) return new SpikeVerdict($"non-finite loss {loss}", double.NaN, double.NaN);
        if (!double.IsFinite(gradNorm)) return new SpikeVerdict($"non-finite gradient norm {gradNorm}", double.NaN, double.NaN);
        if (_losses.Count < config.MinHistory) return null;
        double median = Statistics.Median(_losses);
        double mad = 1.4826 * Statistics.Median(_losses.Select(x => Math.Abs(x - median)));
        double threshold = Math.Max(median + config.MadThreshold * mad, median * (1 + config.MinRelativeRise));
        if (loss > threshold)
            return new SpikeVerdict($"loss {loss:F4} above {threshold:F4} (median {median:F4} + {config.MadThreshold}·MAD {mad:F4})", median, threshold);
        double gMedian = Statistics.Median(_gradNorms);
        if (gradNorm > config.GradNormFactor * gMedian)
            return new SpikeVerdict($"gradient norm {gradNorm:G4} above {config.GradNormFactor}× its median {gMedian:G4}", gMedian, config.GradNormFactor * gMedian);
        return null;
    }

    /// <summary>Adds a healthy step to the window.</summary>
    public void Record(double loss, double gradNorm)
    {
        _losses.Add(loss);
        _gradNorms.Add(gradNorm);
        if (_losses.Count > config.Window) { _losses.RemoveAt(0); _gradNorms.RemoveAt(0); }
    }

    public void Restore(IEnumerable<double> losses, IEnumerable<double> gradNorms)
    {
        _losses.Clear(); _gradNorms.Clear();
        _losses.AddRange(losses); _gradNorms.AddRange(gradNorms);
    }
}

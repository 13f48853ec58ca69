using System.Diagnostics;
using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.Model;
using Palm.Gpu.Training;

namespace Palm.Gpu.Research;

/// <summary>Memory of a benchmarked model: what the backend held at its peak, and how that splits.</summary>
public sealed record MemoryUse(long HighWaterBytes, long ParameterBytes, long GradientBytes, long OptimizerBytes, long ActivationBytes, long ProcessPeakBytes);

/// <summary>
/// What `palm bench` measures: the mean and best step time of plain timed steps (headline tokens/s and
/// MFU), then a separate profiled pass for the per-kernel breakdown (forward, backward, optimizer,
/// collectives) and the device memory high-water mark.
/// </summary>
public sealed record StepBenchmarkResult(
    ModelConfig Config, int Batch, long Parameters, string Backend, string Device,
    double[] StepSeconds, double FlopsPerToken, double PeakGflops,
    IReadOnlyList<OpProfile> Ops, int ProfiledSteps, double ProfiledStepSeconds, MemoryUse Memory, double HostSyncsPerStep)
{
    public long TokensPerStep => (long)Batch * Config.SeqLen;
    public double MeanStepSeconds => StepSeconds.Average();
    public double TokensPerSecond => TokensPerStep / MeanStepSeconds;
    public double AchievedGflops => TokensPerSecond * FlopsPerToken / 1e9;
    public double Mfu => AchievedGflops / PeakGflops;

    /// <summary>Per-step seconds of the kernels of one phase in the profiled pass.</summary>
    public double PhaseSeconds(ProfilePhase phase) => Ops.Where(o => o.Phase == phase).Sum(o => o.Seconds) / ProfiledSteps;
}

public static class StepBenchmark
{
    /// <summary>
    /// Builds the model on <paramref name="backend"/>, runs <paramref name="warmup"/> untimed and <paramref name="steps"/>
    /// timed steps on random tokens (counting the backend's host synchronisations), then <paramref name="profiledSteps"/>
    /// steps with a <see cref="BackendProfiler"/> attached, so every kernel is timed. Memory is the backend's high-water
    /// mark over what it held before the model was built.
    /// </summary>
    public static StepBenchmarkResult Run(IBackend backend, ModelConfig config, int batch, int warmup, int steps, int profiledSteps, double peakGflops)
    {
        if (batch < 1 || steps < 1 || warmup < 0 || profiledSteps < 0)
            throw new ConfigException("--batch and --steps must be ≥ 1, --warmup and --profile-steps ≥ 0");
        config.Validate();
        long before = Environment.WorkingSet;
        var prof = new BackendProfiler();
        long liveBefore = backend.LiveBytes;
        backend.ResetHighWater();
        using var model = new PalmModel(backend, config, batch);
        model.Initialize(1);
        using var opt = new AdafactorOptimizer(model, new AdafactorConfig());
        var rng = new SplitMix64(7);
        int n = batch * config.SeqLen;
        var inputs = new int[n];
        var targets = new int[n];
        for (int i = 0; i < n; i++) { inputs[i] = (int)(rng.Next() % (ulong)config.Vocab); targets[i] = (int)(rng.Next() % (ulong)config.Vocab); }

        long k = 0, syncs = 0;
        double Step()
        {
            var sw = Stopwatch.StartNew();
            long syncs0 = backend.HostSyncs;
            TrainStep.Run(model, opt, inputs, targets, batch, ++k, part => prof.Phase = part switch
            {
                StepPart.Forward => ProfilePhase.Forward,
                StepPart.Backward => ProfilePhase.Backward,
                StepPart.Optimizer => ProfilePhase.Optimizer,
                _ => ProfilePhase.Other,
            });
            prof.Phase = ProfilePhase.Other;
            syncs += backend.HostSyncs - syncs0;   // the step's own waits, not the timing's Synchronize below
            backend.Synchronize();
            return sw.Elapsed.TotalSeconds;
        }

        for (int i = 0; i < warmup; i++) Step();
        var times = new double[steps];
        syncs = 0;
        for (int i = 0; i < steps; i++) times[i] = Step();
        double syncsPerStep = (double)syncs / steps;

        backend.Profiler = prof;
        double profiled = 0;
        try
        {
            for (int i = 0; i < profiledSteps; i++) profiled += Step();
        }
        finally { backend.Profiler = null; }

        long paramBytes = model.Parameters.Sum(p => p.Value.Bytes);
        var memory = new MemoryUse(backend.HighWaterBytes - liveBefore, paramBytes, model.Parameters.Sum(p => p.Grad.Bytes), opt.StateBytes,
                                   model.ActivationBytes, Math.Max(System.Diagnostics.Process.GetCurrentProcess().PeakWorkingSet64, before));
        return new StepBenchmarkResult(config, batch, model.Schema.Count, backend.Name, backend.DeviceName, times,
                                       ModelMath.TrainingFlopsPerToken(config), peakGflops, prof.Snapshot(), profiledSteps,
                                       profiledSteps > 0 ? profiled / profiledSteps : double.NaN, memory, syncsPerStep);
    }
}

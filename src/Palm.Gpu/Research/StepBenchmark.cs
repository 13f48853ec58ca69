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
    public double MedianStepSeconds => Statistics.Median(StepSeconds);
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
        var (inputs, targets) = RandomBatch(config, batch);

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

    /// <summary>
    /// Several variants of a model (e.g. parallel and serial blocks) built side by side on one backend and stepped in turn
    /// — round r is one step of each, the first variant first in even rounds and last in odd ones — so that load from
    /// other processes and the machine's clock drift fall on every variant alike and their ratio is measured in one run.
    /// No profiled pass; memory is the backend's high-water mark with every variant built.
    /// </summary>
    public static IReadOnlyList<StepBenchmarkResult> Interleaved(IBackend backend, IReadOnlyList<ModelConfig> configs, int batch, int warmup, int steps, double peakGflops)
    {
        if (batch < 1 || steps < 1 || warmup < 0)
            throw new ConfigException("--batch and --steps must be ≥ 1, --warmup ≥ 0");
        if (configs.Count < 2) throw new ArgumentException("Interleaved needs at least two variants; use Run for one", nameof(configs));
        foreach (var c in configs) c.Validate();
        if (configs.Select(c => (c.SeqLen, c.Vocab)).Distinct().Count() != 1)
            throw new ArgumentException("the variants must share sequence length and vocabulary (the same tokens are fed to each)", nameof(configs));
        long before = Environment.WorkingSet, liveBefore = backend.LiveBytes;
        backend.ResetHighWater();
        var models = new List<(PalmModel Model, AdafactorOptimizer Opt)>();
        try
        {
            foreach (var c in configs)
            {
                var model = new PalmModel(backend, c, batch);
                models.Add((model, new AdafactorOptimizer(model, new AdafactorConfig())));
                model.Initialize(1);
            }
            var (inputs, targets) = RandomBatch(configs[0], batch);

            var times = configs.Select(_ => new double[steps]).ToArray();
            var syncs = new long[configs.Count];
            for (int round = 0; round < warmup + steps; round++)
                for (int j = 0; j < configs.Count; j++)
                {
                    int v = round % 2 == 0 ? j : configs.Count - 1 - j;
                    var sw = Stopwatch.StartNew();
                    long syncs0 = backend.HostSyncs;
                    TrainStep.Run(models[v].Model, models[v].Opt, inputs, targets, batch, round + 1, _ => { });
                    if (round >= warmup) syncs[v] += backend.HostSyncs - syncs0;
                    backend.Synchronize();
                    if (round >= warmup) times[v][round - warmup] = sw.Elapsed.TotalSeconds;
                }

            var memory = new MemoryUse(backend.HighWaterBytes - liveBefore, models.Sum(m => m.Model.Parameters.Sum(p => p.Value.Bytes)),
                                       models.Sum(m => m.Model.Parameters.Sum(p => p.Grad.Bytes)), models.Sum(m => m.Opt.StateBytes),
                                       models.Sum(m => m.Model.ActivationBytes), Math.Max(Process.GetCurrentProcess().PeakWorkingSet64, before));
            return [.. configs.Select((c, v) => new StepBenchmarkResult(c, batch, models[v].Model.Schema.Count, backend.Name, backend.DeviceName, times[v],
                                                                        ModelMath.TrainingFlopsPerToken(c), peakGflops, [], 0, double.NaN, memory,
                                                                        (double)syncs[v] / steps))];
        }
        finally
        {
            foreach (var (model, opt) in models) { opt.Dispose(); model.Dispose(); }
        }
    }

    /// <summary>The benchmark's tokens: uniform ids in [0, V) for inputs and targets, the same for every run (seed 7).</summary>
    static (int[] Inputs, int[] Targets) RandomBatch(ModelConfig config, int batch)
    {
        var rng = new SplitMix64(7);
        int n = batch * config.SeqLen;
        var inputs = new int[n];
        var targets = new int[n];
        for (int i = 0; i < n; i++) { inputs[i] = (int)(rng.Next() % (ulong)config.Vocab); targets[i] = (int)(rng.Next() % (ulong)config.Vocab); }
        return (inputs, targets);
    }
}

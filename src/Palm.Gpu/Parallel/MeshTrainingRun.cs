using System.Diagnostics;
using Palm.Gpu.Data;
using Palm.Gpu.Model;
using Palm.Gpu.Training;

namespace Palm.Gpu.Sharding;

/// <summary>
/// `palm train --mesh DxM [--shard-weights]`: the same tokenizer, data, batch schedule and seed as
/// <see cref="Trainer"/>, trained on a device mesh. Every input (mesh shape against heads, d_ff,
/// vocabulary and every batch of the schedule; device count) is checked before anything is allocated.
/// Checkpoints, the spike guard and evaluation stay with the single-device Trainer.
/// </summary>
public sealed class MeshTrainingRun : IDisposable
{
    readonly BatchSampler _sampler;
    readonly DataCursor _cursor = new();
    readonly int[] _inputs, _targets;

    public MeshTrainingRun(ModelConfig requested, TrainOptions options, bool vocabFromTokenizer, string mesh, bool shardWeights)
    {
        var (data, model) = DeviceMesh.Parse(mesh);
        Options = options;
        Schedule = BatchSchedule.Parse(options.BatchSchedule);
        if (options.Steps < 0) throw new ConfigException($"--steps must be ≥ 0, got {options.Steps}");
        (Tokenizer, Config) = RunInputs.ResolveModel(requested, options, vocabFromTokenizer);
        DeviceMesh.Validate(Config, data, model, Schedule.Max);
        foreach (int b in Schedule.Sizes)
        {
            if (b % data != 0)
                throw new ConfigException($"data axis {data} of mesh {data}x{model} does not divide the batch of {b} sequences in the schedule '{options.BatchSchedule}'; use batches that are multiples of {data}");
        }
        if (options.Optimizer.Factored && (model > 1 || shardWeights))
            throw new ConfigException("factored Adafactor needs whole tensors; on a model axis > 1 or with --shard-weights train unfactored (PaLM's setting)");

        Dataset = RunInputs.LoadDataset(Config, Tokenizer, options, Schedule);
        try
        {
            Mesh = DeviceMesh.Create(options.Backend, data, model, options.Threads > 0 ? Math.Max(1, options.Threads / (data * model)) : 0);
            Trainer = new MeshTrainer(Mesh, Config, Schedule.Max, options.Optimizer, options.Seed, shardWeights);
        }
        catch
        {
            Mesh?.Dispose();
            Dataset.Dispose();
            throw;
        }
        _sampler = new BatchSampler(Dataset, options.Seed);
        _inputs = new int[Schedule.Max * Config.SeqLen];
        _targets = new int[Schedule.Max * Config.SeqLen];
    }

    public ModelConfig Config { get; }
    public TrainOptions Options { get; }
    public BatchSchedule Schedule { get; }
    public ITokenizer Tokenizer { get; }
    public PackedDataset Dataset { get; }
    public DeviceMesh Mesh { get; }
    public MeshTrainer Trainer { get; }
    public long Step => Trainer.Step;

    /// <summary>One optimizer step on the next batch of the Trainer's deterministic order.</summary>
    public StepMetrics TrainStep(Stopwatch? runClock = null)
    {
        var sw = Stopwatch.StartNew();
        long batchIndex = _sampler.NextBatch(_cursor, Schedule.At, _inputs, _targets);
        int batch = Schedule.At(batchIndex);
        int n = batch * Config.SeqLen;
        float lr = Options.Optimizer.LearningRate(Trainer.Step + 1);
        var (loss, norm) = Trainer.TrainStep(_inputs.AsSpan(0, n), _targets.AsSpan(0, n), batch);
        foreach (var d in Mesh.Devices) d.Synchronize();
        double seconds = sw.Elapsed.TotalSeconds;
        double tps = n / seconds;
        double mfu = Options.PeakGflops > 0 ? tps * ModelMath.TrainingFlopsPerToken(Config) / (Options.PeakGflops * 1e9 * Mesh.Size) : double.NaN;
        return new StepMetrics(Trainer.Step, loss.CrossEntropy, loss.ZLoss, norm, lr, batch, n, tps, mfu, seconds,
                               runClock?.Elapsed.TotalSeconds ?? seconds, batchIndex);
    }

    /// <summary>Trains until <paramref name="untilStep"/> steps are done.</summary>
    public void Run(long untilStep, Action<StepMetrics>? onStep = null)
    {
        var clock = Stopwatch.StartNew();
        while (Trainer.Step < untilStep) onStep?.Invoke(TrainStep(clock));
    }

    public void Dispose()
    {
        Trainer.Dispose();
        Mesh.Dispose();
        Dataset.Dispose();
    }
}

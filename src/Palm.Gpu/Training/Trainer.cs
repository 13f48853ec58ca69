using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.IO;
using Palm.Gpu.Model;

namespace Palm.Gpu.Training;

/// <summary>A training event for the log and metrics.jsonl: {"event": Kind, ...Details}.</summary>
public sealed record TrainingEvent(string Kind, JsonObject Details, string Message);

/// <summary>The spike guard gave up (too many rollbacks, or nothing to roll back to).</summary>
public sealed class SpikeGuardException(string message) : Exception(message);

/// <summary>
/// The training loop: deterministic batches → forward → backward → global norm → spike check →
/// Adafactor, with checkpoints and rollbacks, on one device or a mesh (<see cref="ITrainingEngine"/>). Every input is validated before anything is allocated or
/// written, so bad input never leaves a half run directory. The state that defines the future of a run
/// is exactly: weights, optimizer state, step, data cursor (with its skip ranges), the spike detector's
/// window and the rollback history — all of it in every checkpoint, so resuming is bit-identical.
/// </summary>
public sealed class Trainer : IDisposable
{
    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    readonly BatchSampler _sampler;
    DataCursor _cursor = new();
    readonly int[] _inputs, _targets;
    readonly SpikeDetector _detector;
    readonly List<RollbackEvent> _rollbacks = [];
    readonly long _injectBatch = -1;
    readonly float _injectFactor = 1;

    public Trainer(ModelConfig requested, TrainOptions options, bool vocabFromTokenizer) : this(requested, options, vocabFromTokenizer, knownPeakGflops: 0, initialize: true) { }

    /// <param name="knownPeakGflops">a peak measured earlier on the same devices (a resumed run's); &gt; 0 skips the measurement</param>
    /// <param name="initialize">draw PaLM's init; false when a checkpoint is loaded next (a resume)</param>
    Trainer(ModelConfig requested, TrainOptions options, bool vocabFromTokenizer, double knownPeakGflops, bool initialize)
    {
        Options = options;
        Schedule = Training.BatchSchedule.Parse(options.BatchSchedule);
        if (options.Steps < 0) throw new ConfigException($"--steps must be ≥ 0, got {options.Steps}");
        if (options.CheckpointEvery < 0) throw new ConfigException($"--checkpoint-every must be ≥ 0, got {options.CheckpointEvery}");
        if (options.CheckpointEvery > 0 && options.OutDir is null) throw new ConfigException("checkpoints need a run directory: pass --out");
        options.SpikeGuard.Validate();
        (_injectBatch, _injectFactor) = ParseInjection(options.InjectSpike);
        (Tokenizer, Config) = RunInputs.ResolveModel(requested, options, vocabFromTokenizer);
        Dataset = RunInputs.LoadDataset(Config, Tokenizer, options, Schedule);

        if (options.ShardWeights && options.Mesh is null) throw new ConfigException("--shard-weights needs --mesh DxM (it shards over the data axis D)");
        try
        {
            RunInputs.CheckMemory(Config, options, Schedule);
            Engine = Sharding.MeshTrainer.Create(Config, options, Schedule, options.Mesh, options.ShardWeights, initialize);
        }
        catch
        {
            Dataset.Dispose();
            throw;
        }
        _sampler = new BatchSampler(Dataset, options.Seed);
        _detector = new SpikeDetector(options.SpikeGuard);
        _inputs = new int[Schedule.Max * Config.SeqLen];
        _targets = new int[Schedule.Max * Config.SeqLen];
        FlopsPerToken = ModelMath.TrainingFlopsPerToken(Config);
        if (options.PeakGflops > 0) PeakGflops = options.PeakGflops;
        else PeakGflops = MeasuredPeakGflops = knownPeakGflops > 0 ? knownPeakGflops : Engine.MeasurePeakGflops();
        // Retention keeps what a rollback of this run's --rollback-steps needs.
        // Across processes: checkpoints are written together (each process its shards, the leader the manifest), on a
        // channel of their own because saves run in the background; the stop request is agreed on its own channel too.
        _processes = Sharding.ProcessGroups.World is { Count: > 1 } world ? world.Duplicate() : null;
        Checkpoints = options.OutDir is null ? null
            : new CheckpointStore(Path.Combine(options.OutDir, "checkpoints"), new RetentionPolicy(KeepOneOlderThan: Math.Max(1, options.SpikeGuard.RollbackSteps)),
                                  _processes is null ? null : Sharding.ProcessGroups.World!.Duplicate());
    }

    readonly Sharding.IProcessGroup? _processes;

    /// <summary>Whether to stop after this step: the signal seen by any process stops every process at the same step.</summary>
    bool StopRequested(CancellationToken stop)
    {
        if (_processes is null) return stop.IsCancellationRequested;
        var all = new byte[_processes.Count];
        Sharding.ProcessGroups.AllGather<byte>(_processes, [(byte)(stop.IsCancellationRequested ? 1 : 0)], all);
        return all.Any(b => b != 0);
    }

    public ModelConfig Config { get; }
    public TrainOptions Options { get; }
    public BatchSchedule Schedule { get; }
    public ITokenizer Tokenizer { get; }
    public PackedDataset Dataset { get; }
    /// <summary>The devices, model and optimizer: one device or a mesh.</summary>
    public ITrainingEngine Engine { get; }
    public CheckpointStore? Checkpoints { get; }
    public double FlopsPerToken { get; }
    /// <summary>fp32 peak of all the run's devices together (MFU's denominator).</summary>
    public double PeakGflops { get; }
    /// <summary>The peak when it was measured (not given), kept in checkpoints so a resume on the same devices skips the benchmark.</summary>
    public double MeasuredPeakGflops { get; }
    /// <summary>Step of the newest checkpoint known to be complete on disk (−1: none yet).</summary>
    public long LastCheckpointStep { get; private set; } = -1;
    /// <summary>Checkpoint saves that failed, with the reason; later saves were still attempted.</summary>
    public IReadOnlyList<CheckpointResult> FailedCheckpoints => _failed;
    readonly List<CheckpointResult> _failed = [];
    /// <summary>Optimizer steps taken so far.</summary>
    public long Step { get; private set; }
    public DataCursor Cursor => _cursor;
    public IReadOnlyList<RollbackEvent> Rollbacks => _rollbacks;

    /// <summary>
    /// Trains until <paramref name="untilStep"/> steps are done, checkpointing and guarding against spikes.
    /// onStep sees every applied step; onEvent every checkpoint (once it is complete on disk), failed checkpoint,
    /// spike and rollback. When <paramref name="stop"/> is signalled the current step finishes and Run returns
    /// (Step &lt; untilStep tells the caller); see <see cref="SaveCheckpointNow"/> to keep that state.
    /// </summary>
    public void Run(long untilStep, Action<StepMetrics>? onStep = null, Action<TrainingEvent>? onEvent = null, Stopwatch? clock = null, CancellationToken stop = default)
    {
        clock ??= Stopwatch.StartNew();
        bool checkpointing = Checkpoints is not null && Options.CheckpointEvery > 0;
        if (checkpointing && Step == 0 && Checkpoints!.List().Count == 0) SaveCheckpoint(onEvent);
        while (Step < untilStep && !StopRequested(stop))
        {
            var (metrics, spike) = StepOnce(clock);
            if (spike is not null)
            {
                Rollback(metrics, spike, onEvent);
                continue;
            }
            onStep?.Invoke(metrics);
            ReportCheckpoints(onEvent);
            if (checkpointing && Step % Options.CheckpointEvery == 0) SaveCheckpoint(onEvent);
        }
        Checkpoints?.Flush();
        ReportCheckpoints(onEvent);
    }

    /// <summary>
    /// Writes a checkpoint of the current state now (synchronously) unless the newest complete one already is
    /// this step; returns its directory, or null (with a checkpoint_failed event) when it could not be written.
    /// </summary>
    public string? SaveCheckpointNow(Action<TrainingEvent>? onEvent = null)
    {
        if (Checkpoints is null) throw new InvalidOperationException("this trainer has no run directory (TrainOptions.OutDir) to checkpoint into");
        Checkpoints.Flush();
        ReportCheckpoints(onEvent);
        string path = Path.Combine(Checkpoints.Directory, CheckpointStore.NameFor(Step));
        if (LastCheckpointStep == Step) return path;
        try
        {
            path = Checkpoints.Save(Snapshot());
            Report(new CheckpointResult(Step, path, null), onEvent);
            return path;
        }
        catch (IOException e)
        {
            Report(new CheckpointResult(Step, path, e), onEvent);
            return null;
        }
    }

    void ReportCheckpoints(Action<TrainingEvent>? onEvent)
    {
        if (Checkpoints is null) return;
        foreach (var r in Checkpoints.TakeFinished()) Report(r, onEvent);
    }

    void Report(CheckpointResult r, Action<TrainingEvent>? onEvent)
    {
        if (r.Error is null)
        {
            LastCheckpointStep = Math.Max(LastCheckpointStep, r.Step);
            onEvent?.Invoke(new TrainingEvent("checkpoint", new JsonObject { ["step"] = r.Step, ["path"] = r.Path }, $"checkpoint at step {r.Step}"));
            return;
        }
        _failed.Add(r);
        string next = Options.CheckpointEvery > 0 ? $"training goes on and the next checkpoint (step {(r.Step / Options.CheckpointEvery + 1) * Options.CheckpointEvery}) will be attempted as usual" : "training goes on";
        string msg = $"{r.Error.Message}; {next}";
        onEvent?.Invoke(new TrainingEvent("checkpoint_failed", new JsonObject { ["step"] = r.Step, ["error"] = r.Error.Message }, msg));
    }

    /// <summary>Runs one optimizer step without the spike guard (the guard lives in Run); returns its metrics.</summary>
    public StepMetrics TrainStep(Stopwatch? runClock = null)
    {
        var (m, _) = StepOnce(runClock, guard: false);
        return m;
    }

    (StepMetrics Metrics, SpikeVerdict? Spike) StepOnce(Stopwatch? runClock, bool guard = true)
    {
        var sw = Stopwatch.StartNew();
        // The batch-size schedule is keyed by batch index: equal to the step until a rollback skips batches.
        long batchIndex = _sampler.NextBatch(_cursor, Schedule.At, _inputs, _targets);
        int batch = Schedule.At(batchIndex);
        int n = batch * Config.SeqLen;
        var (loss, gradNorm) = Engine.ComputeGradients(_inputs.AsSpan(0, n), _targets.AsSpan(0, n), batch, batchIndex == _injectBatch ? _injectFactor : 1f);
        var spike = guard && Options.SpikeGuard.Enabled ? _detector.Check(loss.CrossEntropy, gradNorm) : null;
        // Without the guard a non-finite step would turn every weight into NaN and training would go on
        // regardless: stop before the update instead, with the weights of the last good step intact.
        if (guard && !Options.SpikeGuard.Enabled && !(double.IsFinite(loss.CrossEntropy) && double.IsFinite(gradNorm)))
            throw new SpikeGuardException($"step {Step + 1}: the loss ({loss.CrossEntropy}) or gradient norm ({gradNorm}) is not finite and --no-spike-guard is set; " +
                                          $"the update was not applied and training stops (the weights are those after step {Step}). Lower the learning rate, or train with the spike guard on");
        float lr = Options.Optimizer.LearningRate(Step + 1);
        if (spike is null)
        {
            Engine.ApplyUpdate(Step + 1, gradNorm);
            _detector.Record(loss.CrossEntropy, gradNorm);
        }
        Engine.Synchronize();
        Step++;
        double seconds = sw.Elapsed.TotalSeconds;
        double tps = n / seconds;
        var metrics = new StepMetrics(Step, loss.CrossEntropy, loss.ZLoss, gradNorm, lr, batch, n, tps,
                                      tps * FlopsPerToken / (PeakGflops * 1e9), seconds, runClock?.Elapsed.TotalSeconds ?? seconds, batchIndex);
        return (metrics, spike);
    }

    void Rollback(StepMetrics at, SpikeVerdict spike, Action<TrainingEvent>? onEvent)
    {
        var g = Options.SpikeGuard;
        long spikeStep = at.Step;
        if (_rollbacks.Count >= g.MaxRollbacks)
            throw new SpikeGuardException($"loss spike at step {spikeStep} ({spike.Reason}) after {_rollbacks.Count} rollbacks, the configured maximum; stopping instead of looping. Lower the learning rate or inspect the data around batch {at.BatchIndex}.");
        if (Checkpoints is null || Options.CheckpointEvery == 0)
            throw new SpikeGuardException($"loss spike at step {spikeStep} ({spike.Reason}) and no checkpoints to roll back to; train with --out and --checkpoint-every N (e.g. 50) so the spike guard can restore an earlier state");
        Checkpoints.Flush();
        ReportCheckpoints(onEvent);
        Action<string> warn = w => onEvent?.Invoke(new TrainingEvent("warning", new JsonObject { ["message"] = w }, w));
        // Early in a run there may be nothing that old: then the oldest checkpoint (step 0) is the best there is.
        var target = Checkpoints.LoadLatestValid(spikeStep - g.RollbackSteps, warn) ?? Checkpoints.LoadOldestValid(warn);
        if (target is null)
            throw new SpikeGuardException($"loss spike at step {spikeStep} ({spike.Reason}) but no valid checkpoint at or before step {spikeStep - g.RollbackSteps}");
        var previous = _rollbacks.ToList();
        Restore(target, keepRollbacks: true);
        Checkpoints.DeleteAfter(Step);
        LastCheckpointStep = Step;   // the newer ones are gone; the restored one is the newest on disk
        // Skip the batches from the restored point through the spike plus a margin; repeated spikes widen it.
        long first = _cursor.Batch;
        long needed = at.BatchIndex - first + 1 + g.SkipMargin;
        long count = Math.Clamp((long)(needed * (1 + 0.5 * previous.Count)), g.MinSkip, g.MaxSkip);
        long last = first + count - 1;
        _cursor.AddSkip(first, last);
        var ev = new RollbackEvent(spikeStep, Step, first, last, spike.Reason);
        _rollbacks.Clear();
        _rollbacks.AddRange(previous);
        _rollbacks.Add(ev);
        onEvent?.Invoke(new TrainingEvent("rollback", new JsonObject
        {
            ["spike_step"] = spikeStep, ["restored_step"] = Step, ["skip_first"] = first, ["skip_last"] = last,
            ["skipped"] = count, ["spike_batch"] = at.BatchIndex, ["loss"] = Finite(at.Loss), ["grad_norm"] = Finite(at.GradNorm),
            ["reason"] = spike.Reason, ["rollbacks"] = _rollbacks.Count,
        }, $"loss spike at step {spikeStep}: {spike.Reason}; rolled back to step {Step} and skipping batches {first}..{last} ({count} batches)"));
    }

    static JsonNode? Finite(double x) => double.IsFinite(x) ? JsonValue.Create(x) : JsonValue.Create(x.ToString());

    /// <summary>Host snapshot of the full training state (taken between steps; writing can happen in the background).</summary>
    public TrainingSnapshot Snapshot()
    {
        var manifest = new CheckpointManifest
        {
            Step = Step,
            Model = JsonSerializer.SerializeToNode(Config, Json),
            Training = JsonSerializer.SerializeToNode(Options, Json),
            Cursor = JsonNode.Parse(_cursor.ToJson()),
            Mesh = Engine.Mesh,
            ShardWeights = Engine.ShardWeights,
            Layout = Engine.Layout?.ToDictionary(),
            Backend = Engine.BackendName,
            RecentLosses = [.. _detector.Losses],
            RecentGradNorms = [.. _detector.GradNorms],
            Rollbacks = [.. _rollbacks],
            DataFingerprint = Dataset.Fingerprint(),
            MeasuredPeakGflops = MeasuredPeakGflops,
        };
        return new TrainingSnapshot(manifest, Engine.SnapshotShards());
    }

    void SaveCheckpoint(Action<TrainingEvent>? onEvent)
    {
        // One snapshot in memory at a time: wait for the previous save before taking the next one.
        Checkpoints!.WaitForPending();
        ReportCheckpoints(onEvent);
        Checkpoints.SaveInBackground(Snapshot());
    }

    /// <summary>Restores weights, optimizer state, step, data cursor, spike window and rollback history from a checkpoint.</summary>
    public void Restore(LoadedCheckpoint c, bool keepRollbacks = false)
    {
        var saved = c.Manifest.Model.Deserialize<ModelConfig>(Json)!;
        if (saved != Config)
            throw new ConfigException($"checkpoint '{c.Directory}' was written for a different model ({Describe(saved)}) than this run's ({Describe(Config)}); resume with the checkpoint's settings");
        // Full tensors, whatever mesh wrote them: the engine cuts them for its own mesh (resharding).
        Engine.Load(c.Weights, c.OptimizerState, c.Directory);
        Step = c.Manifest.Step;
        _cursor = c.Manifest.Cursor is null ? new DataCursor() : DataCursor.FromJson(c.Manifest.Cursor.ToJsonString());
        _detector.Restore(c.Manifest.RecentLosses, c.Manifest.RecentGradNorms);
        if (!keepRollbacks)
        {
            _rollbacks.Clear();
            _rollbacks.AddRange(c.Manifest.Rollbacks);
        }
    }

    /// <summary>
    /// A trainer that continues <paramref name="checkpoint"/>: the model, data order and optimizer are the checkpoint's,
    /// <paramref name="overrides"/> changes where and how the run goes on. The data is checked against the
    /// checkpoint's fingerprint, a peak measured on the same devices is reused, and the state is restored, so
    /// on the same mesh and backend the continuation is bit-identical to an uninterrupted run.
    /// </summary>
    public static Trainer Resume(LoadedCheckpoint checkpoint, ResumeOverrides? overrides = null)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        var m = checkpoint.Manifest;
        var config = m.Model.Deserialize<ModelConfig>(Json)!.Validate();
        var saved = m.Training.Deserialize<TrainOptions>(Json)!;
        var options = (overrides ?? new ResumeOverrides()).ApplyTo(saved);
        if (options.Data is { } data && !File.Exists(data) && !System.IO.Directory.Exists(data))
            throw new DataException($"the data this run trained on, '{data}', is not there; pass --data with its new location (its contents are checked against the checkpoint)");
        bool sameDevices = options.Backend == saved.Backend && options.Device == saved.Device && (options.Mesh ?? "1x1") == (saved.Mesh ?? "1x1") && options.Threads == saved.Threads;
        var t = new Trainer(config, options, vocabFromTokenizer: false, knownPeakGflops: sameDevices ? m.MeasuredPeakGflops : 0, initialize: false);
        try
        {
            if (m.DataFingerprint is { } expected && t.Dataset.Fingerprint() != expected)
                throw new DataException($"the data '{options.Data ?? "(built-in corpus)"}' is not the data checkpoint '{checkpoint.Directory}' trained on (token fingerprint {t.Dataset.Fingerprint()[..12]}…, the checkpoint's {expected[..Math.Min(12, expected.Length)]}…); " +
                                        "the batches would differ from the run's, so it is refused: restore the original data, or start a new run");
            t.Restore(checkpoint);
            return t;
        }
        catch
        {
            t.Dispose();
            throw;
        }
    }

    static string Describe(ModelConfig c) =>
        $"vocab {c.Vocab}, d_model {c.DModel}, layers {c.Layers}, heads {c.Heads}, head_dim {c.HeadDim}, d_ff {c.DFf}, seq {c.SeqLen}, {c.Block}, {c.Attention}";

    /// <summary>Mean cross-entropy over (up to maxSequences of) the held-out split.</summary>
    public double Evaluate(int maxSequences = 64) => Engine.Evaluate(Dataset, heldOut: true, maxSequences);

    /// <summary>The resolved configuration of this run, as written to config.json.</summary>
    public JsonObject DescribeRun() => new()
    {
        ["model"] = JsonSerializer.SerializeToNode(Config, Json),
        ["training"] = JsonSerializer.SerializeToNode(Options, Json),
        ["tokenizer"] = new JsonObject { ["kind"] = Tokenizer.Kind, ["vocab_size"] = Tokenizer.VocabSize, ["vocabulary_hash"] = Tokenizer.VocabularyHash, ["path"] = Options.Tokenizer },
        ["data"] = new JsonObject { ["tokens"] = Dataset.TokenCount, ["train_sequences"] = Dataset.TrainSequences, ["eval_sequences"] = Dataset.EvalSequences },
        ["backend"] = new JsonObject { ["name"] = Engine.BackendName, ["device"] = Engine.DeviceDescription, ["devices"] = Engine.DeviceCount, ["peak_gflops"] = PeakGflops },
        ["mesh"] = Engine.Mesh,
        ["shard_weights"] = Engine.ShardWeights,
        ["parameters"] = Engine.ParameterCount,
        ["flops_per_token"] = FlopsPerToken,
    };

    static (long Batch, float Factor) ParseInjection(string? spec)
    {
        if (spec is null) return (-1, 1);
        var parts = spec.Split(':');
        if (parts.Length > 2 || !long.TryParse(parts[0], out long step) || step < 1 ||
            (parts.Length == 2 && (!float.TryParse(parts[1], System.Globalization.CultureInfo.InvariantCulture, out float f) || !(f > 0))))
            throw new ConfigException($"--inject-spike takes STEP[:FACTOR] with STEP ≥ 1 and FACTOR > 0, e.g. 300 or 300:1000; got '{spec}'");
        // Step S of an uninterrupted run draws batch S − 1; poisoning the batch (not the step) means a rollback that skips it does not meet it again.
        return (step - 1, parts.Length == 2 ? float.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture) : 1000f);
    }

    public void Dispose()
    {
        try { Checkpoints?.Flush(); }
        finally
        {
            Engine.Dispose();
            Dataset.Dispose();
        }
    }
}

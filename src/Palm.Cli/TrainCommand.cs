using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Palm.Gpu.IO;
using Palm.Gpu.Model;
using Palm.Gpu.Training;
using Spectre.Console;

namespace Palm.Cli;

/// <summary>`palm train`: data → tokenizer → packed sequences → Adafactor steps → run directory; resumable, spike-guarded.</summary>
internal static class TrainCommand
{
    public static Command Create()
    {
        var data = new Option<string?>("--data") { Description = "UTF-8 text file, directory, JSONL or token file (default: the built-in synthetic corpus)" };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "tokenizer file (tok.json or SentencePiece .model); default: bytes" };
        var preset = Cli.Preset();
        var steps = new Option<long?>("--steps") { Description = "train until this many optimizer steps are done (default 200)" };
        var batch = new Option<string>("--batch") { Description = "sequences per step, or a schedule \"0:4,100:8\"", DefaultValueFactory = _ => "4" };
        var seq = Cli.Seq();
        var vocab = new Option<int?>("--vocab") { Description = "model vocabulary (default: the tokenizer's, rounded up to 64)" };
        var seed = new Option<ulong>("--seed") { Description = "seed for init and data order", DefaultValueFactory = _ => 1 };
        var outDir = new Option<string>("--out") { Description = "run directory", DefaultValueFactory = _ => "runs/latest" };
        var block = Cli.Block();
        var attention = Cli.Attention();
        var remat = Cli.Remat();
        var threads = Cli.Threads();
        var backend = Cli.Backend();
        var device = Cli.Device();
        var factored = new Option<bool>("--factored") { Description = "factored Adafactor second moments (less optimizer memory)" };
        var lr = new Option<float>("--lr") { Description = "peak learning rate (PaLM: 0.01)", DefaultValueFactory = _ => 1e-2f };
        var warmup = new Option<int>("--warmup-steps") { Description = "steps at the peak rate before it falls as 1/√step (PaLM: 10000)", DefaultValueFactory = _ => 10_000 };
        var updateClip = new Option<float>("--update-clip") { Description = "Adafactor update clipping: cap the RMS of each tensor's update at D (PaLM: 1; 0 = off)", DefaultValueFactory = _ => 1f };
        var gradClip = new Option<float>("--grad-clip") { Description = "clip the global gradient norm to NORM (PaLM: 1; 0 = off)", DefaultValueFactory = _ => 1f };
        var decayExponent = new Option<float>("--weight-decay-exponent") { Description = "dynamic weight decay lr^E per step (PaLM: 2; 0 = no weight decay)", DefaultValueFactory = _ => 2f };
        var beta2Decay = new Option<float>("--beta2-decay") { Description = "second-moment decay β2 = 1 − step^−C (PaLM: 0.8; larger C = longer memory)", DefaultValueFactory = _ => 0.8f };
        var peak = Cli.PeakGflops();
        var checkpointEvery = new Option<long>("--checkpoint-every") { Description = "write a checkpoint every N steps under RUN/checkpoints (0 = none)" };
        var resume = new Option<string?>("--resume") { Description = "continue from a checkpoint directory, or 'latest' (newest valid one under RUN/checkpoints)" };
        var inject = new Option<string?>("--inject-spike") { Description = "fault injection: STEP[:FACTOR] scales the loss gradient of that step's batch (default factor 1000)" };
        var noGuard = new Option<bool>("--no-spike-guard") { Description = "disable the loss-spike guard" };
        var rollbackSteps = new Option<long>("--rollback-steps") { Description = "restore a checkpoint at least this many steps before a spike", DefaultValueFactory = _ => 100 };
        var skipMin = new Option<long>("--skip-min") { Description = "fewest batches skipped after a rollback", DefaultValueFactory = _ => 200 };
        var skipMax = new Option<long>("--skip-max") { Description = "most batches skipped after a rollback", DefaultValueFactory = _ => 500 };
        var maxRollbacks = new Option<int>("--max-rollbacks") { Description = "stop after this many rollbacks", DefaultValueFactory = _ => 5 };
        var overwrite = new Option<bool>("--overwrite") { Description = "replace the run already in --out (its config, metrics, model and checkpoints; other files stay)" };
        var cmd = new Command("train", "train a model and write RUN/{config.json, metrics.jsonl, model.safetensors, checkpoints/}")
        {
            data, tokenizer, preset, steps, batch, seq, vocab, seed, outDir, block, attention, remat, threads, backend, device, factored, lr,
            warmup, updateClip, gradClip, decayExponent, beta2Decay, peak, checkpointEvery, resume, inject, noGuard, rollbackSteps, skipMin, skipMax, maxRollbacks,
            overwrite,
        };
        var shape = new Cli.ShapeOptions();
        foreach (var o in shape.All) cmd.Options.Add(o);
        var mesh = new MeshOptions();
        foreach (var o in mesh.All) cmd.Options.Add(o);
        cmd.SetAction(r => Cli.Run(() =>
        {
            bool Given(Option o) => r.GetResult(o) is { Implicit: false };
            var guard = new SpikeGuardConfig
            {
                Enabled = !r.GetValue(noGuard), RollbackSteps = r.GetValue(rollbackSteps), MinSkip = r.GetValue(skipMin),
                MaxSkip = r.GetValue(skipMax), MaxRollbacks = r.GetValue(maxRollbacks),
            };
            var meshShape = mesh.Parse(r);
            if (r.GetValue(resume) is null || Given(backend)) Cli.CheckDevice(r.GetValue(backend)!, r.GetValue(device), Given(device));
            string? FullPath(string? p) => p is null ? null : Path.GetFullPath(p);
            string dir = r.GetValue(outDir)!;
            if (r.GetValue(resume) is { } from)
            {
                if (r.GetValue(overwrite)) throw new ConfigException("--overwrite starts a new run; it cannot be combined with --resume");
                // What defines the model, the data order and the optimizer comes from the checkpoint; where and how
                // the run goes on (steps, devices, checkpoint cadence, the guard) may change. --data may give the same
                // data at a new path (its fingerprint is checked).
                var fixedByCheckpoint = new Option[] { preset, seq, vocab, block, attention, remat, factored, lr, warmup, updateClip, gradClip, decayExponent, beta2Decay,
                                                       tokenizer, batch, seed }.Concat(shape.All).Where(Given).Select(o => o.Name).ToList();
                if (fixedByCheckpoint.Count > 0)
                    throw new ConfigException($"--resume takes the model, data and optimizer settings from the checkpoint; drop {string.Join(", ", fixedByCheckpoint)} (a checkpoint from an incompatible config cannot be continued)");
                var overrides = new ResumeOverrides
                {
                    Steps = r.GetValue(steps),
                    Data = Given(data) ? FullPath(r.GetValue(data)) : null,
                    Threads = r.GetValue(threads),
                    PeakGflops = r.GetValue(peak) > 0 ? r.GetValue(peak) : null,
                    Backend = Given(backend) ? r.GetValue(backend)! : null,
                    Device = Given(device) ? r.GetValue(device) : null,
                    CheckpointEvery = Given(checkpointEvery) ? r.GetValue(checkpointEvery) : null,
                    InjectSpike = Given(inject) ? r.GetValue(inject) : null,
                    SpikeGuardEnabled = Given(noGuard) ? guard.Enabled : null,
                    RollbackSteps = Given(rollbackSteps) ? guard.RollbackSteps : null,
                    MinSkip = Given(skipMin) ? guard.MinSkip : null,
                    MaxSkip = Given(skipMax) ? guard.MaxSkip : null,
                    MaxRollbacks = Given(maxRollbacks) ? guard.MaxRollbacks : null,
                    Mesh = meshShape is null ? null : r.GetValue(mesh.Mesh),
                    ShardWeights = meshShape is null ? null : r.GetValue(mesh.ShardWeights),
                    Collectives = Given(mesh.Collectives) ? mesh.Transport(r) : null,
                };
                return Resume(from, Given(outDir) ? dir : null, overrides);
            }
            var config = shape.Apply(Cli.Resolve(r.GetValue(preset)!, r.GetValue(block), r.GetValue(attention), r.GetValue(remat), r.GetValue(seq), r.GetValue(vocab)), r);
            var optimizer = new AdafactorConfig
            {
                Factored = r.GetValue(factored), PeakLearningRate = r.GetValue(lr), WarmSteps = r.GetValue(warmup),
                UpdateClip = r.GetValue(updateClip), GradClipNorm = r.GetValue(gradClip),
                WeightDecayExponent = r.GetValue(decayExponent), Beta2DecayExponent = r.GetValue(beta2Decay),
            }.Validate();
            var options = new TrainOptions
            {
                // Stored as full paths, so a run resumes from any working directory.
                Data = FullPath(r.GetValue(data)),
                Tokenizer = FullPath(r.GetValue(tokenizer)),
                Steps = r.GetValue(steps) ?? 200,
                BatchSchedule = r.GetValue(batch)!,
                Seed = r.GetValue(seed),
                Backend = r.GetValue(backend)!,
                Device = r.GetValue(device),
                Mesh = meshShape is null ? null : r.GetValue(mesh.Mesh),
                ShardWeights = r.GetValue(mesh.ShardWeights),
                Collectives = mesh.Transport(r),
                Threads = r.GetValue(threads),
                OutDir = dir,
                PeakGflops = r.GetValue(peak),
                Optimizer = optimizer,
                CheckpointEvery = r.GetValue(checkpointEvery),
                SpikeGuard = guard,
                InjectSpike = r.GetValue(inject),
            };
            bool vocabFromTokenizer = r.GetValue(vocab) is null;
            // An existing directory is locked before it is inspected, so two trains never decide on it at once.
            // In a multi-process job the leader holds the lock and writes the run's files; every process inspects.
            bool existed = Directory.Exists(dir);   // the same answer on every process: nothing has been written yet
            using var held = existed ? Cli.LeaderOnly(() => RunDirectory.Lock(dir)) : null;
            var state = RunDirectory.Inspect(dir);
            if (state == RunDirectory.State.HasCheckpoints && !r.GetValue(overwrite))
                return Rerun(dir, config, options, vocabFromTokenizer);
            if (state == RunDirectory.State.HasRun && !r.GetValue(overwrite))
                throw new ConfigException($"'{dir}' already holds a run ({Describe(dir)}) and no checkpoints to continue it from; choose a new --out, or pass --overwrite to replace it");
            using var trainer = new Trainer(config, options, vocabFromTokenizer);
            // Only now, with every input validated, is anything removed or written.
            using var mine = existed ? null : Cli.LeaderOnly(() => RunDirectory.Lock(dir));
            if (state != RunDirectory.State.Empty && Cli.Leads) RunDirectory.RemoveRun(dir);
            return Run(trainer, resumed: false);
        }));
        return cmd;
    }

    /// <summary>What an existing run directory holds, for messages.</summary>
    static string Describe(string dir)
    {
        string model = Path.Combine(dir, "model.safetensors");
        if (File.Exists(model))
        {
            try { return $"a model.safetensors from step {ModelWeights.ReadMetadata(model).GetValueOrDefault("step", "?")}"; }
            catch (Exception e) when (e is IOException or InvalidDataException) { return "a model.safetensors"; }
        }
        return string.Join(", ", RunDirectory.RunFiles.Where(f => Path.Exists(Path.Combine(dir, f))));
    }

    /// <summary>
    /// The same command again into a run directory with checkpoints — what a job scheduler does after a preemption —
    /// continues the run from its newest valid checkpoint; a command that differs in what the checkpoint fixes is refused, naming the difference.
    /// </summary>
    static int Rerun(string dir, ModelConfig requested, TrainOptions options, bool vocabFromTokenizer)
    {
        var store = new CheckpointStore(Path.Combine(dir, "checkpoints"));
        var ckpt = store.LoadLatestValid(warn: w => Console.Error.WriteLine($"palm: warning: {w}"))
                   ?? throw new InvalidDataException($"'{dir}' holds checkpoints but none verifies (see above); pass --overwrite to start over, or choose a new --out");
        var (_, config) = RunInputs.ResolveModel(requested, options, vocabFromTokenizer);
        var diffs = RunDirectory.Differences(ckpt.Manifest, config, options);
        if (diffs.Count > 0)
            throw new ConfigException($"'{dir}' holds a run with other settings ({string.Join("; ", diffs)}); continue it with --resume latest, choose a new --out, or pass --overwrite to replace it");
        Console.Error.WriteLine($"palm: '{dir}' holds this run's checkpoints; continuing it (pass --overwrite to start over)");
        var overrides = new ResumeOverrides
        {
            Steps = options.Steps, Threads = options.Threads, PeakGflops = options.PeakGflops > 0 ? options.PeakGflops : null,
            Backend = options.Backend, Device = options.Device, Collectives = options.Collectives, CheckpointEvery = options.CheckpointEvery,
            InjectSpike = options.InjectSpike, SpikeGuardEnabled = options.SpikeGuard.Enabled, RollbackSteps = options.SpikeGuard.RollbackSteps,
            MinSkip = options.SpikeGuard.MinSkip, MaxSkip = options.SpikeGuard.MaxSkip, MaxRollbacks = options.SpikeGuard.MaxRollbacks,
            OutDir = dir, Data = options.Data,
        };
        return Continue(ckpt, overrides);
    }

    /// <summary>
    /// Continues a run from a checkpoint with its saved settings. On the same mesh and backend the result is
    /// bit-identical to an uninterrupted run; --mesh/--shard-weights load it onto another mesh (resharding).
    /// The run directory is --out when given; otherwise the run the checkpoint belongs to (RUN/checkpoints/step-N).
    /// </summary>
    static int Resume(string from, string? outDir, ResumeOverrides overrides)
    {
        LoadedCheckpoint ckpt;
        if (from == "latest")
        {
            string dir = outDir ?? "runs/latest";
            if (!Directory.Exists(dir))
                throw new ConfigException($"no checkpoints under '{Path.Combine(dir, "checkpoints")}'; train with --out {dir} --checkpoint-every N first");
            var held = Cli.LeaderOnly(() => RunDirectory.Lock(dir));
            try
            {
                var store = new CheckpointStore(Path.Combine(dir, "checkpoints"));
                if (store.List().Count == 0)
                    throw new ConfigException($"no checkpoints under '{store.Directory}'; train with --out {dir} --checkpoint-every N first");
                ckpt = store.LoadLatestValid(warn: w => Console.Error.WriteLine($"palm: warning: {w}"))
                       ?? throw new InvalidDataException($"no valid checkpoint under '{store.Directory}' (every one failed verification, see above)");
                return Continue(ckpt, overrides with { OutDir = dir });
            }
            finally { held?.Dispose(); }
        }
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(from));
        string? owner = Path.GetFileName(Path.GetDirectoryName(full)) == "checkpoints" ? Path.GetDirectoryName(Path.GetDirectoryName(full)) : null;
        string run = outDir ?? owner
            ?? throw new ConfigException($"'{from}' is not inside a run's checkpoints/ directory, so the run it continues is unknown; pass --out DIR for the continued run");
        var lockHeld = Cli.LeaderOnly(() => RunDirectory.Lock(run));
        try
        {
            ckpt = CheckpointStore.Load(full);
            // Continuing into another directory forks the run: that directory must not hold a run of its own.
            bool sameRun = owner is not null && Path.GetFullPath(run) == Path.GetFullPath(owner);
            if (!sameRun && RunDirectory.Inspect(run) != RunDirectory.State.Empty)
                throw new ConfigException($"'{run}' already holds a run; continue checkpoint '{from}' into an empty --out (or its own run directory)");
            return Continue(ckpt, overrides with { OutDir = run });
        }
        finally { lockHeld?.Dispose(); }
    }

    static int Continue(LoadedCheckpoint ckpt, ResumeOverrides overrides)
    {
        var saved = ckpt.Manifest.Training.Deserialize<TrainOptions>(Trainer.Json)!;
        using var trainer = Trainer.Resume(ckpt, overrides);
        var options = trainer.Options;
        string meshNow = options.Mesh ?? "1x1";
        if (meshNow != (saved.Mesh ?? "1x1") || options.ShardWeights != saved.ShardWeights)
            Console.Error.WriteLine($"palm: resharding: checkpoint written on mesh {ckpt.Manifest.Mesh}{(saved.ShardWeights ? " (fully sharded)" : "")}, continuing on {meshNow}{(options.ShardWeights ? " (fully sharded)" : "")}");
        if (options.Backend != saved.Backend || options.Device != saved.Device)
            Console.Error.WriteLine($"palm: continuing on {options.Backend} device {options.Device} (the checkpoint trained on {saved.Backend} device {saved.Device}); a run is bit-identical only on the backend it started on");
        Console.Error.WriteLine($"palm: resuming from {ckpt.Directory} at step {trainer.Step} (data batch {trainer.Cursor.Batch}, {trainer.Rollbacks.Count} earlier rollbacks)");
        return Run(trainer, resumed: true);
    }

    static int Run(Trainer trainer, bool resumed)
    {
        var options = trainer.Options;
        string outDir = options.OutDir!;
        Directory.CreateDirectory(outDir);
        bool leads = Cli.Leads;
        if (leads) AtomicFile.WriteText(Path.Combine(outDir, "config.json"), trainer.DescribeRun().ToJsonString(Trainer.Json));
        var c = trainer.Config;
        Console.Error.WriteLine($"palm: {trainer.Engine.ParameterCount:N0} parameters, {c.Layers} {c.Block.ToString().ToLowerInvariant()} blocks, " +
                                $"{trainer.Dataset.TrainSequences:N0} training sequences of {c.SeqLen} ({trainer.Tokenizer.Kind} tokenizer, vocab {c.Vocab}), " +
                                $"{trainer.Engine.DeviceDescription}, peak {trainer.PeakGflops:F0} GFLOP/s");

        string metricsPath = Path.Combine(outDir, "metrics.jsonl");
        using var metrics = leads ? new StreamWriter(metricsPath, append: resumed) { AutoFlush = true } : StreamWriter.Null;
        if (resumed) WriteEvent(metrics, new TrainingEvent("resume", new JsonObject { ["step"] = trainer.Step, ["batch"] = trainer.Cursor.Batch }, ""));
        var clock = Stopwatch.StartNew();
        StepMetrics? last = null;
        long total = options.Steps, startStep = trainer.Step;
        bool interactive = total > trainer.Step && !Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Interactive;
        long every = Math.Max(1, (total - startStep) / 50);

        // The first SIGINT/SIGTERM lets the current step finish, then the state is kept (a checkpoint and the model);
        // a second one ends the process at once.
        using var stop = new CancellationTokenSource();
        int signal = 0;
        void OnSignal(PosixSignalContext ctx)
        {
            int code = ctx.Signal == PosixSignal.SIGINT ? 130 : 143;
            if (Interlocked.CompareExchange(ref signal, code, 0) != 0) return;   // the second signal: the default action, termination
            ctx.Cancel = true;
            Console.Error.WriteLine($"palm: {(code == 130 ? "interrupted (SIGINT)" : "terminated (SIGTERM)")}: finishing step {trainer.Step + 1}, then saving a checkpoint and the model; send it again to stop at once without saving");
            stop.Cancel();
        }
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);

        void OnStep(StepMetrics m)
        {
            last = m;
            metrics.WriteLine(JsonSerializer.Serialize(m, MetricsJson));
            if (!interactive && (m.Step % every == 0 || m.Step == total || m.Step == startStep + 1))
            {
                double eta = (total - m.Step) * clock.Elapsed.TotalSeconds / Math.Max(1, m.Step - startStep);
                Console.WriteLine($"{Describe(m, total)}  eta {eta:F0}s");
            }
        }
        void OnEvent(TrainingEvent e)
        {
            if (e.Kind == "checkpoint_failed") Console.Error.WriteLine($"palm: warning: {e.Message}");
            else if (e.Kind != "checkpoint") Console.Error.WriteLine($"palm: {e.Kind}: {e.Message}");
            WriteEvent(metrics, e);
        }

        try
        {
            if (interactive)
            {
                AnsiConsole.Progress()
                    .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        var task = ctx.AddTask("starting", maxValue: total);
                        task.Value = trainer.Step;
                        trainer.Run(total, m => { OnStep(m); task.Description = Describe(m, total); task.Value = m.Step; }, OnEvent, clock, stop.Token);
                    });
            }
            else trainer.Run(total, OnStep, OnEvent, clock, stop.Token);
        }
        catch (SpikeGuardException e)
        {
            WriteEvent(metrics, new TrainingEvent("stopped", new JsonObject { ["step"] = trainer.Step, ["reason"] = e.Message }, e.Message));
            Console.Error.WriteLine($"palm: error: {e.Message}");
            return 3;
        }

        string weights = Path.Combine(outDir, "model.safetensors");
        var meta = new Dictionary<string, string> { ["tokenizer"] = options.Tokenizer ?? "bytes", ["step"] = trainer.Step.ToString() };
        if (signal != 0)
        {
            string? kept = trainer.SaveCheckpointNow(OnEvent);
            var gathered = trainer.Engine.GatherWeights();   // every process takes part; the leader writes
            if (leads) ModelWeights.Save(trainer.Config, gathered, weights, meta);
            string name = signal == 130 ? "SIGINT" : "SIGTERM";
            WriteEvent(metrics, new TrainingEvent("interrupted", new JsonObject { ["step"] = trainer.Step, ["signal"] = name, ["checkpoint"] = kept, ["elapsed_s"] = clock.Elapsed.TotalSeconds }, ""));
            Console.Error.WriteLine(kept is not null
                ? $"palm: stopped by {name} after step {trainer.Step}; kept checkpoint {kept} and {weights}; continue with: palm train --resume latest --out {outDir}"
                : $"palm: stopped by {name} after step {trainer.Step}; the checkpoint could not be written (see above), kept {weights}");
            return signal;
        }

        double evalLoss = trainer.Evaluate();
        var full = trainer.Engine.GatherWeights();   // every process takes part; the leader writes
        if (leads) ModelWeights.Save(trainer.Config, full, weights, meta);
        WriteEvent(metrics, new TrainingEvent("end", new JsonObject { ["step"] = trainer.Step, ["eval_loss"] = double.IsFinite(evalLoss) ? evalLoss : null, ["elapsed_s"] = clock.Elapsed.TotalSeconds, ["rollbacks"] = trainer.Rollbacks.Count, ["failed_checkpoints"] = trainer.FailedCheckpoints.Count }, ""));
        if (trainer.FailedCheckpoints.Count > 0)
            Console.Error.WriteLine($"palm: warning: {trainer.FailedCheckpoints.Count} checkpoint(s) could not be written (steps {string.Join(", ", trainer.FailedCheckpoints.Select(f => f.Step))}); " +
                                    $"every other one was, the newest complete one is step {trainer.LastCheckpointStep}");
        Console.WriteLine($"done: step {trainer.Step} in {clock.Elapsed.TotalSeconds:F1}s, train loss {last?.Loss ?? double.NaN:F4}, eval loss {evalLoss:F4}, {trainer.Rollbacks.Count} rollbacks; wrote {weights}");
        return 0;
    }

    static void WriteEvent(StreamWriter w, TrainingEvent e)
    {
        var o = new JsonObject { ["event"] = e.Kind };
        foreach (var (k, v) in e.Details) o[k] = v?.DeepClone();
        w.WriteLine(o.ToJsonString());
    }

    static string Describe(StepMetrics m, long total) =>
        $"step {m.Step}/{total}  loss {m.Loss:F4}  z {m.ZLoss:F5}  |g| {m.GradNorm:F3}  lr {m.Lr:G3}  {m.TokensPerS:F0} tok/s  MFU {100 * m.Mfu:F1}%";

    static readonly JsonSerializerOptions MetricsJson = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };
}

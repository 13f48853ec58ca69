using System.CommandLine;
using System.Diagnostics;
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
        var cmd = new Command("train", "train a model and write RUN/{config.json, metrics.jsonl, model.safetensors, checkpoints/}")
        {
            data, tokenizer, preset, steps, batch, seq, vocab, seed, outDir, block, attention, remat, threads, backend, device, factored, lr,
            warmup, updateClip, gradClip, decayExponent, beta2Decay, peak, checkpointEvery, resume, inject, noGuard, rollbackSteps, skipMin, skipMax, maxRollbacks,
        };
        var shape = new Cli.ShapeOptions();
        foreach (var o in shape.All) cmd.Options.Add(o);
        var mesh = new MeshOptions();
        foreach (var o in mesh.All) cmd.Options.Add(o);
        cmd.SetAction(r => Cli.Run(() =>
        {
            var guard = new SpikeGuardConfig
            {
                Enabled = !r.GetValue(noGuard), RollbackSteps = r.GetValue(rollbackSteps), MinSkip = r.GetValue(skipMin),
                MaxSkip = r.GetValue(skipMax), MaxRollbacks = r.GetValue(maxRollbacks),
            };
            var meshShape = mesh.Parse(r);
            if (r.GetValue(resume) is { } from)
            {
                bool Given(Option o) => r.GetResult(o) is { Implicit: false };
                // What defines the model, the data order and the optimizer comes from the checkpoint; where and how
                // the run goes on (steps, devices, checkpoint cadence, the guard) may change.
                var fixedByCheckpoint = new Option[] { preset, seq, vocab, block, attention, remat, factored, lr, warmup, updateClip, gradClip, decayExponent, beta2Decay,
                                                       data, tokenizer, batch, seed }.Concat(shape.All).Where(Given).Select(o => o.Name).ToList();
                TrainOptions Overrides(TrainOptions saved) => saved with
                {
                    Backend = Given(backend) ? r.GetValue(backend)! : saved.Backend,
                    Device = Given(device) ? r.GetValue(device) : saved.Device,
                    CheckpointEvery = Given(checkpointEvery) ? r.GetValue(checkpointEvery) : saved.CheckpointEvery,
                    InjectSpike = Given(inject) ? r.GetValue(inject) : saved.InjectSpike,
                    SpikeGuard = saved.SpikeGuard with
                    {
                        Enabled = Given(noGuard) ? guard.Enabled : saved.SpikeGuard.Enabled,
                        RollbackSteps = Given(rollbackSteps) ? guard.RollbackSteps : saved.SpikeGuard.RollbackSteps,
                        MinSkip = Given(skipMin) ? guard.MinSkip : saved.SpikeGuard.MinSkip,
                        MaxSkip = Given(skipMax) ? guard.MaxSkip : saved.SpikeGuard.MaxSkip,
                        MaxRollbacks = Given(maxRollbacks) ? guard.MaxRollbacks : saved.SpikeGuard.MaxRollbacks,
                    },
                    Mesh = meshShape is null ? saved.Mesh : r.GetValue(mesh.Mesh),
                    ShardWeights = meshShape is null ? saved.ShardWeights : r.GetValue(mesh.ShardWeights),
                    Collectives = Given(mesh.Collectives) ? mesh.Transport(r) : saved.Collectives,
                };
                return Resume(from, r.GetValue(outDir)!, r.GetValue(steps), r.GetValue(threads), r.GetValue(peak), fixedByCheckpoint, Overrides);
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
                Data = r.GetValue(data),
                Tokenizer = r.GetValue(tokenizer),
                Steps = r.GetValue(steps) ?? 200,
                BatchSchedule = r.GetValue(batch)!,
                Seed = r.GetValue(seed),
                Backend = r.GetValue(backend)!,
                Device = r.GetValue(device),
                Mesh = meshShape is null ? null : r.GetValue(mesh.Mesh),
                ShardWeights = r.GetValue(mesh.ShardWeights),
                Collectives = mesh.Transport(r),
                Threads = r.GetValue(threads),
                OutDir = r.GetValue(outDir),
                PeakGflops = r.GetValue(peak),
                Optimizer = optimizer,
                CheckpointEvery = r.GetValue(checkpointEvery),
                SpikeGuard = guard,
                InjectSpike = r.GetValue(inject),
            };
            string dir = options.OutDir!;
            if (Directory.Exists(Path.Combine(dir, "checkpoints")) && Directory.EnumerateDirectories(Path.Combine(dir, "checkpoints"), "step-*").Any())
                throw new ConfigException($"'{dir}' already holds checkpoints of a run; continue it with --resume latest, or choose a new --out");
            using var trainer = new Trainer(config, options, vocabFromTokenizer: r.GetValue(vocab) is null);
            return Run(trainer, resumed: false);
        }));
        return cmd;
    }

    /// <summary>
    /// Continues a run from a checkpoint with its saved settings. On the same mesh and backend the result is
    /// bit-identical to an uninterrupted run; --mesh/--shard-weights load it onto another mesh (resharding).
    /// </summary>
    static int Resume(string from, string outDir, long? steps, int threads, double peak, List<string> fixedByCheckpoint, Func<TrainOptions, TrainOptions> overrides)
    {
        var store = new CheckpointStore(Path.Combine(outDir, "checkpoints"));
        LoadedCheckpoint ckpt;
        if (from == "latest")
        {
            if (store.List().Count == 0)
                throw new ConfigException($"no checkpoints under '{store.Directory}'; train with --out {outDir} --checkpoint-every N first");
            ckpt = store.LoadLatestValid(warn: w => Console.Error.WriteLine($"palm: warning: {w}"))
                   ?? throw new InvalidDataException($"no valid checkpoint under '{store.Directory}' (every one failed verification, see above)");
        }
        else
        {
            ckpt = CheckpointStore.Load(from);
            // A checkpoint directory RUN/checkpoints/step-N belongs to the run RUN.
            outDir = Path.GetDirectoryName(Path.GetDirectoryName(Path.GetFullPath(from))!)!;
        }
        if (fixedByCheckpoint.Count > 0)
            throw new ConfigException($"--resume takes the model, data and optimizer settings from the checkpoint; drop {string.Join(", ", fixedByCheckpoint)} (a checkpoint from an incompatible config cannot be continued)");
        var config = ckpt.Manifest.Model.Deserialize<ModelConfig>(Trainer.Json)!.Validate();
        var saved = ckpt.Manifest.Training.Deserialize<TrainOptions>(Trainer.Json)!;
        var options = overrides(saved) with
        {
            Steps = steps ?? saved.Steps,
            OutDir = outDir,
            Threads = threads,
            PeakGflops = peak > 0 ? peak : saved.PeakGflops,
        };
        string meshNow = options.Mesh ?? "1x1";
        if (meshNow != (saved.Mesh ?? "1x1") || options.ShardWeights != saved.ShardWeights)
            Console.Error.WriteLine($"palm: resharding: checkpoint written on mesh {ckpt.Manifest.Mesh}{(saved.ShardWeights ? " (fully sharded)" : "")}, continuing on {meshNow}{(options.ShardWeights ? " (fully sharded)" : "")}");
        if (options.Backend != saved.Backend || options.Device != saved.Device)
            Console.Error.WriteLine($"palm: continuing on {options.Backend} device {options.Device} (the checkpoint trained on {saved.Backend} device {saved.Device}); a run is bit-identical only on the backend it started on");
        using var trainer = new Trainer(config, options, vocabFromTokenizer: false);
        trainer.Restore(ckpt);
        Console.Error.WriteLine($"palm: resuming from {ckpt.Directory} at step {trainer.Step} (data batch {trainer.Cursor.Batch}, {trainer.Rollbacks.Count} earlier rollbacks)");
        return Run(trainer, resumed: true);
    }

    static int Run(Trainer trainer, bool resumed)
    {
        var options = trainer.Options;
        string outDir = options.OutDir!;
        Directory.CreateDirectory(outDir);
        AtomicFile.WriteText(Path.Combine(outDir, "config.json"), trainer.DescribeRun().ToJsonString(Trainer.Json));
        var c = trainer.Config;
        Console.Error.WriteLine($"palm: {trainer.Engine.ParameterCount:N0} parameters, {c.Layers} {c.Block.ToString().ToLowerInvariant()} blocks, " +
                                $"{trainer.Dataset.TrainSequences:N0} training sequences of {c.SeqLen} ({trainer.Tokenizer.Kind} tokenizer, vocab {c.Vocab}), " +
                                $"{trainer.Engine.DeviceDescription}, peak {trainer.PeakGflops:F0} GFLOP/s");

        string metricsPath = Path.Combine(outDir, "metrics.jsonl");
        using var metrics = new StreamWriter(metricsPath, append: resumed) { AutoFlush = true };
        if (resumed) WriteEvent(metrics, new TrainingEvent("resume", new JsonObject { ["step"] = trainer.Step, ["batch"] = trainer.Cursor.Batch }, ""));
        var clock = Stopwatch.StartNew();
        StepMetrics? last = null;
        long total = options.Steps, startStep = trainer.Step;
        bool interactive = total > trainer.Step && !Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Interactive;
        long every = Math.Max(1, (total - startStep) / 50);

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
            if (e.Kind != "checkpoint") Console.Error.WriteLine($"palm: {e.Kind}: {e.Message}");
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
                        trainer.Run(total, m => { OnStep(m); task.Description = Describe(m, total); task.Value = m.Step; }, OnEvent, clock);
                    });
            }
            else trainer.Run(total, OnStep, OnEvent, clock);
        }
        catch (SpikeGuardException e)
        {
            WriteEvent(metrics, new TrainingEvent("stopped", new JsonObject { ["step"] = trainer.Step, ["reason"] = e.Message }, e.Message));
            Console.Error.WriteLine($"palm: error: {e.Message}");
            return 3;
        }

        double evalLoss = trainer.Evaluate();
        string weights = Path.Combine(outDir, "model.safetensors");
        ModelWeights.Save(trainer.Config, trainer.Engine.GatherWeights(), weights, new Dictionary<string, string>
        {
            ["tokenizer"] = options.Tokenizer ?? "bytes",
            ["step"] = trainer.Step.ToString(),
        });
        WriteEvent(metrics, new TrainingEvent("end", new JsonObject { ["step"] = trainer.Step, ["eval_loss"] = double.IsFinite(evalLoss) ? evalLoss : null, ["elapsed_s"] = clock.Elapsed.TotalSeconds, ["rollbacks"] = trainer.Rollbacks.Count }, ""));
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

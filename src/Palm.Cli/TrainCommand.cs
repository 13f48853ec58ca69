using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Palm.Gpu.IO;
using Palm.Gpu.Model;
using Palm.Gpu.Training;
using Spectre.Console;

namespace Palm.Cli;

/// <summary>`palm train`: data → tokenizer → packed sequences → Adafactor steps → run directory.</summary>
internal static class TrainCommand
{
    public static Command Create()
    {
        var data = new Option<string?>("--data") { Description = "UTF-8 text file or directory (default: the built-in synthetic corpus)" };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "tokenizer file (tok.json or SentencePiece .model); default: bytes" };
        var preset = Cli.Preset();
        var steps = new Option<long>("--steps") { Description = "optimizer steps", DefaultValueFactory = _ => 200 };
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
        var peak = Cli.PeakGflops();
        var cmd = new Command("train", "train a model and write RUN/{config.json, metrics.jsonl, model.safetensors}")
        {
            data, tokenizer, preset, steps, batch, seq, vocab, seed, outDir, block, attention, remat, threads, backend, device, factored, lr, peak,
        };
        var shape = new Cli.ShapeOptions();
        foreach (var o in shape.All) cmd.Options.Add(o);
        cmd.SetAction(r => Cli.Run(() =>
        {
            var config = shape.Apply(Cli.Resolve(r.GetValue(preset)!, r.GetValue(block), r.GetValue(attention), r.GetValue(remat), r.GetValue(seq), r.GetValue(vocab)), r);
            var options = new TrainOptions
            {
                Data = r.GetValue(data),
                Tokenizer = r.GetValue(tokenizer),
                Steps = r.GetValue(steps),
                BatchSchedule = r.GetValue(batch)!,
                Seed = r.GetValue(seed),
                Backend = r.GetValue(backend)!,
                Device = r.GetValue(device),
                Threads = r.GetValue(threads),
                OutDir = r.GetValue(outDir),
                PeakGflops = r.GetValue(peak),
                Optimizer = new AdafactorConfig { Factored = r.GetValue(factored), PeakLearningRate = r.GetValue(lr) },
            };
            return Run(config, options, vocabFromTokenizer: r.GetValue(vocab) is null);
        }));
        return cmd;
    }

    static int Run(ModelConfig config, TrainOptions options, bool vocabFromTokenizer)
    {
        using var trainer = new Trainer(config, options, vocabFromTokenizer);
        string outDir = options.OutDir!;
        Directory.CreateDirectory(outDir);
        AtomicFile.WriteText(Path.Combine(outDir, "config.json"), trainer.DescribeRun().ToJsonString(Trainer.Json));
        var c = trainer.Config;
        Console.Error.WriteLine($"palm: {trainer.Model.Parameters.Count:N0} parameters, {c.Layers} {c.Block.ToString().ToLowerInvariant()} blocks, " +
                                $"{trainer.Dataset.TrainSequences:N0} training sequences of {c.SeqLen} ({trainer.Tokenizer.Kind} tokenizer, vocab {c.Vocab}), " +
                                $"{trainer.Backend.DeviceName}, peak {trainer.PeakGflops:F0} GFLOP/s");

        string metricsPath = Path.Combine(outDir, "metrics.jsonl");
        using var metrics = new StreamWriter(metricsPath, append: false) { AutoFlush = true };
        var clock = Stopwatch.StartNew();
        StepMetrics? last = null;
        void OneStep()
        {
            last = trainer.TrainStep(clock);
            metrics.WriteLine(JsonSerializer.Serialize(last, MetricsJson));
        }

        long total = options.Steps;
        if (total > 0 && !Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Interactive)
        {
            AnsiConsole.Progress()
                .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask("starting", maxValue: total);
                    while (trainer.Step < total)
                    {
                        OneStep();
                        task.Description = Describe(last!, total);
                        task.Increment(1);
                    }
                });
        }
        else
        {
            long every = Math.Max(1, total / 50);
            while (trainer.Step < total)
            {
                OneStep();
                if (trainer.Step % every == 0 || trainer.Step == total || trainer.Step == 1)
                {
                    double eta = (total - trainer.Step) * clock.Elapsed.TotalSeconds / trainer.Step;
                    Console.WriteLine($"{Describe(last!, total)}  eta {eta:F0}s");
                }
            }
        }

        double evalLoss = trainer.Evaluate();
        string weights = Path.Combine(outDir, "model.safetensors");
        ModelWeights.Save(trainer.Model, weights, new Dictionary<string, string>
        {
            ["tokenizer"] = options.Tokenizer ?? "bytes",
            ["step"] = trainer.Step.ToString(),
        });
        metrics.WriteLine(JsonSerializer.Serialize(new { @event = "end", step = trainer.Step, eval_loss = evalLoss, elapsed_s = clock.Elapsed.TotalSeconds }, MetricsJson));
        Console.WriteLine($"done: {trainer.Step} steps in {clock.Elapsed.TotalSeconds:F1}s, train loss {last?.Loss ?? double.NaN:F4}, eval loss {evalLoss:F4}; wrote {weights}");
        return 0;
    }

    static string Describe(StepMetrics m, long total) =>
        $"step {m.Step}/{total}  loss {m.Loss:F4}  z {m.ZLoss:F5}  |g| {m.GradNorm:F3}  lr {m.Lr:G3}  {m.TokensPerS:F0} tok/s  MFU {100 * m.Mfu:F1}%";

    static readonly JsonSerializerOptions MetricsJson = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };
}

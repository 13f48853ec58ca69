using System.CommandLine;
using Palm.Gpu.Model;
using Palm.Gpu.Research;
using Palm.Gpu.Training;
using Spectre.Console;

namespace Palm.Cli;

/// <summary>
/// `palm ablate`: trains the variants of one switch (parallel vs serial blocks, multi-query vs multi-head
/// attention, ...) on the same data, seeds, token budget and schedule, then writes DIR/report.md,
/// DIR/loss_vs_step.svg, DIR/loss_vs_time.svg, DIR/summary.json and DIR/runs/VARIANT.seedS/metrics.jsonl.
/// </summary>
internal static class AblateCommand
{
    public static Command Create()
    {
        var data = new Option<string?>("--data") { Description = "UTF-8 text file or directory (default: the built-in synthetic corpus)" };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "tokenizer file (tok.json or SentencePiece .model); default: bytes" };
        var variants = new Option<string>("--variants")
        {
            Description = "comma-separated values of ONE switch: " +
                          string.Join("; ", AblationVariants.Builtin.GroupBy(v => v.Switch).Select(g => $"{g.Key}: {string.Join(",", g.Select(v => v.Name))}")),
            DefaultValueFactory = _ => "parallel,serial",
        };
        var preset = Cli.Preset();
        var steps = new Option<long>("--steps") { Description = "optimizer steps per run", DefaultValueFactory = _ => 200 };
        var seeds = new Option<int>("--seeds") { Description = "runs per variant, with seeds --seed, --seed+1, ...", DefaultValueFactory = _ => 1 };
        var seed = new Option<ulong>("--seed") { Description = "first seed", DefaultValueFactory = _ => 1 };
        var batch = new Option<string>("--batch") { Description = "sequences per step, or a schedule \"0:4,100:8\"", DefaultValueFactory = _ => "4" };
        var seq = Cli.Seq();
        var vocab = new Option<int?>("--vocab") { Description = "model vocabulary (default: the tokenizer's, rounded up to 64)" };
        var evalSequences = new Option<int>("--eval-sequences") { Description = "held-out sequences scored after each run", DefaultValueFactory = _ => 64 };
        var outDir = new Option<string>("--out") { Description = "report directory", DefaultValueFactory = _ => "runs/ablation" };
        var notes = new Option<string?>("--notes") { Description = "Markdown file whose text is added to the report (why this configuration, what else ran)" };
        var block = Cli.Block();
        var attention = Cli.Attention();
        var remat = Cli.Remat();
        var threads = Cli.Threads();
        var backend = Cli.Backend();
        var device = Cli.Device();
        var factored = new Option<bool>("--factored") { Description = "factored Adafactor second moments" };
        var lr = new Option<float>("--lr") { Description = "peak learning rate (PaLM: 0.01)", DefaultValueFactory = _ => 1e-2f };
        var peak = Cli.PeakGflops();
        var from = new Option<string?>("--from") { Description = "rewrite the report of a finished ablation in DIR from its runs (e.g. with new --notes); trains nothing" };
        var cmd = new Command("ablate", "train the variants of one switch on the same data, seeds and budget; write a report with plots")
        {
            data, tokenizer, variants, preset, steps, seeds, seed, batch, seq, vocab, evalSequences, outDir, notes, from,
            block, attention, remat, threads, backend, device, factored, lr, peak,
        };
        var shape = new Cli.ShapeOptions();
        foreach (var o in shape.All) cmd.Options.Add(o);
        cmd.SetAction(r => Cli.Run(() =>
        {
            string? notesPath = r.GetValue(notes);
            if (notesPath is not null && !File.Exists(notesPath)) throw new FileNotFoundException($"--notes {notesPath}: no such file");
            string? noteText = notesPath is null ? null : File.ReadAllText(notesPath);
            if (r.GetValue(from) is string fromDir)
            {
                var rewritten = AblationReport.Rewrite(fromDir, noteText);
                Console.WriteLine($"rewrote {Path.Combine(fromDir, "report.md")} from {rewritten.Count} runs");
                return 0;
            }
            var model = shape.Apply(Cli.Resolve(r.GetValue(preset)!, r.GetValue(block), r.GetValue(attention), r.GetValue(remat), r.GetValue(seq), r.GetValue(vocab)), r);
            var training = new TrainOptions
            {
                Data = r.GetValue(data),
                Tokenizer = r.GetValue(tokenizer),
                Steps = r.GetValue(steps),
                BatchSchedule = r.GetValue(batch)!,
                Backend = r.GetValue(backend)!,
                Device = r.GetValue(device),
                Threads = r.GetValue(threads),
                PeakGflops = r.GetValue(peak),
                Optimizer = new AdafactorConfig { Factored = r.GetValue(factored), PeakLearningRate = r.GetValue(lr) },
            };
            int seedCount = r.GetValue(seeds);
            if (seedCount < 1) throw new ConfigException($"--seeds must be ≥ 1, got {seedCount}");
            if (training.Steps < 1) throw new ConfigException($"--steps must be ≥ 1, got {training.Steps}");
            if (training.Data is not null && !File.Exists(training.Data) && !Directory.Exists(training.Data))
                throw new FileNotFoundException($"--data {training.Data}: no such file or directory");
            var chosen = AblationVariants.Parse(r.GetValue(variants)!, model, training);
            var plan = new AblationPlan
            {
                BaseModel = model,
                BaseTraining = training,
                Variants = chosen,
                Seeds = [.. Enumerable.Range(0, seedCount).Select(i => r.GetValue(seed) + (ulong)i)],
                VocabFromTokenizer = r.GetValue(vocab) is null,
                EvalSequences = r.GetValue(evalSequences),
                OutDir = r.GetValue(outDir)!,
                Preset = r.GetValue(preset)!,
                CommandLine = "./palm " + string.Join(" ", Environment.GetCommandLineArgs().Skip(1).Select(Quote)),
                Notes = noteText,
            };
            IReadOnlyList<AblationRun> runs;
            if (!Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Interactive)
            {
                runs = [];
                AnsiConsole.Progress()
                    .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        var tasks = new Dictionary<int, ProgressTask>();
                        runs = AblationRunner.Run(plan, p =>
                        {
                            if (p.Step is null) { tasks[p.RunIndex] = ctx.AddTask(Title(p), maxValue: p.TotalSteps); return; }
                            var task = tasks[p.RunIndex];
                            task.Description = $"{Title(p)}  loss {p.Step.Loss:F4}  {p.Step.TokensPerS:F0} tok/s";
                            task.Increment(1);
                        });
                    });
            }
            else
            {
                long every = Math.Max(1, training.Steps / 20);
                runs = AblationRunner.Run(plan, p =>
                {
                    if (p.Step is null) Console.WriteLine($"{Title(p)}: starting");
                    else if (p.Step.Step % every == 0 || p.Step.Step == 1 || p.Step.Step == p.TotalSteps)
                        Console.WriteLine($"{Title(p)}: step {p.Step.Step}/{p.TotalSteps}  loss {p.Step.Loss:F4}  {p.Step.TokensPerS:F0} tok/s  elapsed {p.Step.ElapsedSeconds:F0}s");
                });
            }
            foreach (var run in runs)
                Console.WriteLine($"{run.Variant} seed {run.Seed}: {run.Parameters:N0} parameters, {run.TokensPerSecond:F0} tok/s, final train loss {run.FinalTrainLoss:F4}, eval loss {run.EvalLoss:F4}");
            Console.WriteLine($"wrote {Path.Combine(plan.OutDir, "report.md")}, loss_vs_step.svg, loss_vs_time.svg");
            return 0;
        }));
        return cmd;
    }

    static string Title(AblationProgress p) => $"run {p.RunIndex + 1}/{p.RunCount} {p.Variant} seed {p.Seed}";

    static string Quote(string a) => a.Length > 0 && a.All(ch => char.IsLetterOrDigit(ch) || "-_./:,=@+".Contains(ch)) ? a : $"'{a.Replace("'", "'\\''")}'";
}

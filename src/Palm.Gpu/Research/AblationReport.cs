using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Palm.Gpu.IO;

namespace Palm.Gpu.Research;

/// <summary>
/// Writes an ablation's report: report.md (a table per variant with the spread over seeds, the paired
/// differences against the first variant, every run), loss_vs_step.svg, loss_vs_time.svg, summary.json.
/// </summary>
public static class AblationReport
{
    /// <summary>Steps averaged for "final train loss": a tenth of the run, 1..50 steps.</summary>
    public static int FinalWindow(int steps) => Math.Clamp(steps / 10, 1, 50);

    /// <summary>Trailing-mean window of the plotted train loss: a fiftieth of the run, 1..25 steps.</summary>
    public static int SmoothWindow(int steps) => Math.Clamp(steps / 50, 1, 25);

    /// <summary>Steps left out at the start of the plots: the first twentieth of runs of 100 steps or more, where the
    /// loss falls from its initial value (≈ ln V and above) so steeply that it would flatten the rest of the curve.</summary>
    public static int PlotSkip(int steps) => steps >= 100 ? steps / 20 : 0;

    /// <summary>Mean and sample standard deviation (NaN for one value).</summary>
    public static (double Mean, double Sd) Spread(IReadOnlyList<double> xs)
    {
        double mean = xs.Average();
        double sd = xs.Count < 2 ? double.NaN : Math.Sqrt(xs.Sum(x => (x - mean) * (x - mean)) / (xs.Count - 1));
        return (mean, sd);
    }

    public static void Write(AblationPlan plan, IReadOnlyList<AblationRun> runs)
    {
        Directory.CreateDirectory(plan.OutDir);
        WritePlots(plan, runs);
        AtomicFile.WriteText(Path.Combine(plan.OutDir, "report.md"), Markdown(plan, runs));
        AtomicFile.WriteText(Path.Combine(plan.OutDir, "summary.json"), Summary(plan, runs).ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    static string F(double x, string format) => double.IsFinite(x) ? x.ToString(format, CultureInfo.InvariantCulture) : "–";
    static string Pm((double Mean, double Sd) s, string format) =>
        double.IsNaN(s.Sd) ? F(s.Mean, format) : $"{F(s.Mean, format)} ± {F(s.Sd, format)}";
    static string Signed(double x, string format) => (x >= 0 ? "+" : "") + F(x, format);
    static string SignedPm((double Mean, double Sd) s, string format) =>
        double.IsNaN(s.Sd) ? Signed(s.Mean, format) : $"{Signed(s.Mean, format)} ± {F(s.Sd, format)}";

    public static string Markdown(AblationPlan plan, IReadOnlyList<AblationRun> runs)
    {
        var variants = plan.Variants;
        var first = runs[0];
        var c = first.Model;
        long steps = plan.BaseTraining.Steps;
        long tokensPerRun = first.Tokens;
        var desc = first.Description;
        var sb = new StringBuilder();
        string sw = variants[0].Switch;
        sb.AppendLine($"# Ablation of `{sw}`: {string.Join(" vs ", variants.Select(v => v.Name))}");
        sb.AppendLine();
        if (plan.CommandLine.Length > 0) sb.AppendLine($"```\n{plan.CommandLine}\n```\n");
        sb.AppendLine("Every run shares the data, the data order (seed), the token budget and the schedules; the runs differ only in the switch named above. " +
                      "The variants of a seed train side by side, one step each in turn (alternating which goes first), so that load from other " +
                      "processes falls on all of them alike; each run's clock counts its own steps only.");
        sb.AppendLine();
        sb.AppendLine("| | |");
        sb.AppendLine("|---|---|");
        sb.AppendLine($"| model | {(plan.Preset.Length > 0 ? $"preset `{plan.Preset}`: " : "")}L {c.Layers}, D {c.DModel}, H {c.Heads}, K {c.HeadDim}, F {c.DFf}, V {c.Vocab}, T {c.SeqLen} |");
        sb.AppendLine($"| variants | {string.Join("; ", variants.Select(v => $"`{v.Name}`: {v.Description}"))} |");
        sb.AppendLine($"| budget | {steps} steps × batch `{plan.BaseTraining.BatchSchedule}` × {c.SeqLen} tokens = {tokensPerRun:N0} tokens per run |");
        sb.AppendLine($"| seeds | {string.Join(", ", plan.Seeds)} (init and data order; variants of one seed see the same batches) |");
        sb.AppendLine($"| data | {plan.BaseTraining.Data ?? "built-in synthetic corpus"}: {desc["data"]?["tokens"]} tokens, {desc["data"]?["train_sequences"]} training / {desc["data"]?["eval_sequences"]} held-out sequences |");
        sb.AppendLine($"| tokenizer | {desc["tokenizer"]?["kind"]} (vocab {desc["tokenizer"]?["vocab_size"]}) |");
        sb.AppendLine($"| optimizer | Adafactor, lr {F(plan.BaseTraining.Optimizer.PeakLearningRate, "G3")}{(plan.BaseTraining.Optimizer.Factored ? ", factored" : "")} |");
        sb.AppendLine($"| device | {desc["backend"]?["device"]}, peak {F(desc["backend"]?["peak_gflops"]?.GetValue<double>() ?? double.NaN, "F0")} GFLOP/s |");
        sb.AppendLine($"| eval | mean cross-entropy (nats/token) on {plan.EvalSequences} held-out sequences after the last step |");
        sb.AppendLine();

        int window = FinalWindow((int)steps);
        sb.AppendLine($"## Result ({plan.Seeds.Count} seed{(plan.Seeds.Count > 1 ? "s" : "")}; mean ± sample standard deviation over seeds)");
        sb.AppendLine();
        sb.AppendLine($"| variant | parameters | tokens/s | median step (ms) | final train loss (mean of last {window} steps) | eval loss | train time (s) |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|");
        foreach (var v in variants)
        {
            var rs = runs.Where(r => r.Variant == v.Name).ToList();
            sb.AppendLine($"| `{v.Name}` | {rs[0].Parameters:N0} | {Pm(Spread([.. rs.Select(r => r.TokensPerSecond)]), "F0")} | " +
                          $"{Pm(Spread([.. rs.Select(r => 1e3 * r.MedianStepSeconds)]), "F0")} | " +
                          $"{Pm(Spread([.. rs.Select(r => r.FinalTrainLoss)]), "F4")} | {Pm(Spread([.. rs.Select(r => r.EvalLoss)]), "F4")} | " +
                          $"{Pm(Spread([.. rs.Select(r => r.TrainSeconds)]), "F0")} |");
        }
        sb.AppendLine();

        // Paired by seed: both runs of a seed saw the same batches, so their difference carries less noise than either loss.
        if (variants.Count > 1)
        {
            sb.AppendLine($"### Paired differences against `{variants[0].Name}` (same seed, then mean ± sd over seeds)");
            sb.AppendLine();
            sb.AppendLine("| variant | tokens/s change (whole run) | median step time change | final train loss Δ | eval loss Δ |");
            sb.AppendLine("|---|---:|---:|---:|---:|");
            foreach (var v in variants.Skip(1))
            {
                var pairs = plan.Seeds.Select(s => (A: runs.First(r => r.Seed == s && r.Variant == variants[0].Name), B: runs.First(r => r.Seed == s && r.Variant == v.Name))).ToList();
                var speed = Spread([.. pairs.Select(p => 100 * (p.B.TokensPerSecond / p.A.TokensPerSecond - 1))]);
                var median = Spread([.. pairs.Select(p => 100 * (p.B.MedianStepSeconds / p.A.MedianStepSeconds - 1))]);
                sb.AppendLine($"| `{v.Name}` | {SignedPm(speed, "F1")} % | {SignedPm(median, "F1")} % | {SignedPm(Spread([.. pairs.Select(p => p.B.FinalTrainLoss - p.A.FinalTrainLoss)]), "F4")} | " +
                              $"{SignedPm(Spread([.. pairs.Select(p => p.B.EvalLoss - p.A.EvalLoss)]), "F4")} |");
            }
            sb.AppendLine();
        }

        sb.AppendLine("## Plots");
        sb.AppendLine();
        int smooth = SmoothWindow((int)steps);
        int skip = PlotSkip((int)steps);
        sb.AppendLine((smooth > 1 ? $"Train loss, mean over seeds, trailing mean of {smooth} steps." : "Train loss, mean over seeds.") +
                      (skip > 0 ? $" The first {skip} steps (the initial steep fall) are left out so that the curves can be told apart." : ""));
        sb.AppendLine();
        sb.AppendLine("![loss vs step](loss_vs_step.svg)");
        sb.AppendLine();
        sb.AppendLine("![loss vs wall-clock time](loss_vs_time.svg)");
        sb.AppendLine();

        sb.AppendLine("## Every run");
        sb.AppendLine();
        sb.AppendLine("| variant | seed | parameters | tokens/s | median step (ms) | final train loss | eval loss | train time (s) | metrics |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---|");
        foreach (var r in runs)
            sb.AppendLine($"| `{r.Variant}` | {r.Seed} | {r.Parameters:N0} | {F(r.TokensPerSecond, "F0")} | {F(1e3 * r.MedianStepSeconds, "F0")} | {F(r.FinalTrainLoss, "F4")} | {F(r.EvalLoss, "F4")} | " +
                          $"{F(r.TrainSeconds, "F0")} | [{r.MetricsPath}]({r.MetricsPath.Replace('\\', '/')}) |");
        sb.AppendLine();
        if (!string.IsNullOrWhiteSpace(plan.Notes))
        {
            sb.AppendLine("## Notes");
            sb.AppendLine();
            sb.AppendLine(plan.Notes.Trim());
            sb.AppendLine();
        }
        return sb.ToString();
    }

    /// <summary>Per variant: (x, loss) averaged over seeds step by step, loss smoothed with a trailing mean.</summary>
    static List<PlotSeries> Curves(AblationPlan plan, IReadOnlyList<AblationRun> runs, bool byTime)
    {
        var series = new List<PlotSeries>();
        foreach (var v in plan.Variants)
        {
            var rs = runs.Where(r => r.Variant == v.Name).ToList();
            int n = rs.Min(r => r.Steps.Count);
            int w = SmoothWindow(n);
            var loss = Enumerable.Range(0, n).Select(i => rs.Average(r => r.Steps[i].Loss)).ToArray();
            var points = new List<(double, double)>(n);
            double sum = 0;
            int skip = PlotSkip(n);
            for (int i = 0; i < n; i++)
            {
                sum += loss[i];
                if (i >= w) sum -= loss[i - w];
                double x = byTime ? rs.Average(r => r.Steps[i].ElapsedSeconds) : rs[0].Steps[i].Step;
                if (i >= skip) points.Add((x, sum / Math.Min(i + 1, w)));
            }
            series.Add(new PlotSeries($"{v.Name} ({rs.Count} seed{(rs.Count > 1 ? "s" : "")})", points));
        }
        return series;
    }

    static void WritePlots(AblationPlan plan, IReadOnlyList<AblationRun> runs)
    {
        string title = $"{string.Join(" vs ", plan.Variants.Select(v => v.Name))}";
        Plots.SaveSvg(Path.Combine(plan.OutDir, "loss_vs_step.svg"), $"{title}: train loss vs step", "step", "train loss (nats/token)", Curves(plan, runs, byTime: false));
        Plots.SaveSvg(Path.Combine(plan.OutDir, "loss_vs_time.svg"), $"{title}: train loss vs wall-clock time", "seconds", "train loss (nats/token)", Curves(plan, runs, byTime: true));
    }

    static JsonObject Summary(AblationPlan plan, IReadOnlyList<AblationRun> runs) => new()
    {
        ["switch"] = plan.Variants[0].Switch,
        ["variants"] = new JsonArray([.. plan.Variants.Select(v => (JsonNode)JsonValue.Create(v.Name)!)]),
        ["seeds"] = new JsonArray([.. plan.Seeds.Select(s => (JsonNode)JsonValue.Create(s)!)]),
        ["steps"] = plan.BaseTraining.Steps,
        ["final_window"] = FinalWindow((int)plan.BaseTraining.Steps),
        ["runs"] = new JsonArray([.. runs.Select(r => (JsonNode)new JsonObject
        {
            ["variant"] = r.Variant,
            ["seed"] = r.Seed,
            ["parameters"] = r.Parameters,
            ["tokens"] = r.Tokens,
            ["tokens_per_s"] = Finite(r.TokensPerSecond),
            ["median_step_seconds"] = Finite(r.MedianStepSeconds),
            ["final_train_loss"] = Finite(r.FinalTrainLoss),
            ["eval_loss"] = Finite(r.EvalLoss),
            ["train_seconds"] = Finite(r.TrainSeconds),
            ["metrics"] = r.MetricsPath.Replace('\\', '/'),
        })]),
    };

    static JsonNode? Finite(double x) => double.IsFinite(x) ? JsonValue.Create(x) : null;

    /// <summary>What <see cref="Rewrite"/> needs to rebuild the report from a finished ablation's directory.</summary>
    public static JsonObject PlanJson(AblationPlan plan) => new()
    {
        ["variants"] = new JsonArray([.. plan.Variants.Select(v => (JsonNode)JsonValue.Create(v.Name)!)]),
        ["seeds"] = new JsonArray([.. plan.Seeds.Select(s => (JsonNode)JsonValue.Create(s)!)]),
        ["model"] = JsonSerializer.SerializeToNode(plan.BaseModel, Training.Trainer.Json),
        ["training"] = JsonSerializer.SerializeToNode(plan.BaseTraining, Training.Trainer.Json),
        ["vocab_from_tokenizer"] = plan.VocabFromTokenizer,
        ["warmup_steps"] = plan.WarmupSteps,
        ["eval_sequences"] = plan.EvalSequences,
        ["preset"] = plan.Preset,
        ["command_line"] = plan.CommandLine,
        ["notes"] = plan.Notes,
    };

    /// <summary>
    /// Rebuilds report.md, the plots and summary.json from DIR/plan.json and DIR/runs/*/ (config.json, metrics.jsonl),
    /// e.g. after editing the notes; <paramref name="notes"/> replaces the recorded notes when given.
    /// </summary>
    public static IReadOnlyList<AblationRun> Rewrite(string outDir, string? notes = null, IReadOnlyList<AblationVariant>? registry = null)
    {
        string planPath = Path.Combine(outDir, "plan.json");
        if (!File.Exists(planPath)) throw new FileNotFoundException($"{planPath} not found: --from needs the directory of a finished `palm ablate` run");
        var j = JsonNode.Parse(File.ReadAllText(planPath))!.AsObject();
        var model = j["model"].Deserialize<Model.ModelConfig>(Training.Trainer.Json)!;
        var training = j["training"].Deserialize<Training.TrainOptions>(Training.Trainer.Json)!;
        var variants = AblationVariants.Parse(string.Join(",", j["variants"]!.AsArray().Select(v => v!.GetValue<string>())), model, training, registry);
        var plan = new AblationPlan
        {
            BaseModel = model,
            BaseTraining = training,
            Variants = variants,
            Seeds = [.. j["seeds"]!.AsArray().Select(s => s!.GetValue<ulong>())],
            VocabFromTokenizer = j["vocab_from_tokenizer"]?.GetValue<bool>() ?? true,
            WarmupSteps = j["warmup_steps"]?.GetValue<int>() ?? 0,
            EvalSequences = j["eval_sequences"]?.GetValue<int>() ?? 64,
            OutDir = outDir,
            Preset = j["preset"]?.GetValue<string>() ?? "",
            CommandLine = j["command_line"]?.GetValue<string>() ?? "",
            Notes = notes ?? j["notes"]?.GetValue<string>(),
        };
        var metricsJson = new JsonSerializerOptions
        {
            PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
            NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
        };
        var runs = new List<AblationRun>();
        foreach (var seed in plan.Seeds)
            foreach (var v in plan.Variants)
            {
                string dir = Path.Combine(outDir, "runs", $"{v.Name}.seed{seed}");
                var description = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
                string metricsPath = Path.Combine(dir, "metrics.jsonl");
                var steps = new List<Training.StepMetrics>();
                double eval = double.NaN, trainSeconds = double.NaN;
                foreach (var line in File.ReadLines(metricsPath))
                {
                    if (string.IsNullOrWhiteSpace(line)) continue;
                    var node = JsonNode.Parse(line)!.AsObject();
                    if (node["event"]?.GetValue<string>() == "end")
                    {
                        eval = node["eval_loss"]?.GetValue<double>() ?? double.NaN;
                        trainSeconds = node["train_seconds"]?.GetValue<double>() ?? double.NaN;
                    }
                    else steps.Add(node.Deserialize<Training.StepMetrics>(metricsJson)!);
                }
                if (!double.IsFinite(trainSeconds)) trainSeconds = steps.Sum(s => s.StepSeconds);
                runs.Add(new AblationRun(v.Name, seed, description["model"].Deserialize<Model.ModelConfig>(Training.Trainer.Json)!,
                                         description["parameters"]!.GetValue<long>(), steps, eval, trainSeconds,
                                         Path.GetRelativePath(outDir, metricsPath), description));
            }
        Write(plan, runs);
        return runs;
    }
}

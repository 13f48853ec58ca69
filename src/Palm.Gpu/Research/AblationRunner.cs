using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Palm.Gpu.IO;
using Palm.Gpu.Model;
using Palm.Gpu.Training;

namespace Palm.Gpu.Research;

/// <summary>What to compare: a base configuration, the variants of one switch, and the seeds.</summary>
public sealed record AblationPlan
{
    public required ModelConfig BaseModel { get; init; }
    /// <summary>Shared training options; Seed is replaced per run and OutDir is ignored.</summary>
    public required TrainOptions BaseTraining { get; init; }
    public required IReadOnlyList<AblationVariant> Variants { get; init; }
    public required IReadOnlyList<ulong> Seeds { get; init; }
    /// <summary>The model's vocabulary follows the tokenizer's (as `palm train` without --vocab).</summary>
    public bool VocabFromTokenizer { get; init; } = true;
    /// <summary>Untimed steps of every variant before the runs, so JIT compilation is not charged to whichever run comes first.</summary>
    public int WarmupSteps { get; init; } = 2;
    /// <summary>Held-out sequences scored at the end of each run.</summary>
    public int EvalSequences { get; init; } = 64;
    /// <summary>Output directory: report.md, loss_vs_step.svg, loss_vs_time.svg, summary.json, runs/*/metrics.jsonl.</summary>
    public required string OutDir { get; init; }
    /// <summary>Preset name and the command line, for the report's header.</summary>
    public string Preset { get; init; } = "";
    public string CommandLine { get; init; } = "";
    /// <summary>Free text added to the report (why this configuration, what else ran on the machine).</summary>
    public string? Notes { get; init; }
}

/// <summary>One finished run.</summary>
public sealed record AblationRun(
    string Variant, ulong Seed, ModelConfig Model, long Parameters, IReadOnlyList<StepMetrics> Steps,
    double EvalLoss, double TrainSeconds, string MetricsPath, JsonObject Description)
{
    public long Tokens => Steps.Sum(s => s.Tokens);
    /// <summary>Training tokens per second over the whole run (step time only; evaluation excluded).</summary>
    public double TokensPerSecond => Tokens / TrainSeconds;
    /// <summary>Median step time: unlike the total, not moved by a burst of load from other processes.</summary>
    public double MedianStepSeconds => Statistics.Median(Steps.Select(x => x.StepSeconds));
    /// <summary>Train loss at the end: the mean over the last <see cref="AblationReport.FinalWindow"/> steps (one step's loss is noisy).</summary>
    public double FinalTrainLoss => Steps.Skip(Math.Max(0, Steps.Count - AblationReport.FinalWindow(Steps.Count))).Average(s => s.Loss);
}

/// <summary>Progress of an ablation: a run started (Step null) or a step finished.</summary>
public sealed record AblationProgress(int RunIndex, int RunCount, string Variant, ulong Seed, long TotalSteps, StepMetrics? Step);

/// <summary>
/// Trains every variant for every seed on the same data, token budget and schedule, and writes the
/// report. The variants of a seed train side by side in one process, a step of each in turn, so that
/// load from other processes on the machine falls on every variant alike and their timings compare.
/// </summary>
public static class AblationRunner
{
    static readonly JsonSerializerOptions MetricsJson = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public static IReadOnlyList<AblationRun> Run(AblationPlan plan, Action<AblationProgress>? progress = null, CancellationToken cancel = default)
    {
        AblationVariants.Validate(plan.Variants, plan.BaseModel, plan.BaseTraining);
        if (plan.Seeds.Count < 1) throw new ConfigException("--seeds must be ≥ 1");
        if (plan.Seeds.Distinct().Count() != plan.Seeds.Count) throw new ConfigException("the seeds of an ablation must be distinct");
        if (plan.BaseTraining.Steps < 1) throw new ConfigException($"--steps must be ≥ 1, got {plan.BaseTraining.Steps}");
        if (plan.EvalSequences < 1) throw new ConfigException($"--eval-sequences must be ≥ 1, got {plan.EvalSequences}");

        // Build every trainer's configuration first, so bad input fails before anything is written.
        var jobs = (from seed in plan.Seeds
                    from v in plan.Variants
                    let applied = v.Apply(plan.BaseModel, plan.BaseTraining)
                    select (Variant: v, Seed: seed, applied.Model, Training: applied.Training with { Seed = seed, OutDir = null })).ToList();

        foreach (var job in jobs.Take(plan.Variants.Count).Where(_ => plan.WarmupSteps > 0))
        {
            cancel.ThrowIfCancellationRequested();
            using var warm = new Trainer(job.Model, job.Training with { Steps = plan.WarmupSteps }, plan.VocabFromTokenizer);
            for (int s = 0; s < plan.WarmupSteps; s++) warm.TrainStep();
        }

        var runs = new List<AblationRun>();
        string runsDir = Path.Combine(plan.OutDir, "runs");
        Directory.CreateDirectory(plan.OutDir);
        AtomicFile.WriteText(Path.Combine(plan.OutDir, "plan.json"), AblationReport.PlanJson(plan).ToJsonString(Trainer.Json));
        int variants = plan.Variants.Count;
        for (int first = 0; first < jobs.Count; first += variants)
        {
            // The variants of one seed train in lockstep: one step each, alternating which goes first, so a burst of
            // load from other processes falls on all of them alike. Each run's clock runs during its own steps only.
            var group = new List<(int Index, Trainer Trainer, StreamWriter Metrics, Stopwatch Clock, List<StepMetrics> Steps, JsonObject Description, string MetricsPath)>();
            try
            {
                for (int i = first; i < first + variants; i++)
                {
                    var job = jobs[i];
                    cancel.ThrowIfCancellationRequested();
                    progress?.Invoke(new AblationProgress(i, jobs.Count, job.Variant.Name, job.Seed, job.Training.Steps, null));
                    var trainer = new Trainer(job.Model, job.Training, plan.VocabFromTokenizer);
                    string dir = Path.Combine(runsDir, $"{job.Variant.Name}.seed{job.Seed}");
                    Directory.CreateDirectory(dir);
                    var description = trainer.DescribeRun();
                    AtomicFile.WriteText(Path.Combine(dir, "config.json"), description.ToJsonString(Trainer.Json));
                    string metricsPath = Path.Combine(dir, "metrics.jsonl");
                    group.Add((i, trainer, new StreamWriter(metricsPath, append: false) { AutoFlush = true }, new Stopwatch(), [], description, metricsPath));
                }
                long total = plan.BaseTraining.Steps;
                for (long step = 0; step < total; step++)
                    for (int j = 0; j < group.Count; j++)
                    {
                        var g = group[step % 2 == 0 ? j : group.Count - 1 - j];
                        var job = jobs[g.Index];
                        cancel.ThrowIfCancellationRequested();
                        g.Clock.Start();
                        var m = g.Trainer.TrainStep(g.Clock);
                        g.Clock.Stop();
                        g.Steps.Add(m);
                        g.Metrics.WriteLine(JsonSerializer.Serialize(m, MetricsJson));
                        progress?.Invoke(new AblationProgress(g.Index, jobs.Count, job.Variant.Name, job.Seed, job.Training.Steps, m));
                    }
                foreach (var g in group)
                {
                    var job = jobs[g.Index];
                    double eval = g.Trainer.Evaluate(plan.EvalSequences);
                    double trainSeconds = g.Steps.Sum(x => x.StepSeconds);
                    g.Metrics.WriteLine(JsonSerializer.Serialize(new { @event = "end", step = g.Trainer.Step, eval_loss = eval, train_seconds = trainSeconds }, MetricsJson));
                    runs.Add(new AblationRun(job.Variant.Name, job.Seed, g.Trainer.Config, g.Trainer.Engine.ParameterCount, g.Steps, eval, trainSeconds,
                                             Path.GetRelativePath(plan.OutDir, g.MetricsPath), g.Description));
                }
            }
            finally
            {
                foreach (var g in group) { g.Metrics.Dispose(); g.Trainer.Dispose(); }
            }
        }
        AblationReport.Write(plan, runs);
        return runs;
    }
}

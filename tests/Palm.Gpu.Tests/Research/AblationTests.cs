using System.Text.Json;
using Palm.Gpu.Model;
using Palm.Gpu.Research;
using Palm.Gpu.Tests.Support;
using Palm.Gpu.Training;
using Xunit;

namespace Palm.Gpu.Tests.Research;

/// <summary>The ablation registry's rule (one switch, nothing else differs), and a tiny ablation end to end.</summary>
public class AblationTests
{
    static ModelConfig Tiny => ModelConfig.Preset("tiny");
    static TrainOptions Base => new() { Steps = 6, BatchSchedule = "2", Threads = 2, PeakGflops = 100 };

    [Theory]
    [InlineData("parallel,serial", "block")]
    [InlineData("multi-query,multi-head", "attention")]
    [InlineData(" serial , parallel ", "block")]
    [InlineData("factored,unfactored", "optimizer")]
    public void VariantsOfOneSwitchAreAcceptedAndDifferOnlyInIt(string list, string expectedSwitch)
    {
        var vs = AblationVariants.Parse(list, Tiny, Base);
        Assert.Equal(2, vs.Count);
        Assert.All(vs, v => Assert.Equal(expectedSwitch, v.Switch));
        var (m0, t0) = vs[0].Apply(Tiny, Base);
        var (m1, t1) = vs[1].Apply(Tiny, Base);
        Assert.False(m0 == m1 && t0 == t1, "the two variants gave the same configuration");
        // Copy the switched fields across: what remains must be identical.
        Assert.Equal(m0, m1 with { Block = m0.Block, Attention = m0.Attention, Rematerialize = m0.Rematerialize });
        Assert.Equal(t0, t1 with { Optimizer = t0.Optimizer });
    }

    [Fact]
    public void ParallelAndSerialSetTheBlockKind()
    {
        var vs = AblationVariants.Parse("parallel,serial", Tiny with { Block = BlockKind.Serial }, Base);
        Assert.Equal(BlockKind.Parallel, vs[0].Apply(Tiny with { Block = BlockKind.Serial }, Base).Model.Block);
        Assert.Equal(BlockKind.Serial, vs[1].Apply(Tiny, Base).Model.Block);
        var att = AblationVariants.Parse("multi-head,multi-query", Tiny, Base);
        Assert.Equal(AttentionKind.MultiHead, att[0].Apply(Tiny, Base).Model.Attention);
        Assert.Equal(AttentionKind.MultiQuery, att[1].Apply(Tiny with { Attention = AttentionKind.MultiHead }, Base).Model.Attention);
    }

    [Fact]
    public void UnknownVariantIsAClearError()
    {
        var e = Assert.Throws<ConfigException>(() => AblationVariants.Parse("parallel,sequential", Tiny, Base));
        Assert.Contains("unknown variant 'sequential'", e.Message);
        Assert.Contains("block: parallel, serial", e.Message);
    }

    [Fact]
    public void VariantsOfDifferentSwitchesAreRejected()
    {
        var e = Assert.Throws<ConfigException>(() => AblationVariants.Parse("parallel,multi-head", Tiny, Base));
        Assert.Contains("ONE switch", e.Message);
        Assert.Contains("'parallel' (block)", e.Message);
        Assert.Contains("'multi-head' (attention)", e.Message);
    }

    [Theory]
    [InlineData("serial")]
    [InlineData("")]
    [InlineData("serial,serial")]
    public void FewerThanTwoDistinctVariantsAreRejected(string list)
    {
        Assert.Throws<ConfigException>(() => AblationVariants.Parse(list, Tiny, Base));
    }

    [Fact]
    public void AVariantThatChangesMoreThanItsSwitchIsRejected()
    {
        // Same switch name, but "serial-wide" also widens the MLP: the runs would differ in two things.
        AblationVariant[] registry =
        [
            .. AblationVariants.Builtin,
            new("serial-wide", "block", "serial block with a wider MLP", (c, t) => (c with { Block = BlockKind.Serial, DFf = c.DFf * 2 }, t)),
        ];
        var e = Assert.Throws<ConfigException>(() => AblationVariants.Parse("parallel,serial-wide", Tiny, Base, registry));
        Assert.Contains("differ in more than the 'block' switch", e.Message);
    }

    [Fact]
    public void AddingAVariantIsOneEntry()
    {
        AblationVariant[] registry =
        [
            .. AblationVariants.Builtin,
            new("ff-2x", "d_ff", "F = 2·D", (c, t) => (c with { DFf = 2 * c.DModel }, t)),
            new("ff-4x", "d_ff", "F = 4·D (PaLM)", (c, t) => (c with { DFf = 4 * c.DModel }, t)),
        ];
        var vs = AblationVariants.Parse("ff-2x,ff-4x", Tiny, Base, registry);
        Assert.Equal(64, vs[0].Apply(Tiny, Base).Model.DFf);
        Assert.Equal(128, vs[1].Apply(Tiny, Base).Model.DFf);
    }

    [Fact]
    public void TinyAblationTrainsEveryRunOnTheSameBatchesAndWritesTheReport()
    {
        string dir = CliRunner.TempDir();
        var training = Base with { Steps = 8 };
        var plan = new AblationPlan
        {
            BaseModel = Tiny,
            BaseTraining = training,
            Variants = AblationVariants.Parse("parallel,serial", Tiny, training),
            Seeds = [1, 2],
            EvalSequences = 4,
            WarmupSteps = 1,
            OutDir = dir,
            Preset = "tiny",
            CommandLine = "./palm ablate --preset tiny",
            Notes = "a note for the reader",
        };
        var progress = new List<AblationProgress>();
        var runs = AblationRunner.Run(plan, progress.Add);

        Assert.Equal(4, runs.Count);
        Assert.Equal(["parallel", "serial", "parallel", "serial"], runs.Select(r => r.Variant));
        Assert.Equal(4 + 4 * 8, progress.Count); // a start event and 8 steps per run
        foreach (var r in runs)
        {
            Assert.Equal(8, r.Steps.Count);
            Assert.Equal(8L * 2 * Tiny.SeqLen, r.Tokens); // same token budget
            Assert.Equal(ModelMath.Parameters(r.Model), r.Parameters);
            Assert.True(double.IsFinite(r.EvalLoss) && r.EvalLoss > 0);
            Assert.Equal(9, File.ReadAllLines(Path.Combine(dir, r.MetricsPath)).Length); // 8 steps + the end event
            Assert.Equal(r.Steps[^1].Loss, r.FinalTrainLoss); // a run of 8 steps averages its last step only
        }
        Assert.Equal(50, AblationReport.FinalWindow(500));
        Assert.Equal(runs[0].Parameters + Tiny.Layers * Tiny.DModel, runs[1].Parameters); // serial: one more layer norm per block

        // A run inside the ablation is exactly the run `palm train` would make with that seed: same init, same batches.
        using (var alone = new Trainer(Tiny with { Block = BlockKind.Serial }, training with { Seed = 2 }, vocabFromTokenizer: true))
            for (int i = 0; i < 8; i++)
                Assert.Equal(runs[3].Steps[i].Loss, alone.TrainStep().Loss);
        Assert.NotEqual(runs[0].Steps[^1].Loss, runs[1].Steps[^1].Loss);

        string report = File.ReadAllText(Path.Combine(dir, "report.md"));
        Assert.Contains("# Ablation of `block`: parallel vs serial", report);
        Assert.Contains($"| `parallel` | {runs[0].Parameters:N0} |", report);
        Assert.Contains($"| `serial` | {runs[1].Parameters:N0} |", report);
        Assert.Contains("±", report); // spread over the two seeds
        Assert.Contains("8 steps × batch `2` × 32 tokens = 512 tokens per run", report);
        Assert.Contains("| `serial` | 2 |", report); // the per-run table
        Assert.Contains("Paired differences against `parallel`", report);
        Assert.Contains("a note for the reader", report);
        Assert.Contains("![loss vs step](loss_vs_step.svg)", report);
        string mean = AblationReport.Spread([runs[0].EvalLoss, runs[2].EvalLoss]).Mean.ToString("F4", System.Globalization.CultureInfo.InvariantCulture);
        Assert.Contains(mean, report);
        string finalTrain = AblationReport.Spread([runs[1].FinalTrainLoss, runs[3].FinalTrainLoss]).Mean.ToString("F4", System.Globalization.CultureInfo.InvariantCulture);
        Assert.Contains(finalTrain, report);
        foreach (var svg in new[] { "loss_vs_step.svg", "loss_vs_time.svg" })
        {
            string text = File.ReadAllText(Path.Combine(dir, svg));
            Assert.Contains("<svg", text);
            Assert.Contains("parallel (2 seeds)", text);
            Assert.Contains("serial (2 seeds)", text);
        }
        using var summary = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "summary.json")));
        Assert.Equal(4, summary.RootElement.GetProperty("runs").GetArrayLength());

        // The report can be rebuilt from the directory alone, with the same numbers.
        File.Delete(Path.Combine(dir, "report.md"));
        var again = AblationReport.Rewrite(dir, notes: "rewritten notes");
        Assert.Equal(runs.Select(r => r.EvalLoss), again.Select(r => r.EvalLoss));
        Assert.Equal(runs.Select(r => r.FinalTrainLoss), again.Select(r => r.FinalTrainLoss));
        string rewritten = File.ReadAllText(Path.Combine(dir, "report.md"));
        Assert.Contains("rewritten notes", rewritten);
        Assert.Contains(mean, rewritten);
    }

    [Fact]
    public void CliRejectsMixedAndUnknownVariantsWithOneLine()
    {
        string dir = CliRunner.TempDir();
        string outDir = Path.Combine(dir, "out");
        var mixed = CliRunner.Run("ablate", "--preset", "tiny", "--steps", "2", "--variants", "parallel,multi-head", "--out", outDir);
        Assert.Equal(2, mixed.ExitCode);
        Assert.StartsWith("palm: error: variants 'parallel' (block), 'multi-head' (attention)", mixed.Stderr);
        var unknown = CliRunner.Run("ablate", "--preset", "tiny", "--steps", "2", "--variants", "parallel,wide", "--out", outDir);
        Assert.Equal(2, unknown.ExitCode);
        Assert.Contains("unknown variant 'wide'", unknown.Stderr);
        Assert.False(Directory.Exists(outDir), "a rejected ablation wrote its output directory");
    }
}

using System.Text.Json;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Cli;

/// <summary>The `palm` command as a user runs it: outputs on success, one clear line and no half-written run on bad input.</summary>
public class CliTests
{
    [Fact]
    public void TrainWritesMetricsConfigAndWeightsThenGenerateAndEvalUseThem()
    {
        string dir = CliRunner.TempDir();
        string data = Path.Combine(dir, "data.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat("the quick brown fox jumps over the lazy dog. 12 + 30 = 42.\n", 200)));
        string run = Path.Combine(dir, "run");
        var r = CliRunner.Run("train", "--data", data, "--preset", "tiny", "--steps", "12", "--batch", "2", "--seq", "32", "--out", run, "--peak-gflops", "100");
        Assert.True(r.ExitCode == 0, r.Stderr + r.Stdout);

        var lines = File.ReadAllLines(Path.Combine(run, "metrics.jsonl"));
        Assert.Equal(13, lines.Length); // 12 steps + the end event
        foreach (var line in lines.Take(12))
        {
            using var j = JsonDocument.Parse(line);
            foreach (var key in new[] { "step", "loss", "z_loss", "grad_norm", "lr", "batch", "tokens_per_s", "mfu" })
                Assert.True(j.RootElement.TryGetProperty(key, out _), $"metrics line lacks '{key}': {line}");
        }
        using (var cfg = JsonDocument.Parse(File.ReadAllText(Path.Combine(run, "config.json"))))
            Assert.Equal(32, cfg.RootElement.GetProperty("model").GetProperty("seq_len").GetInt32());
        Assert.True(new FileInfo(Path.Combine(run, "model.safetensors")).Length > 1000);

        var g = CliRunner.Run("generate", "--model", run, "--prompt", "the ", "--tokens", "20", "--seed", "3");
        Assert.True(g.ExitCode == 0, g.Stderr);
        Assert.StartsWith("the ", g.Stdout);
        Assert.True(g.Stdout.Trim().Length > 4, "generate printed no new text");

        var e = CliRunner.Run("eval", "--model", run, "--data", data, "--max-sequences", "4");
        Assert.True(e.ExitCode == 0, e.Stderr);
        using var ej = JsonDocument.Parse(e.Stdout);
        Assert.InRange(ej.RootElement.GetProperty("loss").GetDouble(), 0.0, 10.0);
    }

    public static TheoryData<string, string[], string> BadInputs => new()
    {
        { "missing data", ["--data", "/nonexistent/corpus.txt"], "does not exist" },
        { "empty data", ["--data", "@empty"], "empty" },
        { "directory without text", ["--data", "@emptydir"], "no text files" },
        { "binary data", ["--data", "@binary"], "binary" },
        { "odd head_dim", ["--head-dim", "7"], "head_dim 7 is odd" },
        { "seq longer than the data", ["--data", "@short", "--seq", "512"], "--seq" },
        { "unknown preset", ["--preset", "huge"], "unknown preset" },
        { "bad block", ["--block", "diagonal"], "--block" },
        { "bad batch schedule", ["--batch", "0:4,x"], "batch schedule" },
        { "mesh not dividing the heads", ["--mesh", "1x3"], "heads" },
        { "mesh larger than the machine", ["--backend", "opencl", "--mesh", "4x4"], "devices" },
        { "negative learning rate", ["--lr", "-0.01"], "--lr" },
        { "negative update clip", ["--update-clip", "-1"], "--update-clip" },
        { "non-finite gradient clip", ["--grad-clip", "NaN"], "--grad-clip" },
        { "negative weight-decay exponent", ["--weight-decay-exponent", "-2"], "--weight-decay-exponent" },
        { "negative warmup", ["--warmup-steps", "-5"], "--warmup-steps" },
        { "negative beta2 decay", ["--beta2-decay", "-0.8"], "--beta2-decay" },
        { "explicit vocab the model axis does not divide", ["--vocab", "320", "--mesh", "1x3", "--heads", "3", "--d-ff", "129"], "--vocab 321" },
    };

    [Fact]
    public void HeadsNeedNotDivideDModelAndTheMeshPadsTheTokenizersVocabulary()
    {
        // H·K need not equal D (the projections are (D, H·K)); and a model axis of 3 gets the tokenizer's vocabulary
        // padded to a multiple of lcm(64, 3) = 192, as `palm plan` pads it, instead of a refusal.
        string dir = CliRunner.TempDir();
        var heads = CliRunner.Run("train", "--preset", "tiny", "--heads", "5", "--steps", "2", "--out", Path.Combine(dir, "h5"), "--peak-gflops", "100");
        Assert.True(heads.ExitCode == 0, heads.Stderr);
        var mesh = CliRunner.Run("train", "--preset", "tiny", "--mesh", "1x3", "--heads", "3", "--d-ff", "129", "--steps", "2", "--out", Path.Combine(dir, "m3"), "--peak-gflops", "100");
        Assert.True(mesh.ExitCode == 0, mesh.Stderr);
        using var cfg = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "m3", "config.json")));
        Assert.Equal(384, cfg.RootElement.GetProperty("model").GetProperty("vocab").GetInt32());
    }

    [Theory]
    [MemberData(nameof(BadInputs))]
    public void BadInputPrintsOneClearLineAndWritesNothing(string what, string[] args, string expected)
    {
        string dir = CliRunner.TempDir();
        File.WriteAllText(Path.Combine(dir, "empty.txt"), "");
        Directory.CreateDirectory(Path.Combine(dir, "emptydir"));
        File.WriteAllText(Path.Combine(dir, "emptydir", "image.png"), "not text");
        File.WriteAllBytes(Path.Combine(dir, "binary.txt"), [0x7f, 0x45, 0x4c, 0x46, 0, 0, 1, 2]);
        File.WriteAllText(Path.Combine(dir, "short.txt"), "just a few words");
        var full = new List<string> { "train", "--steps", "2", "--out", Path.Combine(dir, "run") };
        if (!args.Contains("--preset")) full.AddRange(["--preset", "tiny"]);
        full.AddRange(args.Select(a => a.StartsWith('@') ? Path.Combine(dir, a[1..] + (a == "@emptydir" ? "" : ".txt")) : a));
        var r = CliRunner.Run(full.ToArray());
        Assert.True(r.ExitCode != 0, $"{what}: exit code 0");
        var errLines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(errLines.Length == 1, $"{what}: expected one error line, got:\n{r.Stderr}");
        Assert.Contains(expected, errLines[0]);
        Assert.False(Directory.Exists(Path.Combine(dir, "run")), $"{what}: a run directory was written");
    }

    [Fact]
    public void OptimizerFlagsReachConfigAndCheckpointsAndResumeKeepsThem()
    {
        string run = Path.Combine(CliRunner.TempDir(), "run");
        var r = CliRunner.Run("train", "--preset", "tiny", "--seq", "16", "--batch", "2", "--steps", "2", "--checkpoint-every", "1", "--out", run, "--peak-gflops", "100",
                              "--lr", "0.05", "--warmup-steps", "7", "--update-clip", "0", "--grad-clip", "0.5", "--weight-decay-exponent", "0", "--beta2-decay", "0.9");
        Assert.True(r.ExitCode == 0, r.Stderr);
        void Check(string file)
        {
            using var j = JsonDocument.Parse(File.ReadAllText(file));
            var o = j.RootElement.GetProperty("training").GetProperty("optimizer");
            Assert.Equal(0.05f, o.GetProperty("peak_learning_rate").GetSingle());
            Assert.Equal(7, o.GetProperty("warm_steps").GetInt32());
            Assert.Equal(0f, o.GetProperty("update_clip").GetSingle());
            Assert.Equal(0.5f, o.GetProperty("grad_clip_norm").GetSingle());
            Assert.Equal(0f, o.GetProperty("weight_decay_exponent").GetSingle());
            Assert.Equal(0.9f, o.GetProperty("beta2_decay_exponent").GetSingle());
        }
        Check(Path.Combine(run, "config.json"));
        Check(Directory.GetFiles(Path.Combine(run, "checkpoints"), "manifest.json", SearchOption.AllDirectories).Max()!);

        var overridden = CliRunner.Run("train", "--resume", "latest", "--out", run, "--steps", "3", "--update-clip", "1");
        Assert.Equal(2, overridden.ExitCode);
        Assert.Contains("drop --update-clip", overridden.Stderr);
        var dataChanged = CliRunner.Run("train", "--resume", "latest", "--out", run, "--steps", "3", "--seed", "9", "--batch", "4");
        Assert.Equal(2, dataChanged.ExitCode);
        Assert.Contains("drop --batch, --seed", dataChanged.Stderr);   // the data order is the checkpoint's, never silently another
        var resumed = CliRunner.Run("train", "--resume", "latest", "--out", run, "--steps", "3", "--peak-gflops", "100",
                                    "--backend", "opencl", "--checkpoint-every", "1", "--max-rollbacks", "2");
        Assert.True(resumed.ExitCode == 0, resumed.Stderr);
        Assert.Contains("continuing on opencl device 0 (the checkpoint trained on cpu device 0)", resumed.Stderr);
        Check(Path.Combine(run, "config.json")); // rewritten from the checkpoint's options, not the defaults
        using (var j = JsonDocument.Parse(File.ReadAllText(Path.Combine(run, "config.json"))))
        {
            var t = j.RootElement.GetProperty("training");
            Assert.Equal("opencl", t.GetProperty("backend").GetString());   // where and how a run goes on may change
            Assert.Equal(1, t.GetProperty("checkpoint_every").GetInt64());
            Assert.Equal(2, t.GetProperty("spike_guard").GetProperty("max_rollbacks").GetInt32());
        }
    }

    [Fact]
    public void InjectedSpikeIsLoggedAsARollbackAndPlotted()
    {
        string run = Path.Combine(CliRunner.TempDir(), "run");
        var r = CliRunner.Run("train", "--preset", "tiny", "--seq", "16", "--batch", "2", "--steps", "40", "--checkpoint-every", "5",
                              "--inject-spike", "30", "--rollback-steps", "10", "--skip-min", "20", "--skip-max", "50", "--out", run, "--peak-gflops", "100");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("loss spike at step 30", r.Stderr);
        var rollback = File.ReadLines(Path.Combine(run, "metrics.jsonl")).Where(l => l.Contains("\"rollback\"")).ToList();
        var j = Assert.Single(rollback);
        using var doc = JsonDocument.Parse(j);
        Assert.Equal(30, doc.RootElement.GetProperty("spike_step").GetInt64());
        Assert.Equal(20, doc.RootElement.GetProperty("restored_step").GetInt64());
        Assert.Equal(20, doc.RootElement.GetProperty("skip_first").GetInt64());

        var p = CliRunner.Run("plot", run);
        Assert.True(p.ExitCode == 0, p.Stderr);
        string svg = File.ReadAllText(Path.Combine(run, "loss.svg"));
        Assert.StartsWith("<?xml", svg.TrimStart());
        Assert.Contains("rollback to 20", svg);
        Assert.Contains("spike 30", svg);
    }

    [Fact]
    public void MeshTrainingWritesWeightsThatGenerateCanLoad()
    {
        string run = Path.Combine(CliRunner.TempDir(), "run");
        var r = CliRunner.Run("train", "--preset", "tiny", "--steps", "4", "--batch", "4", "--mesh", "2x2", "--out", run, "--peak-gflops", "100", "--checkpoint-every", "2");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var lines = File.ReadAllLines(Path.Combine(run, "metrics.jsonl"));
        Assert.Equal(4, lines.Count(l => !l.Contains("\"event\"")));
        Assert.Contains(lines, l => l.Contains("\"event\":\"end\"") && l.Contains("eval_loss"));
        Assert.Contains("\"mesh\": \"2x2\"", File.ReadAllText(Path.Combine(run, "config.json")));
        Assert.True(File.Exists(Path.Combine(run, "checkpoints", "step-000000004", "weights.d0-m1.safetensors")));
        var g = CliRunner.Run("generate", "--model", run, "--tokens", "5");
        Assert.True(g.ExitCode == 0, g.Stderr);

        // eval on a mesh scores like one device; a count the data axis does not divide is said, not hidden.
        string text = Path.Combine(CliRunner.TempDir(), "eval.txt");
        File.WriteAllText(text, string.Concat(Enumerable.Repeat("To be, or not to be, that is the question. ", 40)));
        double Loss(CliRunner.Result e) { Assert.True(e.ExitCode == 0, e.Stderr); return JsonDocument.Parse(e.Stdout).RootElement.GetProperty("loss").GetDouble(); }
        double one = Loss(CliRunner.Run("eval", "--model", run, "--data", text, "--max-sequences", "8"));
        double meshLoss = Loss(CliRunner.Run("eval", "--model", run, "--data", text, "--max-sequences", "8", "--mesh", "2x2"));
        Assert.True(Math.Abs(one - meshLoss) <= 1e-5 * one, $"eval on 2x2 {meshLoss:R} vs one device {one:R}");
        var odd = CliRunner.Run("eval", "--model", run, "--data", text, "--max-sequences", "7", "--mesh", "2x1");
        Assert.True(odd.ExitCode == 0, odd.Stderr);
        Assert.Contains("scoring 6 of 7 sequences", odd.Stderr);
        var cpuDevice = CliRunner.Run("eval", "--model", run, "--data", text, "--max-sequences", "8", "--mesh", "2x1", "--collectives", "device");
        Assert.Equal(2, cpuDevice.ExitCode);   // --collectives reaches eval's mesh: CPU logical devices cannot copy on a device
        Assert.Contains("--collectives device", cpuDevice.Stderr);

        // The mesh checkpoint continues on another mesh.
        var resumed = CliRunner.Run("train", "--resume", "latest", "--out", run, "--steps", "6", "--mesh", "1x2", "--peak-gflops", "100");
        Assert.True(resumed.ExitCode == 0, resumed.Stderr);
        Assert.Contains("resharding: checkpoint written on mesh 2x2, continuing on 1x2", resumed.Stderr);
        Assert.Contains("done: step 6", resumed.Stdout);
    }

    [Fact]
    public void BenchOnAMeshReportsTimeInCollectives()
    {
        var r = CliRunner.Run("bench", "--preset", "tiny", "--batch", "4", "--mesh", "2x2", "--steps", "2", "--warmup", "0", "--peak-gflops", "100");
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var j = JsonDocument.Parse(r.Stdout.Split('\n')[0]);
        var col = j.RootElement.GetProperty("collectives");
        Assert.True(col.GetProperty("seconds_per_step").GetDouble() > 0);
        Assert.True(col.GetProperty("own_seconds_per_step").GetDouble() > 0);
        Assert.True(col.GetProperty("all_reduce").GetInt64() > 0);
        Assert.Equal("2x2", j.RootElement.GetProperty("mesh").GetString());
        Assert.Contains("collectives:", r.Stderr);
    }

    // Two blocks in one process, stepped in turn: one JSON line with each variant's rates and the ratio to the last.
    [Fact]
    public void BenchWithTwoBlocksStepsBothAndPrintsTheirRatio()
    {
        var r = CliRunner.Run("bench", "--preset", "tiny", "--batch", "2", "--block", "parallel,serial", "--steps", "3", "--warmup", "1", "--peak-gflops", "100");
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var j = JsonDocument.Parse(r.Stdout.Split('\n')[0]);
        Assert.Equal("compare", j.RootElement.GetProperty("bench").GetString());
        var variants = j.RootElement.GetProperty("variants").EnumerateArray().ToList();
        Assert.Equal(["parallel", "serial"], variants.Select(v => v.GetProperty("block").GetString()));
        foreach (var v in variants)
        {
            double tps = v.GetProperty("tokens_per_s").GetDouble(), step = v.GetProperty("step_seconds").GetDouble();
            Assert.True(tps > 0 && step > 0);
            Assert.Equal(2 * 32 / step, tps, 0.002 * tps);   // tiny: T 32, batch 2; step_seconds to the microsecond
            Assert.True(v.GetProperty("step_seconds_min").GetDouble() <= step);
        }
        double ratio = variants[0].GetProperty("tokens_per_s").GetDouble() / variants[1].GetProperty("tokens_per_s").GetDouble();
        Assert.Equal(ratio, variants[0].GetProperty("tokens_per_s_vs_last").GetDouble(), 0.001 * ratio);
        Assert.Equal(1.0, variants[1].GetProperty("tokens_per_s_vs_last").GetDouble());
        Assert.Contains("2 variants stepped in turn, 3 timed steps each (ratios against serial)", r.Stdout);
    }

    // Steps that vary by 10% or more mean other work shared the cores: bench says so, with the best step's MFU.
    [Fact]
    public void BenchNotesABusyMachineFromTheSpreadOfItsSteps()
    {
        // Mean 1.2 s against a best of 1.0 s: 20% above; MFU of the mean 0.5, so the best step alone gives 60%.
        string? note = Palm.Cli.BenchCommand.BusyNote([1.0, 1.1, 1.5], 0.5);
        Assert.NotNull(note);
        Assert.Contains("the 3 timed steps took 1.000–1.500 s, their mean 20% above the best", note);
        Assert.Contains("the best step alone gives 60.0% MFU", note);
        Assert.Contains(": other processes took part of the cores' time", note);   // a 1 s step is no runtime pause
        Assert.Null(Palm.Cli.BenchCommand.BusyNote([1.0, 1.05, 1.1], 0.5));   // mean 5% above the best: a quiet machine
        Assert.Null(Palm.Cli.BenchCommand.BusyNote([1.0], 0.5));              // one step: nothing to compare
        Assert.Null(Palm.Cli.BenchCommand.BusyNote([1.0, 1.0, 1.0], 0.5));
        Assert.StartsWith("palm: note: the serial block's 2 timed steps took 1.000–1.400 s, their mean 20% above the best",
                          Palm.Cli.BenchCommand.BusyNote([1.0, 1.4], 0.5, "serial block's "));
    }

    [Theory]
    [InlineData("parallel,parallel")]
    [InlineData("parallel,")]
    public void BenchWithABadBlockListSaysHowToWriteIt(string blocks)
    {
        var r = CliRunner.Run("bench", "--preset", "tiny", "--block", blocks, "--steps", "1");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("give two or more different blocks to compare, e.g. --block parallel,serial", r.Stderr);
    }

    // Multi-query keeps one K/V head: H/G = 2 times fewer cache bytes per token than multi-head at the same width.
    [Fact]
    public void BenchGenerateReportsDecodeSpeedAndCacheBytesPerToken()
    {
        string[] shape = ["bench", "--generate", "--preset", "small", "--layers", "1", "--d-model", "64", "--heads", "2", "--head-dim", "32", "--d-ff", "128", "--seq", "48", "--batch", "2"];
        var bytes = new Dictionary<string, long>();
        foreach (var attention in new[] { "multi-query", "multi-head" })
        {
            var r = CliRunner.Run([.. shape, "--attention", attention]);
            Assert.True(r.ExitCode == 0, r.Stderr);
            using var j = JsonDocument.Parse(r.Stdout.Split('\n')[0]);
            Assert.Equal("generate", j.RootElement.GetProperty("bench").GetString());
            Assert.True(j.RootElement.GetProperty("decode_tokens_per_s").GetDouble() > 0);
            Assert.True(j.RootElement.GetProperty("prefill_tokens_per_s").GetDouble() > 0);
            Assert.True(j.RootElement.GetProperty("decoded_tokens").GetInt64() > 0);
            bytes[attention] = j.RootElement.GetProperty("kv_cache_bytes_per_token").GetInt64();
        }
        Assert.Equal(2L * 1 * 1 * 32 * 4, bytes["multi-query"]);
        Assert.Equal(2L * 1 * 2 * 32 * 4, bytes["multi-head"]);
    }

    [Fact]
    public void PlanPrintsThePaperParameterCounts()
    {
        var r = CliRunner.Run("plan", "palm-540b");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("540,356,474,880", r.Stdout);
        var r8 = CliRunner.Run("plan", "palm-8b");
        Assert.Contains("8,632,012,800", r8.Stdout); // PaLM Table 1: 8.63B
    }

    [Fact]
    public void A_cpu_without_hardware_fma_is_named_slow()
    {
        // .NET 10 turns FMA off with AVX2 (one x86-64-v3 group): the kernels then emulate every fused multiply-add.
        var slow = CliRunner.RunWithEnv(new Dictionary<string, string> { ["DOTNET_EnableAVX2"] = "0" }, "devices");
        Assert.True(slow.ExitCode == 0, slow.Stderr);
        var cpu = Assert.Single(slow.Stdout.Split('\n'), l => l.StartsWith("cpu:0 ", StringComparison.Ordinal));
        // On ARM64 the switch does not exist and NEON always fuses.
        if (System.Runtime.Intrinsics.X86.X86Base.IsSupported) Assert.Contains("no hardware FMA", cpu);
        else Assert.DoesNotContain("FMA", cpu);
        if (Palm.Gpu.Backends.Cpu.CpuSimd.HasFma)
            Assert.DoesNotContain("FMA", Assert.Single(CliRunner.Run("devices").Stdout.Split('\n'), l => l.StartsWith("cpu:0 ", StringComparison.Ordinal)));
    }
}

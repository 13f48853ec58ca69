using System.Diagnostics;
using System.Text.Json;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Cli;

/// <summary>`palm train` as a careless or unlucky user meets it: signals, reruns, forks, two trains at once, moved or changed data.</summary>
public class RunSafetyTests
{
    static readonly string[] Tiny = ["--preset", "tiny", "--seq", "16", "--batch", "2", "--peak-gflops", "100"];

    static string[] Train(string run, int steps, params string[] more) => ["train", .. Tiny, "--steps", steps.ToString(), "--out", run, .. more];

    /// <summary>Starts palm without waiting; stdout and stderr are collected in the background.</summary>
    sealed class Child : IDisposable
    {
        readonly Process _p;
        readonly Task<string> _out, _err;

        public Child(string? cwd, params string[] args)
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = cwd ?? Environment.CurrentDirectory };
            psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "palm.dll"));
            foreach (var a in args) psi.ArgumentList.Add(a);
            _p = Process.Start(psi)!;
            _out = _p.StandardOutput.ReadToEndAsync();
            _err = _p.StandardError.ReadToEndAsync();
        }

        public int Pid => _p.Id;

        public void Signal(string name) => Assert.Equal(0, Process.Start("kill", ["-" + name, Pid.ToString()])!.WaitForExitAsync().ContinueWith(_ => 0).Result);

        public CliRunner.Result Wait()
        {
            if (!_p.WaitForExit(TimeSpan.FromMinutes(2))) { _p.Kill(entireProcessTree: true); throw new TimeoutException("palm did not finish in 2 minutes"); }
            return new CliRunner.Result(_p.ExitCode, _out.Result, _err.Result);
        }

        public void Dispose()
        {
            if (!_p.HasExited) _p.Kill(entireProcessTree: true);
            _p.Dispose();
        }
    }

    static List<string> StepLines(string run) => File.Exists(Path.Combine(run, "metrics.jsonl"))
        ? ReadShared(Path.Combine(run, "metrics.jsonl")).Where(l => l.StartsWith("{\"step\"")).ToList() : [];

    static List<string> ReadShared(string path)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var r = new StreamReader(fs);
        var lines = new List<string>();
        while (r.ReadLine() is { } l) if (l.EndsWith('}')) lines.Add(l);
        return lines;
    }

    static void WaitForSteps(string run, int n, Child child)
    {
        var sw = Stopwatch.StartNew();
        while (StepLines(run).Count < n)
        {
            Assert.True(sw.Elapsed < TimeSpan.FromMinutes(1), $"palm did not reach step {n}");
            Thread.Sleep(2);
        }
    }

    static Dictionary<long, double> Losses(string run) => StepLines(run).Select(l => JsonDocument.Parse(l).RootElement)
        .ToDictionary(j => j.GetProperty("step").GetInt64(), j => j.GetProperty("loss").GetDouble());

    [Fact]
    public void CtrlCAtARandomStepKeepsTheStateAndResumeLatestEndsBitIdentical()
    {
        string dir = CliRunner.TempDir();
        string straight = Path.Combine(dir, "straight"), cut = Path.Combine(dir, "cut");
        const int steps = 300;
        var s = CliRunner.Run(Train(straight, steps));
        Assert.True(s.ExitCode == 0, s.Stderr);

        int at = Random.Shared.Next(5, 200);
        CliRunner.Result r;
        using (var child = new Child(null, Train(cut, steps)))
        {
            WaitForSteps(cut, at, child);
            child.Signal("INT");
            r = child.Wait();
        }
        string why = $"SIGINT after step {at}: {r.Stderr}";
        Assert.True(r.ExitCode == 130, why);
        Assert.Contains("interrupted (SIGINT)", r.Stderr);
        Assert.Contains("stopped by SIGINT after step", r.Stderr);
        Assert.Contains("--resume latest", r.Stderr);
        Assert.True(File.Exists(Path.Combine(cut, "model.safetensors")), why);
        Assert.Contains(File.ReadLines(Path.Combine(cut, "metrics.jsonl")), l => l.Contains("\"event\":\"interrupted\""));
        long stopped = StepLines(cut).Count;
        Assert.True(Directory.Exists(Path.Combine(cut, "checkpoints", $"step-{stopped:D9}")), why);

        var resumed = CliRunner.Run("train", "--resume", "latest", "--out", cut, "--peak-gflops", "100");
        Assert.True(resumed.ExitCode == 0, resumed.Stderr);
        Assert.Contains($"at step {stopped}", resumed.Stderr);
        Assert.True(File.ReadAllBytes(Path.Combine(straight, "model.safetensors")).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(cut, "model.safetensors"))),
                    $"model.safetensors differs from the uninterrupted run's (SIGINT after step {at}, stopped at {stopped})");
        Assert.Equal(Losses(straight), Losses(cut));   // every step once, with the same loss
    }

    [Fact]
    public void SigtermKeepsACheckpointAndExits143()
    {
        string run = Path.Combine(CliRunner.TempDir(), "run");
        CliRunner.Result r;
        using (var child = new Child(null, Train(run, 100_000)))
        {
            WaitForSteps(run, 10, child);
            child.Signal("TERM");
            r = child.Wait();
        }
        Assert.True(r.ExitCode == 143, r.Stderr);
        Assert.Contains("stopped by SIGTERM", r.Stderr);
        Assert.NotEmpty(Directory.GetDirectories(Path.Combine(run, "checkpoints"), "step-*"));
        Assert.True(File.Exists(Path.Combine(run, "model.safetensors")));
    }

    [Fact]
    public void AFinishedRunIsNeverSilentlyOverwrittenAndARerunOfItsCommandContinuesIt()
    {
        string dir = CliRunner.TempDir();
        string run = Path.Combine(dir, "run");
        Assert.Equal(0, CliRunner.Run(Train(run, 3)).ExitCode);
        var model = File.ReadAllBytes(Path.Combine(run, "model.safetensors"));
        var again = CliRunner.Run(Train(run, 3, "--seed", "5"));
        Assert.Equal(2, again.ExitCode);
        Assert.Contains("already holds a run", again.Stderr);
        Assert.Contains("--overwrite", again.Stderr);
        Assert.Equal(model, File.ReadAllBytes(Path.Combine(run, "model.safetensors")));
        var replaced = CliRunner.Run(Train(run, 3, "--seed", "5", "--overwrite"));
        Assert.True(replaced.ExitCode == 0, replaced.Stderr);
        Assert.NotEqual(model, File.ReadAllBytes(Path.Combine(run, "model.safetensors")));

        // With checkpoints, the same command again continues the run; a different one is refused, naming the difference.
        string ck = Path.Combine(dir, "ck");
        Assert.Equal(0, CliRunner.Run(Train(ck, 4, "--checkpoint-every", "2")).ExitCode);
        var rerun = CliRunner.Run(Train(ck, 6, "--checkpoint-every", "2"));
        Assert.True(rerun.ExitCode == 0, rerun.Stderr);
        Assert.Contains("continuing it", rerun.Stderr);
        Assert.Contains("at step 4", rerun.Stderr);
        Assert.Contains("done: step 6", rerun.Stdout);
        var conflicting = CliRunner.Run(Train(ck, 8, "--checkpoint-every", "2", "--seed", "9"));
        Assert.Equal(2, conflicting.ExitCode);
        Assert.Contains("seed: 1 → 9", conflicting.Stderr);
    }

    [Fact]
    public void ResumeFromACheckpointDirectoryWritesWhereItIsToldAndNeverInsideCheckpoints()
    {
        string dir = CliRunner.TempDir();
        string a = Path.Combine(dir, "a"), b = Path.Combine(dir, "b"), c = Path.Combine(dir, "c");
        Assert.Equal(0, CliRunner.Run(Train(a, 4, "--checkpoint-every", "2")).ExitCode);
        Assert.Equal(0, CliRunner.Run(Train(b, 2)).ExitCode);
        var bModel = File.ReadAllBytes(Path.Combine(b, "model.safetensors"));
        string step2 = Path.Combine(a, "checkpoints", "step-000000002");

        var intoB = CliRunner.Run("train", "--resume", step2, "--out", b, "--peak-gflops", "100");
        Assert.Equal(2, intoB.ExitCode);
        Assert.Contains("already holds a run", intoB.Stderr);
        Assert.Equal(bModel, File.ReadAllBytes(Path.Combine(b, "model.safetensors")));

        var fork = CliRunner.Run("train", "--resume", step2, "--out", c, "--peak-gflops", "100");
        Assert.True(fork.ExitCode == 0, fork.Stderr);
        Assert.Equal(File.ReadAllBytes(Path.Combine(a, "model.safetensors")), File.ReadAllBytes(Path.Combine(c, "model.safetensors")));

        var own = CliRunner.Run("train", "--resume", step2 + "/", "--peak-gflops", "100");   // trailing slash, no --out: the checkpoint's own run
        Assert.True(own.ExitCode == 0, own.Stderr);
        Assert.False(File.Exists(Path.Combine(a, "checkpoints", "config.json")));
        Assert.False(File.Exists(Path.Combine(a, "checkpoints", "model.safetensors")));
        Assert.Contains(File.ReadLines(Path.Combine(a, "metrics.jsonl")), l => l.Contains("\"event\":\"resume\""));
    }

    [Fact]
    public void ASecondTrainIntoABusyRunDirectoryIsRefused()
    {
        string run = Path.Combine(CliRunner.TempDir(), "run");
        using (var first = new Child(null, Train(run, 100_000)))
        {
            WaitForSteps(run, 3, first);
            var second = CliRunner.Run(Train(run, 2, "--overwrite"));
            Assert.Equal(2, second.ExitCode);
            Assert.Contains($"in use by another palm train (process {first.Pid})", second.Stderr);
            Process.Start("kill", ["-KILL", first.Pid.ToString()])!.WaitForExit();
            first.Wait();
        }
        // The kernel dropped the dead process's lock: no stale lock to clean up by hand.
        var after = CliRunner.Run(Train(run, 2, "--overwrite"));
        Assert.True(after.ExitCode == 0, after.Stderr);
    }

    [Fact]
    public void ARunResumesFromAnotherWorkingDirectoryAndChangedDataIsRefused()
    {
        string work = CliRunner.TempDir(), elsewhere = CliRunner.TempDir();
        string text = string.Concat(Enumerable.Repeat("the quick brown fox jumps over the lazy dog. ", 60));
        File.WriteAllText(Path.Combine(work, "data.txt"), text);
        var first = CliRunner.RunIn(work, null, Train("run", 4, "--data", "data.txt", "--checkpoint-every", "2"));
        Assert.True(first.ExitCode == 0, first.Stderr);
        string run = Path.Combine(work, "run");

        var moved = CliRunner.RunIn(elsewhere, null, "train", "--resume", "latest", "--out", run, "--steps", "6", "--peak-gflops", "100");
        Assert.True(moved.ExitCode == 0, moved.Stderr);

        File.WriteAllText(Path.Combine(work, "data.txt"), text.Replace("fox", "cat"));
        var changed = CliRunner.Run("train", "--resume", "latest", "--out", run, "--steps", "8", "--peak-gflops", "100");
        Assert.Equal(2, changed.ExitCode);
        Assert.Contains("is not the data", changed.Stderr);

        // The same data at a new path is accepted (its fingerprint is the checkpoint's).
        File.WriteAllText(Path.Combine(elsewhere, "copy.txt"), text);
        File.Delete(Path.Combine(work, "data.txt"));
        var gone = CliRunner.Run("train", "--resume", "latest", "--out", run, "--steps", "8", "--peak-gflops", "100");
        Assert.Equal(2, gone.ExitCode);
        Assert.Contains("pass --data", gone.Stderr);
        var relocated = CliRunner.Run("train", "--resume", "latest", "--out", run, "--steps", "8", "--peak-gflops", "100", "--data", Path.Combine(elsewhere, "copy.txt"));
        Assert.True(relocated.ExitCode == 0, relocated.Stderr);
        Assert.Contains("done: step 8", relocated.Stdout);
    }
}

using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using Palm.Gpu.IO;
using Palm.Gpu.Sharding.Mpi;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Sharding.Mpi;

/// <summary>
/// `mpiexec -n P palm …` on this machine (MPICH over shared memory): a mesh split over processes writes the bytes
/// of the in-process mesh of the same shape, checkpoints written by P processes resume on another count or on one
/// process, a lost process ends the job instead of hanging, and bad launches get one line. These need MPICH
/// (./test installs it); they fail, never skip, without it.
/// </summary>
[Collection("mpi")]
public sealed class MpiJobTests
{
    static readonly string Palm = Path.Combine(AppContext.BaseDirectory, "palm.dll");
    static readonly string[] Tiny = ["--preset", "tiny", "--batch", "4", "--peak-gflops", "100"];

    static string Mpiexec()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':'))
            if (File.Exists(Path.Combine(dir, "mpiexec"))) return Path.Combine(dir, "mpiexec");
        Assert.Fail("mpiexec (MPICH) is not installed; ./test installs it with apt-get (apt-get install mpich)");
        return "";
    }

    sealed record Job(int ExitCode, string Output, TimeSpan Elapsed);

    /// <summary>
    /// A running job's lines, appended by the process's reader threads and read by the test while it runs (an
    /// assertion's message is built even when the assertion holds), so both sides take the lock.
    /// </summary>
    sealed class JobOutput
    {
        readonly StringBuilder _text = new();
        public void Add(string line) { lock (_text) _text.AppendLine(line); }
        public override string ToString() { lock (_text) return _text.ToString(); }
    }

    /// <summary>Starts `mpiexec -n P dotnet palm.dll args` (several command parts: MPMD, "a : b").</summary>
    static Process Start(IReadOnlyDictionary<string, string>? env, JobOutput output, params string[][] parts)
    {
        var psi = new ProcessStartInfo(Mpiexec()) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        for (int i = 0; i < parts.Length; i++)
        {
            if (i > 0) psi.ArgumentList.Add(":");
            foreach (var a in parts[i]) psi.ArgumentList.Add(a);
        }
        foreach (var (k, v) in env ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        var p = new Process { StartInfo = psi };
        void Add(object _, DataReceivedEventArgs e) { if (e.Data is not null) output.Add(e.Data); }
        p.OutputDataReceived += Add;
        p.ErrorDataReceived += Add;
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }

    /// <summary>Ends a job a failed assertion left running (mpiexec and every palm process under it).</summary>
    static void EndJob(Process p)
    {
        try { if (!p.HasExited) p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
    }

    static string[] Part(int processes, params string[] args) => ["-n", processes.ToString(), "dotnet", Palm, .. args];

    static Job Run(int processes, params string[] args) => RunParts(null, Part(processes, args));

    static Job RunParts(IReadOnlyDictionary<string, string>? env, params string[][] parts)
    {
        var output = new JobOutput();
        var sw = Stopwatch.StartNew();
        using var p = Start(env, output, parts);
        if (!p.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"mpiexec {string.Join(" ", parts.SelectMany(x => x))} did not finish in 3 minutes:\n{output}");
        }
        p.WaitForExit();
        return new Job(p.ExitCode, output.ToString(), sw.Elapsed);
    }

    static byte[] Model(string dir) => File.ReadAllBytes(Path.Combine(dir, "model.safetensors"));

    static string Train(string? mesh, string outDir, bool shard = false, params string[] more)
    {
        var args = new List<string> { "train" };
        args.AddRange(Tiny);
        args.AddRange(["--steps", "12", "--out", outDir]);
        if (mesh is not null) args.AddRange(["--mesh", mesh]);
        if (shard) args.Add("--shard-weights");
        args.AddRange(more);
        var r = CliRunner.Run([.. args]);
        Assert.True(r.ExitCode == 0, r.Stderr);
        return outDir;
    }

    [Fact]
    public void AMeshSplitOverProcessesWritesTheInProcessMeshsBytes()
    {
        foreach (var (processes, mesh, shard) in new[] { (2, "2x1", false), (4, "4x1", false), (2, "2x1", true), (2, "2x2", false) })
        {
            string single = Train(mesh, CliRunner.TempDir(), shard);
            string multi = CliRunner.TempDir();
            var job = Run(processes, ["train", .. Tiny, "--steps", "12", "--mesh", mesh, .. shard ? ["--shard-weights"] : Array.Empty<string>(), "--out", multi]);
            Assert.True(job.ExitCode == 0, job.Output);
            Assert.True(Model(single).AsSpan().SequenceEqual(Model(multi)), $"-n {processes} --mesh {mesh}{(shard ? " --shard-weights" : "")}: model.safetensors differs from the in-process mesh's");
            // Process 0 speaks for the job: one metrics line per step, one "done" line.
            Assert.Equal(13, File.ReadAllLines(Path.Combine(multi, "metrics.jsonl")).Length);
            Assert.Single(job.Output.Split('\n'), l => l.StartsWith("done: step 12"));
            Assert.Contains($"{processes} processes under mpiexec", job.Output);
        }
    }

    [Fact]
    public void TheSpikeGuardRollsBackEveryProcessTogether()
    {
        string[] args = ["--preset", "tiny", "--batch", "2", "--peak-gflops", "100", "--steps", "40", "--mesh", "2x1", "--checkpoint-every", "5",
                         "--inject-spike", "30", "--skip-min", "5", "--skip-max", "10"];
        string single = CliRunner.TempDir(), multi = CliRunner.TempDir();
        var r = CliRunner.Run(["train", .. args, "--out", single]);
        Assert.True(r.ExitCode == 0, r.Stderr);
        var job = Run(2, ["train", .. args, "--out", multi]);
        Assert.True(job.ExitCode == 0, job.Output);
        Assert.Contains("rolled back to step 0 and skipping batches 0..9", job.Output);
        Assert.True(Model(single).AsSpan().SequenceEqual(Model(multi)), "after a rollback, -n 2 --mesh 2x1 differs from the in-process 2x1 mesh");
    }

    [Fact]
    public void ACheckpointOfFourProcessesResumesOnTwoAndOnOne()
    {
        string run = CliRunner.TempDir();
        var job = Run(4, ["train", .. Tiny, "--steps", "12", "--mesh", "4x1", "--shard-weights", "--checkpoint-every", "6", "--out", run]);
        Assert.True(job.ExitCode == 0, job.Output);
        string step6 = Path.Combine(run, "checkpoints", "step-000000006");
        // Every process wrote the slices it holds; the manifest lists them all.
        var manifest = JsonNode.Parse(File.ReadAllText(Path.Combine(step6, "manifest.json")))!;
        Assert.Equal(8, manifest["files"]!.AsObject().Count);
        var straight = SafeTensors.Read(Path.Combine(run, "model.safetensors"));

        string onTwo = CliRunner.TempDir(), onOne = CliRunner.TempDir();
        var two = Run(2, "train", "--resume", step6, "--out", onTwo, "--mesh", "2x1");
        Assert.True(two.ExitCode == 0, two.Output);
        Assert.Contains("resharding", two.Output);
        var one = CliRunner.Run("train", "--resume", step6, "--out", onOne, "--mesh", "1x1");
        Assert.True(one.ExitCode == 0, one.Stderr);
        foreach (var dir in new[] { onTwo, onOne })
        {
            var resumed = SafeTensors.Read(Path.Combine(dir, "model.safetensors"));
            foreach (var (name, t) in straight)
                Tolerance.AssertClose(t.Data, resumed[name].Data, 1e-5, 1e-4, $"{name} resumed in {dir}");
        }
    }

    static int PidOf(JobOutput output, int process)
    {
        var m = System.Text.RegularExpressions.Regex.Match(output.ToString(), $@"process {process} \(pid (\d+) on");
        Assert.True(m.Success, $"no start-up line naming process {process}:\n{output}");
        return int.Parse(m.Groups[1].Value);
    }

    static void WaitFor(Func<bool> condition, Process p, JobOutput output, string what)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            if (p.HasExited) Assert.Fail($"the job ended before {what}:\n{output}");
            if (sw.Elapsed > TimeSpan.FromMinutes(2)) Assert.Fail($"no {what} after 2 minutes:\n{output}");
            Thread.Sleep(100);
        }
    }

    [Fact]
    public void AKilledProcessEndsTheJobAndResumeLatestFinishesTheRun()
    {
        string run = CliRunner.TempDir();
        string[] args = ["train", .. Tiny, "--steps", "300", "--mesh", "2x1", "--checkpoint-every", "10", "--out", run];
        var output = new JobOutput();
        var sw = new Stopwatch();
        using (var p = Start(null, output, Part(2, args)))
        try
        {
            WaitFor(() => Directory.Exists(Path.Combine(run, "checkpoints", "step-000000010")), p, output, "checkpoint at step 10");
            int victim = PidOf(output, 1);
            sw.Start();
            Process.GetProcessById(victim).Kill();   // SIGKILL
            Assert.True(p.WaitForExit(TimeSpan.FromSeconds(60)), $"the job did not end within 60 s of losing process 1:\n{output}");
            p.WaitForExit();
            Assert.NotEqual(0, p.ExitCode);
            // The launcher's banner names the dead pid (palm's start-up line says which process that was); where a
            // survivor notices the broken connection first, its own line ends the job and MPICH's error names rank 1.
            // Hydra's banner names the first exit it reaps: when that is its own clean-up kill of process 0 (exit code
            // 9, before process 0 could notice), it names process 0's pid; that race is the launcher's, so the banner
            // is accepted naming either pid of the job, but it must be the kill banner and not a clean end. Where MPICH's
            // transport (UCX) is mid-transfer with the dead process, it aborts process 0 itself (exit code 6) with a
            // line naming the dead peer's pid ("process_vm_readv(pid=N ...) ... No such process").
            string text = output.ToString();
            int survivor = PidOf(output, 0);
            bool survivorEnded(string code) => System.Text.RegularExpressions.Regex.IsMatch(text, $@"PID {survivor} RUNNING AT .*\s+=\s+EXIT CODE: {code}\b");
            Assert.True(text.Contains($"PID {victim}") || System.Text.RegularExpressions.Regex.IsMatch(text, @"palm: error: process 0 .*(rank 1\b|process 1\b)")
                        || survivorEnded("9") || (survivorEnded(@"\d+") && System.Text.RegularExpressions.Regex.IsMatch(text, $@"\bpid={victim}\b")),
                $"the job's output names neither pid {victim} nor process 1:\n{text}");
        }
        finally { EndJob(p); }
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(60));
        var resumed = Run(2, "train", "--resume", "latest", "--out", run);
        Assert.True(resumed.ExitCode == 0, resumed.Output);
        Assert.Contains("done: step 300", resumed.Output);
        Assert.Matches(@"resuming from .*step-0000000[1-9]\d", resumed.Output);
    }

    [Fact]
    public void ASilentProcessIsNamedAndTheJobEnds()
    {
        string run = CliRunner.TempDir();
        var output = new JobOutput();
        int victim = 0;
        Process? p = null;
        try
        {
            p = Start(new Dictionary<string, string> { ["PALM_MPI_TIMEOUT"] = "3" }, output,
                                Part(2, ["train", .. Tiny, "--steps", "3000", "--mesh", "2x1", "--checkpoint-every", "10", "--out", run]));
            WaitFor(() => Directory.Exists(Path.Combine(run, "checkpoints", "step-000000010")), p, output, "checkpoint at step 10");
            victim = PidOf(output, 1);
            // A stopped process stands for a machine that stopped answering: alive to the launcher, silent to the job.
            Process.Start("kill", ["-STOP", victim.ToString()])!.WaitForExit();
            var sw = Stopwatch.StartNew();
            Assert.True(p.WaitForExit(TimeSpan.FromSeconds(60)), $"the job did not end within 60 s of process 1 going silent:\n{output}");
            p.WaitForExit();
            Assert.Equal(4, p.ExitCode);
            Assert.Contains($"lost process 1 (pid {victim} on", output.ToString());
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(60));
        }
        finally
        {
            if (p is not null) { EndJob(p); p.Dispose(); }
            if (victim > 0) try { Process.GetProcessById(victim).Kill(); } catch (ArgumentException) { } catch (InvalidOperationException) { }
        }
    }

    [Fact]
    public void TheLauncherIsReadFromItsEnvironment()
    {
        Launch? Detect(params (string, string)[] env) => MpiJob.Detect(env.ToDictionary(e => e.Item1, e => (string?)e.Item2));
        Assert.Null(Detect());
        Assert.Null(Detect(("PMI_RANK", "0"), ("PMI_SIZE", "1")));   // mpiexec -n 1: a plain single process
        Assert.Equal(new Launch("mpiexec (hydra)", 1, 4), Detect(("PMI_RANK", "1"), ("PMI_SIZE", "4")));
        Assert.Equal(new Launch("srun (PMI)", 2, 4), Detect(("PMI_RANK", "2"), ("PMI_SIZE", "4"), ("SLURM_STEP_ID", "0")));
        Assert.Equal(new Launch("srun", 3, 8), Detect(("SLURM_PROCID", "3"), ("SLURM_STEP_NUM_TASKS", "8")));
        Assert.Null(Detect(("SLURM_PROCID", "0"), ("SLURM_STEP_NUM_TASKS", "1")));   // a batch script's single task
        var e = Assert.Throws<Palm.Gpu.Model.ConfigException>(() => Detect(("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_RANK", "0")));
        Assert.Contains("MPICH's ABI", e.Message);
    }

    static void AssertOneLine(string output, string expected)
    {
        var errors = output.Split('\n').Where(l => l.StartsWith("palm: error:")).ToList();
        Assert.True(errors.Count == 1, $"expected one error line, got:\n{output}");
        Assert.Contains(expected, errors[0]);
    }

    [Fact]
    public void BadLaunchesGetOneLine()
    {
        // Every process meets this error inside the verb. Process 0 is made to report it late: a process that exited
        // without waiting for it would have the launcher kill process 0 before its line is out.
        var job = RunParts(new Dictionary<string, string> { ["PALM_FAULT_DELAY_LEADER_ERROR_MS"] = "1500" },
                           Part(2, ["train", .. Tiny, "--steps", "2", "--mesh", "1x2", "--out", CliRunner.TempDir()]));
        Assert.Equal(2, job.ExitCode);
        AssertOneLine(job.Output, "mesh 1x2 cannot be split over 2 processes");

        string dir = CliRunner.TempDir();
        job = RunParts(null, Part(1, ["train", .. Tiny, "--steps", "2", "--mesh", "2x1", "--out", dir]),
                             Part(1, ["train", .. Tiny, "--steps", "2", "--mesh", "2x1", "--out", dir, "--backend", "opencl"]));
        Assert.NotEqual(0, job.ExitCode);
        AssertOneLine(job.Output, "different backends (process 0: cpu, process 1: opencl)");

        var noMpi = CliRunner.RunWithEnv(new Dictionary<string, string> { ["PMI_RANK"] = "0", ["PMI_SIZE"] = "2", ["PALM_MPI_LIBRARY"] = "/nonexistent/libmpich.so.12" },
                                         ["train", .. Tiny, "--steps", "2", "--mesh", "2x1", "--out", CliRunner.TempDir()]);
        Assert.Equal(2, noMpi.ExitCode);
        AssertOneLine(noMpi.Stderr, "the MPI library '/nonexistent/libmpich.so.12' could not be loaded: install MPICH");

        var openMpi = CliRunner.RunWithEnv(new Dictionary<string, string> { ["OMPI_COMM_WORLD_SIZE"] = "2", ["OMPI_COMM_WORLD_RANK"] = "0" },
                                           ["train", .. Tiny, "--steps", "2", "--mesh", "2x1", "--out", CliRunner.TempDir()]);
        Assert.Equal(2, openMpi.ExitCode);
        AssertOneLine(openMpi.Stderr, "Open MPI");

        // A plain run with no launcher around it never loads MPI, even when the library is unusable.
        var plain = CliRunner.RunWithEnv(new Dictionary<string, string> { ["PALM_MPI_LIBRARY"] = "/nonexistent/libmpich.so.12" },
                                         ["train", .. Tiny, "--steps", "1", "--out", CliRunner.TempDir()]);
        Assert.True(plain.ExitCode == 0, plain.Stderr);
    }
}

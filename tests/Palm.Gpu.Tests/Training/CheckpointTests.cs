using System.Diagnostics;
using System.Text.Json.Nodes;
using Palm.Gpu.Model;
using Palm.Gpu.Training;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Training;

/// <summary>Checkpoints: bitwise resume, verification, crash safety, the loss-spike guard.</summary>
public class CheckpointTests
{
    static ModelConfig Tiny => ModelConfig.Preset("tiny") with { SeqLen = 16 };

    static TrainOptions Options(string dir, long steps, long every = 4) => new()
    {
        Steps = steps, BatchSchedule = "0:2,6:3", Seed = 7, Threads = 2, PeakGflops = 100, OutDir = dir, CheckpointEvery = every,
        // Small guard settings so a tiny run can exercise rollbacks.
        SpikeGuard = new SpikeGuardConfig { MinHistory = 5, Window = 20, RollbackSteps = 10, SkipMargin = 5, MinSkip = 20, MaxSkip = 50 },
    };

    static float[] State(Trainer t) => TrainerState.WeightsAndOptimizer(t);

    [Fact]
    public void ResumeIsBitIdenticalToAnUninterruptedRun()
    {
        string a = CliRunner.TempDir(), b = CliRunner.TempDir();
        var lossesA = new List<double>();
        float[] straight;
        using (var t = new Trainer(Tiny, Options(a, 14), true))
        {
            t.Run(14, m => lossesA.Add(m.Loss));
            straight = State(t);
        }
        var lossesB = new List<double>();
        using (var t = new Trainer(Tiny, Options(b, 8), true))
            t.Run(8, m => lossesB.Add(m.Loss));
        using (var t = new Trainer(Tiny, Options(b, 14), true))
        {
            var ckpt = t.Checkpoints!.LoadLatestValid()!;
            Assert.Equal(8, ckpt.Manifest.Step);
            t.Restore(ckpt);
            t.Run(14, m => lossesB.Add(m.Loss));
            Assert.True(straight.AsSpan().SequenceEqual(State(t)), "weights or optimizer state differ after resume");
        }
        Assert.Equal(lossesA, lossesB);
    }

    [Fact]
    public void CorruptOrIncompleteCheckpointsAreRefusedAndTheNextOlderOneIsUsed()
    {
        string dir = CliRunner.TempDir();
        using (var t = new Trainer(Tiny, Options(dir, 8), true)) t.Run(8);
        var store = new CheckpointStore(Path.Combine(dir, "checkpoints"));
        Assert.Equal([8L, 4, 0], store.List().Select(x => x.Step));

        // Flip one byte in the newest weights.
        string newest = Path.Combine(store.List()[0].Path, CheckpointStore.WeightsFile);
        var bytes = File.ReadAllBytes(newest);
        bytes[^10] ^= 0x40;
        File.WriteAllBytes(newest, bytes);
        var e = Assert.Throws<InvalidDataException>(() => CheckpointStore.Load(store.List()[0].Path));
        Assert.Contains("fails its checksum", e.Message);
        var warnings = new List<string>();
        Assert.Equal(4, store.LoadLatestValid(warn: warnings.Add)!.Manifest.Step);
        Assert.Single(warnings);

        // Remove a file from the step-4 checkpoint: refused, falls back to step 0.
        File.Delete(Path.Combine(store.List()[1].Path, CheckpointStore.OptimizerFile));
        Assert.Contains("missing", Assert.Throws<InvalidDataException>(() => CheckpointStore.Load(store.List()[1].Path)).Message);
        Assert.Equal(0, store.LoadLatestValid()!.Manifest.Step);
    }

    [Fact]
    public void NewerFormatAndIncompatibleConfigAreClearErrors()
    {
        string dir = CliRunner.TempDir();
        using (var t = new Trainer(Tiny, Options(dir, 4), true)) t.Run(4);
        var store = new CheckpointStore(Path.Combine(dir, "checkpoints"));
        string path = store.List()[0].Path;
        using (var other = new Trainer(Tiny with { Layers = 3 }, Options(CliRunner.TempDir(), 4), true))
        {
            var e = Assert.Throws<ConfigException>(() => other.Restore(CheckpointStore.Load(path)));
            Assert.Contains("different model", e.Message);
        }
        string manifest = Path.Combine(path, CheckpointStore.ManifestFile);
        var node = JsonNode.Parse(File.ReadAllText(manifest))!;
        node["format_version"] = 99;
        File.WriteAllText(manifest, node.ToJsonString());
        Assert.Contains("newer than this palm understands", Assert.Throws<InvalidDataException>(() => CheckpointStore.Load(path)).Message);
    }

    [Fact]
    public void RetentionKeepsRecentOnesAndOneOldEnoughToRollBackTo()
    {
        string dir = CliRunner.TempDir();
        var opts = Options(dir, 40, every: 2);
        using (var t = new Trainer(Tiny, opts, true)) t.Run(40);
        var steps = new CheckpointStore(Path.Combine(dir, "checkpoints"), new RetentionPolicy()).List().Select(x => x.Step).ToList();
        // The run's --rollback-steps is 10: newest four, step 0 (multiple of 1000), the target of a spike now (30 = 40 − 10),
        // and the oldest of each 3-step bucket (⌈10/4⌉) reaching back past 40 − 10 − 3 (28).
        Assert.Equal([40L, 38, 36, 34, 30, 28, 0], steps);
    }

    [Fact]
    public void InjectedSpikeCausesExactlyOneRollbackAndTheSkipSurvivesResume()
    {
        string dir = CliRunner.TempDir();
        var opts = Options(dir, 40, every: 5) with { InjectSpike = "30" };
        var events = new List<TrainingEvent>();
        double finalLoss;
        using (var t = new Trainer(Tiny, opts, true))
        {
            var last = 0.0;
            t.Run(40, m => last = m.Loss, events.Add);
            finalLoss = last;
            Assert.Equal(40, t.Step);
            var rb = Assert.Single(t.Rollbacks);
            Assert.Equal(30, rb.SpikeStep);
            Assert.True(rb.RestoredStep <= 30 - 10, $"restored step {rb.RestoredStep} is not ≥ 10 steps before the spike");
            Assert.Equal(20, rb.RestoredStep); // newest checkpoint at or before 30 − 10
            long skipped = rb.SkipLast - rb.SkipFirst + 1;
            Assert.InRange(skipped, 20, 50);
            Assert.Equal(20, rb.SkipFirst);   // the batches from the restored step on …
            Assert.True(rb.SkipLast >= 29);   // … through the poisoned batch 29
        }
        var rollback = Assert.Single(events, e => e.Kind == "rollback");
        Assert.Equal(20, (long)rollback.Details["restored_step"]!);

        // A run without the injection ends at a similar loss.
        double cleanLoss = 0;
        using (var t = new Trainer(Tiny, Options(CliRunner.TempDir(), 40, 5), true)) t.Run(40, m => cleanLoss = m.Loss);
        Assert.InRange(finalLoss, cleanLoss - 0.5, cleanLoss + 0.5);

        // Resume from a checkpoint after the event: the same batches stay skipped, and the run ends identically.
        float[] expected;
        using (var t = new Trainer(Tiny, opts with { Steps = 40 }, true))
        {
            var ckpt = t.Checkpoints!.LoadLatestValid(35)!;
            Assert.Equal(35, ckpt.Manifest.Step);
            t.Restore(ckpt);
            Assert.Single(t.Rollbacks);
            Assert.Contains(t.Cursor.Skips, s => s.First == 20 && s.Last >= 29);
            t.Run(40);
            expected = State(t);
        }
        using (var t = new Trainer(Tiny, opts, true))
        {
            t.Restore(t.Checkpoints!.LoadLatestValid()!); // step 40, written by the first run
            Assert.Equal(40, t.Step);
            Assert.True(expected.AsSpan().SequenceEqual(State(t)));
        }
    }

    [Fact]
    public void TooManySpikesStopWithAClearMessage()
    {
        string dir = CliRunner.TempDir();
        var opts = Options(dir, 40, every: 5) with
        {
            InjectSpike = "12",
            SpikeGuard = Options(dir, 0).SpikeGuard with { MaxRollbacks = 0 },
        };
        using var t = new Trainer(Tiny, opts, true);
        var e = Assert.Throws<SpikeGuardException>(() => t.Run(40));
        Assert.Contains("stopping instead of looping", e.Message);
    }

    [Theory]
    [InlineData("")]
    [InlineData("--mesh 2x2 --shard-weights")]   // killed after the first of eight shard files
    public void SigkillWhileWritingACheckpointLeavesThePreviousOneAndResumeLatestPicksIt(string meshFlags)
    {
        string dir = CliRunner.TempDir();
        string run = Path.Combine(dir, "run");
        var env = new Dictionary<string, string> { ["PALM_FAULT_KILL_DURING_CHECKPOINT"] = "8" };
        var r = CliRunner.RunWithEnv(env, ["train", "--preset", "tiny", "--seq", "16", "--batch", "2", "--steps", "12", "--checkpoint-every", "4", "--out", run, "--peak-gflops", "100", .. meshFlags.Split(' ', StringSplitOptions.RemoveEmptyEntries)]);
        Assert.Equal(137, r.ExitCode); // killed by SIGKILL
        var store = new CheckpointStore(Path.Combine(run, "checkpoints"));
        Assert.Equal([4L, 0], store.List().Select(x => x.Step)); // step 8 never appeared under its name
        Assert.Equal(4, CheckpointStore.Load(store.List()[0].Path).Manifest.Step);

        var resumed = CliRunner.Run("train", "--resume", "latest", "--out", run, "--steps", "12", "--peak-gflops", "100");
        Assert.True(resumed.ExitCode == 0, resumed.Stderr);
        Assert.Contains("resuming from", resumed.Stderr);
        Assert.Contains("step-000000004", resumed.Stderr);
        Assert.Equal([12L, 8, 4, 0], store.List().Select(x => x.Step));
        Assert.Empty(Directory.GetDirectories(store.Directory, ".tmp-*"));
    }

    [Fact]
    public void FullDiskWhileSavingIsAClearErrorAndLeavesNoHalfCheckpoint()
    {
        Assert.True(Environment.UserName == "root", "this test mounts a 1 MiB tmpfs to fill the disk for real; run the tests as root (./test does on CI)");
        string mount = CliRunner.TempDir();
        Assert.Equal(0, Shell.Run($"mount -t tmpfs -o size=1M tmpfs {mount}"));
        try
        {
            var r = CliRunner.Run("train", "--preset", "tiny", "--steps", "4", "--checkpoint-every", "2", "--out", mount, "--peak-gflops", "100");
            Assert.NotEqual(0, r.ExitCode);
            Assert.Contains("could not write checkpoint", r.Stderr);
            Assert.Contains("No space left on device", r.Stderr);
            var dirs = Directory.Exists(Path.Combine(mount, "checkpoints")) ? Directory.GetDirectories(Path.Combine(mount, "checkpoints")) : [];
            Assert.All(dirs, d => Assert.True(File.Exists(Path.Combine(d, CheckpointStore.ManifestFile)), $"half checkpoint left at {d}"));
        }
        finally
        {
            Shell.Run($"umount {mount}");
        }
    }
}

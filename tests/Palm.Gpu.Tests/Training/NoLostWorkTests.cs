using System.Diagnostics;
using Palm.Gpu.Inference;
using Palm.Gpu.Model;
using Palm.Gpu.Training;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Training;

/// <summary>Work is never lost to a failed checkpoint, a retention that deletes the rollback target, an edited manifest or a NaN.</summary>
public class NoLostWorkTests
{
    static ModelConfig Tiny => ModelConfig.Preset("tiny") with { SeqLen = 16 };

    static TrainOptions Options(string dir, long steps, long every) => new()
    {
        Steps = steps, BatchSchedule = "2", Seed = 3, Threads = 2, PeakGflops = 100, OutDir = dir, CheckpointEvery = every,
        SpikeGuard = new SpikeGuardConfig { MinHistory = 5, Window = 20, RollbackSteps = 30, SkipMargin = 5, MinSkip = 20, MaxSkip = 50 },
    };

    [Fact]
    public void ACheckpointDirectoryBlockedFor1_5SecondsLosesOnlyTheCheckpointsOfThatTime()
    {
        string dir = CliRunner.TempDir();
        string ckpts = Path.Combine(dir, "checkpoints");
        var events = new List<TrainingEvent>();
        Thread? unblock = null;
        var blockedAt = new Stopwatch();
        using var t = new Trainer(Tiny, Options(dir, 600, every: 10), true);
        t.Run(600, m =>
        {
            if (m.Step == 150)
            {
                // A file where the checkpoint directory was: every save fails until it is put back 1.5 s later.
                Directory.Move(ckpts, ckpts + ".away");
                File.WriteAllText(ckpts, "blocked");
                blockedAt.Start();
                unblock = new Thread(() =>
                {
                    Thread.Sleep(1500);
                    File.Delete(ckpts);
                    for (int i = 0; ; i++)
                    {
                        try { Directory.Move(ckpts + ".away", ckpts); break; }
                        catch (IOException) when (i < 100 && Directory.Exists(ckpts)) { Directory.Delete(ckpts, recursive: true); }
                    }
                    blockedAt.Stop();
                });
                unblock.Start();
            }
            // Paces the tiny model while blocked so the 1.5 s span many checkpoint intervals; by step 450 the directory is back for sure.
            if (blockedAt.IsRunning) Thread.Sleep(4);
            if (m.Step == 450) unblock!.Join();
        }, events.Add);
        unblock!.Join();
        Assert.True(blockedAt.Elapsed.TotalSeconds >= 1.5);

        var failed = events.Where(e => e.Kind == "checkpoint_failed").Select(e => (long)e.Details["step"]!).ToList();
        var written = events.Where(e => e.Kind == "checkpoint").Select(e => (long)e.Details["step"]!).ToList();
        Assert.NotEmpty(failed);
        Assert.Contains(150L, failed);
        Assert.Empty(failed.Intersect(written));                      // no event for a checkpoint that never happened
        Assert.Equal(failed, t.FailedCheckpoints.Select(f => f.Step));
        Assert.Contains("could not write checkpoint", events.First(e => e.Kind == "checkpoint_failed").Message);
        // Every checkpoint after the unblock was written, through the last step.
        long lastFailed = failed.Max();
        Assert.True(lastFailed < 450, $"checkpoints failed through step {lastFailed}");
        for (long s = lastFailed + 10; s <= 600; s += 10) Assert.Contains(s, written);
        Assert.Equal(600, t.LastCheckpointStep);
        Assert.Equal(600, CheckpointStore.Load(t.Checkpoints!.List()[0].Path).Manifest.Step);
        Assert.Empty(Directory.GetDirectories(ckpts, ".tmp-*"));
    }

    [Fact]
    public void RetentionKeepsTheRollbackTargetAtASmallCheckpointCadence()
    {
        string dir = CliRunner.TempDir();
        var opts = Options(dir, 120, every: 5) with { InjectSpike = "110" };
        using var t = new Trainer(Tiny, opts, true);
        t.Run(120);
        var rb = Assert.Single(t.Rollbacks);
        Assert.Equal(110, rb.SpikeStep);
        // The newest checkpoint at or before 110 − 30 = 80, or (the ladder) no more than 2·⌈30/4⌉ = 16 steps older — never step 0.
        Assert.InRange(rb.RestoredStep, 80 - 16, 80);
    }

    [Theory]
    [InlineData(100)]
    [InlineData(30)]
    [InlineData(150)]
    public void RetentionLeavesARollbackTargetAndKeepsFewCheckpointsAtAnyCadence(long rollback)
    {
        var policy = new RetentionPolicy(KeepOneOlderThan: rollback);
        long g = (rollback + 3) / 4;
        for (long every = 1; every <= 60; every += every < 10 ? 1 : 7)
        {
            var kept = new List<long>();
            for (long newest = 0; newest <= 3000; newest += every)
            {
                kept.Insert(0, newest);
                var snapshot = kept.ToList();
                kept = snapshot.Where(s => policy.Keeps(s, snapshot)).ToList();
                // A spike at any step up to the next checkpoint finds a target no more than 2G + every before S − R.
                for (long spike = newest + 1; spike <= newest + every; spike++)
                {
                    long want = spike - rollback;
                    if (want < 0) continue;
                    long target = kept.Where(s => s <= want).DefaultIfEmpty(-1).Max();
                    Assert.True(target >= 0 && target >= want - 2 * g - every,
                                $"R {rollback}, every {every}: spike at {spike} after checkpoint {newest} rolls back to {target}, wanted ≥ {want - 2 * g - every}; kept {string.Join(",", kept)}");
                }
                long milestones = kept.Count(s => s % 1000 == 0);
                Assert.True(kept.Count <= 4 + milestones + rollback / g + 4, $"R {rollback}, every {every}: {kept.Count} checkpoints kept: {string.Join(",", kept)}");
            }
        }
    }

    [Fact]
    public void AnEditedManifestIsRefusedAndTheOlderCheckpointIsUsed()
    {
        string dir = CliRunner.TempDir();
        using (var t = new Trainer(Tiny, Options(dir, 8, every: 4), true)) t.Run(8);
        var store = new CheckpointStore(Path.Combine(dir, "checkpoints"));
        string manifest = Path.Combine(store.List()[0].Path, CheckpointStore.ManifestFile);
        string text = File.ReadAllText(manifest);
        Assert.Contains("\"step\": 8,", text);
        File.WriteAllText(manifest, text.Replace("\"step\": 8,", "\"step\": 9,"));
        var e = Assert.Throws<InvalidDataException>(() => CheckpointStore.Load(store.List()[0].Path));
        Assert.Contains("fails its own checksum", e.Message);
        var warnings = new List<string>();
        Assert.Equal(4, store.LoadLatestValid(warn: warnings.Add)!.Manifest.Step);
        Assert.Single(warnings);
    }

    public static TheoryData<string, string> CorruptManifests => new()
    {
        { "an array", "[]" },
        { "null", "null" },
        { "a string format_version", """{"format_version": "2", "step": 4}""" },
        { "training null", "@training=null" },
        { "model a number", "@model=5" },
        { "files null", "@files=null" },
        { "a huge mesh", "@mesh=\"50000x50000\"" },
        { "a negative step", "@step=-3" },
        { "cursor not a cursor", "@cursor=[1,2]" },
        { "layout of a string", "@layout=\"rows\"" },
    };

    [Theory]
    [MemberData(nameof(CorruptManifests))]
    public void ACorruptManifestIsAClearErrorAndResumeFallsBackToTheOlderCheckpoint(string what, string edit)
    {
        string dir = CliRunner.TempDir();
        using (var t = new Trainer(Tiny, Options(dir, 8, every: 4), true)) t.Run(8);
        var store = new CheckpointStore(Path.Combine(dir, "checkpoints"));
        string path = store.List()[0].Path;
        string manifest = Path.Combine(path, CheckpointStore.ManifestFile);
        if (edit.StartsWith('@'))
        {
            // A field replaced in an otherwise valid format-2 manifest (which carries no seal of its own), so the value itself is what is judged.
            var node = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(manifest))!.AsObject();
            int eq = edit.IndexOf('=');
            node[edit[1..eq]] = System.Text.Json.Nodes.JsonNode.Parse(edit[(eq + 1)..]);
            node["format_version"] = 2;
            node.Remove("manifest_sha256");
            File.WriteAllText(manifest, node.ToJsonString());
        }
        else File.WriteAllText(manifest, edit);
        var sw = Stopwatch.StartNew();
        var e = Assert.Throws<InvalidDataException>(() => CheckpointStore.Load(path));
        Assert.True(sw.Elapsed.TotalSeconds < 5, $"{what}: took {sw.Elapsed.TotalSeconds:F1}s");
        Assert.Contains(path, e.Message);
        Assert.Equal(4, store.LoadLatestValid()!.Manifest.Step);
    }

    [Fact]
    public void WithoutTheSpikeGuardANonFiniteGradientStopsBeforeTheUpdate()
    {
        string dir = CliRunner.TempDir();
        var opts = Options(dir, 10, every: 0) with { InjectSpike = "6:Infinity", SpikeGuard = new SpikeGuardConfig { Enabled = false } };
        using var t = new Trainer(Tiny, opts, true);
        var e = Assert.Throws<SpikeGuardException>(() => t.Run(10));
        Assert.Contains("not finite", e.Message);
        Assert.Equal(5, t.Step);
        Assert.All(TrainerState.Weights(t), w => Assert.True(float.IsFinite(w)));
    }

    [Fact]
    public void EvaluatorRefusesABatchSmallerThanItsMultipleInsteadOfLoopingForever()
    {
        Exception? thrown = null;
        var run = new Thread(() =>
        {
            try { Evaluator.MeanLoss((_, _, _) => 1.0, seqLen: 4, maxBatch: 1, batchMultiple: 2, count: 4, (_, s) => s.Clear()); }
            catch (Exception x) { thrown = x; }
        }) { IsBackground = true };
        run.Start();
        Assert.True(run.Join(TimeSpan.FromSeconds(10)), "MeanLoss did not return within 10 s");
        var e = Assert.IsType<ArgumentException>(thrown, exactMatch: false);
        Assert.Contains("batchMultiple", e.Message);
    }

    [Fact]
    public void ResumeIsATrainerCallThatReusesTheMeasuredPeakAndContinuesBitIdentically()
    {
        string a = CliRunner.TempDir(), b = CliRunner.TempDir();
        float[] straight;
        using (var t = new Trainer(Tiny, Options(a, 12, every: 4), true))
        {
            t.Run(12);
            straight = TrainerState.WeightsAndOptimizer(t);
        }
        double measured;
        using (var t = new Trainer(Tiny, Options(b, 8, every: 4) with { PeakGflops = 0 }, true))
        {
            t.Run(8);
            measured = t.PeakGflops;
        }
        var ckpt = new CheckpointStore(Path.Combine(b, "checkpoints")).LoadLatestValid()!;
        Assert.Equal(measured, ckpt.Manifest.MeasuredPeakGflops);
        using var resumed = Trainer.Resume(ckpt, new ResumeOverrides { Steps = 12 });
        Assert.Equal(8, resumed.Step);
        Assert.Equal(measured, resumed.PeakGflops);   // the same devices: the checkpoint's figure, not a new benchmark
        Assert.Equal(12, resumed.Options.Steps);
        resumed.Run(resumed.Options.Steps);
        Assert.True(straight.AsSpan().SequenceEqual(TrainerState.WeightsAndOptimizer(resumed)), "weights or optimizer state differ after Trainer.Resume");
    }
}

using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Model;
using Palm.Gpu.Research;
using Palm.Gpu.Tensors;
using Palm.Gpu.Training;
using Xunit;

namespace Palm.Gpu.Tests.Benchmarks;

/// <summary>The backends' profiler hook changes no result, times every call, and the base counts memory exactly.</summary>
public class BackendProfilerTests
{
    static float[] TrainThreeSteps(IBackend be, ModelConfig c, int batch)
    {
        using var model = new PalmModel(be, c, batch);
        model.Initialize(11);
        using var opt = new AdafactorOptimizer(model, new AdafactorConfig { Factored = true });
        var rng = new Random(4);
        int n = batch * c.SeqLen;
        for (int step = 1; step <= 3; step++)
        {
            var inputs = Enumerable.Range(0, n).Select(_ => rng.Next(c.Vocab)).ToArray();
            var targets = Enumerable.Range(0, n).Select(_ => rng.Next(c.Vocab)).ToArray();
            model.ZeroGradients();
            model.Forward(inputs, targets, batch);
            model.Backward();
            opt.Step(step, opt.GradientNorm());
        }
        return model.Parameters.SelectMany(p =>
        {
            var h = new float[p.Count];
            be.Download(p.Value, h);
            return h;
        }).ToArray();
    }

    [Theory]
    [InlineData(BlockKind.Parallel, false)]
    [InlineData(BlockKind.Serial, true)]
    public void ProfiledTrainingGivesTheSameBitsAsUnprofiled(BlockKind block, bool remat)
    {
        var c = ModelConfig.Preset("tiny") with { Block = block, Rematerialize = remat, SeqLen = 17 };
        using var plain = new CpuBackend(2);
        using var profiled = new CpuBackend(2);
        var prof = new BackendProfiler();
        profiled.Profiler = prof;
        var expected = TrainThreeSteps(plain, c, 3);
        var actual = TrainThreeSteps(profiled, c, 3);
        Assert.True(expected.AsSpan().SequenceEqual(actual), "profiling changed the weights");
        Assert.NotEmpty(prof.Snapshot());
        Assert.Empty(new BackendProfiler().Snapshot());
        Assert.Equal(0, profiled.LiveBytes); // everything the model and optimizer allocated was disposed
        Assert.Equal(0, profiled.LiveBuffers);
        Assert.True(profiled.HighWaterBytes > 0);
    }

    [Fact]
    public void DisabledProfilerRecordsNothingAndEnabledRecordsEachCallOnce()
    {
        using var be = new CpuBackend(1);
        var prof = new BackendProfiler();
        var a = be.Allocate("a", 100);
        var b = be.Allocate("b", 100);
        be.Add(a, a, b, 100);
        Assert.Empty(prof.Snapshot());

        be.Profiler = prof;
        prof.Phase = ProfilePhase.Backward;
        be.Add(a, a, b, 100);
        be.Add(a, a, b, 50);
        prof.Phase = ProfilePhase.Forward;
        be.AddInPlace(a, b, 100);
        double ss = be.SumOfSquares(b, 100);
        prof.Record("all_reduce", ProfilePhase.Collectives, 0.25, bytes: 800);
        be.Profiler = null;
        be.Add(a, a, b, 100);   // detached: not recorded

        var ops = prof.Snapshot();
        var add = Assert.Single(ops, o => o.Kernel == "add");
        Assert.Equal((ProfilePhase.Backward, 2L, 150.0, 4.0 * 3 * 150), (add.Phase, add.Calls, add.Flops, add.Bytes));
        Assert.Equal(ProfilePhase.Forward, Assert.Single(ops, o => o.Kernel == "add_in_place").Phase);
        Assert.Equal(ProfilePhase.Forward, Assert.Single(ops, o => o.Kernel == "sum_of_squares").Phase);
        Assert.Equal(0.25, Assert.Single(ops, o => o.Kernel == "all_reduce" && o.Phase == ProfilePhase.Collectives).Seconds);
        Assert.All(ops.Where(o => o.Kernel != "all_reduce"), o => Assert.True(o.Seconds > 0));
        Assert.Equal(0, ss); // b was never written: zeros, and the result comes back through the hook

        prof.Reset();
        Assert.Empty(prof.Snapshot());
    }

    [Fact]
    public void LiveBytesAndHighWaterFollowAllocationsAndDisposal()
    {
        using var prof = new CpuBackend(1);
        var a = prof.Allocate("a", 1000);
        var t = prof.Allocate("tokens", 10, ElementType.I32);
        Assert.Equal(4040, prof.LiveBytes);
        a.Dispose();
        a.Dispose(); // a second dispose is not counted twice
        Assert.Equal(40, prof.LiveBytes);
        Assert.Equal(4040, prof.HighWaterBytes);
        var b = prof.Allocate("b", 500);
        Assert.Equal(4040, prof.HighWaterBytes);
        prof.ResetHighWater();
        Assert.Equal(2040, prof.HighWaterBytes);
        Assert.Equal(2, prof.LiveBuffers);
        var view = b.Slice(16, 100);   // a view holds no storage of its own
        Assert.Equal(2040, prof.LiveBytes);
        view.Dispose();
        Assert.Equal(2040, prof.LiveBytes);
        b.Dispose();
        t.Dispose();
        Assert.Equal(0, prof.LiveBytes);
    }

    [Theory]
    [InlineData(BlockKind.Parallel, AttentionKind.MultiQuery, false)]
    [InlineData(BlockKind.Serial, AttentionKind.MultiHead, true)]
    public void StepBenchmarkHighWaterIsEveryBufferOfTheStep(BlockKind block, AttentionKind attention, bool remat)
    {
        var c = ModelConfig.Preset("tiny") with { Block = block, Attention = attention, Rematerialize = remat };
        using var cpu = new CpuBackend(2);
        var r = StepBenchmark.Run(cpu, c, batch: 2, warmup: 0, steps: 1, profiledSteps: 1, peakGflops: 100);
        // Weights, gradients, Adafactor state (momentum + full second moment) and the activations ModelMath plans for.
        long expected = 2 * 4 * ModelMath.Parameters(c) + ModelMath.OptimizerBytes(c, factored: false) + ModelMath.ActivationBytes(c, 2, remat);
        Assert.Equal(expected, r.Memory.HighWaterBytes);
        Assert.Equal(4 * ModelMath.Parameters(c), r.Memory.ParameterBytes);
        Assert.True(r.PhaseSeconds(ProfilePhase.Forward) > 0 && r.PhaseSeconds(ProfilePhase.Backward) > 0 && r.PhaseSeconds(ProfilePhase.Optimizer) > 0);
        Assert.Equal(0, r.PhaseSeconds(ProfilePhase.Collectives));
        // Kernel time is part of the profiled step's wall time.
        Assert.InRange(r.Ops.Sum(o => o.Seconds), 0, r.ProfiledStepSeconds * 1.001);
        var rows = StepBreakdown.Rows(r);
        Assert.Equal(r.Ops.Select(o => o.Kernel).Distinct().Count(), rows.Count);
        Assert.Contains("matmul", StepBreakdown.Text(r));
    }

    [Fact]
    public void StepBenchmarkCountsTheHostSynchronisationsOfAStep()
    {
        var c = ModelConfig.Preset("tiny");
        using var cpu = new CpuBackend(2);
        var r = StepBenchmark.Run(cpu, c, batch: 2, warmup: 1, steps: 2, profiledSteps: 0, peakGflops: 100);
        // Flat memory: one read-back for the global norm (all tensors' segments at once), one for Adafactor's pass-1 sums,
        // the inputs and targets uploaded, the target logits and logZ downloaded — whatever the number of tensors. The
        // benchmark's own end-of-step Synchronize is not counted. (Before flat memory: one norm read-back per tensor.)
        Assert.Equal(6, r.HostSyncsPerStep);
    }
}

using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Model;
using Palm.Gpu.Training;
using Xunit;

namespace Palm.Gpu.Tests.Benchmarks;

/// <summary>
/// The per-op cost descriptions that `palm bench`, the kernel benchmarks and the results board share:
/// checked against counts made a different way (loops over the work, and the model's analytic FLOPs).
/// </summary>
public class OpCostsTests
{
    [Theory]
    [InlineData(1, 1, 1, 1, 2)]
    [InlineData(2, 7, 3, 1, 6)]
    [InlineData(1, 5, 4, 4, 8)]
    public void AttentionFlopsCountEveryUnmaskedPair(int b, int t, int h, int g, int k)
    {
        // Walk the causal mask: query i sees keys 0..i. Forward: 2K for the score, 2K for P·v.
        double pairs = 0;
        for (int bi = 0; bi < b; bi++)
            for (int hi = 0; hi < h; hi++)
                for (int i = 0; i < t; i++)
                    for (int j = 0; j <= i; j++) pairs++;
        Assert.Equal(pairs * 4 * k, OpCosts.AttentionForward(b, t, h, g, k).Flops);
        Assert.Equal(pairs * 10 * k, OpCosts.AttentionBackward(b, t, h, g, k).Flops);
        // Bytes: q, out (B,T,H,K); k, v (B,T,G,K); lse (B,H,T), 4 bytes each.
        Assert.Equal(4.0 * (2 * b * t * h * k + 2 * b * t * g * k + b * h * t), OpCosts.AttentionForward(b, t, h, g, k).Bytes);
    }

    [Fact]
    public void MatmulCountsMultiplyAddsAndEachOperandOnce()
    {
        var c = OpCosts.Matmul(3, 5, 7, accumulate: false);
        Assert.Equal(2 * 3 * 5 * 7, c.Flops);
        Assert.Equal(4 * (3 * 7 + 7 * 5 + 3 * 5), c.Bytes);
        Assert.Equal(4 * 3 * 5, OpCosts.Matmul(3, 5, 7, accumulate: true).Bytes - c.Bytes); // C is read as well
        Assert.Equal("matmul", c.Kernel);
    }

    [Fact]
    public void OptimizerBytesFollowItsState()
    {
        var full = OpCosts.Adafactor(10, 20, momentum: true, factored: false);
        var factored = OpCosts.Adafactor(10, 20, momentum: true, factored: true);
        var noMomentum = OpCosts.Adafactor(10, 20, momentum: false, factored: false);
        Assert.Equal(4.0 * 7 * 200, full.Bytes);                 // p r/w, g, m r/w, v r/w
        Assert.Equal(4.0 * (5 * 200 + 2 * 30), factored.Bytes);  // v replaced by row and column moments
        Assert.Equal(full.Bytes - 4.0 * 2 * 200, noMomentum.Bytes);
    }

    [Theory]
    [InlineData(BlockKind.Parallel, AttentionKind.MultiQuery, false)]
    [InlineData(BlockKind.Serial, AttentionKind.MultiHead, false)]
    [InlineData(BlockKind.Parallel, AttentionKind.MultiQuery, true)]
    public void ProfiledMatmulFlopsOfAStepEqualSixTimesTheMatrixParametersPerToken(BlockKind block, AttentionKind attention, bool remat)
    {
        // PaLM's 6·N per token counts every weight matrix once forward (2) and twice backward (4); layer norms aside.
        var c = ModelConfig.Preset("tiny") with { Block = block, Attention = attention, Rematerialize = remat };
        int batch = 3;
        long tokens = (long)batch * c.SeqLen;
        using var be = new CpuBackend(2);
        var prof = new BackendProfiler();
        using var model = new PalmModel(be, c, batch);
        model.Initialize(5);
        using var opt = new AdafactorOptimizer(model, new AdafactorConfig());
        var rng = new Random(3);
        var inputs = Enumerable.Range(0, (int)tokens).Select(_ => rng.Next(c.Vocab)).ToArray();
        var targets = Enumerable.Range(0, (int)tokens).Select(_ => rng.Next(c.Vocab)).ToArray();

        be.Profiler = prof;
        prof.Phase = ProfilePhase.Forward;
        model.Forward(inputs, targets, batch);
        prof.Phase = ProfilePhase.Backward;
        model.Backward();
        prof.Phase = ProfilePhase.Optimizer;
        opt.Step(1, opt.GradientNorm());
        var ops = prof.Snapshot();

        long matrices = model.Parameters.Where(p => !p.IsVector).Sum(p => p.Count);
        long blockMatrices = model.Parameters.Where(p => !p.IsVector && p.Name.StartsWith("layers.")).Sum(p => p.Count);
        double Flops(string kernel, ProfilePhase phase) => ops.Where(o => o.Kernel == kernel && o.Phase == phase).Sum(o => o.Flops);
        double GemmFlops(ProfilePhase phase) => Flops("matmul", phase) + Flops("matmul.pieces", phase);
        long Calls(string kernel, ProfilePhase phase) => ops.Where(o => o.Kernel == kernel && o.Phase == phase).Sum(o => (long)o.Calls);
        Assert.Equal(2.0 * matrices * tokens, GemmFlops(ProfilePhase.Forward));
        // Rematerialising repeats each block's forward GEMMs inside backward.
        Assert.Equal(4.0 * matrices * tokens + (remat ? 2.0 * blockMatrices * tokens : 0), GemmFlops(ProfilePhase.Backward));
        // The fused block: a parallel layer is 2 GEMMs forward (in, out) and 4 backward (their dW and dX); a serial one
        // fuses q|k|v and gate|up (2 fused + 2 plain forward, 4 fused + 4 plain backward). The logits add 1 and 2 plain.
        bool parallel = block == BlockKind.Parallel;
        Assert.Equal(2 * c.Layers, Calls("matmul.pieces", ProfilePhase.Forward));
        Assert.Equal(1 + (parallel ? 0 : 2 * c.Layers), Calls("matmul", ProfilePhase.Forward));
        Assert.Equal((remat ? 6 : 4) * c.Layers, Calls("matmul.pieces", ProfilePhase.Backward));
        Assert.Equal(2 + (parallel ? 0 : (remat ? 6 : 4) * c.Layers), Calls("matmul", ProfilePhase.Backward));
        Assert.Equal(6.0 * matrices * tokens,
                     ModelMath.TrainingFlopsPerToken(c) * tokens - 12.0 * c.Layers * c.SeqLen * c.Heads * c.HeadDim * tokens
                     - 6.0 * model.Parameters.Where(p => p.IsVector).Sum(p => p.Count) * tokens);

        // Attention: one forward and one backward per layer (plus a recomputed forward), at the model's sizes.
        var attF = OpCosts.AttentionForward(batch, c.SeqLen, c.Heads, c.KvHeads, c.HeadDim).Flops;
        Assert.Equal(c.Layers * attF, Flops("attention.forward", ProfilePhase.Forward));
        Assert.Equal(remat ? c.Layers * attF : 0, Flops("attention.forward", ProfilePhase.Backward));
        Assert.Equal(c.Layers * OpCosts.AttentionBackward(batch, c.SeqLen, c.Heads, c.KvHeads, c.HeadDim).Flops, Flops("attention.backward", ProfilePhase.Backward));

        // Flat memory: the optimizer is one segmented norm, one pass-1 and one pass-2 launch for all tensors together,
        // in the optimizer phase only; no per-tensor launch remains.
        Assert.Equal(1, ops.Single(o => o.Kernel == "sum_of_squares.segments").Calls);
        Assert.Equal(1, ops.Single(o => o.Kernel == "adafactor.sums").Calls);
        Assert.Equal(1, ops.Single(o => o.Kernel == "adafactor.apply").Calls);
        Assert.DoesNotContain(ops, o => o.Kernel is "adafactor" or "sum_of_squares");
        long all = model.Parameters.Sum(p => p.Count);
        Assert.Equal(2.0 * all, ops.Single(o => o.Kernel == "sum_of_squares.segments").Flops);
        Assert.All(ops.Where(o => o.Kernel.StartsWith("adafactor") || o.Kernel.StartsWith("sum_of_squares")), o => Assert.Equal(ProfilePhase.Optimizer, o.Phase));
        Assert.DoesNotContain(ops, o => o.Phase == ProfilePhase.Forward && o.Kernel.EndsWith(".backward"));

        // Every kernel the profiler saw has a description in the catalog.
        var known = OpCosts.Catalog.Select(d => d.Kernel).ToHashSet();
        Assert.All(ops, o => Assert.Contains(o.Kernel, known));
    }
}

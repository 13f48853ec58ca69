using Palm.Gpu.Backends;
using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Tensors;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.OpenCl;

/// <summary>
/// Every non-matmul, non-attention kernel of the OpenCL backend against the CPU backend on the same
/// inputs, forward and backward, on small odd sizes (not multiples of any vector width, work-group or
/// chunk) and on aligned ones. Tolerances: exact where both backends do the same float operations in
/// the same order (copies, adds, scatter-add, Adafactor); a few ulps where exp/log come from different
/// math libraries or reduction trees differ (layer norm, SwiGLU, cross-entropy, RoPE).
/// </summary>
[Collection(OpenClCollection.Name)]
public class OpenClKernelTests(OpenClFixture fx)
{
    (Dictionary<string, float[]> Cpu, Dictionary<string, float[]> Ocl) Both(OpCase op, Action<IBackend, Func<string, DeviceBuffer>> call, params string[] outputs)
        => Both(fx.Ocl, op, call, outputs);

    (Dictionary<string, float[]> Cpu, Dictionary<string, float[]> Ocl) Both(OpenClBackend oclBackend, OpCase op, Action<IBackend, Func<string, DeviceBuffer>> call,
                                                                           params string[] outputs)
    {
        var ocl = op.Run(oclBackend, t => call(oclBackend, t), outputs);   // OpenCL first: its failures are the ones under test
        return (op.Run(fx.Cpu, t => call(fx.Cpu, t), outputs), ocl);
    }

    // The GPU tuning selects other work-group shapes in the same kernels (Adafactor's tiled chunks, the embedding
    // backward's row blocks); on PoCL both run, and both must give the CPU's bits.
    OpenClBackend Tuned(bool gpu) => gpu ? new OpenClBackend(fx.Ocl.Device, OpenClTuning.Gpu) : fx.Ocl;

    static void Close(Dictionary<string, float[]> cpu, Dictionary<string, float[]> ocl, double atol, double rtol, string what)
    {
        foreach (var name in cpu.Keys) Tolerance.AssertClose(cpu[name], ocl[name], atol, rtol, $"{what}: {name}");
    }

    // ---- embedding ----------------------------------------------------------------------------

    // One device (v0 0, all rows) and shards of a vocabulary: tokens of other shards (and ids past the vocabulary)
    // give zero rows and no gradient. The scatter-add adds in token order on both backends: exact.
    [Theory]
    [InlineData(7, 13, 5, 0, 5, false)]        // odd sizes, tokens repeat
    [InlineData(64, 128, 50, 0, 50, false)]
    [InlineData(300, 70, 400, 130, 200, false)]   // a shard, several row blocks and token loads, ids on both sides of it
    [InlineData(300, 70, 400, 130, 200, true)]
    [InlineData(33, 9, 40, 39, 1, false)]      // a one-row shard at the end
    [InlineData(33, 9, 40, 39, 1, true)]
    public void Embedding_ForwardAndBackward_MatchCpuExactly(int n, int d, int v, int v0, int rows, bool gpuTuning)
    {
        var be = Tuned(gpuTuning);
        var tokens = TestData.Tokens(11, n, v);
        tokens[n - 1] = tokens[0] = v0 + rows - 1;   // guarantee a repeated row in the scatter-add
        if (n > 2) tokens[1] = v + 3;                 // past the vocabulary: nobody's row
        if (n > 4) { tokens[2] = v0 + rows; tokens[3] = Math.Max(0, v0 - 1); }   // the rows just past each end of the shard
        var op = new OpCase()
            .I("tokens", tokens)
            .F("table", TestData.Uniform(12, rows * d))
            .F("dout", TestData.Uniform(13, n * d))
            .F("out", TestData.Uniform(15, n * d))       // every row is written
            .F("dtable", TestData.Uniform(14, rows * d));   // backward accumulates into existing values
        var (cpu, ocl) = Both(be, op, (b, t) =>
        {
            b.EmbeddingForward(t("out"), t("tokens"), t("table"), n, d, v0, rows);
            b.EmbeddingBackward(t("dtable"), t("tokens"), t("dout"), n, d, v0, rows);
        }, "out", "dtable");
        if (gpuTuning) be.Dispose();
        Close(cpu, ocl, 0, 0, "embedding");
    }

    // ---- layer norm ---------------------------------------------------------------------------

    [Theory]
    [InlineData(3, 7, false)]
    [InlineData(5, 37, true)]
    [InlineData(70, 64, false)]    // more rows than one dweight chunk
    [InlineData(2, 300, true)]     // a row longer than the work-group
    public void LayerNorm_ForwardAndBackward_MatchCpu(int n, int d, bool accumulate)
    {
        var x = TestData.Uniform(21, n * d, 2f);
        for (int i = 0; i < x.Length; i++) x[i] += 3f;   // a common offset stresses the variance
        var op = new OpCase()
            .F("x", x).F("w", TestData.Uniform(22, d, 1.5f)).F("dout", TestData.Uniform(23, n * d))
            .Zeros("out", n * d).Zeros("mean", n).Zeros("rstd", n)
            .F("dx", TestData.Uniform(24, n * d)).F("dw", TestData.Uniform(25, d));
        var (cpu, ocl) = Both(op, (be, t) =>
        {
            be.LayerNormForward(t("out"), t("mean"), t("rstd"), t("x"), t("w"), n, d);
            be.LayerNormBackward(t("dx"), t("dw"), t("dout"), t("x"), t("w"), t("mean"), t("rstd"), n, d, accumulate);
        }, "out", "mean", "rstd", "dx", "dw");
        Close(cpu, ocl, 2e-6, 2e-5, $"layer norm n={n} d={d}");
    }

    [Fact]
    public void LayerNorm_BackwardMayOverwriteDout()
    {
        int n = 6, d = 37;
        var op = new OpCase()
            .F("x", TestData.Uniform(26, n * d)).F("w", TestData.Uniform(27, d)).F("dout", TestData.Uniform(28, n * d))
            .Zeros("out", n * d).Zeros("mean", n).Zeros("rstd", n).Zeros("dw", d);
        var (cpu, ocl) = Both(op, (be, t) =>
        {
            be.LayerNormForward(t("out"), t("mean"), t("rstd"), t("x"), t("w"), n, d);
            be.LayerNormBackward(t("dout"), t("dw"), t("dout"), t("x"), t("w"), t("mean"), t("rstd"), n, d, accumulate: false);
        }, "dout", "dw");
        Close(cpu, ocl, 2e-6, 2e-5, "layer norm in place");
    }

    // ---- RoPE ---------------------------------------------------------------------------------

    [Theory]
    [InlineData(2, 5, 3, 8)]
    [InlineData(1, 67, 1, 6)]      // positions past 64, head dim not a power of two
    public void Rope_ForwardAndBackward_MatchCpu(int b, int t, int heads, int headDim)
    {
        int count = b * t * heads * headDim;
        var op = new OpCase().F("x", TestData.Uniform(31, count)).F("dy", TestData.Uniform(32, count))
            .Zeros("y", count).Zeros("dx", count).F("inplace", TestData.Uniform(33, count));
        var (cpu, ocl) = Both(op, (be, tt) =>
        {
            be.RopeForward(tt("y"), tt("x"), b, t, heads, headDim);
            be.RopeBackward(tt("dx"), tt("dy"), b, t, heads, headDim);
            be.RopeForward(tt("inplace"), tt("inplace"), b, t, heads, headDim);   // out aliases inp
        }, "y", "dx", "inplace");
        Close(cpu, ocl, 1e-6, 1e-5, "rope");
    }

    // ---- SwiGLU -------------------------------------------------------------------------------

    [Theory]
    [InlineData(1037)]
    [InlineData(4096)]
    public void SwiGlu_ForwardAndBackward_MatchCpu(int count)
    {
        var op = new OpCase()
            .F("gate", TestData.Uniform(41, count, 12f)).F("up", TestData.Uniform(42, count, 2f)).F("dout", TestData.Uniform(43, count))
            .Zeros("out", count).Zeros("dgate", count).Zeros("dup", count);
        var (cpu, ocl) = Both(op, (be, t) =>
        {
            be.SwiGluForward(t("out"), t("gate"), t("up"), count);
            be.SwiGluBackward(t("dgate"), t("dup"), t("dout"), t("gate"), t("up"), count);
        }, "out", "dgate", "dup");
        Close(cpu, ocl, 1e-7, 1e-5, "swiglu");
    }

    // ---- residual -----------------------------------------------------------------------------

    [Theory]
    [InlineData(1)]
    [InlineData(1001)]
    public void Residual_MatchesCpuExactly(int count)
    {
        var op = new OpCase().F("a", TestData.Uniform(51, count)).F("b", TestData.Uniform(52, count))
            .Zeros("out", count).F("acc", TestData.Uniform(53, count));
        var (cpu, ocl) = Both(op, (be, t) =>
        {
            be.Add(t("out"), t("a"), t("b"), count);
            be.AddInPlace(t("acc"), t("a"), count);
            be.AddInPlace(t("acc"), t("acc"), count);   // acc aliases x
            be.Add(t("a"), t("a"), t("b"), count);   // out aliases an input
        }, "out", "acc", "a");
        Close(cpu, ocl, 0, 0, "residual");
    }

    // ---- cross-entropy ------------------------------------------------------------------------

    [Theory]
    [InlineData(5, 37, 0)]
    [InlineData(3, 1000, 0)]
    [InlineData(6, 333, 200)]   // a shard of a vocabulary of 1000: targets inside and outside it
    public void CrossEntropy_ForwardAndBackward_MatchCpu(int n, int v, int v0)
    {
        var logits = TestData.Uniform(61, n * v, 6f);
        var targets = TestData.Tokens(62, n, v0 > 0 ? 1000 : v);
        targets[0] = v0;   // the shard's first column
        var op = new OpCase().F("logits", logits).I("targets", targets)
            .Zeros("targetLogit", n).Zeros("logZ", n).Zeros("dlogits", n * v).F("inplace", logits)
            .F("lz", TestData.Uniform(63, n, 1f)).F("mx", TestData.Uniform(64, n, 1f)).Zeros("shifted", n).Zeros("finished", n);
        var (cpu, ocl) = Both(op, (be, t) =>
        {
            be.CrossEntropyForward(t("logZ"), t("targetLogit"), t("logits"), t("targets"), n, v, v0);
            be.CrossEntropyBackward(t("dlogits"), t("logits"), t("logZ"), t("targets"), 1f / n, 1e-4f, n, v, v0);
            be.CrossEntropyBackward(t("inplace"), t("inplace"), t("logZ"), t("targets"), 1f / n, 1e-4f, n, v, v0);   // dlogits aliases logits
            be.LogSumExpShift(t("shifted"), t("lz"), t("mx"), n);
            be.Copy(t("finished"), t("shifted"), n);
            be.LogSumExpFinish(t("finished"), t("mx"), t("finished"), n);   // logZ aliases sumExp
        }, "targetLogit", "logZ", "dlogits", "inplace", "shifted", "finished");
        Close(cpu, ocl, 1e-7, 1e-5, "cross-entropy");
        Bits.AssertIdentical(cpu["targetLogit"], ocl["targetLogit"], "target logits are copied, not computed");
    }

    // ---- sum of squares -----------------------------------------------------------------------

    [Theory]
    [InlineData(1)]
    [InlineData(1000)]
    [InlineData(200_003)]   // many partial runs and CPU chunks
    public void SumOfSquares_MatchesCpu(int count)
    {
        var x = TestData.Uniform(71, count, 3f);
        double Run(IBackend be)
        {
            using var buffer = be.Allocate("x", count);
            be.Upload(buffer, x);
            return be.SumOfSquares(buffer, count);
        }
        double cpu = Run(fx.Cpu), ocl = Run(fx.Ocl);
        // Squares are exact in double; only the summation order differs.
        Assert.True(Math.Abs(cpu - ocl) <= 1e-12 * cpu, $"Σx²: OpenCL {ocl:R}, CPU {cpu:R}");
        Assert.Equal(ocl, Run(fx.Ocl));
    }

    // Segments of 1, 7, 16, 1024, 1025, 16385, 70001 elements with NaN gaps: the CPU's bits (the order is defined in
    // reduce.cl and written out in ReduceTests), in one launch pair and one read-back.
    [Fact]
    public void SumOfSquaresSegments_MatchCpuBitForBit()
    {
        var (x, segments) = Kernels.ReduceTests.SegmentedData(72);
        double[] Run(IBackend be)
        {
            using var buffer = be.Allocate("x", x.Length);
            be.Upload(buffer, x);
            var sums = new double[segments.Length];
            be.SumOfSquaresSegments(buffer, segments, sums);
            return sums;
        }
        var cpu = Run(fx.Cpu);
        var ocl = Run(fx.Ocl);
        if (fx.Ocl.Device.HasFp64) Assert.Equal(Array.ConvertAll(cpu, BitConverter.DoubleToInt64Bits), Array.ConvertAll(ocl, BitConverter.DoubleToInt64Bits));
        else for (int i = 0; i < cpu.Length; i++) Assert.True(Math.Abs(cpu[i] - ocl[i]) <= 1e-5 * cpu[i], $"segment {i}");
        Assert.Equal(ocl, Run(fx.Ocl));
        // One segment over a whole buffer is the unsegmented reduction's order.
        using var whole = fx.Ocl.Allocate("whole", 70001);
        fx.Ocl.Upload(whole, x.AsSpan((int)segments[^1].Offset, 70001));
        var one = new double[1];
        fx.Ocl.SumOfSquaresSegments(whole, [new Segment(0, 70001)], one);
        Assert.Equal(fx.Ocl.SumOfSquares(whole, 70001), one[0]);
        fx.Ocl.SumOfSquaresSegments(whole, [], []);                  // no segments: no work
        one[0] = 5;
        fx.Ocl.SumOfSquaresSegments(whole, [new Segment(9, 0)], one);   // only empty ones: zero
        Assert.Equal(0, one[0]);
    }

    // ---- Adafactor ----------------------------------------------------------------------------

    [Theory]
    [InlineData(37, 29, false, true, false)]     // unfactored with momentum
    [InlineData(37, 29, true, false, false)]     // factored, no momentum
    [InlineData(3, 20001, false, false, false)]  // several 16384-element chunks
    [InlineData(3, 20001, false, false, true)]
    [InlineData(5, 7001, true, true, false)]
    [InlineData(5, 7001, true, true, true)]
    [InlineData(300, 7, true, false, true)]      // more rows than a tile of the row mean
    public void Adafactor_ThreeSteps_MatchCpu(int rows, int cols, bool factored, bool momentum, bool gpuTuning)
    {
        var ocl0 = Tuned(gpuTuning);
        int count = rows * cols;
        var op = new OpCase()
            .F("param", TestData.Uniform(81, count, 0.5f))
            .F("g1", TestData.Uniform(82, count, 0.1f)).F("g2", TestData.Uniform(83, count, 0.1f)).F("g3", TestData.Uniform(84, count, 3f))
            .Zeros("m", count).Zeros("v", count).Zeros("vr", rows).Zeros("vc", cols);
        var (cpu, ocl) = Both(ocl0, op, (be, t) =>
        {
            var state = new AdafactorBuffers(momentum ? t("m") : null, factored ? null : t("v"), factored ? t("vr") : null, factored ? t("vc") : null);
            for (int k = 1; k <= 3; k++)
            {
                var step = new AdafactorStep(LearningRate: 1e-2f, Beta1: momentum ? 0.9f : 0f, Beta2: 1f - MathF.Pow(k, -0.8f),
                                             Epsilon1: 1e-30f, Epsilon2: 1e-3f, ClipThreshold: 1f, GradScale: k == 3 ? 0.25f : 1f,
                                             WeightDecay: 1e-4f);
                be.AdafactorUpdate(t("param"), t("g" + k), state, rows, cols, step);
            }
        }, "param", "m", "v", "vr", "vc");
        if (gpuTuning) ocl0.Dispose();
        // Same float operations in the same order and double reductions in the same chunks: on a device with
        // fp64 and correctly rounded divide/sqrt (PoCL) the results are the CPU's to the last bit; elsewhere
        // allow a few ulps.
        bool exact = fx.Ocl.Device.HasFp64 && fx.Ocl.Device.CorrectlyRoundedDivideSqrt;
        Close(cpu, ocl, 0, exact ? 0 : 1e-6, "adafactor");
    }

    // An arena of tensors (1, 7, empty, 16385, 52130, 5 elements, gaps between): the segmented passes on OpenCL give the
    // CPU's bits, and per segment the fused update's (three steps, update clipping in the second).
    [Theory]
    [InlineData(true, false)]
    [InlineData(false, false)]
    [InlineData(true, true)]
    public void AdafactorSegments_MatchCpuAndFusedUpdate(bool momentum, bool gpuTuning)
    {
        using var tuned = gpuTuning ? new OpenClBackend(fx.Ocl.Device, OpenClTuning.Gpu) : null;
        var oclBackend = tuned ?? fx.Ocl;
        var (segments, length) = Kernels.AdafactorTests.Arena(Kernels.AdafactorTests.ArenaSizes);
        var counts = segments.Select(sg => sg.Count).ToArray();
        var op = new OpCase().F("p", TestData.Uniform(65, length, 0.5f)).Zeros("m", length).Zeros("v", length);
        for (int k = 1; k <= 3; k++) op.F("g" + k, TestData.Uniform(65 + k, length, 0.1f));
        for (int i = 0; i < segments.Length; i++)
        {
            op.Zeros("fm" + i, Math.Max(1, segments[i].Count)).Zeros("fv" + i, Math.Max(1, segments[i].Count));
            for (int k = 1; k <= 3; k++) op.Zeros($"fg{i}.{k}", Math.Max(1, segments[i].Count));
            op.Zeros("fp" + i, Math.Max(1, segments[i].Count));
        }
        AdafactorStep StepAt(int k) => new(LearningRate: 1e-2f, Beta1: momentum ? 0.9f : 0f, Beta2: 1f - MathF.Pow(k, -0.8f), Epsilon1: 1e-30f,
                                           Epsilon2: 1e-3f, ClipThreshold: k == 2 ? 0.05f : 1f, GradScale: 0.8f, WeightDecay: 1e-4f);
        string[] outputs = ["p", "m", "v", .. Enumerable.Range(0, segments.Length).SelectMany(i => new[] { "fp" + i, "fm" + i, "fv" + i })];
        var sums = new Dictionary<IBackend, List<long>>();
        var (cpu, ocl) = Both(oclBackend, op, (be, t) =>
        {
            // The fused update of each tensor alone, on copies.
            for (int i = 0; i < segments.Length; i++)
            {
                if (segments[i].Count == 0) continue;
                be.Copy(t("fp" + i), t("p"), segments[i].Count, 0, segments[i].Offset);
                for (int k = 1; k <= 3; k++) be.Copy(t($"fg{i}.{k}"), t("g" + k), segments[i].Count, 0, segments[i].Offset);
            }
            var u2 = new double[segments.Length];
            var p2 = new double[segments.Length];
            for (int k = 1; k <= 3; k++)
            {
                var step = StepAt(k);
                be.AdafactorSums(t("p"), t("g" + k), t("v"), segments, step, u2, p2);
                if (!sums.ContainsKey(be)) sums[be] = [];
                sums[be].AddRange(u2.Concat(p2).Select(BitConverter.DoubleToInt64Bits));
                be.AdafactorApply(t("p"), t("g" + k), momentum ? t("m") : null, t("v"), segments, u2, p2, counts, step);
                for (int i = 0; i < segments.Length; i++)
                    if (segments[i].Count > 0)
                        be.AdafactorUpdate(t("fp" + i), t($"fg{i}.{k}"), new AdafactorBuffers(momentum ? t("fm" + i) : null, t("fv" + i), null, null),
                                           1, (int)segments[i].Count, step);
            }
        }, outputs);
        bool exact = fx.Ocl.Device.HasFp64 && fx.Ocl.Device.CorrectlyRoundedDivideSqrt;
        Close(cpu, ocl, 0, exact ? 0 : 1e-6, "adafactor segments");
        if (fx.Ocl.Device.HasFp64) Assert.Equal(sums[fx.Cpu], sums[oclBackend]);   // the sums too: the scalars' float rounding hides most reorderings
        foreach (var r in new[] { cpu, ocl })
            for (int i = 0; i < segments.Length; i++)
            {
                int o = (int)segments[i].Offset, c = (int)segments[i].Count;
                Bits.AssertIdentical(r["fp" + i][..c], r["p"][o..(o + c)], $"segment {i}: param, segmented vs fused");
                Bits.AssertIdentical(r["fv" + i][..c], r["v"][o..(o + c)], $"segment {i}: second moment, segmented vs fused");
                if (momentum) Bits.AssertIdentical(r["fm" + i][..c], r["m"][o..(o + c)], $"segment {i}: momentum, segmented vs fused");
            }
    }

    // ---- determinism --------------------------------------------------------------------------

    [Fact]
    public void ReductionKernels_GiveTheSameBitsOnEveryRun()
    {
        int n = 70, d = 37, v = 301;
        var op = new OpCase()
            .F("x", TestData.Uniform(91, n * d)).F("w", TestData.Uniform(92, d)).F("dout", TestData.Uniform(93, n * d))
            .Zeros("out", n * d).Zeros("mean", n).Zeros("rstd", n).Zeros("dx", n * d).Zeros("dw", d)
            .F("logits", TestData.Uniform(94, n * v, 5f)).I("targets", TestData.Tokens(95, n, v)).Zeros("targetLogit", n).Zeros("logZ", n)
            .I("tokens", TestData.Tokens(96, n, 9)).Zeros("dtable", 9 * d);
        Dictionary<string, float[]> Run() => op.Run(fx.Ocl, t =>
        {
            fx.Ocl.LayerNormForward(t("out"), t("mean"), t("rstd"), t("x"), t("w"), n, d);
            fx.Ocl.LayerNormBackward(t("dx"), t("dw"), t("dout"), t("x"), t("w"), t("mean"), t("rstd"), n, d, false);
            fx.Ocl.CrossEntropyForward(t("logZ"), t("targetLogit"), t("logits"), t("targets"), n, v, 0);
            fx.Ocl.EmbeddingBackward(t("dtable"), t("tokens"), t("dout"), n, d, 0, 9);
        }, "out", "mean", "rstd", "dx", "dw", "targetLogit", "logZ", "dtable");
        var first = Run();
        var second = Run();
        foreach (var name in first.Keys) Bits.AssertIdentical(first[name], second[name], name);
    }
}

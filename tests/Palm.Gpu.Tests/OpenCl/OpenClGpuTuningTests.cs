using Palm.Gpu.Backends;
using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Tensors;
using Palm.Gpu.Tests.Conformance;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.OpenCl;

/// <summary>
/// The GPU defaults of <see cref="OpenClTuning"/> (small matmul tiles, 256-wide row groups, one attention
/// row per work-item, Adafactor's tiled chunks, the embedding backward's row blocks, the reductions' work-groups)
/// select different code paths in the same kernels. Running them on whatever device CI has (PoCL on the CPU)
/// checks those paths against the CPU backend too; the default tuning runs in the conformance suite.
/// </summary>
[Collection(OpenClCollection.Name)]
public sealed class OpenClGpuTuningTests(OpenClFixture fx) : IDisposable
{
    readonly OpenClBackend gpuTuned = new(fx.Ocl.Device, OpenClTuning.Gpu);

    public void Dispose() => gpuTuned.Dispose();

    Dictionary<string, float[]> Compare(OpCase op, Action<IBackend, Func<string, DeviceBuffer>> call, double atol, double rtol, params string[] outputs)
    {
        var ocl = op.Run(gpuTuned, t => call(gpuTuned, t), outputs);
        var cpu = op.Run(fx.Cpu, t => call(fx.Cpu, t), outputs);
        foreach (var name in outputs) Tolerance.AssertClose(cpu[name], ocl[name], atol, rtol, name);
        return ocl;
    }

    [Fact]
    public void Matmul_AllTransposes()
    {
        int m = 23, n = 19, k = 37;
        foreach (bool ta in new[] { false, true })
            foreach (bool tb in new[] { false, true })
                Compare(new OpCase().F("a", TestData.Uniform(1, m * k)).F("b", TestData.Uniform(2, k * n)).F("c", TestData.Uniform(3, m * n)),
                        (be, t) => be.Matmul(t("c"), t("a"), t("b"), m, n, k, ta, tb, 0.5f, accumulate: true), 2e-5, 1e-5, "c");
    }

    [Fact]
    public void LayerNormAndCrossEntropy()
    {
        int n = 5, d = 300, v = 1001;
        Compare(new OpCase()
                .F("x", TestData.Uniform(4, n * d)).F("w", TestData.Uniform(5, d)).F("dout", TestData.Uniform(6, n * d))
                .Zeros("out", n * d).Zeros("mean", n).Zeros("rstd", n).Zeros("dx", n * d).Zeros("dw", d)
                .F("logits", TestData.Uniform(7, n * v, 5f)).I("targets", TestData.Tokens(8, n, v)).Zeros("targetLogit", n).Zeros("logZ", n),
            (be, t) =>
            {
                be.LayerNormForward(t("out"), t("mean"), t("rstd"), t("x"), t("w"), n, d);
                be.LayerNormBackward(t("dx"), t("dw"), t("dout"), t("x"), t("w"), t("mean"), t("rstd"), n, d, false);
                be.CrossEntropyForward(t("logZ"), t("targetLogit"), t("logits"), t("targets"), n, v, 0);
                be.CrossEntropyBackward(t("logits"), t("logits"), t("logZ"), t("targets"), 0.2f, 1e-4f, n, v, 0);
            }, 2e-6, 2e-5, "out", "mean", "rstd", "dx", "dw", "targetLogit", "logZ", "logits");
    }

    [Fact]
    public void Attention_MultiQuery()
    {
        int b = 2, t = 21, heads = 4, kvHeads = 1, headDim = 8;
        int nq = b * t * heads * headDim, nkv = b * t * kvHeads * headDim;
        Compare(new OpCase()
                .F("q", TestData.Uniform(9, nq)).F("k", TestData.Uniform(10, nkv)).F("v", TestData.Uniform(11, nkv)).F("dout", TestData.Uniform(12, nq))
                .Zeros("out", nq).Zeros("lse", b * heads * t).Zeros("dq", nq).Zeros("dk", nkv).Zeros("dv", nkv),
            (be, x) =>
            {
                be.AttentionForward(x("out"), x("lse"), x("q"), x("k"), x("v"), b, t, heads, kvHeads, headDim);
                be.AttentionBackward(x("dq"), x("dk"), x("dv"), x("dout"), x("q"), x("k"), x("v"), x("out"), x("lse"), b, t, heads, kvHeads, headDim);
            }, 2e-5, 1e-4, "out", "lse", "dq", "dk", "dv");
    }

    // Same float operations in the same order and double reductions in the same chunks: on a device with fp64 and
    // correctly rounded divide/sqrt (PoCL) the CPU's bits; elsewhere a few ulps.
    double AdafactorRtol => fx.Ocl.Device.HasFp64 && fx.Ocl.Device.CorrectlyRoundedDivideSqrt ? 0 : 1e-6;

    // Shards of a vocabulary with ids on both sides, several row blocks and token loads; a one-row shard at the end.
    [Theory]
    [InlineData(300, 70, 400, 130, 200)]
    [InlineData(33, 9, 40, 39, 1)]
    public void Embedding_ForwardAndBackward_MatchCpuExactly(int n, int d, int v, int v0, int rows)
    {
        var (op, call) = EmbeddingConformance.OutsideCase(n, d, v, v0, rows, out _);
        Compare(op, call, 0, 0, "out", "dtable");
    }

    [Theory]
    [InlineData(3, 20001, false, false)]   // several 16384-element chunks
    [InlineData(5, 7001, true, true)]
    [InlineData(300, 7, true, false)]      // more rows than a tile of the row mean
    public void Adafactor_ThreeSteps_MatchCpu(int rows, int cols, bool factored, bool momentum) =>
        Compare(AdafactorConformance.Case(rows, cols), AdafactorConformance.Call(rows, cols, factored, momentum), 0, AdafactorRtol, "param", "m", "v", "vr", "vc");

    // The segmented passes over an arena of tensors: the CPU's bits (the sums too, with fp64) and per segment the fused update's.
    [Fact]
    public void AdafactorSegments_MatchCpuAndFusedUpdate()
    {
        var op = AdafactorConformance.SegmentsCase(out var segments, out var outputs);
        List<double> sums = [], cpuSums = [];
        var ocl = op.Run(gpuTuned, t => AdafactorConformance.SegmentsCall(gpuTuned, t, segments, true, sums), outputs);
        var cpu = op.Run(fx.Cpu, t => AdafactorConformance.SegmentsCall(fx.Cpu, t, segments, true, cpuSums), outputs);
        foreach (var name in outputs) Tolerance.AssertClose(cpu[name], ocl[name], 0, AdafactorRtol, name);
        if (fx.Ocl.Device.HasFp64) Assert.Equal(cpuSums.Select(BitConverter.DoubleToInt64Bits), sums.Select(BitConverter.DoubleToInt64Bits));
        AdafactorConformance.AssertSegmentsAreFused(ocl, segments, true, sums, "gpu tuning");
    }

    // Segments with NaN gaps: the CPU's bits with fp64 under either tuning's reduction work-groups, and one segment over
    // a whole buffer is the unsegmented reduction's order on this backend.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SumOfSquaresSegments_MatchCpu_AndOneSegmentIsTheUnsegmentedOrder(bool gpuTuning)
    {
        var be = gpuTuning ? gpuTuned : fx.Ocl;
        var (x, segments) = ReduceConformance.SegmentedData(72);
        var cpu = ReduceConformance.RunSegments(fx.Cpu, x, segments);
        var ocl = ReduceConformance.RunSegments(be, x, segments);
        if (fx.Ocl.Device.HasFp64) Assert.Equal(Array.ConvertAll(cpu, BitConverter.DoubleToInt64Bits), Array.ConvertAll(ocl, BitConverter.DoubleToInt64Bits));
        else for (int i = 0; i < cpu.Length; i++) Assert.True(Math.Abs(cpu[i] - ocl[i]) <= 1e-5 * cpu[i], $"segment {i}");
        using var whole = be.Allocate("whole", 70001);
        be.Upload(whole, x.AsSpan((int)segments[^1].Offset, 70001));
        var one = new double[1];
        be.SumOfSquaresSegments(whole, [new Segment(0, 70001)], one);
        Assert.Equal(be.SumOfSquares(whole, 70001), one[0]);
    }
}

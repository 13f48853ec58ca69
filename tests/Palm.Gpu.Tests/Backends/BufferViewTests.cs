using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Backends;

/// <summary>
/// Every op of the contract run on views inside one larger allocation (guard values around each view) gives the same
/// bits as on standalone buffers, on the CPU and the OpenCL backend, and writes nothing outside its views.
/// </summary>
[Collection(OpenClCollection.Name)]
public class BufferViewTests(OpenClFixture fx)
{
    sealed record Scenario(Func<OpCase> Case, Action<IBackend, Func<string, DeviceBuffer>, List<double>> Call, string[] Outputs);

    static AdafactorStep Step(int k, bool momentum) =>
        new(LearningRate: 1e-2f, Beta1: momentum ? 0.9f : 0f, Beta2: 1f - MathF.Pow(k, -0.8f), Epsilon1: 1e-30f, Epsilon2: 1e-3f,
            ClipThreshold: 1f, GradScale: 0.5f, WeightDecay: 1e-4f);

    static readonly Dictionary<string, Scenario> Scenarios = new()
    {
        ["memory"] = new(() => new OpCase().F("a", TestData.Uniform(1, 37)).Zeros("b", 37).Zeros("c", 53),
            (be, t, s) =>
            {
                be.Copy(t("b"), t("a"), 30, 5, 2);
                be.Fill(t("c"), 0.5f, 41);
                be.Upload(t("c"), TestData.Uniform(2, 9), 43);
                var part = new float[7];
                be.Download(t("a"), part, 11);
                s.AddRange(part.Select(x => (double)x));
            }, ["b", "c"]),
        ["matmul"] = new(() => new OpCase().F("a", TestData.Uniform(3, 13 * 19)).F("b", TestData.Uniform(4, 19 * 11))
                                           .F("c", TestData.Uniform(5, 13 * 11)).Zeros("ct", 19 * 19),
            (be, t, s) =>
            {
                be.Matmul(t("c"), t("a"), t("b"), 13, 11, 19, alpha: 0.5f, accumulate: true);
                be.Matmul(t("ct"), t("a"), t("a"), 19, 19, 13, transA: true);
            }, ["c", "ct"]),
        ["embedding"] = new(() => new OpCase().I("tokens", TestData.Tokens(6, 9, 5)).F("table", TestData.Uniform(7, 5 * 13))
                                              .F("dout", TestData.Uniform(8, 9 * 13)).Zeros("out", 9 * 13).F("dtable", TestData.Uniform(9, 5 * 13)),
            (be, t, s) =>
            {
                be.EmbeddingForward(t("out"), t("tokens"), t("table"), 9, 13, 0, 5);
                be.EmbeddingBackward(t("dtable"), t("tokens"), t("dout"), 9, 13, 0, 5);
            }, ["out", "dtable"]),
        ["layernorm"] = new(() => new OpCase().F("x", TestData.Uniform(10, 7 * 37)).F("w", TestData.Uniform(11, 37)).F("dout", TestData.Uniform(12, 7 * 37))
                                              .Zeros("out", 7 * 37).Zeros("mean", 7).Zeros("rstd", 7).F("dx", TestData.Uniform(13, 7 * 37)).Zeros("dw", 37),
            (be, t, s) =>
            {
                be.LayerNormForward(t("out"), t("mean"), t("rstd"), t("x"), t("w"), 7, 37);
                be.LayerNormBackward(t("dx"), t("dw"), t("dout"), t("x"), t("w"), t("mean"), t("rstd"), 7, 37, accumulate: true);
            }, ["out", "mean", "rstd", "dx", "dw"]),
        ["rope"] = new(() => new OpCase().F("x", TestData.Uniform(14, 2 * 5 * 3 * 8)).Zeros("y", 2 * 5 * 3 * 8).Zeros("dx", 2 * 5 * 3 * 8),
            (be, t, s) =>
            {
                be.RopeForward(t("y"), t("x"), 2, 5, 3, 8);
                be.RopeBackward(t("dx"), t("y"), 2, 5, 3, 8);
            }, ["y", "dx"]),
        ["attention"] = new(() => new OpCase().F("q", TestData.Uniform(15, 2 * 9 * 4 * 16)).F("k", TestData.Uniform(16, 2 * 9 * 2 * 16))
                                              .F("v", TestData.Uniform(17, 2 * 9 * 2 * 16)).F("dout", TestData.Uniform(18, 2 * 9 * 4 * 16))
                                              .Zeros("out", 2 * 9 * 4 * 16).Zeros("lse", 2 * 4 * 9)
                                              .Zeros("dq", 2 * 9 * 4 * 16).Zeros("dk", 2 * 9 * 2 * 16).Zeros("dv", 2 * 9 * 2 * 16),
            (be, t, s) =>
            {
                be.AttentionForward(t("out"), t("lse"), t("q"), t("k"), t("v"), 2, 9, 4, 2, 16);
                be.AttentionBackward(t("dq"), t("dk"), t("dv"), t("dout"), t("q"), t("k"), t("v"), t("out"), t("lse"), 2, 9, 4, 2, 16);
            }, ["out", "lse", "dq", "dk", "dv"]),
        ["swiglu"] = new(() => new OpCase().F("g", TestData.Uniform(19, 45)).F("u", TestData.Uniform(20, 45)).F("dout", TestData.Uniform(21, 45))
                                           .Zeros("out", 45).Zeros("dg", 45).Zeros("du", 45),
            (be, t, s) =>
            {
                be.SwiGluForward(t("out"), t("g"), t("u"), 45);
                be.SwiGluBackward(t("dg"), t("du"), t("dout"), t("g"), t("u"), 45);
            }, ["out", "dg", "du"]),
        ["residual"] = new(() => new OpCase().F("a", TestData.Uniform(22, 33)).F("b", TestData.Uniform(23, 33)).Zeros("out", 33),
            (be, t, s) =>
            {
                be.Add(t("out"), t("a"), t("b"), 33);
                be.AddInPlace(t("a"), t("b"), 31);
                be.Add(t("b"), t("a"), t("b"), 29);
            }, ["out", "a", "b"]),
        ["crossentropy"] = new(() => new OpCase().F("logits", TestData.Uniform(24, 5 * 37, 3f)).I("targets", TestData.Tokens(25, 5, 37))
                                                 .Zeros("targetLogit", 5).Zeros("logZ", 5).Zeros("dlogits", 5 * 37),
            (be, t, s) =>
            {
                be.CrossEntropyForward(t("logZ"), t("targetLogit"), t("logits"), t("targets"), 5, 37, 0);
                be.CrossEntropyBackward(t("dlogits"), t("logits"), t("logZ"), t("targets"), 0.2f, 1e-4f, 5, 37, 0);
            }, ["targetLogit", "logZ", "dlogits"]),
        ["reduce"] = new(() => new OpCase().F("x", TestData.Uniform(26, 3001)),
            (be, t, s) => s.Add(be.SumOfSquares(t("x"), 2999)), []),
        ["adafactor"] = new(() => new OpCase().F("p", TestData.Uniform(27, 7 * 9, 0.5f)).F("g", TestData.Uniform(28, 7 * 9, 0.1f))
                                              .Zeros("m", 7 * 9).Zeros("v", 7 * 9).Zeros("vr", 7).Zeros("vc", 9)
                                              .F("q", TestData.Uniform(29, 7 * 9, 0.5f)),
            (be, t, s) =>
            {
                for (int k = 1; k <= 2; k++)
                {
                    be.AdafactorUpdate(t("p"), t("g"), new AdafactorBuffers(t("m"), null, t("vr"), t("vc")), 7, 9, Step(k, true));
                    be.AdafactorUpdate(t("q"), t("g"), new AdafactorBuffers(null, t("v"), null, null), 7, 9, Step(k, false));
                }
            }, ["p", "m", "vr", "vc", "q", "v"]),
        ["adafactor segments"] = new(() => new OpCase().F("p", TestData.Uniform(30, 501, 0.5f)).F("g", TestData.Uniform(31, 501, 0.1f))
                                                       .Zeros("m", 501).Zeros("v", 501),
            (be, t, s) =>
            {
                var step = Step(1, true);
                Segment[] segments = [new(0, 200), new(217, 284)];
                var u2 = new double[2];
                var p2 = new double[2];
                be.AdafactorSums(t("p"), t("g"), t("v"), segments, step, u2, p2);
                s.AddRange(u2); s.AddRange(p2);
                be.AdafactorApply(t("p"), t("g"), t("m"), t("v"), segments, u2, p2, [1000, 284], step);
                var sq = new double[2];
                be.SumOfSquaresSegments(t("p"), segments, sq);
                s.AddRange(sq);
            }, ["p", "m", "v"]),
    };

    public static TheoryData<string> Names => [.. Scenarios.Keys];

    [Theory]
    [MemberData(nameof(Names))]
    public void OpOnViewsEqualsOpOnStandaloneBuffers(string scenario)
    {
        var sc = Scenarios[scenario];
        foreach (var be in new IBackend[] { fx.Cpu, fx.Ocl })
        {
            var plainScalars = new List<double>();
            var viewScalars = new List<double>();
            var plain = sc.Case().Run(be, t => sc.Call(be, t, plainScalars), sc.Outputs);
            var viewed = sc.Case().RunInViews(be, t => sc.Call(be, t, viewScalars), sc.Outputs);
            foreach (var name in sc.Outputs) Bits.AssertIdentical(plain[name], viewed[name], $"{be.Name} {scenario}: {name}");
            Assert.Equal(plainScalars, viewScalars);
        }
    }

    [Fact]
    public void ViewsKnowTheirRootOffsetAndParent()
    {
        using var be = new Palm.Gpu.Backends.Cpu.CpuBackend(1);
        using var root = be.Allocate("root", 256);
        var a = root.Slice(32, 128);
        var b = a.Slice(16, 48);
        Assert.Same(root, b.Root);
        Assert.Same(a, b.Parent);
        Assert.Equal(48, b.Offset);
        Assert.Equal(48, b.Length);
        Assert.True(b.IsView && !root.IsView);
        Assert.True(a.Overlaps(b) && !b.Overlaps(root.Slice(96, 16)));
        be.Upload(b, [1f, 2f, 3f]);
        Assert.Equal([1f, 2f, 3f], be.ToHost(root).Skip(48).Take(3));
        Assert.Throws<ArgumentOutOfRangeException>(() => a.Slice(120, 16));
    }

    [Fact]
    public void MisalignedViewsAreRefusedWithTheAlignment()
    {
        foreach (var be in new IBackend[] { fx.Cpu, fx.Ocl })
        {
            using var root = be.Allocate("arena", 4 * be.ViewAlignment);
            var e = Assert.Throws<ArgumentException>(() => root.Slice(be.ViewAlignment + 1, 4));
            Assert.Contains($"multiples of {be.ViewAlignment}", e.Message);
            Assert.Contains("arena", e.Message);
            using var ok = root.Slice(be.ViewAlignment, 4);   // aligned: fine
        }
    }

    [Fact]
    public unsafe void CpuBuffersAndTheirViewsStartOnACacheLine()
    {
        // The GEMM's 16-float tile rows and the 512-bit loads assume it (CpuBuffer); a managed array alone does not give it.
        using var be = new Palm.Gpu.Backends.Cpu.CpuBackend(1);
        var roots = new List<DeviceBuffer>();
        try
        {
            foreach (long n in new long[] { 1, 5, 17, 1000, 4099, 70_000, 1 << 20 })
            {
                roots.Add(be.Allocate($"f{n}", n));
                roots.Add(be.Allocate($"i{n}", n, ElementType.I32));
                GC.Collect();   // pinned arrays stay where they were put
            }
            foreach (var root in roots)
            {
                var views = new List<DeviceBuffer> { root };
                if (root.Length >= 3 * be.ViewAlignment) views.Add(root.Slice(2 * be.ViewAlignment, root.Length - 2 * be.ViewAlignment));
                foreach (var v in views)
                {
                    var cpu = (Palm.Gpu.Backends.Cpu.CpuBuffer)v;
                    nint address = v.Type == ElementType.F32
                        ? (nint)System.Runtime.CompilerServices.Unsafe.AsPointer(ref cpu.F.GetPinnableReference())
                        : (nint)System.Runtime.CompilerServices.Unsafe.AsPointer(ref cpu.I.GetPinnableReference());
                    Assert.True(address % 64 == 0, $"{v.Name} (offset {v.Offset}) starts {address % 64} bytes past a line");
                }
                // Writes through the aligned view land where the host copy says, at both ends.
                if (root.Type == ElementType.F32)
                {
                    var data = Enumerable.Range(1, (int)root.Length).Select(x => (float)x).ToArray();
                    be.Upload(root, data);
                    Assert.Equal(data, be.ToHost(root));
                }
            }
        }
        finally
        {
            foreach (var r in roots) r.Dispose();
        }
    }
}

using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tensors;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

/// <summary>The tests that change CpuSimd.Bits, or assert which path it selects, run one after another (other tests may run beside them: every path gives the same bits).</summary>
[CollectionDefinition(Name)]
public sealed class SimdWidthCollection
{
    public const string Name = "CPU SIMD width";
}

/// <summary>
/// Every CPU kernel gives the same bits on the AVX-512, AVX2 and scalar paths (CpuSimd.Bits forced in-process,
/// each path the machine can run natively), on odd sizes that leave tails past every vector width and block;
/// and a child `palm train` gives the same weights with AVX-512 switched off in the runtime.
/// </summary>
[Collection(SimdWidthCollection.Name)]
public class SimdWidthTests
{
    /// <summary>The paths to compare: the hardware's widest, then every narrower one down to scalar.</summary>
    static int[] Widths => new[] { 512, 256, 0 }.Where(w => w <= CpuSimd.Hardware).ToArray();

    /// <summary>Runs the op at every width (1 and 3 threads) and asserts every output is bit-identical to the widest path's.</summary>
    static void SameBitsAtEveryWidth(OpCase op, Action<IBackend, Func<string, DeviceBuffer>> call, params string[] outputs)
    {
        Assert.True(Widths.Length >= 2, $"this machine runs only the {CpuSimd.Description} path; nothing to compare");
        Dictionary<string, float[]>? first = null;
        int saved = CpuSimd.Bits;
        try
        {
            foreach (int bits in Widths)
                foreach (int threads in new[] { 3, 1 })
                {
                    CpuSimd.Bits = bits;
                    using var cpu = new CpuBackend(threads);
                    var result = op.Run(cpu, t => call(cpu, t), outputs);
                    if (first is null) { first = result; continue; }
                    foreach (var name in outputs) Bits.AssertIdentical(first[name], result[name], $"{name} at {bits} bits, {threads} threads vs {Widths[0]} bits");
                }
        }
        finally
        {
            CpuSimd.Bits = saved;
        }
    }

    [Theory]
    [InlineData(16)]
    [InlineData(1000 + 13)]          // whole 16-blocks plus a tail of 13 (8 of which an 8-lane loop would take)
    [InlineData((1 << 16) + 77)]     // more than one reduction chunk
    public void SumOfSquares_same_bits_at_every_width(int n)
    {
        var op = new OpCase().F("x", TestData.Uniform(1, n, 3f)).Zeros("sum", 2);
        SameBitsAtEveryWidth(op, (be, t) =>
        {
            double s = be.SumOfSquares(t("x"), n);
            be.Upload(t("sum"), [(float)s, (float)(s - (float)s)]);   // the double as two floats
        }, "sum");
    }

    [Theory]
    [InlineData(5, 77, false)]       // 4 whole 16-blocks and a 13-wide tail
    [InlineData(40, 24, true)]       // one block and a tail that an 8-lane path would vectorise
    [InlineData(3, 512, false)]
    public void LayerNorm_same_bits_at_every_width(int n, int d, bool accumulate)
    {
        var x = TestData.Uniform(2, n * d, 2f);
        for (int i = 0; i < x.Length; i++) x[i] += 3f;
        var op = new OpCase().F("x", x).F("w", TestData.Uniform(3, d, 1.5f)).F("dout", TestData.Uniform(4, n * d))
            .Zeros("out", n * d).Zeros("mean", n).Zeros("rstd", n).F("dx", TestData.Uniform(5, n * d)).F("dw", TestData.Uniform(6, d));
        SameBitsAtEveryWidth(op, (be, t) =>
        {
            be.LayerNormForward(t("out"), t("mean"), t("rstd"), t("x"), t("w"), n, d);
            be.LayerNormBackward(t("dx"), t("dw"), t("dout"), t("x"), t("w"), t("mean"), t("rstd"), n, d, accumulate);
        }, "out", "mean", "rstd", "dx", "dw");
    }

    [Theory]
    [InlineData(3, 1000 + 27)]       // FlushEvery blocks, a lone 16-block and a tail
    [InlineData(4, 24)]
    [InlineData(2, 8192)]
    public void CrossEntropy_same_bits_at_every_width(int n, int v)
    {
        var op = new OpCase().F("logits", TestData.Uniform(7, n * v, 4f)).I("targets", TestData.Tokens(8, n, v))
            .Zeros("targetLogit", n).Zeros("logZ", n).Zeros("dlogits", n * v);
        SameBitsAtEveryWidth(op, (be, t) =>
        {
            be.CrossEntropyForward(t("logZ"), t("targetLogit"), t("logits"), t("targets"), n, v, 0);
            be.CrossEntropyBackward(t("dlogits"), t("logits"), t("logZ"), t("targets"), 0.25f, 1e-4f, n, v, 0);
        }, "targetLogit", "logZ", "dlogits");
    }

    [Theory]
    [InlineData(1000 + 13)]
    [InlineData((1 << 15) + 9)]      // crosses a chunk
    public void SwiGlu_same_bits_at_every_width(int n)
    {
        var op = new OpCase().F("gate", TestData.Uniform(9, n, 6f)).F("up", TestData.Uniform(10, n)).F("dout", TestData.Uniform(11, n))
            .Zeros("out", n).Zeros("dgate", n).Zeros("dup", n);
        SameBitsAtEveryWidth(op, (be, t) =>
        {
            be.SwiGluForward(t("out"), t("gate"), t("up"), n);
            be.SwiGluBackward(t("dgate"), t("dup"), t("dout"), t("gate"), t("up"), n);
        }, "out", "dgate", "dup");
    }

    [Theory]
    [InlineData(37, 45, 29, false, false)]
    [InlineData(70, 33, 300, true, false)]
    [InlineData(31, 50, 21, false, true)]
    public void Matmul_same_bits_at_every_width(int m, int n, int k, bool transA, bool transB)
    {
        var op = new OpCase().F("a", TestData.Uniform(12, m * k)).F("b", TestData.Uniform(13, k * n)).F("c", TestData.Uniform(14, m * n));
        SameBitsAtEveryWidth(op, (be, t) => be.Matmul(t("c"), t("a"), t("b"), m, n, k, transA, transB, 0.5f, accumulate: true), "c");
    }

    [Theory]
    [InlineData(2, 37, 4, 1, 10)]    // multi-query, odd T, K below a vector
    [InlineData(1, 130, 2, 2, 72)]   // crosses query blocks and key tiles, K = 64 + 8
    [InlineData(1, 70, 3, 1, 40)]    // three heads per group, Dot tail of 8
    [InlineData(2, 101, 3, 1, 16)]   // K, V read in place, ragged last key tile, padding rows in the lane-wise softmax
    [InlineData(1, 150, 1, 1, 64)]   // one head: 64-step blocks, a last block of 22 rows (the score kernel's column tail)
    [InlineData(1, 150, 64, 1, 16)]  // one-step blocks: the backward's dk, dv summed over three chunks
    public void Attention_same_bits_at_every_width(int b, int t, int h, int g, int kd)
    {
        int nq = b * t * h * kd, nkv = b * t * g * kd;
        var op = new OpCase().F("q", TestData.Uniform(15, nq, 2f)).F("k", TestData.Uniform(16, nkv)).F("v", TestData.Uniform(17, nkv))
            .F("dout", TestData.Uniform(18, nq)).Zeros("out", nq).Zeros("lse", b * h * t).Zeros("dq", nq).Zeros("dk", nkv).Zeros("dv", nkv);
        SameBitsAtEveryWidth(op, (be, x) =>
        {
            be.AttentionForward(x("out"), x("lse"), x("q"), x("k"), x("v"), b, t, h, g, kd);
            be.AttentionBackward(x("dq"), x("dk"), x("dv"), x("dout"), x("q"), x("k"), x("v"), x("out"), x("lse"), b, t, h, g, kd);
        }, "out", "lse", "dq", "dk", "dv");
    }

    // The one exp of the CPU kernels (attention, SwiGLU, cross-entropy, decode): within 2 ulp of the double-precision
    // exp over its whole normal range, 0 below −87 (where exp is under 2⁻¹²⁵), and every lane of the 512- and 256-bit
    // versions gives the scalar version's bits, so vector bodies and scalar tails agree.
    [Fact]
    public void Exp_is_within_2_ulp_and_the_same_on_every_lane()
    {
        var xs = new List<float> { 0f, -0f, 1f, -1f, 88f, -86.99f, -87f, -87.01f, -100f, float.NegativeInfinity, 1e-8f, -1e-8f };
        var rng = new Random(5);
        for (int i = 0; i < 200_000; i++) xs.Add((float)(rng.NextDouble() * 175 - 87));
        for (int i = 0; i < 10_000; i++) xs.Add((float)(rng.NextDouble() * 2 - 1));
        while (xs.Count % 16 != 0) xs.Add(0.5f);
        var x = xs.ToArray();
        double worst = 0; float worstX = 0;
        for (int i = 0; i < x.Length; i++)
        {
            float got = CpuSimd.Exp(x[i]);
            if (x[i] < -87f) { Assert.Equal(0f, got); continue; }
            double want = Math.Exp(x[i]);
            double ulp = (double)MathF.BitIncrement((float)want) - (float)want;
            double err = Math.Abs(got - want) / ulp;
            if (err > worst) (worst, worstX) = (err, x[i]);
        }
        Assert.True(worst <= 2, $"CpuSimd.Exp is {worst:F2} ulp from exp at worst, at x = {worstX:g9}");
        for (int i = 0; i < x.Length; i += 16)
        {
            var v512 = CpuSimd.Exp(System.Runtime.Intrinsics.Vector512.Create(x, i));
            var lo = CpuSimd.Exp(System.Runtime.Intrinsics.Vector256.Create(x, i));
            var hi = CpuSimd.Exp(System.Runtime.Intrinsics.Vector256.Create(x, i + 8));
            for (int l = 0; l < 16; l++)
            {
                int scalar = BitConverter.SingleToInt32Bits(CpuSimd.Exp(x[i + l]));
                Assert.True(scalar == BitConverter.SingleToInt32Bits(v512[l]), $"512-bit lane {l} at x = {x[i + l]:g9}");
                Assert.True(scalar == BitConverter.SingleToInt32Bits(l < 8 ? lo[l] : hi[l - 8]), $"256-bit lane {l % 8} at x = {x[i + l]:g9}");
            }
        }
    }

    [Fact]
    public void Elementwise_kernels_same_bits_at_every_width()
    {
        int n = 1000 + 13, b = 2, t = 5, heads = 3, kd = 18, nr = b * t * heads * kd, v = 11, d = 37, tokens = 9;
        var op = new OpCase().F("a", TestData.Uniform(19, n)).F("b", TestData.Uniform(20, n)).Zeros("sum", n).F("acc", TestData.Uniform(21, n))
            .F("x", TestData.Uniform(22, nr)).Zeros("rot", nr).Zeros("drot", nr)
            .I("tok", TestData.Tokens(23, tokens, v)).F("table", TestData.Uniform(24, v * d)).Zeros("emb", tokens * d)
            .F("demb", TestData.Uniform(25, tokens * d)).F("dtable", TestData.Uniform(26, v * d));
        SameBitsAtEveryWidth(op, (be, x) =>
        {
            be.Add(x("sum"), x("a"), x("b"), n);
            be.AddInPlace(x("acc"), x("a"), n);
            be.RopeForward(x("rot"), x("x"), b, t, heads, kd);
            be.RopeBackward(x("drot"), x("x"), b, t, heads, kd);
            be.EmbeddingForward(x("emb"), x("tok"), x("table"), tokens, d, 0, v);
            be.EmbeddingBackward(x("dtable"), x("tok"), x("demb"), tokens, d, 0, v);
        }, "sum", "acc", "rot", "drot", "emb", "dtable");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Adafactor_same_bits_at_every_width(bool factored)
    {
        int rows = 13, cols = 37, n = rows * cols;
        var op = new OpCase().F("p", TestData.Uniform(27, n)).F("g", TestData.Uniform(28, n, 0.1f)).F("m", TestData.Uniform(29, n, 0.01f))
            .F("v", Array.ConvertAll(TestData.Uniform(30, n), x => x * x * 1e-3f)).F("vr", Array.ConvertAll(TestData.Uniform(31, rows), x => x * x + 1e-3f))
            .F("vc", Array.ConvertAll(TestData.Uniform(32, cols), x => x * x + 1e-3f));
        var step = new AdafactorStep(LearningRate: 0.01f, Beta1: 0.9f, Beta2: 0.8f, Epsilon1: 1e-30f, Epsilon2: 1e-3f, ClipThreshold: 1f, GradScale: 0.7f, WeightDecay: 1e-4f);
        SameBitsAtEveryWidth(op, (be, x) =>
        {
            var state = factored ? new AdafactorBuffers(x("m"), null, x("vr"), x("vc")) : new AdafactorBuffers(x("m"), x("v"), null, null);
            be.AdafactorUpdate(x("p"), x("g"), state, rows, cols, step);
        }, "p", "m", "v", "vr", "vc");
    }

    /// <summary>
    /// The whole training step, through the CLI: the .NET 10 runtime switches AVX-512 off with DOTNET_EnableAVX512=0
    /// (DOTNET_EnableAVX512F, the .NET 8 name, no longer does), and the weights must not change by a bit.
    /// config.json's device line proves the child really ran the AVX2 path.
    /// </summary>
    [Fact]
    public void Training_with_AVX512_off_writes_identical_weights()
    {
        Assert.True(CpuSimd.Hardware >= 256, "this machine has no AVX2; nothing to compare");
        var runs = new List<(string Device, byte[] Weights)>();
        foreach (var env in new[] { new Dictionary<string, string>(), new Dictionary<string, string> { ["DOTNET_EnableAVX512"] = "0" } })
        {
            string dir = CliRunner.TempDir();
            var r = CliRunner.RunWithEnv(env, "train", "--preset", "small", "--seq", "64", "--layers", "1", "--steps", "3", "--out", dir);
            Assert.True(r.ExitCode == 0, $"palm train failed ({r.ExitCode}): {r.Stderr}");
            string config = File.ReadAllText(Path.Combine(dir, "config.json"));
            runs.Add((config.Contains("AVX-512") ? "AVX-512" : config.Contains("AVX2") ? "AVX2" : "scalar", File.ReadAllBytes(Path.Combine(dir, "model.safetensors"))));
            Directory.Delete(dir, recursive: true);
        }
        Assert.Equal("AVX2", runs[1].Device);
        if (CpuSimd.Hardware >= 512) Assert.Equal("AVX-512", runs[0].Device);
        Assert.True(runs[0].Weights.AsSpan().SequenceEqual(runs[1].Weights),
                    $"model.safetensors differs between the {runs[0].Device} and the {runs[1].Device} run");
    }
}

using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

public class AttentionTests
{
    // ---- double-precision references (full T×T softmax) -------------------------------------------------------

    /// <summary>q (B,T,H,K), k/v (B,T,G,K) -> out (B,T,H,K), lse (B,H,T), causal, scale 1/√K, head h reads kv h/(H/G).</summary>
    static (double[] Out, double[] Lse) Reference(double[] q, double[] k, double[] v, int b, int t, int h, int g, int kd)
    {
        var output = new double[b * t * h * kd];
        var lse = new double[b * h * t];
        double scale = 1 / Math.Sqrt(kd);
        var s = new double[t];
        for (int bi = 0; bi < b; bi++)
            for (int hi = 0; hi < h; hi++)
            {
                int gi = hi / (h / g);
                for (int i = 0; i < t; i++)
                {
                    int qo = ((bi * t + i) * h + hi) * kd;
                    double max = double.NegativeInfinity;
                    for (int j = 0; j <= i; j++)
                    {
                        int ko = ((bi * t + j) * g + gi) * kd;
                        double dot = 0;
                        for (int d = 0; d < kd; d++) dot += q[qo + d] * k[ko + d];
                        s[j] = dot * scale;
                        max = Math.Max(max, s[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j <= i; j++) { s[j] = Math.Exp(s[j] - max); sum += s[j]; }
                    for (int j = 0; j <= i; j++)
                    {
                        int vo = ((bi * t + j) * g + gi) * kd;
                        for (int d = 0; d < kd; d++) output[qo + d] += s[j] / sum * v[vo + d];
                    }
                    lse[(bi * h + hi) * t + i] = max + Math.Log(sum);
                }
            }
        return (output, lse);
    }

    /// <summary>Analytic gradients of Σ dout ⊙ out through the reference, with the full probability matrix.</summary>
    static (double[] Dq, double[] Dk, double[] Dv) ReferenceBackward(double[] dout, double[] q, double[] k, double[] v,
                                                                    int b, int t, int h, int g, int kd)
    {
        var (output, lse) = Reference(q, k, v, b, t, h, g, kd);
        var dq = new double[q.Length];
        var dk = new double[k.Length];
        var dv = new double[v.Length];
        double scale = 1 / Math.Sqrt(kd);
        for (int bi = 0; bi < b; bi++)
            for (int hi = 0; hi < h; hi++)
            {
                int gi = hi / (h / g);
                for (int i = 0; i < t; i++)
                {
                    int qo = ((bi * t + i) * h + hi) * kd;
                    double rowDot = 0;
                    for (int d = 0; d < kd; d++) rowDot += dout[qo + d] * output[qo + d];
                    for (int j = 0; j <= i; j++)
                    {
                        int ko = ((bi * t + j) * g + gi) * kd;
                        double dot = 0, dp = 0;
                        for (int d = 0; d < kd; d++) { dot += q[qo + d] * k[ko + d]; dp += dout[qo + d] * v[ko + d]; }
                        double p = Math.Exp(dot * scale - lse[(bi * h + hi) * t + i]);
                        double ds = p * (dp - rowDot);
                        for (int d = 0; d < kd; d++)
                        {
                            dv[ko + d] += p * dout[qo + d];
                            dq[qo + d] += ds * scale * k[ko + d];
                            dk[ko + d] += ds * scale * q[qo + d];
                        }
                    }
                }
            }
        return (dq, dk, dv);
    }

    sealed record Inputs(float[] Q, float[] K, float[] V, int B, int T, int H, int G, int Kd);

    static Inputs MakeInputs(int seed, int b, int t, int h, int g, int kd, float qScale = 1f)
        => new(TestData.Uniform(seed, b * t * h * kd, qScale), TestData.Uniform(seed + 1, b * t * g * kd),
               TestData.Uniform(seed + 2, b * t * g * kd), b, t, h, g, kd);

    static (float[] Out, float[] Lse) RunForward(Inputs x, int threads = 2, int vectorBits = -1)
    {
        var output = new float[x.Q.Length];
        var lse = new float[x.B * x.H * x.T];
        CpuAttention.Forward(threads, output, lse, x.Q, x.K, x.V, x.B, x.T, x.H, x.G, x.Kd,
                             vectorBits < 0 ? CpuAttention.BestVectorBits : vectorBits);
        return (output, lse);
    }

    static (float[] Dq, float[] Dk, float[] Dv) RunBackward(Inputs x, float[] dout, float[] output, float[] lse,
                                                           int threads = 2, int vectorBits = -1)
    {
        // Garbage in the outputs proves they are overwritten, not accumulated.
        var dq = TestData.Uniform(99, x.Q.Length, 5f);
        var dk = TestData.Uniform(98, x.K.Length, 5f);
        var dv = TestData.Uniform(97, x.V.Length, 5f);
        CpuAttention.Backward(threads, dq, dk, dv, dout, x.Q, x.K, x.V, output, lse, x.B, x.T, x.H, x.G, x.Kd,
                              vectorBits < 0 ? CpuAttention.BestVectorBits : vectorBits);
        return (dq, dk, dv);
    }

    // ---- forward -------------------------------------------------------------------------------------------

    public static TheoryData<int, int, int, int, int, float> ForwardShapes => new()
    {
        // B, T, H, G, K, query scale
        { 1, 1, 2, 1, 8, 1f },       // single step: only the diagonal
        { 2, 7, 3, 1, 6, 1f },       // multi-query, odd K
        { 1, 37, 4, 2, 10, 1f },     // grouped, odd T
        { 2, 37, 2, 2, 5, 1f },      // multi-head, odd K below a vector
        { 1, 130, 8, 1, 64, 3f },    // multi-query, crosses query blocks and key tiles; peaky softmax
        { 1, 130, 2, 2, 24, 3f },    // multi-head, 128-row query block plus a tail, K = 16 + 8
        { 1, 200, 3, 1, 72, 1f },    // H/G = 3: rows not a multiple of 4, K = 64 + 8
    };

    [Theory]
    [MemberData(nameof(ForwardShapes))]
    public void Forward_matches_reference(int b, int t, int h, int g, int kd, float qScale)
    {
        var x = MakeInputs(10 + t + kd, b, t, h, g, kd, qScale);
        var (refOut, refLse) = Reference(TestData.ToDouble(x.Q), TestData.ToDouble(x.K), TestData.ToDouble(x.V), b, t, h, g, kd);
        foreach (int bits in new[] { 512, 256, 0 })
        {
            var (output, lse) = RunForward(x, vectorBits: bits);
            Tolerance.AssertClose(refOut, output, 2e-6, 2e-5, $"out ({bits}-bit)");
            Tolerance.AssertClose(refLse, lse, 2e-6, 2e-6, $"lse ({bits}-bit)");
        }
    }

    [Fact]
    public void Forward_handles_large_scores_without_overflow()
    {
        // Scores of several hundred: a naive exp overflows; the online max subtraction must not.
        var x = MakeInputs(5, 1, 70, 2, 1, 16, 40f);
        var (refOut, refLse) = Reference(TestData.ToDouble(x.Q), TestData.ToDouble(x.K), TestData.ToDouble(x.V), 1, 70, 2, 1, 16);
        var (output, lse) = RunForward(x);
        Tolerance.AssertClose(refOut, output, 1e-5, 1e-4, "out");
        Tolerance.AssertClose(refLse, lse, 1e-5, 1e-5, "lse");
    }

    // ---- backward ------------------------------------------------------------------------------------------

    public static TheoryData<int, int, int, int> TinyShapes => new()
    {
        // T, H, G, K   (B = 2)
        { 5, 3, 1, 4 },
        { 7, 4, 1, 5 },
        { 9, 4, 4, 8 },
        { 6, 3, 3, 6 },
        { 8, 4, 2, 7 },
    };

    [Theory]
    [MemberData(nameof(TinyShapes))]
    public void Backward_matches_finite_differences(int t, int h, int g, int kd)
    {
        const int b = 2;
        var x = MakeInputs(40 + t, b, t, h, g, kd);
        var w = TestData.Uniform(77, x.Q.Length);
        double[] q = TestData.ToDouble(x.Q), k = TestData.ToDouble(x.K), v = TestData.ToDouble(x.V), wd = TestData.ToDouble(w);
        double Loss() => TestData.Dot(wd, Reference(q, k, v, b, t, h, g, kd).Out);
        var numDq = TestData.NumericGradient(_ => Loss(), q);
        var numDk = TestData.NumericGradient(_ => Loss(), k);
        var numDv = TestData.NumericGradient(_ => Loss(), v);

        // The analytic reference is used for the larger shapes below, so it is checked here too.
        var (refDq, refDk, refDv) = ReferenceBackward(wd, q, k, v, b, t, h, g, kd);
        Tolerance.AssertClose(numDq, refDq, 1e-7, 1e-6, "reference dq");
        Tolerance.AssertClose(numDk, refDk, 1e-7, 1e-6, "reference dk");
        Tolerance.AssertClose(numDv, refDv, 1e-7, 1e-6, "reference dv");

        var (output, lse) = RunForward(x);
        foreach (int bits in new[] { 512, 256, 0 })
        {
            var (dq, dk, dv) = RunBackward(x, w, output, lse, vectorBits: bits);
            Tolerance.AssertClose(numDq, dq, 1e-5, 1e-4, $"dq ({bits}-bit)");
            Tolerance.AssertClose(numDk, dk, 1e-5, 1e-4, $"dk ({bits}-bit)");
            Tolerance.AssertClose(numDv, dv, 1e-5, 1e-4, $"dv ({bits}-bit)");
        }
    }

    public static TheoryData<int, int, int, int, int> TiledShapes => new()
    {
        // B, T, H, G, K: several query blocks and key tiles, partial last tile
        { 1, 130, 8, 1, 64 },
        { 2, 100, 4, 2, 10 },
        { 1, 150, 2, 2, 24 },
        { 1, 97, 3, 1, 72 },
    };

    [Theory]
    [MemberData(nameof(TiledShapes))]
    public void Backward_matches_reference_across_tiles(int b, int t, int h, int g, int kd)
    {
        var x = MakeInputs(60 + t, b, t, h, g, kd, 2f);
        var w = TestData.Uniform(78, x.Q.Length);
        var (refDq, refDk, refDv) = ReferenceBackward(TestData.ToDouble(w), TestData.ToDouble(x.Q), TestData.ToDouble(x.K),
                                                      TestData.ToDouble(x.V), b, t, h, g, kd);
        var (output, lse) = RunForward(x);
        foreach (int bits in new[] { 512, 256, 0 })
        {
            var (dq, dk, dv) = RunBackward(x, w, output, lse, vectorBits: bits);
            Tolerance.AssertClose(refDq, dq, 1e-5, 1e-4, $"dq ({bits}-bit)");
            Tolerance.AssertClose(refDk, dk, 1e-5, 1e-4, $"dk ({bits}-bit)");
            Tolerance.AssertClose(refDv, dv, 1e-5, 1e-4, $"dv ({bits}-bit)");
        }
    }

    // ---- determinism ---------------------------------------------------------------------------------------

    // B·G = 2 and 4 items: 3 threads switch backward from one item per (b, g) to the two-pass scheme, so these
    // cases also prove that both schemes give the same bits.
    [Theory]
    [InlineData(2, 150, 4, 1, 24)]
    [InlineData(2, 150, 2, 2, 16)]
    public void Same_bits_for_any_thread_count(int b, int t, int h, int g, int kd)
    {
        var x = MakeInputs(3, b, t, h, g, kd);
        var w = TestData.Uniform(4, x.Q.Length);
        var (out1, lse1) = RunForward(x, threads: 1);
        var (dq1, dk1, dv1) = RunBackward(x, w, out1, lse1, threads: 1);
        foreach (int threads in new[] { 2, 3 })
        {
            var (outN, lseN) = RunForward(x, threads);
            var (dqN, dkN, dvN) = RunBackward(x, w, out1, lse1, threads);
            AssertSameBits(out1, outN, $"out, {threads} threads");
            AssertSameBits(lse1, lseN, $"lse, {threads} threads");
            AssertSameBits(dq1, dqN, $"dq, {threads} threads");
            AssertSameBits(dk1, dkN, $"dk, {threads} threads");
            AssertSameBits(dv1, dvN, $"dv, {threads} threads");
        }
    }

    static void AssertSameBits(float[] expected, float[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
                Assert.Fail($"{what}: [{i}] {actual[i]:g9} differs from {expected[i]:g9}");
    }

    [Fact]
    public void Rejects_heads_not_divisible_by_kv_heads()
    {
        var x = MakeInputs(1, 1, 4, 3, 2, 4);
        Assert.Throws<ArgumentException>(() => RunForward(x));
    }
}

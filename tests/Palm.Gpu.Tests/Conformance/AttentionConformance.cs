using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

// Causal attention on every backend. q (B,T,H,K), k/v (B,T,G,K) -> out (B,T,H,K), lse (B,H,T); backward
// dq, dk, dv (all overwritten). Multi-query (G = 1), grouped and multi-head (G = H). Each backend tiles and
// sums in its own fixed order: vs the CPU within 1e-5 (forward) and 2e-5 + 1e-4 relative (gradients).
[Collection(ConformanceCollection.Name)]
public class AttentionConformance(ConformanceFixture fx)
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


    static OpCase Case(int seed, int b, int t, int h, int g, int kd, float qScale)
    {
        int nq = b * t * h * kd, nkv = b * t * g * kd;
        return new OpCase().F("q", TestData.Uniform(seed, nq, qScale)).F("k", TestData.Uniform(seed + 1, nkv)).F("v", TestData.Uniform(seed + 2, nkv))
            .F("dout", TestData.Uniform(seed + 3, nq)).Zeros("out", nq).Zeros("lse", b * h * t)
            .F("dq", TestData.Uniform(99, nq, 5f)).F("dk", TestData.Uniform(98, nkv, 5f)).F("dv", TestData.Uniform(97, nkv, 5f));   // garbage: overwritten
    }

    static Action<Palm.Gpu.Backends.IBackend, Func<string, Palm.Gpu.Tensors.DeviceBuffer>> Call(int b, int t, int h, int g, int kd) => (be, x) =>
    {
        be.AttentionForward(x("out"), x("lse"), x("q"), x("k"), x("v"), b, t, h, g, kd);
        be.AttentionBackward(x("dq"), x("dk"), x("dv"), x("dout"), x("q"), x("k"), x("v"), x("out"), x("lse"), b, t, h, g, kd);
    };

    static readonly string[] Outputs = ["out", "lse", "dq", "dk", "dv"];

    // B, T, H, G, K, query scale: single step; odd K; grouped odd T; K below a vector; across query blocks and key
    // tiles (peaky softmax); K = 16 + 8; H/G = 3; scores of several hundred (a naive exp overflows); aligned.
    // The CPU tiling's edges: K and V read in place (G = 1, K a multiple of 16) with a ragged last key tile, and
    // blocks of 21 time steps that cross key tiles and end on a key that is not a multiple of 4 (H/G = 3); one head
    // (64-step blocks, a last block of 22 rows: the score kernel's column tail); 64 heads, so one-step blocks and
    // the backward's dk, dv summed over three chunks of 64 blocks.
    public static IEnumerable<object[]> Shapes => ConformanceBackends.Cross(
        [1, 1, 2, 1, 8, 1f], [2, 7, 3, 1, 6, 1f], [1, 37, 4, 2, 10, 1f], [2, 37, 2, 2, 5, 1f], [1, 130, 8, 1, 64, 3f],
        [1, 130, 2, 2, 24, 3f], [1, 200, 3, 1, 72, 1f], [1, 70, 2, 1, 16, 40f], [2, 32, 4, 2, 16, 1f],
        [2, 13, 4, 1, 8, 1f], [1, 19, 2, 1, 6, 1f], [2, 100, 4, 2, 10, 2f], [1, 150, 2, 2, 24, 2f], [1, 97, 3, 1, 72, 2f],
        [1, 101, 3, 1, 16, 2f], [1, 150, 1, 1, 16, 2f], [1, 150, 64, 1, 16, 1f]);

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Forward_and_backward_match_reference_and_cpu(string backend, int b, int t, int h, int g, int kd, float qScale)
    {
        var op = Case(10 + t + kd, b, t, h, g, kd, qScale);
        var (actual, cpu) = fx.RunBoth(backend, op, Call(b, t, h, g, kd), Outputs);
        int seed = 10 + t + kd;
        var q = TestData.ToDouble(TestData.Uniform(seed, b * t * h * kd, qScale));
        var k = TestData.ToDouble(TestData.Uniform(seed + 1, b * t * g * kd));
        var v = TestData.ToDouble(TestData.Uniform(seed + 2, b * t * g * kd));
        var dout = TestData.ToDouble(TestData.Uniform(seed + 3, b * t * h * kd));
        var (refOut, refLse) = Reference(q, k, v, b, t, h, g, kd);
        double loose = qScale > 10 ? 10 : 1;   // peaky softmax: the rounding of large scores shows
        Tolerance.AssertClose(refOut, actual["out"], 2e-6 * loose, 2e-5 * loose, $"{backend}: out");
        Tolerance.AssertClose(refLse, actual["lse"], 2e-6 * loose, 2e-6 * loose, $"{backend}: lse");
        if (qScale < 10)
        {
            var (refDq, refDk, refDv) = ReferenceBackward(dout, q, k, v, b, t, h, g, kd);
            Tolerance.AssertClose(refDq, actual["dq"], 1e-5, 1e-4, $"{backend}: dq");
            Tolerance.AssertClose(refDk, actual["dk"], 1e-5, 1e-4, $"{backend}: dk");
            Tolerance.AssertClose(refDv, actual["dv"], 1e-5, 1e-4, $"{backend}: dv");
        }
        foreach (var name in new[] { "out", "lse" }) fx.AssertMatchesCpu(backend, new() { [name] = actual[name] }, new() { [name] = cpu[name] }, 1e-5, 1e-5, "attention forward");
        foreach (var name in new[] { "dq", "dk", "dv" }) fx.AssertMatchesCpu(backend, new() { [name] = actual[name] }, new() { [name] = cpu[name] }, 2e-5, 1e-4, "attention backward");
    }

    // The analytic reference above is itself checked against finite differences here, with the backend.
    public static IEnumerable<object[]> TinyShapes => ConformanceBackends.Cross([5, 3, 1, 4], [7, 4, 1, 5], [9, 4, 4, 8], [6, 3, 3, 6], [8, 4, 2, 7]);

    [Theory]
    [MemberData(nameof(TinyShapes))]
    public void Backward_matches_finite_differences(string backend, int t, int h, int g, int kd)
    {
        const int b = 2;
        int seed = 40 + t;
        var r = Case(seed, b, t, h, g, kd, 1f).Run(fx.Get(backend), x => Call(b, t, h, g, kd)(fx.Get(backend), x), "dq", "dk", "dv");
        double[] q = TestData.ToDouble(TestData.Uniform(seed, b * t * h * kd)), k = TestData.ToDouble(TestData.Uniform(seed + 1, b * t * g * kd)),
                 v = TestData.ToDouble(TestData.Uniform(seed + 2, b * t * g * kd)), wd = TestData.ToDouble(TestData.Uniform(seed + 3, b * t * h * kd));
        double Loss() => TestData.Dot(wd, Reference(q, k, v, b, t, h, g, kd).Out);
        var numDq = TestData.NumericGradient(_ => Loss(), q);
        var numDk = TestData.NumericGradient(_ => Loss(), k);
        var numDv = TestData.NumericGradient(_ => Loss(), v);
        var (refDq, refDk, refDv) = ReferenceBackward(wd, q, k, v, b, t, h, g, kd);
        Tolerance.AssertClose(numDq, refDq, 1e-7, 1e-6, "reference dq");
        Tolerance.AssertClose(numDk, refDk, 1e-7, 1e-6, "reference dk");
        Tolerance.AssertClose(numDv, refDv, 1e-7, 1e-6, "reference dv");
        Tolerance.AssertClose(numDq, r["dq"], 1e-5, 1e-4, $"{backend}: dq");
        Tolerance.AssertClose(numDk, r["dk"], 1e-5, 1e-4, $"{backend}: dk");
        Tolerance.AssertClose(numDv, r["dv"], 1e-5, 1e-4, $"{backend}: dv");
    }

    // B·G·chunks = 2 and 4: the CPU backend's 3 threads take the two-pass backward, 1 thread the fused one, so cpu vs
    // cpu-1thread also proves both schemes give the same bits.
    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Same_bits_on_every_run(string backend)
    {
        fx.AssertDeterministic(backend, Case(3, 2, 150, 4, 1, 24, 1f), Call(2, 150, 4, 1, 24), Outputs);
        fx.AssertDeterministic(backend, Case(3, 2, 150, 2, 2, 16, 1f), Call(2, 150, 2, 2, 16), Outputs);
        fx.AssertDeterministic(backend, Case(3, 2, 150, 4, 1, 16, 1f), Call(2, 150, 4, 1, 16), Outputs);   // K, V in place
        // Two chunks of query blocks (64 heads: one-step blocks): 3 threads take the two passes, 1 thread the fused chunks.
        fx.AssertDeterministic(backend, Case(4, 1, 100, 64, 1, 16, 1f), Call(1, 100, 64, 1, 16), Outputs);
    }
}

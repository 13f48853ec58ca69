using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

// GEMM on every backend: C (M,N) = alpha·op(A)·op(B) [+ C], all four transpose cases. Its backward is the same call
// with transposes (dx = dy·Wᵀ, dW += xᵀ·dy), checked here against finite differences. Each backend sums K in its
// own fixed order: vs the CPU within 2e-6·√K.
[Collection(ConformanceCollection.Name)]
public class MatmulConformance(ConformanceFixture fx)
{
    const double Unit = 5.9604644775390625e-8;   // 2^-24

    // Reference and tolerance: twice the worst-case fp32 error (K+2)·u·max(|alpha|·Σ|a·b| + |C0|).
    internal static (double[] Expected, double Atol) Reference(float[] a, float[] b, float[]? c0, int m, int n, int k, bool transA, bool transB, float alpha)
    {
        var expected = new double[m * n];
        double worst = 0;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0, abs = 0;
                for (int p = 0; p < k; p++)
                {
                    double av = transA ? a[p * m + i] : a[i * k + p];
                    double bv = transB ? b[j * k + p] : b[p * n + j];
                    s += av * bv;
                    abs += Math.Abs(av * bv);
                }
                double prior = c0 is null ? 0 : c0[i * n + j];
                expected[i * n + j] = alpha * s + prior;
                worst = Math.Max(worst, Math.Abs(alpha) * abs + Math.Abs(prior));
            }
        return (expected, 2 * (k + 2) * Unit * worst + 1e-30);
    }

    // Odd sizes below and across every tile; aligned ones; one K longer than a K block.
    public static IEnumerable<object[]> Shapes => ConformanceBackends.Cross([1, 1, 1], [7, 13, 5], [33, 65, 17], [64, 64, 64], [15, 33, 300], [20, 300, 50]);

    [Theory]
    [MemberData(nameof(Shapes))]
    public void All_transposes_alpha_and_accumulate_match_reference_and_cpu(string backend, int m, int n, int k)
    {
        var a = TestData.Uniform(1, m * k); var b = TestData.Uniform(2, k * n); var c0 = TestData.Uniform(3, m * n);
        foreach (bool transA in new[] { false, true })
            foreach (bool transB in new[] { false, true })
                foreach (bool accumulate in new[] { false, true })
                {
                    float alpha = accumulate ? -0.75f : 1f;
                    var op = new OpCase().F("a", a).F("b", b).F("c", accumulate ? c0 : Enumerable.Repeat(float.NaN, m * n).ToArray());
                    var (actual, cpu) = fx.RunBoth(backend, op, (be, t) => be.Matmul(t("c"), t("a"), t("b"), m, n, k, transA, transB, alpha, accumulate), "c");
                    var (expected, atol) = Reference(a, b, accumulate ? c0 : null, m, n, k, transA, transB, alpha);
                    string what = $"{m}x{n}x{k} transA={transA} transB={transB} accumulate={accumulate}";
                    Tolerance.AssertClose(expected, actual["c"], atol, 0, $"{backend}: {what}");
                    fx.AssertMatchesCpu(backend, actual, cpu, 2e-6 * Math.Sqrt(k), 1e-5, what);
                }
    }

    // L = Σ w ⊙ (x·W): dx = w·Wᵀ (transB) and dW += xᵀ·w (transA, accumulate), against finite differences.
    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Gradients_as_transposed_calls_match_finite_differences(string backend)
    {
        const int m = 5, k = 7, n = 9;
        var x = TestData.Uniform(4, m * k); var w = TestData.Uniform(5, k * n); var dy = TestData.Uniform(6, m * n); var dw0 = TestData.Uniform(7, k * n);
        var op = new OpCase().F("x", x).F("w", w).F("dy", dy).Zeros("dx", m * k).F("dw", dw0);
        var r = op.Run(fx.Get(backend), t =>
        {
            var be = fx.Get(backend);
            be.Matmul(t("dx"), t("dy"), t("w"), m, k, n, transB: true);
            be.Matmul(t("dw"), t("x"), t("dy"), k, n, m, transA: true, accumulate: true);
        }, "dx", "dw");
        var dyd = TestData.ToDouble(dy);
        double Loss(double[] xx, double[] ww)
        {
            var y = new double[m * n];
            for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) for (int p = 0; p < k; p++) y[i * n + j] += xx[i * k + p] * ww[p * n + j];
            return TestData.Dot(dyd, y);
        }
        var xd = TestData.ToDouble(x); var wd = TestData.ToDouble(w);
        var gx = TestData.NumericGradient(xx => Loss(xx, wd), xd);
        var gw = TestData.NumericGradient(ww => Loss(xd, ww), wd);
        for (int i = 0; i < gw.Length; i++) gw[i] += dw0[i];
        Tolerance.AssertClose(gx, r["dx"], 1e-6, 1e-5, $"{backend}: dx");
        Tolerance.AssertClose(gw, r["dw"], 1e-6, 1e-5, $"{backend}: dW");
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Same_bits_on_every_run(string backend)
    {
        int m = 97, n = 131, k = 300;
        fx.AssertDeterministic(backend, new OpCase().F("a", TestData.Uniform(8, m * k)).F("b", TestData.Uniform(9, k * n)).Zeros("c", m * n),
            (be, t) => be.Matmul(t("c"), t("a"), t("b"), m, n, k, false, true, 0.5f, false), "c");
    }
}

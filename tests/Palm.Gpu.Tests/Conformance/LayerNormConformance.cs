using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

// Layer norm (scale, no bias) on every backend. inp (N,D), weight (D) -> out (N,D), mean (N), rstd (N);
// backward dinp (N,D) (= or +=), dweight (D) +=. Row sums differ between backends' trees: a few ulps vs the CPU.
[Collection(ConformanceCollection.Name)]
public class LayerNormConformance(ConformanceFixture fx)
{
    const double Eps = CpuLayerNorm.Epsilon;

    static double[] Reference(double[] x, double[] w, int n, int d, double[]? mean = null, double[]? rstd = null)
    {
        var y = new double[n * d];
        for (int i = 0; i < n; i++)
        {
            double mu = 0;
            for (int j = 0; j < d; j++) mu += x[i * d + j];
            mu /= d;
            double var = 0;
            for (int j = 0; j < d; j++) { double c = x[i * d + j] - mu; var += c * c; }
            var /= d;
            double r = 1 / Math.Sqrt(var + Eps);
            for (int j = 0; j < d; j++) y[i * d + j] = (x[i * d + j] - mu) * r * w[j];
            if (mean is not null) mean[i] = mu;
            if (rstd is not null) rstd[i] = r;
        }
        return y;
    }

    // A common offset (+3) so a one-pass E[x²]−E[x]² variance would lose digits.
    static float[] Input(int seed, int n, int d)
    {
        var x = TestData.Uniform(seed, n * d, 2f);
        for (int i = 0; i < x.Length; i++) x[i] += 3f;
        return x;
    }

    static OpCase Case(int n, int d) => new OpCase().F("x", Input(63, n, d)).F("w", TestData.Uniform(64, d, 1.5f)).F("dout", TestData.Uniform(65, n * d))
        .Zeros("out", n * d).Zeros("mean", n).Zeros("rstd", n).F("dx", TestData.Uniform(66, n * d)).F("dw", TestData.Uniform(67, d));

    static Action<Palm.Gpu.Backends.IBackend, Func<string, Palm.Gpu.Tensors.DeviceBuffer>> Call(int n, int d, bool accumulate) => (be, t) =>
    {
        be.LayerNormForward(t("out"), t("mean"), t("rstd"), t("x"), t("w"), n, d);
        be.LayerNormBackward(t("dx"), t("dw"), t("dout"), t("x"), t("w"), t("mean"), t("rstd"), n, d, accumulate);
    };

    // 7, 37: tails only; 64: aligned; 35 rows: more than one dweight chunk; 300: a row longer than a work-group.
    public static IEnumerable<object[]> Shapes => ConformanceBackends.Cross(
        [3, 7, false], [3, 7, true], [5, 37, false], [5, 37, true], [35, 19, false], [70, 64, false], [2, 300, true]);

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Forward_and_backward_match_reference_finite_differences_and_cpu(string backend, int n, int d, bool accumulate)
    {
        var (actual, cpu) = fx.RunBoth(backend, Case(n, d), Call(n, d, accumulate), "out", "mean", "rstd", "dx", "dw");
        var x = TestData.ToDouble(Input(63, n, d));
        var w = TestData.ToDouble(TestData.Uniform(64, d, 1.5f));
        var dout = TestData.ToDouble(TestData.Uniform(65, n * d));
        var mean = new double[n]; var rstd = new double[n];
        Tolerance.AssertClose(Reference(x, w, n, d, mean, rstd), actual["out"], 1e-6, 1e-5, $"{backend}: out");
        Tolerance.AssertClose(mean, actual["mean"], 1e-6, 1e-6, $"{backend}: mean");
        Tolerance.AssertClose(rstd, actual["rstd"], 0, 1e-5, $"{backend}: rstd");

        if (n * d <= 1000)   // finite differences cost O((N·D)²)
        {
            var dx = TestData.NumericGradient(xx => TestData.Dot(dout, Reference(xx, w, n, d)), x);
            var dw = TestData.NumericGradient(ww => TestData.Dot(dout, Reference(x, ww, n, d)), w);
            var dx0 = TestData.Uniform(66, n * d); var dw0 = TestData.Uniform(67, d);
            if (accumulate) for (int i = 0; i < dx.Length; i++) dx[i] += dx0[i];
            for (int j = 0; j < d; j++) dw[j] += dw0[j];
            Tolerance.AssertClose(dx, actual["dx"], 2e-5, 1e-4, $"{backend}: dinput");
            Tolerance.AssertClose(dw, actual["dw"], 2e-5, 1e-4, $"{backend}: dweight");
        }
        fx.AssertMatchesCpu(backend, actual, cpu, 2e-6, 2e-5, $"layer norm n={n} d={d}");
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Backward_dinput_may_alias_dout(string backend)
    {
        const int n = 6, d = 37;
        var op = Case(n, d).F("dout2", TestData.Uniform(65, n * d)).Zeros("dx2", n * d).Zeros("dw2", d).Zeros("dw3", d);
        var (r, cpu) = fx.RunBoth(backend, op, (be, t) =>
        {
            be.LayerNormForward(t("out"), t("mean"), t("rstd"), t("x"), t("w"), n, d);
            be.LayerNormBackward(t("dx2"), t("dw2"), t("dout"), t("x"), t("w"), t("mean"), t("rstd"), n, d, false);
            be.LayerNormBackward(t("dout2"), t("dw3"), t("dout2"), t("x"), t("w"), t("mean"), t("rstd"), n, d, false);
        }, "dx2", "dout2", "dw2", "dw3");
        Bits.AssertIdentical(r["dx2"], r["dout2"], $"{backend}: dinput in place");
        Bits.AssertIdentical(r["dw2"], r["dw3"], $"{backend}: dweight in place");
        fx.AssertMatchesCpu(backend, r, cpu, 2e-6, 2e-5, "layer norm in place");
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Same_bits_on_every_run(string backend)
    {
        const int n = 203, d = 300;   // several row chunks and column blocks, odd tails in both
        fx.AssertDeterministic(backend, Case(n, d), Call(n, d, false), "out", "mean", "rstd", "dx", "dw");
    }
}

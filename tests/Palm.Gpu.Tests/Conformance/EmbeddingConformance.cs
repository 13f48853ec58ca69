using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

// Token embedding on every backend. tokens (N), table (V,D) -> out (N,D) = table[tokens]; backward dtable (V,D) +=
// scatter-add of dout rows by token. A gather and additions in token order: every backend promises the CPU's bits.
[Collection(ConformanceCollection.Name)]
public class EmbeddingConformance(ConformanceFixture fx)
{
    static double[] Reference(int[] tokens, double[] table, int n, int d)
    {
        var y = new double[n * d];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++) y[i * d + j] = table[tokens[i] * d + j];
        return y;
    }

    public static IEnumerable<object[]> Shapes => ConformanceBackends.Cross([3, 7, 5], [7, 37, 4], [6, 133, 3], [64, 128, 50]);

    static OpCase Case(int n, int d, int v, out int[] tokens)
    {
        tokens = TestData.Tokens(43, n, v);
        tokens[0] = tokens[n - 1] = v - 1;   // the last row, and at least one repeat
        return new OpCase().I("tokens", tokens).F("table", TestData.Uniform(44, v * d)).F("dout", TestData.Uniform(45, n * d))
            .Zeros("out", n * d).F("dtable", TestData.Uniform(46, v * d));
    }

    static void Call(Palm.Gpu.Backends.IBackend be, Func<string, Palm.Gpu.Tensors.DeviceBuffer> t, int n, int d, int v)
    {
        be.EmbeddingForward(t("out"), t("tokens"), t("table"), n, d, 0, v);
        be.EmbeddingBackward(t("dtable"), t("tokens"), t("dout"), n, d, 0, v);
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Forward_gathers_rows_and_backward_matches_finite_differences(string backend, int n, int d, int v)
    {
        var op = Case(n, d, v, out var tokens);
        var (actual, cpu) = fx.RunBoth(backend, op, (be, t) => Call(be, t, n, d, v), "out", "dtable");
        var table = TestData.ToDouble(TestData.Uniform(44, v * d));
        Tolerance.AssertClose(Reference(tokens, table, n, d), actual["out"], 0, 0, $"{backend}: gather");
        var wd = TestData.ToDouble(TestData.Uniform(45, n * d));
        var dtable0 = TestData.Uniform(46, v * d);
        var expected = TestData.NumericGradient(tt => TestData.Dot(wd, Reference(tokens, tt, n, d)), table);
        for (int i = 0; i < expected.Length; i++) expected[i] += dtable0[i];
        Tolerance.AssertClose(expected, actual["dtable"], 1e-6, 1e-5, $"{backend}: dtable");
        fx.AssertMatchesCpu(backend, actual, cpu, 0, 0, "embedding");
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Backward_same_bits_on_every_run(string backend)
    {
        const int n = 600, d = 300, v = 9;   // several column blocks; every token repeats ~67 times
        var dout = TestData.Uniform(48, n * d);
        for (int i = 0; i < dout.Length; i += 13) dout[i] *= 1000f;   // make the summation order visible in the bits
        var op = new OpCase().I("tokens", TestData.Tokens(47, n, v)).F("table", TestData.Uniform(49, v * d)).F("dout", dout)
            .Zeros("out", n * d).F("dtable", TestData.Uniform(50, v * d));
        fx.AssertDeterministic(backend, op, (be, t) => Call(be, t, n, d, v), "out", "dtable");
        var (actual, cpu) = fx.RunBoth(backend, op, (be, t) => Call(be, t, n, d, v), "dtable");
        fx.AssertMatchesCpu(backend, actual, cpu, 0, 0, "embedding, many repeats");
    }
}

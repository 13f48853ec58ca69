using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

// Residual adds and scaling on every backend: out = a + b (may alias either input), acc += x, x *= s, only the
// first count elements touched; the backward of a + b routes dout to both inputs (AddInPlace). Element-wise with
// one rounding each, so every backend promises the CPU's bits.
[Collection(ConformanceCollection.Name)]
public class ResidualConformance(ConformanceFixture fx)
{
    public static IEnumerable<object[]> Sizes => ConformanceBackends.Cross([1], [37], [64], [1001], [2 * 65536 + 19]);

    [Theory]
    [MemberData(nameof(Sizes))]
    public void Forward_matches_reference_and_cpu_bits(string backend, int count)
    {
        int length = count + 5;   // past count must stay untouched
        var op = new OpCase().F("a", TestData.Uniform(1, length)).F("b", TestData.Uniform(2, length)).F("out", TestData.Uniform(3, length))
            .F("acc", TestData.Uniform(4, length));
        var (actual, cpu) = fx.RunBoth(backend, op, (be, t) =>
        {
            be.Add(t("out"), t("a"), t("b"), count);
            be.AddInPlace(t("acc"), t("a"), count);
        }, "out", "acc");
        var a = TestData.Uniform(1, length); var b = TestData.Uniform(2, length);
        var out0 = TestData.Uniform(3, length); var acc0 = TestData.Uniform(4, length);
        var eo = new double[length]; var ea = new double[length];
        for (int i = 0; i < length; i++)
        {
            eo[i] = i < count ? (double)a[i] + b[i] : out0[i];
            ea[i] = i < count ? (double)acc0[i] + a[i] : acc0[i];
        }
        Tolerance.AssertClose(eo, actual["out"], 0, 1e-7, $"{backend}: a + b");
        Tolerance.AssertClose(ea, actual["acc"], 0, 1e-7, $"{backend}: acc += x");
        fx.AssertMatchesCpu(backend, actual, cpu, 0, 0, "residual");
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Add_output_may_alias_either_input(string backend)
    {
        const int count = 53;
        var op = new OpCase().F("a", TestData.Uniform(6, count)).F("b", TestData.Uniform(7, count)).Zeros("out", count)
            .F("a2", TestData.Uniform(6, count)).F("b2", TestData.Uniform(7, count)).F("acc", TestData.Uniform(8, count));
        var r = op.Run(fx.Get(backend), t =>
        {
            var be = fx.Get(backend);
            be.Add(t("out"), t("a"), t("b"), count);
            be.Add(t("a"), t("a"), t("b"), count);
            be.Add(t("b2"), t("a2"), t("b2"), count);
            be.AddInPlace(t("acc"), t("acc"), count);   // acc aliases x
        }, "out", "a", "b2", "acc");
        Bits.AssertIdentical(r["out"], r["a"], $"{backend}: into a");
        Bits.AssertIdentical(r["out"], r["b2"], $"{backend}: into b");
        Bits.AssertIdentical(TestData.Uniform(8, count).Select(x => x + x).ToArray(), r["acc"], $"{backend}: acc += acc");
    }

    // L = Σ w ⊙ (a + b): da and db (already holding values) += w, against finite differences.
    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Backward_matches_finite_differences(string backend)
    {
        const int count = 21;
        var a = TestData.ToDouble(TestData.Uniform(8, count));
        var b = TestData.ToDouble(TestData.Uniform(9, count));
        var w = TestData.Uniform(10, count);
        var wd = TestData.ToDouble(w);
        double Loss(double[] aa, double[] bb) { var y = new double[count]; for (int i = 0; i < count; i++) y[i] = aa[i] + bb[i]; return TestData.Dot(wd, y); }
        var da0 = TestData.Uniform(11, count);
        var db0 = TestData.Uniform(12, count);
        var op = new OpCase().F("w", w).F("da", da0).F("db", db0);
        var r = op.Run(fx.Get(backend), t => { fx.Get(backend).AddInPlace(t("da"), t("w"), count); fx.Get(backend).AddInPlace(t("db"), t("w"), count); }, "da", "db");
        var ga = TestData.NumericGradient(x => Loss(x, b), a);
        var gb = TestData.NumericGradient(x => Loss(a, x), b);
        for (int i = 0; i < count; i++) { ga[i] += da0[i]; gb[i] += db0[i]; }
        Tolerance.AssertClose(ga, r["da"], 1e-7, 1e-6, $"{backend}: da");
        Tolerance.AssertClose(gb, r["db"], 1e-7, 1e-6, $"{backend}: db");
    }
}

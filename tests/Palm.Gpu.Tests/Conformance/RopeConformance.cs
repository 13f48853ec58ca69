using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

// Rotate-half RoPE on every backend. inp (B,T,Hs,K) -> out (B,T,Hs,K); backward rotates by the negative angle.
// cos/sin tables are built per backend: a few ulps vs the CPU.
[Collection(ConformanceCollection.Name)]
public class RopeConformance(ConformanceFixture fx)
{
    static double[] Reference(double[] x, int b, int t, int heads, int kd)
    {
        var y = new double[x.Length];
        int half = kd / 2;
        for (int bi = 0; bi < b; bi++)
            for (int pos = 0; pos < t; pos++)
                for (int h = 0; h < heads; h++)
                {
                    int o = ((bi * t + pos) * heads + h) * kd;
                    for (int i = 0; i < half; i++)
                    {
                        double a = pos * Math.Pow(10000, -2.0 * i / kd), c = Math.Cos(a), s = Math.Sin(a);
                        y[o + i] = x[o + i] * c - x[o + half + i] * s;
                        y[o + half + i] = x[o + half + i] * c + x[o + i] * s;
                    }
                }
        return y;
    }

    // K/2 = 1, 3, 4, 12, 20, 32, 128; positions past 64.
    public static IEnumerable<object[]> Shapes => ConformanceBackends.Cross(
        [1, 4, 1, 2], [2, 7, 3, 6], [2, 5, 3, 8], [2, 9, 2, 24], [1, 33, 2, 40], [1, 67, 1, 6], [2, 65, 8, 64], [1, 300, 2, 256]);

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Forward_and_backward_match_reference_and_cpu(string backend, int b, int t, int heads, int kd)
    {
        int n = b * t * heads * kd;
        var op = new OpCase().F("x", TestData.Uniform(51, n)).F("dout", TestData.Uniform(52, n)).Zeros("out", n).Zeros("dx", n).F("inplace", TestData.Uniform(51, n));
        var (actual, cpu) = fx.RunBoth(backend, op, (be, x) =>
        {
            be.RopeForward(x("out"), x("x"), b, t, heads, kd);
            be.RopeBackward(x("dx"), x("dout"), b, t, heads, kd);
            be.RopeForward(x("inplace"), x("inplace"), b, t, heads, kd);
        }, "out", "dx", "inplace");
        Tolerance.AssertClose(Reference(TestData.ToDouble(TestData.Uniform(51, n)), b, t, heads, kd), actual["out"], 1e-6, 1e-5, $"{backend}: out");
        Bits.AssertIdentical(actual["out"], actual["inplace"], $"{backend}: in place");
        // The rotation is linear: the gradient of Σ dout ⊙ R·x is Rᵀ·dout, checked by finite differences on small shapes.
        if (n <= 512)
        {
            var doutD = TestData.ToDouble(TestData.Uniform(52, n));
            var expected = TestData.NumericGradient(xx => TestData.Dot(doutD, Reference(xx, b, t, heads, kd)), TestData.ToDouble(TestData.Uniform(51, n)));
            Tolerance.AssertClose(expected, actual["dx"], 1e-6, 1e-5, $"{backend}: dinput");
        }
        fx.AssertMatchesCpu(backend, actual, cpu, 1e-6, 1e-5, "rope");
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Same_bits_on_every_run(string backend)
    {
        int b = 2, t = 65, heads = 8, kd = 64, n = b * t * heads * kd;
        fx.AssertDeterministic(backend, new OpCase().F("x", TestData.Uniform(53, n)).Zeros("out", n).Zeros("dx", n),
            (be, x) => { be.RopeForward(x("out"), x("x"), b, t, heads, kd); be.RopeBackward(x("dx"), x("x"), b, t, heads, kd); }, "out", "dx");
    }

    // A rotation: every pair keeps its norm; position 0 is the identity to the bit, later positions are not.
    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Rotation_preserves_the_norm_of_each_pair(string backend)
    {
        const int b = 2, t = 50, heads = 3, kd = 40, half = kd / 2;
        var x = TestData.Uniform(7, b * t * heads * kd);
        var be = fx.Get(backend);
        var y = new OpCase().F("x", x).Zeros("y", x.Length).Run(be, v => be.RopeForward(v("y"), v("x"), b, t, heads, kd), "y")["y"];
        var before = new double[x.Length / 2];
        var after = new double[x.Length / 2];
        for (int head = 0, p = 0; head < b * t * heads; head++)
            for (int i = 0; i < half; i++, p++)
            {
                int o = head * kd + i;
                before[p] = (double)x[o] * x[o] + (double)x[o + half] * x[o + half];
                after[p] = (double)y[o] * y[o] + (double)y[o + half] * y[o + half];
            }
        Tolerance.AssertClose(before, after, 1e-6, 1e-5, $"{backend}: pair norms");
        Assert.Equal(x.AsSpan(0, heads * kd).ToArray(), y.AsSpan(0, heads * kd).ToArray());
        Assert.NotEqual(x.AsSpan(heads * kd, heads * kd).ToArray(), y.AsSpan(heads * kd, heads * kd).ToArray());
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Odd_head_dim_is_refused(string backend)
    {
        var be = fx.Get(backend);
        using var x = be.Allocate("x", 15);
        var e = Assert.Throws<ArgumentException>(() => be.RopeForward(x, x, 1, 1, 3, 5));
        Assert.Contains("even", e.Message);
    }
}

using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

public class ResidualTests
{
    const int Threads = 2;

    // 37: scalar tail only after two vectors; 2·65536+19: several fixed chunks plus a tail.
    [Theory]
    [InlineData(37)]
    [InlineData(2 * 65536 + 19)]
    public void Add_MatchesReference(int count)
    {
        var a = TestData.Uniform(1, count);
        var b = TestData.Uniform(2, count);
        var output = new float[count];
        CpuResidual.Add(Threads, output, a, b, count);
        var expected = new double[count];
        for (int i = 0; i < count; i++) expected[i] = (double)a[i] + b[i];
        Tolerance.AssertClose(expected, output, 0, 1e-7, "a + b");
    }

    [Fact]
    public void Add_OutputMayAliasEitherInput()
    {
        const int count = 53;
        var a = TestData.Uniform(3, count);
        var b = TestData.Uniform(4, count);
        var expected = new float[count];
        CpuResidual.Add(Threads, expected, a, b, count);

        var intoA = (float[])a.Clone();
        CpuResidual.Add(Threads, intoA, intoA, b, count);
        Assert.Equal(Bits(expected), Bits(intoA));

        var intoB = (float[])b.Clone();
        CpuResidual.Add(Threads, intoB, a, intoB, count);
        Assert.Equal(Bits(expected), Bits(intoB));
    }

    [Fact]
    public void AddInPlace_MatchesReference_AndStopsAtCount()
    {
        const int count = 45, length = 50;
        var acc = TestData.Uniform(5, length);
        var x = TestData.Uniform(6, length);
        var original = (float[])acc.Clone();
        CpuResidual.AddInPlace(Threads, acc, x, count);
        var expected = new double[length];
        for (int i = 0; i < length; i++) expected[i] = i < count ? (double)original[i] + x[i] : original[i];
        Tolerance.AssertClose(expected, acc, 0, 1e-7, "acc += x");
    }

    // The backward of out = a + b routes dout to both inputs (AddInPlace into each gradient);
    // checked against finite differences of L = Σ w ⊙ (a + b), with gradients that already hold values.
    [Fact]
    public void AddBackward_MatchesFiniteDifferences()
    {
        const int count = 21;
        var a = TestData.ToDouble(TestData.Uniform(8, count));
        var b = TestData.ToDouble(TestData.Uniform(9, count));
        var w = TestData.Uniform(10, count);
        var wd = TestData.ToDouble(w);
        double Loss(double[] aa, double[] bb)
        {
            var y = new double[count];
            for (int i = 0; i < count; i++) y[i] = aa[i] + bb[i];
            return TestData.Dot(wd, y);
        }
        var da0 = TestData.Uniform(11, count);
        var db0 = TestData.Uniform(12, count);
        var da = (float[])da0.Clone();
        var db = (float[])db0.Clone();
        CpuResidual.AddInPlace(Threads, da, w, count);
        CpuResidual.AddInPlace(Threads, db, w, count);

        var ga = TestData.NumericGradient(x => Loss(x, b), a);
        var gb = TestData.NumericGradient(x => Loss(a, x), b);
        for (int i = 0; i < count; i++) { ga[i] += da0[i]; gb[i] += db0[i]; }
        Tolerance.AssertClose(ga, da, 1e-7, 1e-6, "da");
        Tolerance.AssertClose(gb, db, 1e-7, 1e-6, "db");
    }

    static int[] Bits(float[] x) => Array.ConvertAll(x, BitConverter.SingleToInt32Bits);
}

using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

public class LayerNormTests
{
    const int Threads = 2;
    const double Eps = CpuLayerNorm.Epsilon;

    // out (N,D) = (x − mean)/√(var + ε) · w, biased variance, in double.
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

    // Inputs carry a common offset (+3) so a one-pass E[x²]−E[x]² variance would lose digits.
    static float[] Input(int seed, int n, int d)
    {
        var x = TestData.Uniform(seed, n * d, 2f);
        for (int i = 0; i < x.Length; i++) x[i] += 3f;
        return x;
    }

    [Theory]
    [InlineData(3, 7)]
    [InlineData(5, 37)]
    [InlineData(4, 70)]
    public void Forward_MatchesReference(int n, int d)
    {
        var x = Input(61, n, d);
        var w = TestData.Uniform(62, d, 1.5f);
        var output = new float[n * d];
        var mean = new float[n];
        var rstd = new float[n];
        CpuLayerNorm.Forward(Threads, output, mean, rstd, x, w, n, d);

        var expectedMean = new double[n];
        var expectedRstd = new double[n];
        var expected = Reference(TestData.ToDouble(x), TestData.ToDouble(w), n, d, expectedMean, expectedRstd);
        Tolerance.AssertClose(expected, output, 1e-6, 1e-5, "out");
        Tolerance.AssertClose(expectedMean, mean, 1e-6, 1e-6, "mean");
        Tolerance.AssertClose(expectedRstd, rstd, 0, 1e-5, "rstd");
    }

    // L = Σ wL ⊙ LN(x, w): dinput against finite differences in x, dweight in w.
    // dweight starts non-zero (it accumulates); dinput starts non-zero and is overwritten or added to.
    [Theory]
    [InlineData(3, 7, false)]
    [InlineData(3, 7, true)]
    [InlineData(5, 37, false)]
    [InlineData(5, 37, true)]
    [InlineData(35, 19, false)] // more than one row chunk
    public void Backward_MatchesFiniteDifferences(int n, int d, bool accumulate)
    {
        var x = Input(63, n, d);
        var w = TestData.Uniform(64, d, 1.5f);
        var dout = TestData.Uniform(65, n * d);
        var output = new float[n * d];
        var mean = new float[n];
        var rstd = new float[n];
        CpuLayerNorm.Forward(Threads, output, mean, rstd, x, w, n, d);

        var dinput = TestData.Uniform(66, n * d);
        var dweight = TestData.Uniform(67, d);
        var dinput0 = (float[])dinput.Clone();
        var dweight0 = (float[])dweight.Clone();
        CpuLayerNorm.Backward(Threads, dinput, dweight, dout, x, w, mean, rstd, n, d, accumulate);

        var xd = TestData.ToDouble(x);
        var wd = TestData.ToDouble(w);
        var doutd = TestData.ToDouble(dout);
        var expectedDx = TestData.NumericGradient(xx => TestData.Dot(doutd, Reference(xx, wd, n, d)), xd);
        var expectedDw = TestData.NumericGradient(ww => TestData.Dot(doutd, Reference(xd, ww, n, d)), wd);
        if (accumulate) for (int i = 0; i < expectedDx.Length; i++) expectedDx[i] += dinput0[i];
        for (int j = 0; j < d; j++) expectedDw[j] += dweight0[j];
        Tolerance.AssertClose(expectedDx, dinput, 2e-5, 1e-4, "dinput");
        Tolerance.AssertClose(expectedDw, dweight, 2e-5, 1e-4, "dweight");
    }

    [Fact]
    public void Backward_DinputMayAliasDout()
    {
        const int n = 5, d = 37;
        var x = Input(68, n, d);
        var w = TestData.Uniform(69, d);
        var dout = TestData.Uniform(70, n * d);
        var output = new float[n * d];
        var mean = new float[n];
        var rstd = new float[n];
        CpuLayerNorm.Forward(Threads, output, mean, rstd, x, w, n, d);
        var dinput = new float[n * d];
        var dweight = new float[d];
        CpuLayerNorm.Backward(Threads, dinput, dweight, dout, x, w, mean, rstd, n, d, false);

        var inPlace = (float[])dout.Clone();
        var dweightInPlace = new float[d];
        CpuLayerNorm.Backward(Threads, inPlace, dweightInPlace, inPlace, x, w, mean, rstd, n, d, false);
        Assert.Equal(Bits(dinput), Bits(inPlace));
        Assert.Equal(Bits(dweight), Bits(dweightInPlace));
    }

    [Fact]
    public void Backward_SameBitsForAnyThreadCount()
    {
        const int n = 203, d = 300; // several row chunks and column blocks, odd tails in both
        var x = Input(71, n, d);
        var w = TestData.Uniform(72, d);
        var dout = TestData.Uniform(73, n * d);
        var output = new float[n * d];
        var mean = new float[n];
        var rstd = new float[n];
        CpuLayerNorm.Forward(1, output, mean, rstd, x, w, n, d);
        var dweight0 = TestData.Uniform(74, d);

        int[]? refDx = null, refDw = null;
        foreach (int threads in new[] { 1, 2, 3 })
        {
            var dinput = new float[n * d];
            var dweight = (float[])dweight0.Clone();
            CpuLayerNorm.Backward(threads, dinput, dweight, dout, x, w, mean, rstd, n, d, false);
            if (refDx is null) { refDx = Bits(dinput); refDw = Bits(dweight); continue; }
            Assert.Equal(refDx, Bits(dinput));
            Assert.Equal(refDw, Bits(dweight));
        }
    }

    static int[] Bits(float[] x) => Array.ConvertAll(x, BitConverter.SingleToInt32Bits);
}

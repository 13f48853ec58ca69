using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

public class RopeTests
{
    /// <summary>Rotate-half RoPE in double: pair (i, i+K/2) of position t rotated by t·10000^(−2i/K).</summary>
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

    public static TheoryData<int, int, int, int> Shapes => new()
    {
        // B, T, Hs, K: K/2 = 1, 3 (scalar), 12 (8 + 4), 20 (16 + 4), 32 (2 × 16), 128
        { 1, 4, 1, 2 },
        { 2, 7, 3, 6 },
        { 2, 9, 2, 24 },
        { 1, 33, 2, 40 },
        { 2, 65, 8, 64 },
        { 1, 300, 2, 256 },
    };




    [Fact]
    public void Rotation_preserves_the_norm_of_each_pair()
    {
        const int b = 2, t = 50, heads = 3, kd = 40, half = kd / 2;
        var x = TestData.Uniform(7, b * t * heads * kd);
        var y = new float[x.Length];
        CpuRope.Forward(3, y, x, b, t, heads, kd);
        var before = new double[x.Length / 2];
        var after = new double[x.Length / 2];
        for (int head = 0, p = 0; head < b * t * heads; head++)
            for (int i = 0; i < half; i++, p++)
            {
                int o = head * kd + i;
                before[p] = (double)x[o] * x[o] + (double)x[o + half] * x[o + half];
                after[p] = (double)y[o] * y[o] + (double)y[o + half] * y[o + half];
            }
        Tolerance.AssertClose(before, after, 1e-6, 1e-5, "pair norms");
        // Position 0 is the identity, later positions are not.
        Assert.Equal(x.AsSpan(0, heads * kd).ToArray(), y.AsSpan(0, heads * kd).ToArray());
        Assert.NotEqual(x.AsSpan(heads * kd, heads * kd).ToArray(), y.AsSpan(heads * kd, heads * kd).ToArray());
    }

    [Fact]
    public void Rejects_odd_head_dim()
    {
        var x = new float[15];
        Assert.Throws<ArgumentException>(() => CpuRope.Forward(1, x, x, 1, 1, 3, 5));
    }
}

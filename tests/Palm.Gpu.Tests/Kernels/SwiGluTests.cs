using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

public class SwiGluTests
{
    const int Threads = 2;

    static double Sigmoid(double x) => x >= 0 ? 1 / (1 + Math.Exp(-x)) : Math.Exp(x) / (1 + Math.Exp(x));

    static double[] Reference(double[] gate, double[] up)
    {
        var y = new double[gate.Length];
        for (int i = 0; i < y.Length; i++) y[i] = gate[i] * Sigmoid(gate[i]) * up[i];
        return y;
    }


    // Far tails: exp(+|gate|) would overflow; the kernel must stay finite and accurate in both directions.
    [Fact]
    public void LargeGates_StayFiniteAndAccurate()
    {
        float[] values = { 30f, -30f, 50f, -50f, 88.7f, -88.7f, 100f, -100f, 1000f, -1000f, 1e4f, -1e4f, 3e5f, -3e5f, 0f, -0f, 1e-3f };
        int count = values.Length * 2; // spans a vector and the scalar tail
        var gate = new float[count];
        for (int i = 0; i < count; i++) gate[i] = values[i % values.Length];
        var up = TestData.Uniform(33, count);
        var dout = TestData.Uniform(34, count);
        var output = new float[count];
        var dgate = new float[count];
        var dup = new float[count];
        CpuSwiGlu.Forward(Threads, output, gate, up, count);
        CpuSwiGlu.Backward(Threads, dgate, dup, dout, gate, up, count);

        var expectedOut = new double[count];
        var expectedDgate = new double[count];
        var expectedDup = new double[count];
        for (int i = 0; i < count; i++)
        {
            double g = gate[i], s = Sigmoid(g);
            expectedOut[i] = g * s * up[i];
            expectedDgate[i] = dout[i] * up[i] * s * (1 + g * (1 - s));
            expectedDup[i] = dout[i] * g * s;
        }
        // The atol only covers values below the float normal range (σ(−100) ≈ 4e-44 is subnormal).
        Tolerance.AssertClose(expectedOut, output, 1e-30, 1e-5, "out, large |gate|");
        Tolerance.AssertClose(expectedDgate, dgate, 1e-30, 1e-5, "dgate, large |gate|");
        Tolerance.AssertClose(expectedDup, dup, 1e-30, 1e-5, "dup, large |gate|");
    }


    [Fact]
    public void Backward_InPlaceOverInputs_GivesSameBits()
    {
        const int count = 45;
        var gate = TestData.Uniform(38, count, 4f);
        var up = TestData.Uniform(39, count);
        var dout = TestData.Uniform(40, count);
        var dgate = new float[count];
        var dup = new float[count];
        CpuSwiGlu.Backward(Threads, dgate, dup, dout, gate, up, count);

        // dgate over dout and dup over up, as a memory-saving caller would do.
        var doutInPlace = (float[])dout.Clone();
        var upInPlace = (float[])up.Clone();
        CpuSwiGlu.Backward(Threads, doutInPlace, upInPlace, doutInPlace, gate, upInPlace, count);
        Assert.Equal(Bits(dgate), Bits(doutInPlace));
        Assert.Equal(Bits(dup), Bits(upInPlace));
    }

    static int[] Bits(float[] x) => Array.ConvertAll(x, BitConverter.SingleToInt32Bits);
}

using Palm.Gpu.Backends.Ilgpu;
using Palm.Gpu.Kernels;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Ilgpu;

// The tensor-core GEMM on ILGPU's CPU accelerator, where it takes its fallback: the same 64 × 64 blocks, K tiles of 16,
// tf32 rounding, edges, transposes, alpha and accumulate as on CUDA (only the mma fragments need a GPU; see
// benchmarks/gpu/check.sh). C = alpha·op(A)·op(B) [+ C] against a double reference on tf32-rounded inputs.
public class TensorCoreMatmulTests
{
    static double[] Reference(float[] a, float[] b, float[] c0, int m, int n, int k, bool ta, bool tb, float alpha, bool acc)
    {
        var c = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++)
                    s += (double)MatmulTensorCoreKernels.RoundTf32(ta ? a[p * m + i] : a[i * k + p]) * MatmulTensorCoreKernels.RoundTf32(tb ? b[j * k + p] : b[p * n + j]);
                c[i * n + j] = alpha * s + (acc ? c0[i * n + j] : 0);
            }
        return c;
    }

    [Fact]
    public void Tf32_rounding_keeps_ten_mantissa_bits_to_nearest_ties_away()
    {
        Assert.Equal(1f, MatmulTensorCoreKernels.RoundTf32(1f + MathF.Pow(2, -12)));                       // below half an ulp of tf32
        Assert.Equal(1f + MathF.Pow(2, -10), MatmulTensorCoreKernels.RoundTf32(1f + MathF.Pow(2, -11)));   // a tie rounds away
        Assert.Equal(-(1f + MathF.Pow(2, -10)), MatmulTensorCoreKernels.RoundTf32(-(1f + MathF.Pow(2, -11))));
        Assert.True(float.IsNaN(MatmulTensorCoreKernels.RoundTf32(float.NaN)));
        Assert.Equal(float.PositiveInfinity, MatmulTensorCoreKernels.RoundTf32(float.PositiveInfinity));
    }

    // One block; edges in every direction past one block and one K tile; transposes; alpha with accumulate.
    [Theory]
    [InlineData(5, 7, 3, false, false, 1f, false)]
    [InlineData(70, 65, 37, false, false, 1f, false)]
    [InlineData(64, 130, 16, true, false, 0.5f, true)]
    [InlineData(33, 64, 50, false, true, -2f, true)]
    [InlineData(67, 9, 17, true, true, 1f, false)]
    public void Fallback_matches_the_tf32_reference(int m, int n, int k, bool ta, bool tb, float alpha, bool acc)
    {
        using var be = new IlgpuBackend(IlgpuDevices.SimulatorIndex);
        Assert.False(be.HasTensorCores);
        var a = TestData.Uniform(11, m * k);
        var b = TestData.Uniform(12, k * n);
        var c0 = TestData.Uniform(13, m * n);
        var r = new OpCase().F("a", a).F("b", b).F("c", c0).Run(be, t => be.MatmulTensorCore(t("c"), t("a"), t("b"), m, n, k, ta, tb, alpha, acc), "c");
        Tolerance.AssertClose(Reference(a, b, c0, m, n, k, ta, tb, alpha, acc), r["c"], 1e-5, 1e-5, $"tensor-core gemm {m}x{n}x{k}");
        // tf32 is visibly coarser than fp32: the rounding really happens.
        var exact = new double[m * n];
        for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) { double s = 0; for (int p = 0; p < k; p++) s += (double)(ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]); exact[i * n + j] = alpha * s + (acc ? c0[i * n + j] : 0); }
        Assert.True(Tolerance.WorstRatio(exact, r["c"], 1e-7, 1e-7) > 1, "no tf32 rounding seen");
    }

    [Fact]
    public void Bad_sizes_are_refused()
    {
        using var be = new IlgpuBackend(IlgpuDevices.SimulatorIndex);
        var op = new OpCase().F("a", new float[6]).F("b", new float[6]).F("c", new float[3]);
        op.Run(be, t => Assert.Contains("c", Assert.Throws<ArgumentException>(() => be.MatmulTensorCore(t("c"), t("a"), t("b"), 2, 2, 3)).Message));
    }
}

using System.Diagnostics;

namespace Palm.Gpu.Backends.OpenCl;

/// <summary>
/// fp32 FMA peak of an OpenCL device, measured: work-items each run twelve independent chains of float16
/// fused multiply-adds and nothing else. One work-item per compute unit keeps every core or compute unit
/// busy on CPU devices (GPUs need far more work-items to fill; pass them). The best of ten launches is
/// kept, so other load on shared cores lowers the figure less. The MFU and GEMM-efficiency denominator.
/// </summary>
public static class OpenClPeak
{
    const string Source = """
        __kernel __attribute__((reqd_work_group_size(1, 1, 1)))
        void fma_peak(__global float* out, const int iterations, const float x, const float y)
        {
            float16 a0 = (float16)(get_global_id(0)), a1 = a0 + 1, a2 = a0 + 2, a3 = a0 + 3, a4 = a0 + 4, a5 = a0 + 5;
            float16 a6 = a0 + 6, a7 = a0 + 7, a8 = a0 + 8, a9 = a0 + 9, a10 = a0 + 10, a11 = a0 + 11;
            const float16 vx = (float16)(x), vy = (float16)(y);
            for (int i = 0; i < iterations; i++) {
                a0 = fma(a0, vx, vy); a1 = fma(a1, vx, vy); a2 = fma(a2, vx, vy); a3 = fma(a3, vx, vy);
                a4 = fma(a4, vx, vy); a5 = fma(a5, vx, vy); a6 = fma(a6, vx, vy); a7 = fma(a7, vx, vy);
                a8 = fma(a8, vx, vy); a9 = fma(a9, vx, vy); a10 = fma(a10, vx, vy); a11 = fma(a11, vx, vy);
            }
            const float16 s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + ((a8 + a9) + (a10 + a11));
            out[get_global_id(0)] = s.s0 + s.s7 + s.sf;
        }
        """;

    /// <summary>Peak GFLOP/s with <paramref name="workItems"/> concurrent work-items (0 = one per compute unit).</summary>
    public static double MeasureGflops(OpenClBackend backend, int workItems = 0, int iterations = 1_000_000)
    {
        if (workItems <= 0) workItems = backend.Device.ComputeUnits;
        var kernel = backend.BuildProgram("fma_peak.cl", Source).Kernel("fma_peak");
        using var output = (OpenClBuffer)backend.Allocate("peak.out", workItems);
        double best = 0;
        for (int r = 0; r < 10; r++)
        {
            var clock = Stopwatch.StartNew();
            kernel.Call().Arg(output).Arg(iterations).Arg(0.9999f).Arg(1e-4f).Launch(workItems, 1, null);
            backend.Synchronize();
            best = Math.Max(best, 12.0 * 16 * 2 * iterations * workItems / clock.Elapsed.TotalSeconds / 1e9);
        }
        return best;
    }
}

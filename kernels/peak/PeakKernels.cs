// The fp32 peak of a device, the MFU denominator (the ILGPU twin of OpenClPeak's fma_peak): every thread runs eight
// independent chains of fused multiply-adds (KernelMath.Fma: PTX fma.rn.f32) and nothing else, so the issue rate of
// FMAs is all that is timed; the result is stored so the compiler keeps the work.
//
// Dimensions: threads = groups · group size; 16 FLOPs per thread per iteration.
//
// FmaChains: -> out (threads)

using ILGPU;

namespace Palm.Gpu.Kernels;

public static class PeakKernels
{
    public static void FmaChains(ArrayView<float> output, int iterations, float x, float y)
    {
        int id = Grid.GlobalIndex.X;
        float a0 = id, a1 = a0 + 1, a2 = a0 + 2, a3 = a0 + 3, a4 = a0 + 4, a5 = a0 + 5, a6 = a0 + 6, a7 = a0 + 7;
        for (int i = 0; i < iterations; i++)
        {
            a0 = KernelMath.Fma(a0, x, y); a1 = KernelMath.Fma(a1, x, y); a2 = KernelMath.Fma(a2, x, y); a3 = KernelMath.Fma(a3, x, y);
            a4 = KernelMath.Fma(a4, x, y); a5 = KernelMath.Fma(a5, x, y); a6 = KernelMath.Fma(a6, x, y); a7 = KernelMath.Fma(a7, x, y);
        }
        output[id] = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
    }
}

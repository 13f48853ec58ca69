// Memory kernels of the ILGPU backend: filling a buffer with a value (copies, uploads and downloads are ILGPU's
// own view copies). Explicitly grouped and grid-strided: a launch has at most a fixed number of groups (a tuning
// knob) and every thread strides over the rest, so one launch shape serves every length.
//
// Dimensions: n elements (any shape flattened).
//
// Fill: -> dst (n) = value

using ILGPU;

namespace Palm.Gpu.Kernels;

public static class MemoryKernels
{
    public static void Fill(ArrayView<float> dst, float value, long n)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < n; i += stride) dst[i] = value;
    }
}

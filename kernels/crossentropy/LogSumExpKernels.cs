// The log-sum-exp pieces of the vocabulary-parallel cross-entropy (the ILGPU twins of logsumexp_shift and
// logsumexp_finish in crossentropy.cl). Shards combine their normalisers around all-reduces: each shard takes
// exp(logZ − max) against the all-shard max, the shards' values are summed, and the sum goes back to a log. Both
// are elementwise (grid-strided), so the output may be an input itself.
// Finish works in float (KernelMath.Log): ILGPU 1.5.3 has no log on PTX without NVIDIA's libdevice, in float or
// double, and the argument is a sum of a few shards' terms in [1, shards].
//
// Dimensions: n rows.
//
// Shift:  logZ (n), max (n) -> out (n) = exp(logZ − max)
// Finish: max (n), sumExp (n) -> logZ (n) = max + log(sumExp)

using ILGPU;

namespace Palm.Gpu.Kernels;

public static class LogSumExpKernels
{
    public static void Shift(ArrayView<float> output, ArrayView<float> logZ, ArrayView<float> max, long n)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < n; i += stride) output[i] = KernelMath.Exp(logZ[i] - max[i]);
    }

    public static void Finish(ArrayView<float> logZ, ArrayView<float> max, ArrayView<float> sumExp, long n)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < n; i += stride) logZ[i] = max[i] + KernelMath.Log(sumExp[i]);
    }
}

// The combining step of the ILGPU backend's device collectives (the ILGPU twin of collectives.cl): the P ranks'
// values of an element, staged side by side on one device, are summed (or their maximum taken) in rank order in
// double and rounded once, the order and rounding of the host collectives (InProcessCollectives), so both give the
// same bits. Grid-strided, one element per thread.
//
// Dimensions: P ranks, n elements, stage (P, stride) with stride ≥ n.
//
// ReduceRanks: stage (P, stride) -> dst (n) = Σ_p stage[p·stride + i]  (or max_p when max ≠ 0)

using ILGPU;

// x != x is the NaN test: it compiles to the same comparison on every ILGPU target.
#pragma warning disable CS1718

namespace Palm.Gpu.Kernels;

public static class CollectivesKernels
{
    public static void ReduceRanks(ArrayView<float> dst, ArrayView<float> stage, int ranks, long n, long stride, int max)
    {
        long step = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < n; i += step)
        {
            double acc = stage[i];
            for (int r = 1; r < ranks; r++)
            {
                double x = stage[r * stride + i];
                acc = max != 0 ? (x > acc || x != x ? x : acc) : acc + x;
            }
            dst[i] = (float)acc;
        }
    }
}

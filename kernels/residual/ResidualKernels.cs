// Residual adds, elementwise over flat tensors (the ILGPU twin of residual.cl). The backward of a residual add is
// routing dout to both inputs, which the model does with AddInPlace. Grid-strided: every element is read before it
// is written by the same thread, so out may alias a or b and acc may alias x. No reductions: exact, order-free.
//
// Dimensions: n elements (any shape flattened).
//
// Add:        a (n), b (n) -> out (n) = a + b
// AddInPlace: acc (n), x (n) -> acc (n) += x

using ILGPU;

namespace Palm.Gpu.Kernels;

public static class ResidualKernels
{
    public static void Add(ArrayView<float> output, ArrayView<float> a, ArrayView<float> b, long n)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < n; i += stride) output[i] = a[i] + b[i];
    }

    public static void AddInPlace(ArrayView<float> acc, ArrayView<float> x, long n)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < n; i += stride) acc[i] = acc[i] + x[i];
    }
}

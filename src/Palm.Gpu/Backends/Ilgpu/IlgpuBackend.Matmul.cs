using ILGPU;
using ILGPU.Runtime;
using Palm.Gpu.Kernels;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Ilgpu;

// matmul: kernels/matmul/MatmulKernels.cs
public sealed partial class IlgpuBackend
{
    protected override void MatmulCore(DeviceBuffer c, DeviceBuffer a, DeviceBuffer b, int m, int n, int k,
                                       bool transA, bool transB, float alpha, bool accumulate)
    {
        if (m == 0 || n == 0) return;
        if (KernelTuning.TensorCoreMatmul && HasTensorCores)
        {
            MatmulTensorCoreCore(c, a, b, m, n, k, transA, transB, alpha, accumulate);
            return;
        }
        int tx = Tuning.MatmulThreadsX, ty = Tuning.MatmulThreadsY, rm = MatmulKernels.BlockRows, rn = MatmulKernels.BlockColumns, bk = Tuning.MatmulTileK;
        var grid = new Index2D((int)KernelMath.DivUp(n, tx * rn), (int)KernelMath.DivUp(m, ty * rm));
        var config = new KernelConfig(grid, new Index2D(tx, ty), SharedMemoryConfig.RequestDynamic<float>(MatmulKernels.SharedFloats(tx, ty, bk)));
        var shape = new MatmulShape
        {
            M = m, N = n, K = k, TransA = transA ? 1 : 0, TransB = transB ? 1 : 0, Accumulate = accumulate ? 1 : 0, Alpha = alpha,
        };
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatmulShape, SpecializedValue<int>>>(
            MatmulKernels.Matmul)(stream, config, Buf(c).Kernel, Buf(a).Kernel, Buf(b).Kernel, shape, SpecializedValue.New(bk));
    }
}

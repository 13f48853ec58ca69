using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Palm.Gpu.Kernels;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Ilgpu;

// The tensor-core GEMM (kernels/matmul/MatmulTensorCoreKernels.cs): tf32 mma.sync on CUDA devices of compute
// capability 8.0 or more, the same kernel's shared-memory fallback elsewhere (the CPU accelerator, OpenCL).
public sealed partial class IlgpuBackend
{
    /// <summary>True where the tensor-core GEMM issues mma.sync: a CUDA device of compute capability ≥ 8.0.</summary>
    public bool HasTensorCores => accelerator is CudaAccelerator cuda && cuda.Architecture is { } arch && arch >= CudaArchitecture.SM_80;

    /// <summary>
    /// C (M,N) = alpha · op(A) · op(B) [+ C] with tf32 inputs (about 1e-3 relative from the fp32 GEMM): the same contract and
    /// checks as <see cref="BackendBase.Matmul"/>. The training path uses it only when <see cref="IlgpuKernelTuning.TensorCoreMatmul"/>
    /// is on and the device <see cref="HasTensorCores"/>; benchmarks and tests call it directly.
    /// </summary>
    public void MatmulTensorCore(DeviceBuffer c, DeviceBuffer a, DeviceBuffer b, int m, int n, int k,
                                 bool transA = false, bool transB = false, float alpha = 1f, bool accumulate = false)
    {
        CheckMatmul("matmul (tensor cores)", c, a, b, m, n, k);
        long t0 = Begin();
        MatmulTensorCoreCore(c, a, b, m, n, k, transA, transB, alpha, accumulate);
        End(t0, OpCosts.Matmul(m, n, k, accumulate));
    }

    /// <summary>The trusted core: one group per 64 × 64 block of C (128 threads on CUDA, the tuning's attention group elsewhere).</summary>
    internal void MatmulTensorCoreCore(DeviceBuffer c, DeviceBuffer a, DeviceBuffer b, int m, int n, int k, bool transA, bool transB, float alpha, bool accumulate)
    {
        if (m == 0 || n == 0) return;
        var s = new MatmulTensorCoreKernels.Shape
        {
            M = m, N = n, K = k, Alpha = alpha, Accumulate = accumulate ? 1 : 0,
            ARowStride = transA ? 1 : k, AColStride = transA ? m : 1,
            BRowStride = transB ? 1 : n, BColStride = transB ? k : 1,
        };
        int threads = HasTensorCores ? MatmulTensorCoreKernels.CudaThreads : AttentionThreads;
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, MatmulTensorCoreKernels.Shape>>(
            MatmulTensorCoreKernels.Matmul)(
            stream, new KernelConfig(s.Blocks, threads, SharedMemoryConfig.RequestDynamic<float>(MatmulTensorCoreKernels.SharedFloats)),
            Buf(c).F, Buf(a).Kernel, Buf(b).Kernel, s);
    }
}

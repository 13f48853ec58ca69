using ILGPU;
using ILGPU.Runtime;
using Palm.Gpu.Kernels;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Ilgpu;

// Vocabulary-sharded softmax cross-entropy with z-loss (kernels/crossentropy/CrossEntropyKernels.cs). A negative
// target is recorded in the cross-entropy's error slots (3..5) and raised at the next synchronisation.
public sealed partial class IlgpuBackend
{
    protected override void CrossEntropyForwardCore(DeviceBuffer logZ, DeviceBuffer targetLogit, DeviceBuffer logits, DeviceBuffer targets, int n, int v, int vocabStart)
    {
        if (n == 0) return;
        int threads = Math.Min(KernelTuning.CrossEntropyThreads, accelerator.MaxNumThreadsPerGroup);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, int, int>>(
            CrossEntropyKernels.Forward)(
            stream, new KernelConfig(n, threads, SharedMemoryConfig.RequestDynamic<double>(threads)),
            Buf(logZ).F, Buf(targetLogit).F, Buf(logits).Kernel, Buf(targets).I, DeviceErrors.SubView(3, 3), v, vocabStart);
    }

    protected override void CrossEntropyBackwardCore(DeviceBuffer dlogits, DeviceBuffer logits, DeviceBuffer logZ, DeviceBuffer targets,
                                                     float scale, float zLoss, int n, int v, int vocabStart)
    {
        long count = (long)n * v;
        if (count == 0) return;
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, float, float, int, int, int>>(
            CrossEntropyKernels.Backward)(
            stream, Elementwise(count), Buf(dlogits).F, Buf(logits).F, Buf(logZ).F, Buf(targets).I, scale, zLoss, n, v, vocabStart);
    }
}

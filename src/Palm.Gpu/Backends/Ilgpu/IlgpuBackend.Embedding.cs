using ILGPU;
using ILGPU.Runtime;
using Palm.Gpu.Kernels;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Ilgpu;

// embedding (vocabulary-sharded): kernels/embedding/EmbeddingKernels.cs
public sealed partial class IlgpuBackend
{
    protected override void EmbeddingForwardCore(DeviceBuffer output, DeviceBuffer tokens, DeviceBuffer table, int n, int d, int vocabStart, int vocabRows)
    {
        if (n == 0 || d == 0) return;
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, int, int, int, int>>(
            EmbeddingKernels.Forward)(stream, Elementwise((long)n * d), Buf(output).F, Buf(tokens).I, Buf(table).Kernel, DeviceErrors, n, d, vocabStart, vocabRows);
    }

    protected override void EmbeddingBackwardCore(DeviceBuffer dtable, DeviceBuffer tokens, DeviceBuffer dout, int n, int d, int vocabStart, int vocabRows)
    {
        if (n == 0 || d == 0 || vocabRows == 0) return;
        // Every group reads all N tokens, so the row blocks are as few as keep the device busy.
        int group = Tuning.EmbeddingGroup;
        long columnBlocks = KernelMath.DivUp(d, group);
        long rowBlocks = Math.Clamp(KernelMath.DivUp(Tuning.EmbeddingGroups, columnBlocks), 1, vocabRows);
        int rowsPerGroup = (int)KernelMath.DivUp(vocabRows, rowBlocks);
        var config = new KernelConfig(new Index2D((int)columnBlocks, (int)KernelMath.DivUp(vocabRows, rowsPerGroup)), new Index2D(group, 1),
                                      SharedMemoryConfig.RequestDynamic<int>(group));
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, int, int, int, int, int>>(
            EmbeddingKernels.Backward)(stream, config, Buf(dtable).F, Buf(tokens).I, Buf(dout).F, DeviceErrors, n, d, vocabStart, vocabRows, rowsPerGroup);
    }
}

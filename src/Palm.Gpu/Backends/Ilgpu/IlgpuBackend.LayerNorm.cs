using ILGPU;
using ILGPU.Runtime;
using Palm.Gpu.Kernels;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Ilgpu;

// layer norm (scale, no bias): kernels/layernorm/LayerNormKernels.cs
public sealed partial class IlgpuBackend
{
    KernelConfig PerRow(int rows) =>
        new(rows, Tuning.RowGroup, SharedMemoryConfig.RequestDynamic<float>(Tuning.RowGroup));

    protected override void LayerNormForwardCore(DeviceBuffer output, DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer input, DeviceBuffer weight, int n, int d)
    {
        if (n == 0) return;
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>>(
            LayerNormKernels.Forward)(stream, PerRow(n), Buf(output).Kernel, Buf(mean).F, Buf(rstd).F, Buf(input).Kernel, Buf(weight).Kernel, n, d);
    }

    protected override void LayerNormBackwardCore(DeviceBuffer dinput, DeviceBuffer dweight, DeviceBuffer dout, DeviceBuffer input, DeviceBuffer weight,
                                                  DeviceBuffer mean, DeviceBuffer rstd, int n, int d, bool accumulate)
    {
        if (n == 0 || d == 0) return;
        // dweight first: dinp may alias dout, and the dinput kernel overwrites it.
        int chunks = (int)KernelMath.DivUp(n, LayerNormKernels.RowsPerChunk);
        var partial = Scratch<float>("layernorm.dweight", (long)chunks * d);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>>(
            LayerNormKernels.DWeightPartial)(stream, Elementwise((long)chunks * d), partial, Buf(dout).F, Buf(input).F, Buf(mean).F, Buf(rstd).F, n, d);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>>(
            LayerNormKernels.BackwardInput)(stream, PerRow(n), Buf(dinput).F, Buf(dout).F, Buf(input).F, Buf(weight).F, Buf(mean).F, Buf(rstd).F, n, d, accumulate ? 1 : 0);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, int, int>>(
            LayerNormKernels.DWeightReduce)(stream, Elementwise(d), Buf(dweight).F, partial, d, chunks);
    }
}

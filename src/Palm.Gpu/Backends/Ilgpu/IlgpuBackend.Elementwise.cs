using ILGPU;
using ILGPU.Runtime;
using Palm.Gpu.Kernels;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Ilgpu;

// residual adds and SwiGLU: kernels/residual/ResidualKernels.cs, kernels/swiglu/SwiGluKernels.cs
public sealed partial class IlgpuBackend
{
    protected override void AddCore(DeviceBuffer output, DeviceBuffer a, DeviceBuffer b, long count)
    {
        if (count == 0) return;
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, long>>(ResidualKernels.Add)(
            stream, Elementwise(count), Buf(output).F, Buf(a).F, Buf(b).F, count);
    }

    protected override void AddInPlaceCore(DeviceBuffer acc, DeviceBuffer x, long count)
    {
        if (count == 0) return;
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, long>>(ResidualKernels.AddInPlace)(
            stream, Elementwise(count), Buf(acc).F, Buf(x).F, count);
    }

    protected override void SwiGluForwardCore(DeviceBuffer output, DeviceBuffer gate, DeviceBuffer up, long count)
    {
        if (count == 0) return;
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, long>>(SwiGluKernels.Forward)(
            stream, Elementwise(count), Buf(output).F, Buf(gate).F, Buf(up).F, count);
    }

    protected override void SwiGluBackwardCore(DeviceBuffer dgate, DeviceBuffer dup, DeviceBuffer dout, DeviceBuffer gate, DeviceBuffer up, long count)
    {
        if (count == 0) return;
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, long>>(
            SwiGluKernels.Backward)(stream, Elementwise(count), Buf(dgate).F, Buf(dup).F, Buf(dout).F, Buf(gate).F, Buf(up).F, count);
    }
}

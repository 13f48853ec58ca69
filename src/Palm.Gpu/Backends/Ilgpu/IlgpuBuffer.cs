using ILGPU;
using ILGPU.Runtime;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Ilgpu;

/// <summary>
/// One ILGPU allocation (a dense 1-D memory buffer of fp32 or int32 elements), or a view of one: the view is an
/// ArrayView sub-view of the root's storage, so kernels, copies, uploads and downloads take it like the allocation.
/// </summary>
public sealed class IlgpuBuffer : DeviceBuffer
{
    readonly MemoryBuffer1D<float, Stride1D.Dense>? floats;
    readonly MemoryBuffer1D<int, Stride1D.Dense>? ints;

    internal IlgpuBuffer(Accelerator accelerator, string name, long length, ElementType type) : base(name, length, type)
    {
        Accelerator = accelerator;
        // ILGPU refuses empty buffers; an empty tensor stands on one element nobody reads.
        long elements = Math.Max(1, length);
        if (type == ElementType.F32) floats = accelerator.Allocate1D<float>(elements);
        else ints = accelerator.Allocate1D<int>(elements);
    }

    IlgpuBuffer(IlgpuBuffer parent, long offset, long length) : base(parent, offset, length) => Accelerator = parent.Accelerator;

    public Accelerator Accelerator { get; }

    IlgpuBuffer RootBuffer => (IlgpuBuffer)Root;

    /// <summary>The elements [Offset, Offset + Length) of the root, as fp32 (a buffer of F32 elements).</summary>
    public ArrayView<float> F
    {
        get
        {
            var root = RootBuffer;
            ObjectDisposedException.ThrowIf(root.IsDisposed, this);
            return root.floats!.View.AsContiguous().SubView(Offset, Length);
        }
    }

    /// <summary>The elements as int32 (a buffer of I32 elements).</summary>
    public ArrayView<int> I
    {
        get
        {
            var root = RootBuffer;
            ObjectDisposedException.ThrowIf(root.IsDisposed, this);
            return root.ints!.View.AsContiguous().SubView(Offset, Length);
        }
    }

    /// <summary>Elements [from, from + count) of this buffer as fp32, for copies and launches on a part of it.</summary>
    public ArrayView<float> FRange(long from, long count) => RootBuffer.floats!.View.AsContiguous().SubView(Offset + from, count);
    public ArrayView<int> IRange(long from, long count) => RootBuffer.ints!.View.AsContiguous().SubView(Offset + from, count);

    /// <summary>A view that kernels may index: the whole view, or the root's spare element for an empty one (never read).</summary>
    internal ArrayView<float> Kernel => Length > 0 ? F : RootBuffer.floats!.View.AsContiguous().SubView(0, 1);
    internal ArrayView<int> KernelI => Length > 0 ? I : RootBuffer.ints!.View.AsContiguous().SubView(0, 1);

    protected override DeviceBuffer CreateView(long offset, long length) => new IlgpuBuffer(this, offset, length);

    protected override void Release()
    {
        floats?.Dispose();
        ints?.Dispose();
    }
}

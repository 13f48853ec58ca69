using Palm.Gpu.Tensors;
using static Palm.Gpu.Backends.OpenCl.OpenClNative;

namespace Palm.Gpu.Backends.OpenCl;

/// <summary>
/// A cl_mem allocation of one context, or a view of one: a sub-buffer (clCreateSubBuffer) made once when the view is
/// sliced and released when it is disposed, so kernels, reads, writes and copies take it like any buffer. Elements are
/// 4 bytes (fp32 or int32).
/// </summary>
public sealed class OpenClBuffer : DeviceBuffer
{
    nint handle;
    readonly bool ownsHandle;

    internal OpenClBuffer(OpenClContext context, nint handle, string name, long length, ElementType type) : base(name, length, type)
    {
        Context = context;
        this.handle = handle;
        ownsHandle = true;
    }

    unsafe OpenClBuffer(OpenClBuffer parent, long offset, long length) : base(parent, offset, length)
    {
        Context = parent.Context;
        long align = Context.Device.BaseAddressAlignElements;
        if (Offset % align != 0)
            throw new ArgumentException(
                $"view of buffer '{Root.Name}' at element {Offset}: OpenCL device '{Context.Device.Name}' starts sub-buffers only at multiples of " +
                $"{align} elements (CL_DEVICE_MEM_BASE_ADDR_ALIGN = {Context.Device.BaseAddressAlignBits} bits); lay tensors out at multiples of the backend's ViewAlignment",
                nameof(offset));
        var root = (OpenClBuffer)Root;
        if (length == 0)
        {
            // OpenCL has no empty sub-buffers; nothing reads an empty view, so it stands on the root's handle.
            handle = root.Handle;
            return;
        }
        nuint* region = stackalloc nuint[2];
        region[0] = (nuint)(Offset * 4);
        region[1] = (nuint)(length * 4);
        int status;
        handle = clCreateSubBuffer(root.Handle, MemReadWrite, BufferCreateTypeRegion, region, &status);
        OpenClException.Check(status, "clCreateSubBuffer", Name);
        ownsHandle = true;
    }

    public OpenClContext Context { get; }
    internal nint Handle => handle != 0 && !Root.IsDisposed ? handle : throw new ObjectDisposedException(Name, $"buffer '{Name}' was disposed");

    protected override DeviceBuffer CreateView(long offset, long length) => new OpenClBuffer(this, offset, length);

    protected override void Release()
    {
        if (handle == 0) return;
        if (ownsHandle) clReleaseMemObject(handle);
        handle = 0;
    }
}

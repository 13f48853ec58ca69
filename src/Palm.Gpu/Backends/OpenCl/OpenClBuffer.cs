using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.OpenCl;

/// <summary>A cl_mem allocation of one context. Elements are 4 bytes (fp32 or int32).</summary>
public sealed class OpenClBuffer : DeviceBuffer
{
    nint handle;

    internal OpenClBuffer(OpenClContext context, nint handle, string name, long length, ElementType type) : base(name, length, type)
    {
        Context = context;
        this.handle = handle;
    }

    public OpenClContext Context { get; }
    internal nint Handle => handle != 0 ? handle : throw new ObjectDisposedException(Name, $"buffer '{Name}' was disposed");

    public override void Dispose()
    {
        if (handle == 0) return;
        OpenClNative.clReleaseMemObject(handle);
        handle = 0;
    }
}

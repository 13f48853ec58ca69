using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using Palm.Gpu.Kernels;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Ilgpu;

/// <summary>
/// The ILGPU backend: every op of the kernel contract as a C# kernel from the top-level kernels/ folder
/// (kernels/&lt;op&gt;/&lt;Op&gt;Kernels.cs), compiled by ILGPU for the chosen device: PTX through the CUDA driver, OpenCL C
/// for OpenCL GPUs ILGPU accepts, or ILGPU's CPU accelerator (a simulator that runs the same kernels with one OS
/// thread per group thread). The chain is ILGPU's: context (<see cref="IlgpuDevices"/>) → device → accelerator →
/// stream → buffers. Kernels are explicitly grouped and loaded once per accelerator (<see cref="IlgpuKernelLoader"/>);
/// launch shapes come from <see cref="IlgpuTuning"/>. Reductions use fixed trees in shared memory, never atomics,
/// so every op gives the same bits on every run. One in-order stream per instance; not thread-safe (a device mesh
/// holds one instance per device). The ops live in one file per family (IlgpuBackend.Matmul.cs, ...).
/// </summary>
public sealed partial class IlgpuBackend : BackendBase
{
    readonly Accelerator accelerator;
    readonly AcceleratorStream stream;
    readonly IlgpuKernelLoader kernels;
    readonly Dictionary<string, MemoryBuffer> scratch = new();
    // Index errors kernels find (negative token ids, negative targets): (1 + position, value, 0) per kind, slots
    // 0..2 the embedding's, 3..5 the cross-entropy's, raised on the host at the next synchronisation.
    readonly MemoryBuffer1D<int, Stride1D.Dense> deviceErrors;
    bool disposed;

    /// <summary>Opens device <paramref name="device"/> of <see cref="IlgpuDevices.All"/>.</summary>
    public IlgpuBackend(int device = 0, IlgpuTuning? tuning = null) : this(IlgpuDevices.Get(device), tuning) { }

    /// <summary>Opens a new accelerator on <paramref name="device"/> (two backends on one device are two accelerators).</summary>
    public IlgpuBackend(Device device, IlgpuTuning? tuning = null)
    {
        Device = device;
        IsSimulator = IlgpuDevices.IsSimulator(device);
        Tuning = tuning ?? (IsSimulator ? IlgpuTuning.Simulator : IlgpuTuning.Gpu);
        Tuning.Validate(device.MaxNumThreadsPerGroup);
        accelerator = device.CreateAccelerator(IlgpuDevices.Context);
        try
        {
            stream = accelerator.CreateStream();
            kernels = new IlgpuKernelLoader(accelerator);
            deviceErrors = accelerator.Allocate1D<int>(6);
            deviceErrors.MemSetToZero(stream);
            stream.Synchronize();
        }
        catch
        {
            accelerator.Dispose();
            throw;
        }
    }

    public Device Device { get; }
    public Accelerator Accelerator => accelerator;
    public AcceleratorStream Stream => stream;
    public IlgpuTuning Tuning { get; }
    /// <summary>True on ILGPU's CPU accelerator.</summary>
    public bool IsSimulator { get; }
    /// <summary>Kernels compiled on this accelerator so far.</summary>
    public int LoadedKernels => kernels.Count;

    public override string Name => "ilgpu";
    public override string DeviceName => $"{Device.Name} ({IlgpuDevices.KindOf(Device)}, {Device.AcceleratorType})";
    /// <summary>64 elements (256 bytes): views start where CUDA's and OpenCL's alignment rules are met.</summary>
    public override long ViewAlignment => 64;

    // ---- launch helpers -----------------------------------------------------------------------

    /// <summary>The launcher of a kernel method, compiled on first use.</summary>
    T Kernel<T>(Delegate method) where T : Delegate => kernels.Get<T>(method);

    /// <summary>A grid-strided elementwise launch over <paramref name="n"/> items: at most ElementwiseMaxGroups groups.</summary>
    KernelConfig Elementwise(long n)
    {
        int group = Tuning.ElementwiseGroup;
        long groups = Math.Clamp(KernelMath.DivUp(n, group), 1, Tuning.ElementwiseMaxGroups);
        return new KernelConfig((int)groups, group);
    }

    // The base checked that every buffer is one of this instance's.
    static IlgpuBuffer Buf(DeviceBuffer buffer) => (IlgpuBuffer)buffer;

    /// <summary>A backend-owned buffer of at least <paramref name="length"/> elements of T, reused across calls.</summary>
    ArrayView<T> Scratch<T>(string name, long length) where T : unmanaged
    {
        length = Math.Max(length, 1);
        if (scratch.TryGetValue(name, out var buffer) && buffer is MemoryBuffer1D<T, Stride1D.Dense> typed && typed.Length >= length)
            return typed.View.AsContiguous().SubView(0, length);
        if (buffer is not null)
        {
            stream.Synchronize();   // queued kernels may still use the old one
            buffer.Dispose();
        }
        var fresh = accelerator.Allocate1D<T>(length);
        scratch[name] = fresh;
        return fresh.View.AsContiguous().SubView(0, length);
    }

    bool HasScratch(string name) => scratch.ContainsKey(name);

    static void Upload<T>(AcceleratorStream stream, ArrayView<T> dst, ReadOnlySpan<T> src) where T : unmanaged
    {
        if (src.Length == 0) return;
        ArrayView1D<T, Stride1D.Dense> view = dst.SubView(0, src.Length);
        view.CopyFromCPU(stream, src);
    }

    static void Download<T>(AcceleratorStream stream, ArrayView<T> src, Span<T> dst) where T : unmanaged
    {
        if (dst.Length == 0) return;
        ArrayView1D<T, Stride1D.Dense> view = src.SubView(0, dst.Length);
        view.CopyToCPU(stream, dst);
    }

    // ---- memory -------------------------------------------------------------------------------

    protected override DeviceBuffer AllocateCore(string name, long length, ElementType type)
    {
        try { return new IlgpuBuffer(accelerator, name, length, type); }
        catch (Exception e) when (e is OutOfMemoryException or AcceleratorException)
        {
            throw new IlgpuException(
                $"ILGPU device {Device.Name} is out of memory allocating '{name}' ({length * 4L / (1024.0 * 1024):0.#} MiB; " +
                $"{LiveBytes / (1024.0 * 1024):0.#} MiB already held): use --remat, a smaller --batch or fewer --layers", e);
        }
    }

    protected override void UploadCore(DeviceBuffer dst, ReadOnlySpan<float> src, long dstOffset)
    {
        Upload(stream, Buf(dst).FRange(dstOffset, src.Length), src);
        stream.Synchronize();   // the span may be gone once this returns
    }

    protected override void UploadCore(DeviceBuffer dst, ReadOnlySpan<int> src, long dstOffset)
    {
        Upload(stream, Buf(dst).IRange(dstOffset, src.Length), src);
        stream.Synchronize();
    }

    protected override void DownloadCore(DeviceBuffer src, Span<float> dst, long srcOffset)
    {
        Download(stream, Buf(src).FRange(srcOffset, dst.Length), dst);
        stream.Synchronize();
        ThrowDeviceErrors();
    }

    protected override void DownloadCore(DeviceBuffer src, Span<int> dst, long srcOffset)
    {
        Download(stream, Buf(src).IRange(srcOffset, dst.Length), dst);
        stream.Synchronize();
    }

    protected override void FillCore(DeviceBuffer dst, float value, long n)
    {
        if (n == 0) return;
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, float, long>>(MemoryKernels.Fill)(
            stream, Elementwise(n), Buf(dst).F, value, n);
    }

    protected override void CopyCore(DeviceBuffer dst, DeviceBuffer src, long n, long dstOffset, long srcOffset)
    {
        if (n == 0) return;
        var d = Buf(dst);
        var s = Buf(src);
        if (d.Type == ElementType.F32)
        {
            ArrayView1D<float, Stride1D.Dense> from = s.FRange(srcOffset, n);
            from.CopyTo(stream, d.FRange(dstOffset, n));
        }
        else
        {
            ArrayView1D<int, Stride1D.Dense> from = s.IRange(srcOffset, n);
            from.CopyTo(stream, d.IRange(dstOffset, n));
        }
    }

    protected override void SynchronizeCore()
    {
        stream.Synchronize();
        ThrowDeviceErrors();
    }

    /// <summary>The error slots kernels write (see the field), for the kernels that report bad indices.</summary>
    ArrayView<int> DeviceErrors => deviceErrors.View.AsContiguous();

    /// <summary>Raises an index error a kernel recorded (the stream must be finished).</summary>
    void ThrowDeviceErrors()
    {
        Span<int> e = stackalloc int[6];
        Download(stream, DeviceErrors, e);
        stream.Synchronize();
        if (e[0] == 0 && e[3] == 0) return;
        deviceErrors.MemSetToZero(stream);
        stream.Synchronize();
        if (e[0] != 0)
            throw new IndexOutOfRangeException(
                $"embedding: token {e[1]} at position {e[0] - 1} is negative; token ids are vocabulary rows from 0.");
        throw new IndexOutOfRangeException(
            $"cross-entropy: target {e[4]} at row {e[3] - 1} is negative; targets are vocabulary ids from 0.");
    }

    public override void Dispose()
    {
        if (disposed) return;
        disposed = true;
        try { stream.Synchronize(); } catch (Exception) { /* a failed kernel already raised its error */ }
        foreach (var b in scratch.Values) b.Dispose();
        scratch.Clear();
        deviceErrors.Dispose();
        stream.Dispose();
        accelerator.Dispose();
        base.Dispose();
    }
}

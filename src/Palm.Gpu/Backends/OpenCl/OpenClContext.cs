using System.Security.Cryptography;
using System.Text;
using Palm.Gpu.Tensors;
using static Palm.Gpu.Backends.OpenCl.OpenClNative;

namespace Palm.Gpu.Backends.OpenCl;

/// <summary>
/// One device's view of an OpenCL context: the device, its single in-order command queue (profiling enabled)
/// and a cache of built programs keyed by device + build options + source hash. Usually the context is the
/// device's own; <see cref="CreateShared"/> makes one native context span several devices of a platform, each
/// device keeping its own view (queue, programs), so a buffer of any view can be read and written by every
/// queue of the context — what the device-side collectives copy between. Not thread-safe: one view belongs to
/// one backend instance, which is driven by one thread.
/// </summary>
public sealed unsafe class OpenClContext : IDisposable
{
    readonly Dictionary<string, OpenClProgram> programs = new();
    nint handle;

    /// <summary>A context of its own on <paramref name="device"/>.</summary>
    public OpenClContext(OpenClDevice device) : this(device, CreateNative([device]), [device]) { }

    /// <summary>Takes over one reference to the native context <paramref name="native"/> (released on failure or Dispose).</summary>
    OpenClContext(OpenClDevice device, nint native, IReadOnlyList<OpenClDevice> contextDevices)
    {
        Device = device;
        Devices = contextDevices;
        handle = native;
        try { Queue = new OpenClQueue(this); }
        catch { clReleaseContext(handle); handle = 0; throw; }
    }

    /// <summary>
    /// One native context over <paramref name="devices"/> (distinct, all of one platform) and one view per device,
    /// in the same order. Each view holds its own reference to the context; disposing every view frees it.
    /// </summary>
    public static IReadOnlyList<OpenClContext> CreateShared(IReadOnlyList<OpenClDevice> devices)
    {
        if (devices.Count == 0) throw new ArgumentException("a shared OpenCL context needs at least one device", nameof(devices));
        if (WhyNotShareable(devices) is { } problem)
            throw new ArgumentException($"{problem}. Give each platform its own context (host collectives between them).", nameof(devices));
        var list = devices.ToArray();
        nint native = CreateNative(list);
        var views = new List<OpenClContext>();
        try
        {
            foreach (var device in list)
            {
                OpenClException.Check(clRetainContext(native), "clRetainContext", device.Name);
                views.Add(new OpenClContext(device, native, list));
            }
        }
        catch
        {
            foreach (var v in views) v.Dispose();
            throw;
        }
        finally { clReleaseContext(native); }   // the creation reference; each view holds its own
        return views;
    }

    /// <summary>Why <paramref name="devices"/> cannot form one context (several platforms, a device listed twice), or null.</summary>
    public static string? WhyNotShareable(IReadOnlyList<OpenClDevice> devices)
    {
        for (int i = 1; i < devices.Count; i++)
        {
            if (devices[i].Platform.Handle != devices[0].Platform.Handle)
                return $"one OpenCL context spans devices of one platform: device {i} ({devices[i].Name}) is on platform '{devices[i].Platform.Name}', " +
                       $"device 0 ({devices[0].Name}) on '{devices[0].Platform.Name}'";
            for (int j = 0; j < i; j++)
                if (devices[i].Handle == devices[j].Handle)
                    return $"device {devices[j].Name} is listed twice (positions {j} and {i}); a shared context takes each device once";
        }
        return null;
    }

    static nint CreateNative(OpenClDevice[] devices)
    {
        var handles = devices.Select(d => d.Handle).ToArray();
        int status;
        nint native;
        fixed (nint* p = handles) native = clCreateContext(null, (uint)handles.Length, p, 0, 0, &status);
        OpenClException.Check(status, "clCreateContext", string.Join(", ", devices.Select(d => d.Name)));
        return native;
    }

    public OpenClDevice Device { get; }
    /// <summary>Every device of the native context, this view's <see cref="Device"/> among them (just it, unless shared).</summary>
    public IReadOnlyList<OpenClDevice> Devices { get; }
    public OpenClQueue Queue { get; }
    internal nint Handle => handle != 0 ? handle : throw new ObjectDisposedException(nameof(OpenClContext));

    /// <summary>True when both views are of one native context, so buffers and events of one are valid on the other's queue.</summary>
    public bool SharesContextWith(OpenClContext other) => handle != 0 && handle == other.handle;

    /// <summary>Number of programs compiled by this context (cache misses), for tests and diagnostics.</summary>
    public int ProgramsBuilt { get; private set; }

    /// <summary>
    /// Compiles <paramref name="source"/> for this context's device, or returns the cached program built from the
    /// same source with the same options. A failed build throws <see cref="OpenClBuildException"/> carrying the log.
    /// </summary>
    public OpenClProgram Build(string sourceName, string source, string options)
    {
        string key = $"{Device.Handle:X}|{options}|{Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(source)))}";
        if (programs.TryGetValue(key, out var cached)) return cached;

        byte[] src = Encoding.UTF8.GetBytes(source);
        byte[] opts = Encoding.UTF8.GetBytes(options + "\0");
        nint program;
        int status;
        fixed (byte* s = src)
        {
            byte* strings = s;
            nuint length = (nuint)src.Length;
            program = clCreateProgramWithSource(Handle, 1, &strings, &length, &status);
        }
        OpenClException.Check(status, "clCreateProgramWithSource", sourceName);

        nint dev = Device.Handle;
        fixed (byte* o = opts) status = clBuildProgram(program, 1, &dev, o, 0, 0);
        if (status != Success)
        {
            string log = BuildLog(program);
            clReleaseProgram(program);
            throw new OpenClBuildException(sourceName, options, Device.Name, status, log);
        }
        var built = new OpenClProgram(this, program, sourceName);
        programs[key] = built;
        ProgramsBuilt++;
        return built;
    }

    string BuildLog(nint program)
    {
        nuint size = 0;
        if (clGetProgramBuildInfo(program, Device.Handle, ProgramBuildLog, 0, null, &size) != Success || size == 0)
            return "(the driver returned no build log)";
        var bytes = new byte[(int)size];
        fixed (byte* p = bytes)
            if (clGetProgramBuildInfo(program, Device.Handle, ProgramBuildLog, size, p, null) != Success)
                return "(the driver returned no build log)";
        return Encoding.UTF8.GetString(bytes).TrimEnd('\0');
    }

    /// <summary>
    /// Allocates a read-write buffer of <paramref name="length"/> 4-byte elements, zero-filled like a fresh host array.
    /// Failure names the tensor and its size in bytes.
    /// </summary>
    public OpenClBuffer CreateBuffer(string name, long length, ElementType type)
    {
        long bytes = length * 4;
        if (bytes > Device.MaxAllocationBytes)
            throw new OpenClAllocationException(name, bytes, Device, -61 /* CL_INVALID_BUFFER_SIZE */,
                $"the device allows at most {Device.MaxAllocationBytes} bytes per buffer");
        int status;
        nint memory = clCreateBuffer(Handle, MemReadWrite, (nuint)Math.Max(bytes, 4), null, &status);
        if (status != Success) throw new OpenClAllocationException(name, bytes, Device, status, null);
        var buffer = new OpenClBuffer(this, memory, name, length, type);
        try
        {
            // Drivers may defer the real allocation to first use: touch the memory now (zero-fill, and wait) so a
            // failure is reported here, against this tensor, rather than by some later kernel.
            if (bytes > 0)
            {
                Queue.FillZero(buffer, bytes);
                Queue.Finish();
            }
        }
        catch (OpenClException e)
        {
            buffer.Dispose();
            throw new OpenClAllocationException(name, bytes, Device, e.Status, "while zero-filling the new buffer");
        }
        return buffer;
    }

    public void Dispose()
    {
        if (handle == 0) return;
        try { Queue.Finish(); } catch (OpenClException) { /* releasing anyway */ }
        foreach (var p in programs.Values) p.Release();
        programs.Clear();
        Queue.Release();
        clReleaseContext(handle);
        handle = 0;
    }
}

/// <summary>A device allocation failed. The message names the tensor and the bytes asked for.</summary>
public sealed class OpenClAllocationException : OpenClException
{
    public OpenClAllocationException(string bufferName, long bytes, OpenClDevice device, int status, string? detail)
        : base($"cannot allocate tensor '{bufferName}' of {bytes} bytes ({bytes / (1024.0 * 1024):0.##} MiB) on {device.Name}: " +
               $"{OpenClNative.StatusName(status)} ({status}){(detail is null ? "" : ", " + detail)}. " +
               $"The device has {device.GlobalMemoryBytes} bytes in all. Use a smaller preset or batch, or shard the model (--mesh).",
               "clCreateBuffer", status)
    {
        BufferName = bufferName;
        Bytes = bytes;
    }

    public string BufferName { get; }
    public long Bytes { get; }
}

/// <summary>
/// The view's in-order command queue: transfers, fills, kernel launches and waiting; markers and barriers order
/// it against the other queues of a shared context. Counts the bytes it moves between host and device.
/// </summary>
public sealed unsafe class OpenClQueue
{
    readonly OpenClContext context;
    nint handle;

    internal OpenClQueue(OpenClContext context)
    {
        this.context = context;
        int status;
        handle = clCreateCommandQueue(context.Handle, context.Device.Handle, QueueProfilingEnable, &status);
        OpenClException.Check(status, "clCreateCommandQueue", context.Device.Name);
    }

    internal nint Handle => handle != 0 ? handle : throw new ObjectDisposedException(nameof(OpenClQueue));

    /// <summary>Bytes written from host memory into buffers by this queue (uploads), since it was created.</summary>
    public long HostToDeviceBytes { get; private set; }
    /// <summary>Bytes read from buffers into host memory by this queue (downloads, scalar results, error flags).</summary>
    public long DeviceToHostBytes { get; private set; }

    /// <summary>Blocks until every command queued so far has completed.</summary>
    public void Finish() => OpenClException.Check(clFinish(Handle), "clFinish");

    public void Flush() => OpenClException.Check(clFlush(Handle), "clFlush");

    /// <summary>Blocking write of host bytes into <paramref name="dst"/> at a byte offset.</summary>
    public void Write(OpenClBuffer dst, long byteOffset, ReadOnlySpan<byte> src)
    {
        if (src.Length == 0) return;
        fixed (byte* p = src)
            OpenClException.Check(clEnqueueWriteBuffer(Handle, dst.Handle, True, (nuint)byteOffset, (nuint)src.Length, p, 0, null, null),
                                   "clEnqueueWriteBuffer", dst.Name);
        HostToDeviceBytes += src.Length;
    }

    /// <summary>Blocking read of <paramref name="dst"/>.Length bytes from <paramref name="src"/> at a byte offset.</summary>
    public void Read(OpenClBuffer src, long byteOffset, Span<byte> dst)
    {
        if (dst.Length == 0) return;
        fixed (byte* p = dst)
            OpenClException.Check(clEnqueueReadBuffer(Handle, src.Handle, True, (nuint)byteOffset, (nuint)dst.Length, p, 0, null, null),
                                   "clEnqueueReadBuffer", src.Name);
        DeviceToHostBytes += dst.Length;
    }

    public void Copy(OpenClBuffer dst, OpenClBuffer src, long dstByteOffset, long srcByteOffset, long bytes)
    {
        if (bytes == 0) return;
        OpenClException.Check(clEnqueueCopyBuffer(Handle, src.Handle, dst.Handle, (nuint)srcByteOffset, (nuint)dstByteOffset, (nuint)bytes, 0, null, null),
                               "clEnqueueCopyBuffer", $"{src.Name} -> {dst.Name}");
    }

    /// <summary>Fills bytes [byteOffset, +bytes) with a repeated 4-byte pattern.</summary>
    public void Fill(OpenClBuffer dst, uint pattern, long byteOffset, long bytes)
    {
        if (bytes == 0) return;
        OpenClException.Check(clEnqueueFillBuffer(Handle, dst.Handle, &pattern, 4, (nuint)byteOffset, (nuint)bytes, 0, null, null),
                               "clEnqueueFillBuffer", dst.Name);
    }

    internal void FillZero(OpenClBuffer dst, long bytes) => Fill(dst, 0, 0, bytes);

    /// <summary>
    /// Enqueues a marker and returns its event (the caller releases it): it completes once every command queued
    /// before it has. Other queues of the same context wait for it through <see cref="Barrier"/>.
    /// </summary>
    internal nint Marker()
    {
        nint evt = 0;
        OpenClException.Check(clEnqueueMarkerWithWaitList(Handle, 0, null, &evt), "clEnqueueMarkerWithWaitList", context.Device.Name);
        return evt;
    }

    /// <summary>Holds every command queued after this call until all <paramref name="events"/> (of any queue of the context) complete.</summary>
    internal void Barrier(ReadOnlySpan<nint> events)
    {
        if (events.Length == 0) return;
        fixed (nint* e = events)
            OpenClException.Check(clEnqueueBarrierWithWaitList(Handle, (uint)events.Length, e, null), "clEnqueueBarrierWithWaitList", context.Device.Name);
    }

    /// <summary>Blocks the host until every event has completed.</summary>
    internal static void WaitFor(ReadOnlySpan<nint> events, string what)
    {
        if (events.Length == 0) return;
        fixed (nint* e = events) OpenClException.Check(clWaitForEvents((uint)events.Length, e), "clWaitForEvents", what);
    }

    internal static void Release(nint evt)
    {
        if (evt != 0) clReleaseEvent(evt);
    }

    /// <summary>
    /// Enqueues an ND-range launch. When <paramref name="profile"/> is set the returned event must be released by
    /// the caller (it carries start/end timestamps); otherwise no event is created and 0 is returned.
    /// </summary>
    internal nint Launch(OpenClKernel kernel, uint dims, nuint* global, nuint* local, bool profile)
    {
        nint evt = 0;
        int status = clEnqueueNDRangeKernel(Handle, kernel.Handle, dims, null, global, local, 0, null, profile ? &evt : null);
        if (status != Success)
        {
            string sizes = dims == 1 ? $"global {global[0]}, local {local[0]}" : $"global ({global[0]},{global[1]}), local ({local[0]},{local[1]})";
            throw new OpenClException($"clEnqueueNDRangeKernel({kernel.Name})", status, sizes);
        }
        return evt;
    }

    /// <summary>Waits for a profiled event and returns its device execution time in nanoseconds; releases the event.</summary>
    internal static long ElapsedAndRelease(nint evt, string what)
    {
        try
        {
            OpenClException.Check(clWaitForEvents(1, &evt), "clWaitForEvents", what);
            ulong start = 0, end = 0;
            OpenClException.Check(clGetEventProfilingInfo(evt, ProfilingCommandStart, 8, &start, null), "clGetEventProfilingInfo", what);
            OpenClException.Check(clGetEventProfilingInfo(evt, ProfilingCommandEnd, 8, &end, null), "clGetEventProfilingInfo", what);
            return (long)(end - start);
        }
        finally { clReleaseEvent(evt); }
    }

    internal void Release()
    {
        if (handle == 0) return;
        clReleaseCommandQueue(handle);
        handle = 0;
    }
}

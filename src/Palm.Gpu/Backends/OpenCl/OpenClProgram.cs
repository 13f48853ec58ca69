using System.Text;
using static Palm.Gpu.Backends.OpenCl.OpenClNative;

namespace Palm.Gpu.Backends.OpenCl;

/// <summary>A program built for one device; hands out its kernels (created once, then reused).</summary>
public sealed unsafe class OpenClProgram
{
    readonly OpenClContext context;
    readonly Dictionary<string, OpenClKernel> kernels = new();
    nint handle;

    internal OpenClProgram(OpenClContext context, nint handle, string sourceName)
    {
        this.context = context;
        this.handle = handle;
        SourceName = sourceName;
    }

    public string SourceName { get; }

    public OpenClKernel Kernel(string name)
    {
        if (kernels.TryGetValue(name, out var k)) return k;
        byte[] bytes = Encoding.ASCII.GetBytes(name + "\0");
        int status;
        nint kernel;
        fixed (byte* p = bytes) kernel = clCreateKernel(handle, p, &status);
        OpenClException.Check(status, "clCreateKernel", $"kernel '{name}' in {SourceName}");
        k = new OpenClKernel(context, kernel, name);
        kernels[name] = k;
        return k;
    }

    internal void Release()
    {
        foreach (var k in kernels.Values) clReleaseKernel(k.Handle);
        kernels.Clear();
        if (handle != 0) clReleaseProgram(handle);
        handle = 0;
    }
}

/// <summary>A kernel object. Arguments are set through <see cref="Call"/>, which numbers them in order.</summary>
public sealed unsafe class OpenClKernel
{
    internal OpenClKernel(OpenClContext context, nint handle, string name)
    {
        Context = context;
        Handle = handle;
        Name = name;
    }

    internal OpenClContext Context { get; }
    internal nint Handle { get; }
    public string Name { get; }

    /// <summary>Starts setting arguments from index 0.</summary>
    public KernelCall Call() => new(this, 0);

    internal void SetArg<T>(uint index, T value) where T : unmanaged
        => OpenClException.Check(clSetKernelArg(Handle, index, (nuint)sizeof(T), &value), "clSetKernelArg", $"{Name} argument {index}");

    /// <summary>Sets a __local array argument of <paramref name="bytes"/> bytes.</summary>
    internal void SetLocalArg(uint index, long bytes)
        => OpenClException.Check(clSetKernelArg(Handle, index, (nuint)bytes, null), "clSetKernelArg", $"{Name} local argument {index}");
}

/// <summary>
/// Sets kernel arguments in declaration order and launches. Sizes are passed as int (or long for element
/// counts that may exceed 2³¹), matching the kernel signatures.
/// </summary>
public readonly unsafe struct KernelCall
{
    readonly OpenClKernel kernel;
    readonly uint index;

    internal KernelCall(OpenClKernel kernel, uint index)
    {
        this.kernel = kernel;
        this.index = index;
    }

    public KernelCall Arg(OpenClBuffer buffer) { kernel.SetArg(index, buffer.Handle); return new(kernel, index + 1); }
    public KernelCall Arg(int value) { kernel.SetArg(index, value); return new(kernel, index + 1); }
    public KernelCall Arg(long value) { kernel.SetArg(index, value); return new(kernel, index + 1); }
    public KernelCall Arg(float value) { kernel.SetArg(index, value); return new(kernel, index + 1); }

    /// <summary>1-D launch: global size is rounded up to a multiple of <paramref name="local"/>; kernels bounds-check.</summary>
    public void Launch(long global, int local, OpenClProfiler? profiler)
    {
        nuint g = (nuint)RoundUp(Math.Max(global, 1), local), l = (nuint)local;
        Finish(kernel.Context.Queue.Launch(kernel, 1, &g, &l, profiler is not null), profiler);
    }

    /// <summary>2-D launch, dimension 0 fastest; each global size rounded up to its local size.</summary>
    public void Launch(long global0, long global1, int local0, int local1, OpenClProfiler? profiler)
    {
        nuint* g = stackalloc nuint[2];
        nuint* l = stackalloc nuint[2];
        g[0] = (nuint)RoundUp(Math.Max(global0, 1), local0);
        g[1] = (nuint)RoundUp(Math.Max(global1, 1), local1);
        l[0] = (nuint)local0;
        l[1] = (nuint)local1;
        Finish(kernel.Context.Queue.Launch(kernel, 2, g, l, profiler is not null), profiler);
    }

    void Finish(nint evt, OpenClProfiler? profiler)
    {
        if (profiler is not null) profiler.Record(kernel.Name, evt);
    }

    static long RoundUp(long x, long multiple) => (x + multiple - 1) / multiple * multiple;
}

/// <summary>Collects per-kernel device times from profiling events (opt-in: it waits on every launch).</summary>
public sealed class OpenClProfiler
{
    readonly Dictionary<string, (int Calls, long Nanoseconds)> totals = new();

    internal void Record(string kernel, nint evt)
    {
        long ns = OpenClQueue.ElapsedAndRelease(evt, kernel);
        totals.TryGetValue(kernel, out var t);
        totals[kernel] = (t.Calls + 1, t.Nanoseconds + ns);
    }

    /// <summary>Kernel name → (launches, total device milliseconds), since the last <see cref="Reset"/>.</summary>
    public IReadOnlyDictionary<string, (int Calls, double Milliseconds)> Totals =>
        totals.ToDictionary(kv => kv.Key, kv => (kv.Value.Calls, kv.Value.Nanoseconds / 1e6));

    public void Reset() => totals.Clear();
}

/// <summary>OpenCL C sources embedded in the library as resources named kernels/&lt;file&gt;.cl.</summary>
public static class OpenClKernelSources
{
    /// <summary>File names of every embedded source, e.g. "matmul.cl".</summary>
    public static IReadOnlyList<string> Files =>
        typeof(OpenClKernelSources).Assembly.GetManifestResourceNames()
            .Where(n => n.StartsWith("kernels/") && n.EndsWith(".cl")).Select(n => n["kernels/".Length..]).Order().ToArray();

    /// <summary>Text of kernels/<paramref name="file"/> (e.g. "matmul.cl").</summary>
    public static string Load(string file)
    {
        string resource = "kernels/" + file;
        using var stream = typeof(OpenClKernelSources).Assembly.GetManifestResourceStream(resource)
            ?? throw new FileNotFoundException(
                $"embedded OpenCL source '{resource}' is missing from {typeof(OpenClKernelSources).Assembly.GetName().Name}; " +
                $"present: {string.Join(", ", typeof(OpenClKernelSources).Assembly.GetManifestResourceNames().Where(n => n.StartsWith("kernels/")))}");
        using var reader = new StreamReader(stream, Encoding.UTF8);
        return reader.ReadToEnd();
    }
}

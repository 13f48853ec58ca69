using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Tensors;
using Xunit;

namespace Palm.Gpu.Tests.OpenCl;

/// <summary>
/// One OpenCL backend (device 0) and one CPU backend shared by every OpenCL test, so programs are
/// compiled once per test run. When OpenCL is missing the constructor throws
/// <see cref="OpenClUnavailableException"/> and every test fails with its install message: these
/// tests never skip.
/// </summary>
public sealed class OpenClFixture : IDisposable
{
    public OpenClFixture()
    {
        Ocl = new OpenClBackend(0);
        Cpu = new CpuBackend(2);
    }

    public OpenClBackend Ocl { get; }
    public CpuBackend Cpu { get; }

    public void Dispose()
    {
        Ocl.Dispose();
        Cpu.Dispose();
    }
}

/// <summary>All OpenCL test classes share the fixture and run one after another (a backend is single-threaded).</summary>
[CollectionDefinition(Name)]
public sealed class OpenClCollection : ICollectionFixture<OpenClFixture>
{
    public const string Name = "OpenCL";
}

/// <summary>
/// Inputs of one kernel call, uploaded afresh to any backend, then the named outputs read back.
/// Lets a test run the same call on the CPU and the OpenCL backend and compare.
/// </summary>
public sealed class OpCase
{
    readonly List<(string Name, float[]? F, int[]? I)> tensors = new();

    /// <summary>The declared tensors, in declaration order.</summary>
    public IReadOnlyList<(string Name, float[]? F, int[]? I)> Tensors => tensors;

    public OpCase F(string name, float[] data) { tensors.Add((name, data, null)); return this; }
    public OpCase I(string name, int[] data) { tensors.Add((name, null, data)); return this; }
    public OpCase Zeros(string name, long length) => F(name, new float[length]);

    /// <summary>Uploads every tensor to <paramref name="backend"/>, runs <paramref name="op"/>, downloads <paramref name="outputs"/>.</summary>
    public Dictionary<string, float[]> Run(IBackend backend, Action<Func<string, DeviceBuffer>> op, params string[] outputs)
    {
        var buffers = new Dictionary<string, DeviceBuffer>();
        try
        {
            foreach (var (name, f, i) in tensors)
            {
                if (f is not null)
                {
                    var b = backend.Allocate(name, f.Length);
                    backend.Upload(b, f);
                    buffers[name] = b;
                }
                else
                {
                    var b = backend.Allocate(name, i!.Length, ElementType.I32);
                    backend.Upload(b, i);
                    buffers[name] = b;
                }
            }
            op(name => buffers.TryGetValue(name, out var b) ? b : throw new KeyNotFoundException($"test tensor '{name}' was not declared"));
            backend.Synchronize();
            var result = new Dictionary<string, float[]>();
            foreach (var name in outputs)
            {
                var data = new float[buffers[name].Length];
                backend.Download(buffers[name], data);
                result[name] = data;
            }
            return result;
        }
        finally
        {
            foreach (var b in buffers.Values) b.Dispose();
        }
    }
}

public static class OpCaseViews
{
    const float FloatGuard = -7777.25f;
    const int IntGuard = -99991;

    /// <summary>
    /// Like <see cref="OpCase.Run"/>, but every tensor is a view (<see cref="DeviceBuffer.Slice"/>) of one fp32 or one
    /// int32 allocation, at offsets that are multiples of the backend's view alignment and with at least one alignment
    /// of guard values before and after each; asserts afterwards that no guard changed.
    /// </summary>
    public static Dictionary<string, float[]> RunInViews(this OpCase op, IBackend backend, Action<Func<string, DeviceBuffer>> call, params string[] outputs)
    {
        long align = backend.ViewAlignment;
        long Up(long x) => (x + align - 1) / align * align;
        var layout = new Dictionary<string, (long Offset, long Length, bool Int)>();
        long fEnd = align, iEnd = align;   // one alignment of guard first
        foreach (var (name, f, i) in op.Tensors)
        {
            long length = f?.Length ?? i!.Length;
            if (f is not null) { layout[name] = (fEnd, length, false); fEnd = Up(fEnd + length) + align; }
            else { layout[name] = (iEnd, length, true); iEnd = Up(iEnd + length) + align; }
        }
        using var fArena = backend.Allocate("float arena", fEnd);
        using var iArena = backend.Allocate("int arena", iEnd, ElementType.I32);
        backend.Fill(fArena, FloatGuard, fEnd);
        backend.Upload(iArena, Enumerable.Repeat(IntGuard, (int)iEnd).ToArray());
        var views = new Dictionary<string, DeviceBuffer>();
        try
        {
            foreach (var (name, f, i) in op.Tensors)
            {
                var (offset, length, isInt) = layout[name];
                var view = (isInt ? iArena : fArena).Slice(offset, length);
                views[name] = view;
                if (f is not null) backend.Upload(view, f);
                else backend.Upload(view, i!);
            }
            call(name => views.TryGetValue(name, out var b) ? b : throw new KeyNotFoundException($"test tensor '{name}' was not declared"));
            backend.Synchronize();
            var result = new Dictionary<string, float[]>();
            foreach (var name in outputs)
            {
                var data = new float[views[name].Length];
                backend.Download(views[name], data);
                result[name] = data;
            }
            var fAll = new float[fEnd];
            backend.Download(fArena, fAll);
            var iAll = new int[iEnd];
            backend.Download(iArena, iAll);
            bool[] fUsed = new bool[fEnd], iUsed = new bool[iEnd];
            foreach (var (offset, length, isInt) in layout.Values)
                Array.Fill(isInt ? iUsed : fUsed, true, (int)offset, (int)length);
            for (int k = 0; k < fEnd; k++)
                if (!fUsed[k] && BitConverter.SingleToInt32Bits(fAll[k]) != BitConverter.SingleToInt32Bits(FloatGuard))
                    Assert.Fail($"{backend.Name}: float element {k} outside every view was overwritten with {fAll[k]:R}");
            for (int k = 0; k < iEnd; k++)
                if (!iUsed[k] && iAll[k] != IntGuard)
                    Assert.Fail($"{backend.Name}: int element {k} outside every view was overwritten with {iAll[k]}");
            return result;
        }
        finally
        {
            foreach (var v in views.Values) v.Dispose();
        }
    }
}

public static class Bits
{
    /// <summary>Asserts two float arrays are identical bit for bit (NaN payloads included).</summary>
    public static void AssertIdentical(float[] first, float[] second, string what)
    {
        Assert.Equal(first.Length, second.Length);
        for (int i = 0; i < first.Length; i++)
            if (BitConverter.SingleToInt32Bits(first[i]) != BitConverter.SingleToInt32Bits(second[i]))
                Assert.Fail($"{what}: element {i} differs between runs: {first[i]:R} vs {second[i]:R}");
    }
}

using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Backends.Ilgpu;
using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

/// <summary>One backend under test: how to create it, and whether it promises the CPU backend's bits.</summary>
public sealed record ConformanceBackend(string Name, Func<IBackend> Create, bool SameBitsAsCpu);

/// <summary>
/// The backends every conformance test runs against. Adding a backend to the suite is one entry here.
/// "cpu" (3 threads) is the reference the others are compared with; "cpu-1thread" checks thread-count
/// independence; "opencl" is device 0 of the first platform (PoCL in CI, see OpenClTestDevices);
/// "counting-cpu" is a test-only backend that wraps the CPU one; "ilgpu-cpu" is the ILGPU backend on ILGPU's CPU
/// accelerator (the kernels that run on CUDA and OpenCL GPUs, simulated with groups of 2 to 8 threads, so
/// shared memory and barriers run as on a GPU).
/// With PALM_CONFORMANCE_ILGPU_DEVICE=N set, "ilgpu-device" adds ILGPU device N (`palm devices`) with its own tuning:
/// the GPU check (benchmarks/gpu/check.sh) runs the suite on a CUDA GPU that way.
/// </summary>
public static class ConformanceBackends
{
    public static IReadOnlyList<ConformanceBackend> All() =>
    [
        new("cpu", () => new CpuBackend(3), SameBitsAsCpu: true),
        new("cpu-1thread", () => new CpuBackend(1), SameBitsAsCpu: true),
        new("opencl", () => new OpenClBackend(0), SameBitsAsCpu: false),
        new("counting-cpu", () => new CountingBackend(2), SameBitsAsCpu: true),
        new("ilgpu-cpu", () => new IlgpuBackend(IlgpuDevices.SimulatorIndex, IlgpuTuning.SimulatorGroups), SameBitsAsCpu: false),
        .. Environment.GetEnvironmentVariable(DeviceVariable) is { Length: > 0 } d && int.TryParse(d, out int device)
            ? [new ConformanceBackend("ilgpu-device", () => new IlgpuBackend(device), SameBitsAsCpu: false)]
            : Array.Empty<ConformanceBackend>(),
    ];

    /// <summary>The variable naming an extra ILGPU device to run the suite on.</summary>
    public const string DeviceVariable = "PALM_CONFORMANCE_ILGPU_DEVICE";

    /// <summary>Every backend name crossed with every case: theory rows (backend, case values...).</summary>
    public static IEnumerable<object[]> Cross(params object[][] cases)
    {
        foreach (var b in All())
            foreach (var c in cases) yield return [b.Name, .. c];
    }

    /// <summary>One row per backend.</summary>
    public static IEnumerable<object[]> Names => All().Select(b => new object[] { b.Name });
}

/// <summary>
/// Backend instances shared by all conformance tests (OpenCL programs compile once per run), created on
/// first use and disposed at the end.
/// </summary>
public sealed class ConformanceFixture : IDisposable
{
    readonly Dictionary<string, IBackend> created = new();
    readonly Dictionary<string, ConformanceBackend> entries = ConformanceBackends.All().ToDictionary(b => b.Name);

    public IBackend Get(string name)
    {
        lock (created)
        {
            if (!created.TryGetValue(name, out var b)) created[name] = b = entries[name].Create();
            return b;
        }
    }

    public IBackend Cpu => Get("cpu");

    public bool SameBitsAsCpu(string name) => entries[name].SameBitsAsCpu;

    /// <summary>Runs the op on the backend under test and on the CPU reference; returns both.</summary>
    public (Dictionary<string, float[]> Actual, Dictionary<string, float[]> Cpu) RunBoth(string backend, OpCase op,
        Action<IBackend, Func<string, Palm.Gpu.Tensors.DeviceBuffer>> call, params string[] outputs)
    {
        var be = Get(backend);
        var actual = op.Run(be, t => call(be, t), outputs);
        return (actual, op.Run(Cpu, t => call(Cpu, t), outputs));
    }

    /// <summary>
    /// The outputs agree with the CPU backend's: bit for bit where the backend promises the CPU's bits (every
    /// CPU thread count, wrappers of the CPU backend) or where the kernel promises bits (atol = rtol = 0),
    /// else within the kernel's stated tolerance.
    /// </summary>
    public void AssertMatchesCpu(string backend, Dictionary<string, float[]> actual, Dictionary<string, float[]> cpu,
                                 double atol, double rtol, string what)
    {
        foreach (var name in cpu.Keys)
        {
            if (SameBitsAsCpu(backend) || (atol == 0 && rtol == 0)) Bits.AssertIdentical(cpu[name], actual[name], $"{backend} {what}: {name} vs cpu");
            else Tolerance.AssertClose(cpu[name], actual[name], atol, rtol, $"{backend} {what}: {name} vs cpu");
        }
    }

    /// <summary>
    /// Runs the op twice on the backend; every output must be the same bits both times, and the CPU's bits where the
    /// backend promises them (so "cpu-1thread" against "cpu" checks that the thread count changes nothing).
    /// </summary>
    public void AssertDeterministic(string backend, OpCase op, Action<IBackend, Func<string, Palm.Gpu.Tensors.DeviceBuffer>> call, params string[] outputs)
    {
        var be = Get(backend);
        var first = op.Run(be, t => call(be, t), outputs);
        var second = op.Run(be, t => call(be, t), outputs);
        foreach (var name in outputs) Bits.AssertIdentical(first[name], second[name], $"{backend}: {name} on a second run");
        if (backend != "cpu" && SameBitsAsCpu(backend))
        {
            var cpu = op.Run(Cpu, t => call(Cpu, t), outputs);
            foreach (var name in outputs) Bits.AssertIdentical(cpu[name], first[name], $"{backend}: {name} vs cpu");
        }
    }

    public void Dispose()
    {
        foreach (var b in created.Values) b.Dispose();
    }
}

/// <summary>All conformance classes share the backends and run one after another (a backend is single-threaded).</summary>
[CollectionDefinition(Name)]
public sealed class ConformanceCollection : ICollectionFixture<ConformanceFixture>
{
    public const string Name = "Conformance";
}

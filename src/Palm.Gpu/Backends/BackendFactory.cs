using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Backends.OpenCl;

namespace Palm.Gpu.Backends;

/// <summary>One device a backend can run on, as listed by <see cref="BackendFactory.ListDevices"/>.</summary>
/// <param name="Backend">backend name to pass to <see cref="BackendFactory.Create"/> ("cpu", "opencl").</param>
/// <param name="Index">device index to pass as --device; -1 on an entry that only reports a problem.</param>
/// <param name="Name">device name, e.g. "pthread-skylake-avx512-AMD EPYC" or "NVIDIA H100".</param>
/// <param name="Kind">"CPU", "GPU", ... </param>
/// <param name="Platform">driver platform (OpenCL) or runtime description (cpu).</param>
/// <param name="ComputeUnits">cores or compute units.</param>
/// <param name="MemoryBytes">device memory (host memory available to the process for cpu).</param>
/// <param name="LanguageVersion">OpenCL C version the device compiles, e.g. "OpenCL C 1.2 PoCL"; null for cpu.</param>
/// <param name="Problem">why the backend is unusable (then Index is -1), otherwise null.</param>
public sealed record BackendDeviceInfo(string Backend, int Index, string Name, string Kind, string Platform, int ComputeUnits,
                                       long MemoryBytes, string? LanguageVersion, string? Problem = null)
{
    public bool Available => Problem is null;

    public override string ToString() => Available
        ? $"{Backend}:{Index}  {Name} ({Kind}, {Platform}, {ComputeUnits} compute units, {MemoryBytes / (1024.0 * 1024 * 1024):0.#} GiB" +
          (LanguageVersion is null ? ")" : $", {LanguageVersion})")
        : $"{Backend}: unavailable: {Problem}";
}

/// <summary>Creates a backend by name, as the CLI's --backend/--device/--threads flags ask.</summary>
public static class BackendFactory
{
    public static readonly string[] Names = ["cpu", "opencl"];

    /// <param name="name">"cpu" or "opencl".</param>
    /// <param name="device">device index within the backend (ignored by cpu); see <see cref="ListDevices"/>.</param>
    /// <param name="threads">CPU worker threads, 0 = all cores (ignored by opencl).</param>
    public static IBackend Create(string name, int device = 0, int threads = 0) => name.ToLowerInvariant() switch
    {
        "cpu" => new CpuBackend(threads),
        "opencl" => new OpenClBackend(device),
        _ => throw new ArgumentException($"unknown backend '{name}'; choose one of: {string.Join(", ", Names)}"),
    };

    /// <summary>
    /// Every device of every backend. A backend that cannot run here (e.g. no OpenCL runtime installed)
    /// appears as one entry whose <see cref="BackendDeviceInfo.Problem"/> says why and what to install.
    /// </summary>
    public static IReadOnlyList<BackendDeviceInfo> ListDevices()
    {
        var list = new List<BackendDeviceInfo>
        {
            new("cpu", 0, $"CPU ({CpuBackend.SimdDescription})", "CPU", $".NET {Environment.Version}", Environment.ProcessorCount,
                GC.GetGCMemoryInfo().TotalAvailableMemoryBytes, null),
        };
        try
        {
            var devices = OpenClDevice.All();
            for (int i = 0; i < devices.Count; i++)
            {
                var d = devices[i];
                list.Add(new("opencl", i, d.Name, d.TypeName, d.Platform.Name, d.ComputeUnits, d.GlobalMemoryBytes, d.OpenClCVersion));
            }
            if (devices.Count == 0)
                list.Add(new("opencl", -1, "", "", "", 0, 0, null, "the installed OpenCL platforms expose no device"));
        }
        catch (Exception e) when (e is OpenClUnavailableException or OpenClException)
        {
            list.Add(new("opencl", -1, "", "", "", 0, 0, null, e.Message));
        }
        return list;
    }
}

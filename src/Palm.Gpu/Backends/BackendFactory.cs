using Palm.Gpu.Backends.Cpu;

namespace Palm.Gpu.Backends;

/// <summary>Creates a backend by name, as the CLI's --backend/--device/--threads flags ask.</summary>
public static class BackendFactory
{
    public static readonly string[] Names = ["cpu"];

    /// <param name="name">"cpu" (more as backends are added).</param>
    /// <param name="device">device index within the backend (ignored by cpu).</param>
    /// <param name="threads">CPU worker threads, 0 = all cores.</param>
    public static IBackend Create(string name, int device = 0, int threads = 0) => name.ToLowerInvariant() switch
    {
        "cpu" => new CpuBackend(threads),
        _ => throw new ArgumentException($"unknown backend '{name}'; choose one of: {string.Join(", ", Names)}"),
    };

    /// <summary>One line per backend device, for `palm devices`.</summary>
    public static IEnumerable<string> ListDevices()
    {
        using var cpu = new CpuBackend();
        yield return $"cpu    0  {cpu.DeviceName}, {Environment.ProcessorCount} cores";
    }
}

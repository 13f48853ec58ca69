using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Backends.Ilgpu;
using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Model;
using Palm.Gpu.Sharding;

namespace Palm.Gpu.Backends;

/// <summary>One device a backend can run on, as listed by <see cref="BackendRegistry.ListDevices"/>.</summary>
/// <param name="Backend">backend name to pass to <see cref="BackendRegistry.Create"/> ("cpu", "opencl", "ilgpu").</param>
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

/// <summary>
/// What the rest of the system knows about one kind of backend: its name, its devices, how to open one, how fast it
/// is, and how a mesh of its devices is opened and talks. Adding a backend is one provider registered in
/// <see cref="BackendRegistry"/>; the CLI, the trainer, the device mesh and the benchmarks find it there.
/// </summary>
public abstract class BackendProvider
{
    /// <summary>The --backend name, lower case.</summary>
    public abstract string Name { get; }

    /// <summary>Every device of this backend; where it cannot run here, one entry whose Problem says why and what to install.</summary>
    public abstract IReadOnlyList<BackendDeviceInfo> ListDevices();

    /// <summary>Opens device <paramref name="device"/> (see <see cref="ListDevices"/>) with <paramref name="threads"/> host threads (0 = all).</summary>
    public abstract IBackend Create(int device, int threads);

    /// <summary>The measured fp32 peak of one backend of this provider, in GFLOP/s (what MFU is against).</summary>
    public abstract double MeasurePeakGflops(IBackend backend);

    /// <summary>
    /// True when several devices of this backend share one machine's resources (CPU logical devices share its cores):
    /// a mesh's peak is then one machine's, not one device's times their number.
    /// </summary>
    public virtual bool DevicesShareMachine => false;

    /// <summary>
    /// Opens <paramref name="count"/> devices for a mesh (rank order). Unless <paramref name="transport"/> is Host, open
    /// them so that <see cref="CreateDeviceCollectives"/> can serve them where the hardware allows (Auto falls back quietly).
    /// The default opens devices 0 .. count−1 with <paramref name="threadsPerDevice"/> each.
    /// </summary>
    public virtual IReadOnlyList<IBackend> CreateMesh(int count, int threadsPerDevice, CollectiveTransport transport)
    {
        var list = new List<IBackend>();
        try
        {
            for (int i = 0; i < count; i++) list.Add(Create(i, threadsPerDevice));
        }
        catch { foreach (var b in list) b.Dispose(); throw; }
        return list;
    }

    /// <summary>Why <paramref name="count"/> devices of this backend could not have device collectives (asked before opening them), or null.</summary>
    public virtual string? WhyNoDeviceCollectives(int count) => $"the {Name} backend has no device-side collectives; its mesh combines on the host";

    /// <summary>Why these backends of this provider cannot use device-side collectives, or null when they can.</summary>
    public virtual string? WhyNoDeviceCollectives(IReadOnlyList<IBackend> ranks) => WhyNoDeviceCollectives(ranks.Count);

    /// <summary>Device-side collectives over <paramref name="ranks"/> (only when <see cref="WhyNoDeviceCollectives(IReadOnlyList{IBackend})"/> is null).</summary>
    public virtual ICollectives CreateDeviceCollectives(IReadOnlyList<IBackend> ranks, CollectiveCounters counters) =>
        throw new NotSupportedException(WhyNoDeviceCollectives(ranks));
}

/// <summary>The provider list: every backend the system can run on, in the order `palm devices` lists them.</summary>
public static class BackendRegistry
{
    static readonly List<BackendProvider> providers = [new CpuProvider(), new OpenClProvider(), new IlgpuProvider()];

    /// <summary>The registered providers, in registration order.</summary>
    public static IReadOnlyList<BackendProvider> Providers
    {
        get { lock (providers) return [.. providers]; }
    }

    /// <summary>The --backend names, in registration order.</summary>
    public static IReadOnlyList<string> Names => [.. Providers.Select(p => p.Name)];

    /// <summary>Adds a provider; disposing the result removes it again (tests register theirs for their own duration).</summary>
    public static IDisposable Register(BackendProvider provider)
    {
        ArgumentNullException.ThrowIfNull(provider);
        lock (providers)
        {
            if (providers.Any(p => string.Equals(p.Name, provider.Name, StringComparison.OrdinalIgnoreCase)))
                throw new ArgumentException($"a backend named '{provider.Name}' is already registered", nameof(provider));
            providers.Add(provider);
        }
        return new Registration(provider);
    }

    sealed class Registration(BackendProvider provider) : IDisposable
    {
        public void Dispose()
        {
            lock (providers) providers.Remove(provider);
        }
    }

    /// <summary>The provider named <paramref name="name"/> (any case), or null.</summary>
    public static BackendProvider? Find(string name) =>
        Providers.FirstOrDefault(p => string.Equals(p.Name, name, StringComparison.OrdinalIgnoreCase));

    /// <summary>The provider named <paramref name="name"/>; a <see cref="ArgumentException"/> listing the names otherwise.</summary>
    public static BackendProvider Get(string name) => Find(name)
        ?? throw new ArgumentException($"unknown backend '{name}'; choose one of: {string.Join(", ", Names)}", nameof(name));

    /// <summary>The provider of a created backend (by its <see cref="IBackend.Name"/>).</summary>
    public static BackendProvider Of(IBackend backend) => Find(backend.Name)
        ?? throw new ArgumentException($"backend '{backend.Name}' ({backend.DeviceName}) is not registered; its peak cannot be measured here, pass --peak-gflops");

    /// <param name="name">a registered backend name ("cpu", "opencl", ...).</param>
    /// <param name="device">device index within the backend (ignored by cpu); see <see cref="ListDevices"/>.</param>
    /// <param name="threads">CPU worker threads, 0 = all cores (ignored by opencl).</param>
    public static IBackend Create(string name, int device = 0, int threads = 0) => Get(name).Create(device, threads);

    /// <summary>Every device of every registered backend, problems included.</summary>
    public static IReadOnlyList<BackendDeviceInfo> ListDevices() => [.. Providers.SelectMany(p => p.ListDevices())];

    /// <summary>The measured fp32 peak of <paramref name="backend"/> in GFLOP/s.</summary>
    public static double MeasurePeakGflops(IBackend backend) => Of(backend).MeasurePeakGflops(backend);

    /// <summary>
    /// The peak of a mesh of <paramref name="devices"/> of one backend: one machine's where the devices share it
    /// (measured on a fresh backend using all of it), otherwise the first device's times their number.
    /// </summary>
    public static double MeasureMeshPeakGflops(IReadOnlyList<IBackend> devices)
    {
        if (devices.Count == 0) throw new ArgumentException("a mesh has at least one device", nameof(devices));
        var provider = Of(devices[0]);
        if (!provider.DevicesShareMachine) return provider.MeasurePeakGflops(devices[0]) * devices.Count;
        using var machine = provider.Create(0, 0);
        return provider.MeasurePeakGflops(machine);
    }
}

/// <summary>The C# SIMD backend: one device, the host; a mesh is logical devices that share its cores.</summary>
sealed class CpuProvider : BackendProvider
{
    static readonly Dictionary<int, double> PeakCache = [];

    public override string Name => "cpu";
    public override bool DevicesShareMachine => true;

    public override IReadOnlyList<BackendDeviceInfo> ListDevices() =>
    [
        new(Name, 0, $"CPU ({CpuBackend.SimdDescription})", "CPU", $".NET {Environment.Version}", Environment.ProcessorCount,
            GC.GetGCMemoryInfo().TotalAvailableMemoryBytes, null),
    ];

    public override IBackend Create(int device, int threads) => new CpuBackend(threads);

    /// <summary>An FMA loop on the backend's threads, measured once per thread count.</summary>
    public override double MeasurePeakGflops(IBackend backend)
    {
        int threads = ((CpuBackend)backend).Threads;
        lock (PeakCache)
        {
            if (!PeakCache.TryGetValue(threads, out double g)) PeakCache[threads] = g = CpuPeak.MeasureGflops(threads);
            return g;
        }
    }

    /// <summary>Logical devices, each with its own worker threads (threadsPerDevice, 0 = cores / devices, at least 1).</summary>
    public override string? WhyNoDeviceCollectives(int count) =>
        "the CPU backend's logical devices always combine on the host (device collectives copy between OpenCL devices of one context; use --backend opencl)";

    public override IReadOnlyList<IBackend> CreateMesh(int count, int threadsPerDevice, CollectiveTransport transport)
    {
        if (count > DeviceMesh.MaxCpuDevices)
            throw new ConfigException($"{count} logical CPU devices were asked for; at most {DeviceMesh.MaxCpuDevices} are supported");
        int threads = threadsPerDevice > 0 ? threadsPerDevice : Math.Max(1, Environment.ProcessorCount / count);
        return [.. Enumerable.Range(0, count).Select(_ => (IBackend)new CpuBackend(threads))];
    }
}

/// <summary>OpenCL devices of every platform; a mesh opens them in one shared context so collectives copy on the device.</summary>
sealed class OpenClProvider : BackendProvider
{
    public override string Name => "opencl";

    public override IReadOnlyList<BackendDeviceInfo> ListDevices()
    {
        var list = new List<BackendDeviceInfo>();
        try
        {
            var devices = OpenClDevice.All();
            for (int i = 0; i < devices.Count; i++)
            {
                var d = devices[i];
                list.Add(new(Name, i, d.Name, d.TypeName, d.Platform.Name, d.ComputeUnits, d.GlobalMemoryBytes, d.OpenClCVersion));
            }
            if (devices.Count == 0)
                list.Add(new(Name, -1, "", "", "", 0, 0, null, "the installed OpenCL platforms expose no device"));
        }
        catch (Exception e) when (e is OpenClUnavailableException or OpenClException)
        {
            list.Add(new(Name, -1, "", "", "", 0, 0, null, e.Message));
        }
        return list;
    }

    public override IBackend Create(int device, int threads) => new OpenClBackend(device);

    /// <summary>An FMA kernel on the device.</summary>
    public override double MeasurePeakGflops(IBackend backend) => OpenClPeak.MeasureGflops((OpenClBackend)backend);

    /// <summary>
    /// Devices 0 .. count−1 (PoCL exposes several with POCL_DEVICES="pthread pthread"), in one shared context when they
    /// are all on one platform of OpenCL ≥ 1.2 and the transport is not Host. Under Auto a driver that refuses the shared
    /// context gets separate contexts (and host collectives); under Device its error propagates.
    /// </summary>
    public override IReadOnlyList<IBackend> CreateMesh(int count, int threadsPerDevice, CollectiveTransport transport)
    {
        var all = OpenClDevice.All();
        if (count > all.Count)
            throw new ConfigException($"it needs {count} OpenCL devices but {all.Count} exist; use a smaller mesh or expose more devices (PoCL: POCL_DEVICES=\"{string.Join(' ', Enumerable.Repeat("pthread", count))}\")");
        var chosen = all.Take(count).ToArray();
        var devices = new List<IBackend>();
        try
        {
            if (transport != CollectiveTransport.Host && OpenClCollectives.WhyNotShareable(chosen) is null) OpenShared(chosen, devices, transport);
            if (devices.Count == 0)
                foreach (var d in chosen) devices.Add(new OpenClBackend(d));
        }
        catch { foreach (var d in devices) d.Dispose(); throw; }
        return devices;
    }

    static void OpenShared(OpenClDevice[] chosen, List<IBackend> devices, CollectiveTransport want)
    {
        IReadOnlyList<OpenClContext> views;
        try { views = OpenClContext.CreateShared(chosen); }
        catch (OpenClException) when (want == CollectiveTransport.Auto) { return; }
        int taken = 0;
        try
        {
            for (; taken < views.Count; taken++) devices.Add(new OpenClBackend(views[taken]));   // a failing backend disposes its view
        }
        catch
        {
            for (int i = taken + 1; i < views.Count; i++) views[i].Dispose();
            throw;
        }
    }

    public override string? WhyNoDeviceCollectives(int count)
    {
        var all = OpenClDevice.All();
        return count > all.Count ? $"{count} OpenCL devices are needed but {all.Count} exist" : OpenClCollectives.WhyNotShareable([.. all.Take(count)]);
    }

    public override string? WhyNoDeviceCollectives(IReadOnlyList<IBackend> ranks) => OpenClCollectives.WhyNotShared(ranks);

    public override ICollectives CreateDeviceCollectives(IReadOnlyList<IBackend> ranks, CollectiveCounters counters) =>
        new OpenClCollectives([.. ranks.Cast<OpenClBackend>()], counters);
}

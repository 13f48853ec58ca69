using Palm.Gpu.Backends;
using Palm.Gpu.Model;

namespace Palm.Gpu.Sharding;

/// <summary>
/// How a mesh's collectives move data. Host: every rank's buffer is downloaded, combined on the host and uploaded
/// (<see cref="InProcessCollectives"/>, any backend). Device: OpenCL devices of one shared context copy between
/// their buffers on the device (<see cref="OpenClCollectives"/>). Auto: Device where the devices allow it, else Host.
/// Both give the same bits where the devices have fp64.
/// </summary>
public enum CollectiveTransport { Auto, Host, Device }

/// <summary>
/// A data × model grid of devices of one backend. Rank r = d·Model + m sits at data index d and model
/// index m. Each row (fixed d) is a model group: tensor-parallel shards of one replica. Each column
/// (fixed m) is a data group: replicas (or, fully sharded, slices) of the same shard.
/// </summary>
public sealed class DeviceMesh : IDisposable
{
    readonly bool _ownsDevices;
    readonly BackendProvider? _provider;

    /// <summary>
    /// A mesh over <paramref name="devices"/> (rank order). <paramref name="transport"/> picks the collectives: Auto
    /// uses device-side copies when every device is an OpenCL backend of one shared context, host round trips otherwise;
    /// Device on devices that cannot share a context is a <see cref="ConfigException"/> saying why.
    /// </summary>
    public DeviceMesh(int data, int model, IReadOnlyList<IBackend> devices, bool ownsDevices = false,
                      CollectiveTransport transport = CollectiveTransport.Auto)
    {
        if (data < 1 || model < 1) throw new ConfigException($"--mesh needs positive sizes, got {data}x{model}");
        if (devices.Count != data * model)
            throw new ConfigException($"mesh {data}x{model} needs {data * model} devices, got {devices.Count}");
        Data = data;
        Model = model;
        Devices = devices;
        _ownsDevices = ownsDevices;
        Counters = new CollectiveCounters();
        _provider = BackendRegistry.Find(devices[0].Name);
        string? problem = transport == CollectiveTransport.Host ? null
            : devices.FirstOrDefault(d => d.Name != devices[0].Name) is { } other ? $"the mesh mixes the {devices[0].Name} and {other.Name} backends"
            : _provider is null ? $"backend '{devices[0].Name}' is not registered"
            : _provider.WhyNoDeviceCollectives(devices);
        if (transport == CollectiveTransport.Device && problem is not null)
            throw new ConfigException($"--collectives device needs device-side collectives between the mesh's devices, but {problem}. " +
                                      "Use --collectives host (or auto, which falls back to host round trips)");
        Transport = transport != CollectiveTransport.Host && problem is null ? CollectiveTransport.Device : CollectiveTransport.Host;
        ModelGroups = Enumerable.Range(0, data).Select(d => Group(Enumerable.Range(0, model).Select(m => devices[d * model + m]).ToArray())).ToArray();
        DataGroups = Enumerable.Range(0, model).Select(m => Group(Enumerable.Range(0, data).Select(d => devices[d * model + m]).ToArray())).ToArray();
        // The SPMD view: each rank meets its row, its column and the world at rendezvous points of one runner.
        Runner = new SpmdRunner(Size);
        var rows = Enumerable.Range(0, data).Select(_ => new Rendezvous(Runner, model)).ToArray();
        var cols = Enumerable.Range(0, model).Select(_ => new Rendezvous(Runner, data)).ToArray();
        var world = new Rendezvous(Runner, Size);
        Ranks = Enumerable.Range(0, Size).Select(r =>
        {
            int d = r / model, m = r % model;
            return new RankContext(devices[r], d, m, data, model, new InProcessGroup(rows[d], m, ModelGroups[d]),
                                   new InProcessGroup(cols[m], d, DataGroups[m]), new InProcessGroup(world, r, null));
        }).ToArray();
    }

    /// <summary>Runs one body per rank, each on its own thread (<see cref="SpmdRunner"/>).</summary>
    public SpmdRunner Runner { get; }
    /// <summary>Every rank's device, coordinates and groups, in rank order d·M + m.</summary>
    public IReadOnlyList<RankContext> Ranks { get; }

    ICollectives Group(IBackend[] ranks) => Transport == CollectiveTransport.Device
        ? _provider!.CreateDeviceCollectives(ranks, Counters)
        : new InProcessCollectives(ranks, Counters);

    public int Data { get; }
    public int Model { get; }
    public int Size => Data * Model;
    public IReadOnlyList<IBackend> Devices { get; }
    public CollectiveCounters Counters { get; }
    /// <summary>The transport the groups use: <see cref="CollectiveTransport.Host"/> or <see cref="CollectiveTransport.Device"/> (never Auto).</summary>
    public CollectiveTransport Transport { get; }
    /// <summary>One line for reports, e.g. "device (copies within one OpenCL context)".</summary>
    public string TransportDescription => Transport != CollectiveTransport.Device ? "host (download, combine on the host, upload)"
        : Devices[0].Name == "ilgpu" ? "device (copies between ILGPU devices)"
        : "device (copies within one OpenCL context)";
    /// <summary>ModelGroups[d]: the model ranks of data index d.</summary>
    public IReadOnlyList<ICollectives> ModelGroups { get; }
    /// <summary>DataGroups[m]: the data ranks of model index m.</summary>
    public IReadOnlyList<ICollectives> DataGroups { get; }
    public IBackend At(int d, int m) => Devices[d * Model + m];

    /// <summary>Parses "DxM" (e.g. "2x4"): D data-parallel × M model-parallel devices.</summary>
    public static (int Data, int Model) Parse(string spec)
    {
        var parts = spec.ToLowerInvariant().Split('x');
        if (parts.Length != 2 || !int.TryParse(parts[0], out int d) || !int.TryParse(parts[1], out int m) || d < 1 || m < 1)
            throw new ConfigException($"--mesh takes DxM with positive whole numbers (data × model devices), e.g. 2x2; got '{spec}'");
        return (d, m);
    }

    /// <summary>
    /// Creates data·model devices of one registered backend (<see cref="BackendProvider.CreateMesh"/>: CPU logical
    /// devices with threadsPerDevice threads each, 0 = cores / devices; OpenCL devices 0 .. D·M−1 in one shared
    /// context where the device collectives can use it). Device transport on devices that cannot have device-side
    /// collectives is a <see cref="ConfigException"/> saying why, before anything is opened.
    /// </summary>
    public static DeviceMesh Create(string backend, int data, int model, int threadsPerDevice = 0, CollectiveTransport transport = CollectiveTransport.Auto)
    {
        if (data < 1 || model < 1) throw new ConfigException($"--mesh needs positive sizes, got {data}x{model}");
        var provider = BackendRegistry.Find(backend)
            ?? throw new ConfigException($"unknown backend '{backend}'; choose one of: {string.Join(", ", BackendRegistry.Names)}");
        int n = data * model;
        if (transport == CollectiveTransport.Device && provider.WhyNoDeviceCollectives(n) is { } problem)
            throw new ConfigException($"--collectives device needs device-side collectives between the mesh's {n} {provider.Name} devices, but {problem}. " +
                                      "Use --collectives host (or auto, which falls back to host round trips)");
        IReadOnlyList<IBackend> devices;
        try { devices = provider.CreateMesh(n, threadsPerDevice, transport); }
        catch (ConfigException e) { throw new ConfigException($"mesh {data}x{model}: {e.Message}"); }
        try { return new DeviceMesh(data, model, devices, ownsDevices: true, transport); }
        catch { foreach (var d in devices) d.Dispose(); throw; }
    }

    public const int MaxCpuDevices = 64;

    /// <summary>
    /// Checks that the mesh divides the model and the batch; throws one <see cref="ConfigException"/>
    /// naming every mismatch.
    /// </summary>
    public static void Validate(ModelConfig c, int data, int model, int batch)
    {
        var problems = new List<string>();
        if (c.Heads % model != 0) problems.Add($"heads {c.Heads}");
        if (c.DFf % model != 0) problems.Add($"d_ff {c.DFf}");
        if (c.Vocab % model != 0) problems.Add($"vocab {c.Vocab} (pad it: --vocab {MeshPlan.PaddedVocab(c.Vocab, model)})");
        if (problems.Count > 0)
            throw new ConfigException($"model axis {model} of mesh {data}x{model} does not divide {string.Join(", ", problems)}; each model rank needs a whole share of query heads, MLP width and vocabulary");
        if (batch % data != 0)
            throw new ConfigException($"data axis {data} of mesh {data}x{model} does not divide the batch of {batch} sequences; use a batch that is a multiple of {data}");
    }

    public void Dispose()
    {
        foreach (var g in ModelGroups.Concat(DataGroups)) (g as IDisposable)?.Dispose();   // staging buffers before their devices
        if (_ownsDevices) foreach (var d in Devices) d.Dispose();
    }
}

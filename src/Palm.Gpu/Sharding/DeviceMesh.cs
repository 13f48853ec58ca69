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
    /// uses device-side copies when the provider can serve the devices (OpenCL backends of one shared context, ILGPU
    /// CUDA GPUs or CPU accelerators), host round trips otherwise;
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

    /// <summary>
    /// This process's share of a mesh that spans the processes of <paramref name="processes"/>: process p holds data
    /// indices [p·D/P, (p+1)·D/P) with their whole model axis (<paramref name="devices"/>, local rank order). Model
    /// groups stay inside the process; data groups and the world span processes hierarchically
    /// (<see cref="Mpi.ProcessSpanningGroup"/>), each on a channel of its own so the ranks' threads can run them at once.
    /// </summary>
    internal DeviceMesh(int data, int model, IReadOnlyList<IBackend> devices, IProcessGroup processes, bool ownsDevices)
    {
        int p = processes.Count;
        CheckSplit(data, model, p);
        int rows = data / p;
        if (devices.Count != rows * model) throw new ConfigException($"process {processes.Index} of mesh {data}x{model} needs {rows * model} devices, got {devices.Count}");
        Data = data;
        Model = model;
        Devices = devices;
        Processes = processes;
        FirstDataRank = processes.Index * rows;
        _ownsDevices = ownsDevices;
        Counters = new CollectiveCounters();
        Transport = CollectiveTransport.Host;
        ModelGroups = Enumerable.Range(0, rows).Select(d => (ICollectives)new InProcessCollectives(Enumerable.Range(0, model).Select(m => devices[d * model + m]).ToArray(), Counters)).ToArray();
        DataGroups = [];
        Runner = new SpmdRunner(devices.Count);
        var rowMeetings = Enumerable.Range(0, rows).Select(_ => new Rendezvous(Runner, model)).ToArray();
        var colMeetings = Enumerable.Range(0, model).Select(_ => new Rendezvous(Runner, rows)).ToArray();
        var worldMeeting = new Rendezvous(Runner, devices.Count);
        // One channel per column and one for the world, created in the same order on every process.
        var colChannels = Enumerable.Range(0, model).Select(_ => processes.Duplicate()).ToArray();
        var worldChannel = processes.Duplicate();
        Ranks = Enumerable.Range(0, devices.Count).Select(r =>
        {
            int dl = r / model, m = r % model;
            var column = Enumerable.Range(0, rows).Select(d => devices[d * model + m]).ToArray();
            return new RankContext(devices[r], FirstDataRank + dl, m, data, model, new InProcessGroup(rowMeetings[dl], m, ModelGroups[dl]),
                                   new Mpi.ProcessSpanningGroup(colMeetings[m], dl, column, colChannels[m], Counters),
                                   new Mpi.ProcessSpanningGroup(worldMeeting, r, null, worldChannel, Counters));
        }).ToArray();
    }

    /// <summary>The processes this mesh spans; null when it lives in this process only.</summary>
    public IProcessGroup? Processes { get; }
    /// <summary>The first data index this process holds (0 for an in-process mesh).</summary>
    public int FirstDataRank { get; }
    /// <summary>Where the transport is described: in one process, or "… between N processes over MPI".</summary>
    public string Placement => Processes is null ? "" : $", {Processes.Count} processes of {Data / Processes.Count}x{Model} ranks each";

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
    public string TransportDescription => Transport == CollectiveTransport.Device
        ? (Devices[0].Name == "ilgpu" ? "device (copies between ILGPU devices)" : "device (copies within one OpenCL context)")
        : Processes is null ? "host (download, combine on the host, upload)"
        : $"host within each process and MPI between {Processes.Count} processes (download, exchange, combine in rank order, upload)";
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
        if (ProcessGroups.World is { Count: > 1 } world) return CreateShare(provider, data, model, threadsPerDevice, transport, world);
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

    /// <summary>Refuses, on every process alike, a data axis the processes cannot split into whole rows of the mesh.</summary>
    static void CheckSplit(int data, int model, int processes)
    {
        if (data % processes != 0)
            throw ProcessGroups.JobWide(new ConfigException($"mesh {data}x{model} cannot be split over {processes} processes: each process holds whole rows of the model axis, so the data axis ({data}) must be a multiple of the process count; use --mesh {processes * Math.Max(1, data / processes)}x{model}, or a process count that divides {data}"));
    }

    /// <summary>
    /// This process's share of a mesh over the job's processes: its D/P × M devices of the backend (OpenCL: devices
    /// 0 .. D·M/P−1 of this machine, so one process per machine or per GPU group), host collectives between them and
    /// MPI between processes. Every process must run the same backend: a mixed job is refused on every process.
    /// </summary>
    static DeviceMesh CreateShare(BackendProvider provider, int data, int model, int threadsPerDevice, CollectiveTransport transport, IProcessGroup world)
    {
        var names = world.AllGatherVariable(System.Text.Encoding.UTF8.GetBytes(provider.Name)).Select(b => System.Text.Encoding.UTF8.GetString(b)).ToArray();
        if (names.Distinct().Count() > 1)
            throw ProcessGroups.JobWide(new ConfigException($"the processes of this job run different backends ({string.Join(", ", names.Select((n, p) => $"process {p}: {n}"))}); every process of a mesh must run the same --backend"));
        CheckSplit(data, model, world.Count);
        if (transport == CollectiveTransport.Device)
            throw ProcessGroups.JobWide(new ConfigException($"--collectives device moves data inside one OpenCL context; a mesh over {world.Count} processes combines through the host and MPI: use --collectives host or auto"));
        int n = data / world.Count * model;
        // Processes on one machine share its cores: by default each device gets cores / (its machine's devices).
        if (threadsPerDevice == 0 && provider.Name == "cpu")
            threadsPerDevice = Math.Max(1, Environment.ProcessorCount / (n * world.OnThisMachine));
        IReadOnlyList<IBackend> devices;
        try { devices = provider.CreateMesh(n, threadsPerDevice, CollectiveTransport.Host); }
        catch (ConfigException e) { throw new ConfigException($"mesh {data}x{model}, process {world.Index}: {e.Message}"); }
        try { return new DeviceMesh(data, model, devices, world, ownsDevices: true); }
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

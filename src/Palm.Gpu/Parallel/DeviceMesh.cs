using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Model;

namespace Palm.Gpu.Sharding;

/// <summary>
/// A data × model grid of devices of one backend. Rank r = d·Model + m sits at data index d and model
/// index m. Each row (fixed d) is a model group: tensor-parallel shards of one replica. Each column
/// (fixed m) is a data group: replicas (or, fully sharded, slices) of the same shard.
/// </summary>
public sealed class DeviceMesh : IDisposable
{
    readonly bool _ownsDevices;

    public DeviceMesh(int data, int model, IReadOnlyList<IBackend> devices, bool ownsDevices = false)
    {
        if (data < 1 || model < 1) throw new ConfigException($"--mesh needs positive sizes, got {data}x{model}");
        if (devices.Count != data * model)
            throw new ConfigException($"mesh {data}x{model} needs {data * model} devices, got {devices.Count}");
        Data = data;
        Model = model;
        Devices = devices;
        _ownsDevices = ownsDevices;
        Counters = new CollectiveCounters();
        ModelGroups = Enumerable.Range(0, data)
            .Select(d => (ICollectives)new InProcessCollectives(Enumerable.Range(0, model).Select(m => devices[d * model + m]).ToArray(), Counters)).ToArray();
        DataGroups = Enumerable.Range(0, model)
            .Select(m => (ICollectives)new InProcessCollectives(Enumerable.Range(0, data).Select(d => devices[d * model + m]).ToArray(), Counters)).ToArray();
    }

    public int Data { get; }
    public int Model { get; }
    public int Size => Data * Model;
    public IReadOnlyList<IBackend> Devices { get; }
    public CollectiveCounters Counters { get; }
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
    /// Creates data·model devices of one backend. CPU: logical devices, each a CpuBackend with its own
    /// worker threads (threadsPerDevice, 0 = cores / devices, at least 1). OpenCL: devices 0 .. D·M−1
    /// (PoCL exposes several with POCL_DEVICES="pthread pthread").
    /// </summary>
    public static DeviceMesh Create(string backend, int data, int model, int threadsPerDevice = 0)
    {
        if (data < 1 || model < 1) throw new ConfigException($"--mesh needs positive sizes, got {data}x{model}");
        int n = data * model;
        var devices = new List<IBackend>();
        switch (backend.ToLowerInvariant())
        {
            case "cpu":
                if (n > MaxCpuDevices)
                    throw new ConfigException($"mesh {data}x{model} asks for {n} logical CPU devices; at most {MaxCpuDevices} are supported");
                int threads = threadsPerDevice > 0 ? threadsPerDevice : Math.Max(1, Environment.ProcessorCount / n);
                for (int i = 0; i < n; i++) devices.Add(new CpuBackend(threads));
                break;
            case "opencl":
                int available = OpenClDevice.All().Count;
                if (n > available)
                    throw new ConfigException($"mesh {data}x{model} needs {n} OpenCL devices but {available} exist; use a smaller mesh or expose more devices (PoCL: POCL_DEVICES=\"{string.Join(' ', Enumerable.Repeat("pthread", n))}\")");
                try { for (int i = 0; i < n; i++) devices.Add(new OpenClBackend(i)); }
                catch { foreach (var d in devices) d.Dispose(); throw; }
                break;
            default:
                throw new ConfigException($"unknown backend '{backend}'; choose one of: {string.Join(", ", BackendFactory.Names)}");
        }
        return new DeviceMesh(data, model, devices, ownsDevices: true);
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
        if (c.Vocab % model != 0) problems.Add($"vocab {c.Vocab}");
        if (problems.Count > 0)
            throw new ConfigException($"model axis {model} of mesh {data}x{model} does not divide {string.Join(", ", problems)}; each model rank needs a whole share of query heads, MLP width and vocabulary");
        if (batch % data != 0)
            throw new ConfigException($"data axis {data} of mesh {data}x{model} does not divide the batch of {batch} sequences; use a batch that is a multiple of {data}");
    }

    public void Dispose()
    {
        if (_ownsDevices) foreach (var d in Devices) d.Dispose();
    }
}

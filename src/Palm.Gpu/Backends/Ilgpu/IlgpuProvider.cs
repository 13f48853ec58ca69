using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Palm.Gpu.Model;
using Palm.Gpu.Sharding;

namespace Palm.Gpu.Backends.Ilgpu;

/// <summary>
/// The "ilgpu" entry of the backend registry: ILGPU's devices (CUDA GPUs, OpenCL GPUs ILGPU accepts, and its CPU
/// accelerator, marked as a simulator), their peak, and meshes of them.
/// </summary>
sealed class IlgpuProvider : BackendProvider
{
    static readonly Dictionary<string, double> PeakCache = [];

    public override string Name => "ilgpu";

    /// <summary>A mesh without GPUs is CPU accelerators, which share the host's cores (its peak is one machine's).</summary>
    public override bool DevicesShareMachine => IlgpuDevices.All.All(IlgpuDevices.IsSimulator);

    public override IReadOnlyList<BackendDeviceInfo> ListDevices()
    {
        if (IlgpuDevices.Problem is { } problem) return [new(Name, -1, "", "", "", 0, 0, null, problem)];
        var all = IlgpuDevices.All;
        return [.. all.Select((d, i) => new BackendDeviceInfo(Name, i, d.Name, IlgpuDevices.KindOf(d), IlgpuDevices.RuntimeOf(d),
            d.NumMultiprocessors, IlgpuDevices.IsSimulator(d) ? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes : d.MemorySize,
            IlgpuDevices.IsSimulator(d) ? $"warp {d.WarpSize}, groups ≤ {d.MaxNumThreadsPerGroup}" : d.AcceleratorType.ToString()))];
    }

    public override IBackend Create(int device, int threads) => new IlgpuBackend(device);

    /// <summary>An FMA loop on the device (kernels/peak/PeakKernels.cs), measured once per device.</summary>
    public override double MeasurePeakGflops(IBackend backend)
    {
        var be = (IlgpuBackend)backend;
        lock (PeakCache)
        {
            if (!PeakCache.TryGetValue(be.DeviceName, out double g)) PeakCache[be.DeviceName] = g = be.MeasurePeakGflops();
            return g;
        }
    }

    /// <summary>
    /// The first <paramref name="count"/> GPUs when there are that many; otherwise, without GPUs, <paramref name="count"/>
    /// accelerators of the CPU simulator (one each). On CUDA, peer access is enabled between every pair that allows it.
    /// </summary>
    public override IReadOnlyList<IBackend> CreateMesh(int count, int threadsPerDevice, CollectiveTransport transport)
    {
        if (IlgpuDevices.Problem is { } problem) throw new IlgpuUnavailableException(problem);
        var all = IlgpuDevices.All;
        var gpus = all.Where(d => !IlgpuDevices.IsSimulator(d)).ToList();
        List<Device> chosen;
        if (gpus.Count >= count) chosen = gpus.Take(count).ToList();
        else if (gpus.Count == 0) chosen = [.. Enumerable.Repeat(all[IlgpuDevices.SimulatorIndex], count)];
        else throw new ConfigException($"the mesh needs {count} ILGPU GPUs but {gpus.Count} exist; use a smaller mesh (`palm devices` lists them)");
        var backends = new List<IlgpuBackend>();
        try
        {
            foreach (var d in chosen) backends.Add(new IlgpuBackend(d));
            if (transport != CollectiveTransport.Host) EnablePeers(backends);
        }
        catch { foreach (var b in backends) b.Dispose(); throw; }
        return backends;
    }

    /// <summary>CUDA peer access between all pairs that support it (device-to-device copies for the collectives' staging).</summary>
    static void EnablePeers(List<IlgpuBackend> backends)
    {
        foreach (var x in backends)
            foreach (var y in backends)
                if (!ReferenceEquals(x, y) && x.Accelerator is CudaAccelerator && y.Accelerator is CudaAccelerator && x.Accelerator.CanAccessPeer(y.Accelerator))
                    x.Accelerator.EnablePeerAccess(y.Accelerator);
    }

    /// <summary>CUDA GPUs (peer copies where enabled) and CPU accelerators copy between each other; OpenCL devices do not.</summary>
    public override string? WhyNoDeviceCollectives(int count)
    {
        if (IlgpuDevices.Problem is { } problem) return problem;
        var gpus = IlgpuDevices.All.Where(d => !IlgpuDevices.IsSimulator(d)).Take(count).ToList();
        if (gpus.Count == 0) return null;   // CPU accelerators
        if (gpus.Count < count) return $"{count} ILGPU GPUs are needed but {gpus.Count} exist";
        return gpus.Any(d => d.AcceleratorType != AcceleratorType.Cuda) ? "ILGPU copies between OpenCL devices only through the host" : null;
    }

    public override string? WhyNoDeviceCollectives(IReadOnlyList<IBackend> ranks) => IlgpuCollectives.WhyNot(ranks);

    public override ICollectives CreateDeviceCollectives(IReadOnlyList<IBackend> ranks, CollectiveCounters counters) =>
        new IlgpuCollectives([.. ranks.Cast<IlgpuBackend>()], counters);
}

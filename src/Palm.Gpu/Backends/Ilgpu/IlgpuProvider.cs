using System.Diagnostics;
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

    public override IReadOnlyList<BackendDeviceInfo> ListDevices()
    {
        if (IlgpuDevices.Problem is { } problem) return [new(Name, -1, "", "", "", 0, 0, null, problem)];
        var all = IlgpuDevices.All;
        return [.. all.Select((d, i) => new BackendDeviceInfo(Name, i, d.Name, IlgpuDevices.KindOf(d), IlgpuDevices.RuntimeOf(d),
            d.NumMultiprocessors, IlgpuDevices.IsSimulator(d) ? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes : d.MemorySize,
            IlgpuDevices.IsSimulator(d) ? $"warp {d.WarpSize}, groups ≤ {d.MaxNumThreadsPerGroup}" : d.AcceleratorType.ToString()))];
    }

    public override IBackend Create(int device, int threads) => new IlgpuBackend(device);

    /// <summary>
    /// A GEMM on the device, as the model runs it: square matmuls through the backend's own kernel, the best of a few
    /// (MFU is then against the GEMM the trainer gets). The CPU accelerator is timed on a small one.
    /// </summary>
    public override double MeasurePeakGflops(IBackend backend)
    {
        var be = (IlgpuBackend)backend;
        lock (PeakCache)
        {
            string key = be.DeviceName;
            if (PeakCache.TryGetValue(key, out double cached)) return cached;
            int size = be.IsSimulator ? 64 : 2048;
            using var a = be.Allocate("peak.a", (long)size * size);
            using var b = be.Allocate("peak.b", (long)size * size);
            using var c = be.Allocate("peak.c", (long)size * size);
            be.Fill(a, 0.5f, a.Length);
            be.Fill(b, 0.25f, b.Length);
            be.Matmul(c, a, b, size, size, size);   // compiles the kernel
            be.Synchronize();
            double best = 0;
            for (int r = 0; r < 3; r++)
            {
                var clock = Stopwatch.StartNew();
                be.Matmul(c, a, b, size, size, size);
                be.Synchronize();
                best = Math.Max(best, 2.0 * size * size * (double)size / clock.Elapsed.TotalSeconds / 1e9);
            }
            return PeakCache[key] = best;
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

    public override string? WhyNoDeviceCollectives(int count) =>
        "the ilgpu backend's mesh combines on the host (copies between CUDA peers are enabled for its buffers, but its collectives stage through the host)";
}

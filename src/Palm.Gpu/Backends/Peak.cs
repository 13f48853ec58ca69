using Palm.Gpu.Backends.Cpu;

namespace Palm.Gpu.Backends;

/// <summary>The fp32 peak a backend's MFU is measured against.</summary>
public static class Peak
{
    /// <summary>
    /// CPU: measured with an FMA loop on the backend's threads. OpenCL: measured
    /// with an FMA kernel on the device. Anything else: pass --peak-gflops.
    /// </summary>
    public static double Measure(IBackend backend) => backend switch
    {
        CpuBackend cpu => CpuPeakCache.Get(cpu.Threads),
        OpenCl.OpenClBackend ocl => OpenCl.OpenClPeak.MeasureGflops(ocl),
        _ => throw new ArgumentException($"the peak of backend '{backend.Name}' ({backend.DeviceName}) cannot be measured here; pass --peak-gflops"),
    };

    static class CpuPeakCache
    {
        static readonly Dictionary<int, double> Cache = [];
        public static double Get(int threads)
        {
            lock (Cache)
            {
                if (!Cache.TryGetValue(threads, out double g)) Cache[threads] = g = CpuPeak.MeasureGflops(threads);
                return g;
            }
        }
    }
}

using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using Palm.Gpu.Sharding;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Benchmarks;

/// <summary>
/// One all-reduce (sum) over the two OpenCL devices of a 1×2 mesh, with host round trips
/// (<see cref="InProcessCollectives"/>: download, combine in double on the host, upload) and with device-side
/// copies inside one shared context (<see cref="OpenClCollectives"/>), at 4 Ki, 64 Ki and 1 Mi floats (the last
/// is about one small-preset block output, N·D at B 1, T 2048). The queues are idle before each call, so the
/// time is the collective's own. The job runs with POCL_DEVICES="pthread pthread" and one worker thread per
/// device, so PoCL shows two devices that do not fight over the two cores.
/// Run: dotnet run -c Release --project benchmarks/Palm.Gpu.Benchmarks -- --filter '*Collective*'
/// </summary>
[Config(typeof(Config))]
public class CollectiveBenchmarks
{
    [Params(4096, 65536, 1 << 20)]
    public int Floats { get; set; }

    [Params(CollectiveTransport.Host, CollectiveTransport.Device)]
    public CollectiveTransport Transport { get; set; }

    DeviceMesh mesh = null!;
    DeviceBuffer[] buffers = null!;

    [GlobalSetup]
    public void Setup()
    {
        mesh = DeviceMesh.Create("opencl", 1, 2, transport: Transport);
        var rng = new Random(5);
        buffers = mesh.Devices.Select((d, r) =>
        {
            var b = d.Allocate($"rank{r}", Floats);
            d.Upload(b, Enumerable.Range(0, Floats).Select(_ => (float)rng.NextDouble()).ToArray());
            return b;
        }).ToArray();
        AllReduce();   // builds the reduce kernel and the staging buffers outside the measurement
    }

    [Benchmark]
    public void AllReduce()
    {
        mesh.ModelGroups[0].AllReduce(buffers, Floats);
        foreach (var d in mesh.Devices) d.Synchronize();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var b in buffers) b.Dispose();
        mesh.Dispose();
    }

    sealed class Config : ManualConfig
    {
        public Config()
        {
            AddJob(Job.Default.WithWarmupCount(3).WithIterationCount(15).WithLaunchCount(1)
                .WithEnvironmentVariables(new EnvironmentVariable("POCL_DEVICES", "pthread pthread"),
                                          new EnvironmentVariable("POCL_MAX_PTHREAD_COUNT", "1")));
            AddColumn(MetricColumn.FromSeconds("GB/s", "bytes of one rank's buffer / mean time",
                (bc, seconds) => (4.0 * (int)bc.Parameters["Floats"] / seconds / 1e9).ToString("F2")));
        }
    }
}

using System.Diagnostics;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Benchmarks;

/// <summary>
/// The OpenCL GEMM (packing included) on 1024³ and on the matmuls of the small preset (N = B·T = 2048 rows,
/// D 512, F 2048, V 8192), on OpenCL device 0. Two jobs: the driver's default thread count and one thread
/// (POCL_MAX_PTHREAD_COUNT=1, which only PoCL reads). Columns: GFLOP/s (2·M·N·K / mean time) and the share
/// of the device's fp32 FMA peak, measured by <see cref="OpenClPeak"/> in the benchmark process itself (same
/// job, same moment), so load from other processes on shared cores affects both sides of the ratio alike.
/// Run: dotnet run -c Release --project benchmarks/Palm.Gpu.Benchmarks -- --filter '*OpenClGemm*'
/// </summary>
[Config(typeof(Config))]
public class OpenClGemmBenchmarks
{
    const int Rows = 2048, D = 512, F = 2048, V = 8192;

    /// <summary>One GEMM call: C (M,N) = op(A) (M,K) · op(B) (K,N).</summary>
    public sealed record Shape(string Name, int M, int N, int K, bool TransA = false, bool TransB = false)
    {
        public double Flops => 2.0 * M * N * K;
        public override string ToString() => Name;
    }

    public static IEnumerable<Shape> Shapes() =>
    [
        new("1024³", 1024, 1024, 1024),
        new("x·Wqkv/o (N,D)(D,D)", Rows, D, D),
        new("x·Wup (N,D)(D,F)", Rows, F, D),
        new("h·Wdown (N,F)(F,D)", Rows, D, F),
        new("logits h·Eᵀ (N,D)(V,D)ᵀ", Rows, V, D, TransB: true),
        new("dx=dy·Wupᵀ (N,F)(D,F)ᵀ", Rows, D, F, TransB: true),
        new("dWup+=xᵀ·dy (N,D)ᵀ(N,F)", D, F, Rows, TransA: true),
        new("dE+=dlogitsᵀ·h (N,V)ᵀ(N,D)", V, D, Rows, TransA: true),
    ];

    [ParamsSource(nameof(Shapes))]
    public Shape Gemm { get; set; } = null!;

    OpenClBackend backend = null!;
    DeviceBuffer a = null!, b = null!, c = null!;

    [GlobalSetup]
    public void Setup()
    {
        backend = new OpenClBackend(0);
        a = Random(backend, "a", (long)Gemm.M * Gemm.K, 1);
        b = Random(backend, "b", (long)Gemm.K * Gemm.N, 2);
        c = backend.Allocate("c", (long)Gemm.M * Gemm.N);
        Run();   // compiles the kernels and sizes the packing scratch outside the measurement
        File.WriteAllText(PeakFile(Environment.GetEnvironmentVariable("POCL_MAX_PTHREAD_COUNT") == "1", Gemm),
                          OpenClPeak.MeasureGflops(backend).ToString("R", System.Globalization.CultureInfo.InvariantCulture));
    }

    /// <summary>Where a benchmark process leaves the peak it measured for the summary's column to read.</summary>
    static string PeakFile(bool singleThread, Shape shape) =>
        Path.Combine(Path.GetTempPath(), $"palm-opencl-gemm-peak-{(singleThread ? 1 : 0)}-{shape.M}x{shape.N}x{shape.K}-{shape.TransA}{shape.TransB}.txt");

    static DeviceBuffer Random(OpenClBackend backend, string name, long length, int seed)
    {
        var rng = new Random(seed);
        var data = new float[length];
        for (long i = 0; i < length; i++) data[i] = (float)(rng.NextDouble() - 0.5);
        var buffer = backend.Allocate(name, length);
        backend.Upload(buffer, data);
        return buffer;
    }

    [Benchmark]
    public void Run()
    {
        backend.Matmul(c, a, b, Gemm.M, Gemm.N, Gemm.K, Gemm.TransA, Gemm.TransB, 1f, accumulate: Gemm.TransA);
        backend.Synchronize();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        a.Dispose(); b.Dispose(); c.Dispose();
        backend.Dispose();
    }

    sealed class Config : ManualConfig
    {
        public Config()
        {
            AddJob(Job.Default.WithWarmupCount(3).WithIterationCount(10).WithLaunchCount(1).WithId("all threads"));
            AddJob(Job.Default.WithWarmupCount(3).WithIterationCount(10).WithLaunchCount(1).WithId("1 thread")
                .WithEnvironmentVariables(new EnvironmentVariable("POCL_MAX_PTHREAD_COUNT", "1")));
            AddColumn(
                new MetricColumn("GFLOP/s", "2·M·N·K / mean time", (s, bc) => Gflops(s, bc).ToString("F1")),
                new MetricColumn("% of FMA peak", "GFLOP/s ÷ the fp32 FMA peak the benchmark process measured with an OpenCL FMA-chain kernel", (s, bc) =>
                {
                    string file = PeakFile(bc.Job.Id == "1 thread", (Shape)bc.Parameters["Gemm"]);
                    if (!File.Exists(file)) return "?";
                    double peak = double.Parse(File.ReadAllText(file), System.Globalization.CultureInfo.InvariantCulture);
                    return (100 * Gflops(s, bc) / peak).ToString("F0") + "%";
                }, priority: 1));
        }
    }

    static double Gflops(Summary summary, BenchmarkCase bc)
    {
        var stats = summary[bc]?.ResultStatistics;
        return stats is null ? double.NaN : ((Shape)bc.Parameters["Gemm"]).Flops / stats.Mean;   // FLOP per ns = GFLOP/s
    }
}

using System.Diagnostics;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
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
/// of the device's fp32 FMA peak measured by <see cref="OpenClPeak"/> under the same job.
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
    }

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
            AddColumn(new GflopsColumn(), new PeakShareColumn());
        }
    }

    static double Gflops(Summary summary, BenchmarkCase bc)
    {
        var stats = summary[bc]?.ResultStatistics;
        return stats is null ? double.NaN : ((Shape)bc.Parameters["Gemm"]).Flops / stats.Mean;   // FLOP per ns = GFLOP/s
    }

    sealed class GflopsColumn : IColumn
    {
        public string Id => "GFLOPs";
        public string ColumnName => "GFLOP/s";
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 0;
        public bool IsNumeric => true;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => "2·M·N·K / mean time";
        public bool IsDefault(Summary summary, BenchmarkCase bc) => false;
        public bool IsAvailable(Summary summary) => true;
        public string GetValue(Summary summary, BenchmarkCase bc) => Gflops(summary, bc).ToString("F1");
        public string GetValue(Summary summary, BenchmarkCase bc, SummaryStyle style) => GetValue(summary, bc);
    }

    sealed class PeakShareColumn : IColumn
    {
        readonly Dictionary<bool, double> peaks = new();
        public string Id => "PeakShare";
        public string ColumnName => "% of FMA peak";
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 1;
        public bool IsNumeric => true;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => "GFLOP/s ÷ the device's fp32 FMA peak measured by an OpenCL FMA-chain kernel with the job's threads";
        public bool IsDefault(Summary summary, BenchmarkCase bc) => false;
        public bool IsAvailable(Summary summary) => true;

        public string GetValue(Summary summary, BenchmarkCase bc)
        {
            bool single = bc.Job.Id == "1 thread";
            if (!peaks.TryGetValue(single, out double peak))
                peaks[single] = peak = OpenClPeak.MeasureForJob(single);
            return (100 * Gflops(summary, bc) / peak).ToString("F0") + "%";
        }

        public string GetValue(Summary summary, BenchmarkCase bc, SummaryStyle style) => GetValue(summary, bc);
    }
}

/// <summary>
/// fp32 FMA peak of an OpenCL device: work-items each run twelve independent chains of float16 fused
/// multiply-adds, nothing else. One work-item per compute unit keeps every core busy; the best of ten
/// launches is kept so that other load on shared cores lowers the figure less.
/// </summary>
public static class OpenClPeak
{
    const string Source = """
        __kernel __attribute__((reqd_work_group_size(1, 1, 1)))
        void fma_peak(__global float* out, const int iterations, const float x, const float y)
        {
            float16 a0 = (float16)(get_global_id(0)), a1 = a0 + 1, a2 = a0 + 2, a3 = a0 + 3, a4 = a0 + 4, a5 = a0 + 5;
            float16 a6 = a0 + 6, a7 = a0 + 7, a8 = a0 + 8, a9 = a0 + 9, a10 = a0 + 10, a11 = a0 + 11;
            const float16 vx = (float16)(x), vy = (float16)(y);
            for (int i = 0; i < iterations; i++) {
                a0 = fma(a0, vx, vy); a1 = fma(a1, vx, vy); a2 = fma(a2, vx, vy); a3 = fma(a3, vx, vy);
                a4 = fma(a4, vx, vy); a5 = fma(a5, vx, vy); a6 = fma(a6, vx, vy); a7 = fma(a7, vx, vy);
                a8 = fma(a8, vx, vy); a9 = fma(a9, vx, vy); a10 = fma(a10, vx, vy); a11 = fma(a11, vx, vy);
            }
            const float16 s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + ((a8 + a9) + (a10 + a11));
            out[get_global_id(0)] = s.s0 + s.s7 + s.sf;
        }
        """;

    /// <summary>Peak GFLOP/s of device 0 with <paramref name="workItems"/> concurrent work-items (0 = one per compute unit).</summary>
    public static double MeasureGflops(OpenClBackend backend, int workItems = 0)
    {
        if (workItems <= 0) workItems = backend.Device.ComputeUnits;
        var kernel = backend.BuildProgram("fma_peak.cl", Source).Kernel("fma_peak");
        using var output = (OpenClBuffer)backend.Allocate("peak.out", workItems);
        const int iterations = 1_000_000;
        double best = 0;
        for (int r = 0; r < 10; r++)
        {
            var clock = Stopwatch.StartNew();
            kernel.Call().Arg(output).Arg(iterations).Arg(0.9999f).Arg(1e-4f).Launch(workItems, 1, null);
            backend.Synchronize();
            best = Math.Max(best, 12.0 * 16 * 2 * iterations * workItems / clock.Elapsed.TotalSeconds / 1e9);
        }
        return best;
    }

    /// <summary>
    /// Peak for the benchmark job: the single-thread job's peak needs POCL_MAX_PTHREAD_COUNT=1 before the driver
    /// loads, so it is taken as one work-item (one core busy), which is the same figure on PoCL.
    /// </summary>
    internal static double MeasureForJob(bool singleThread)
    {
        using var backend = new OpenClBackend(0);
        return MeasureGflops(backend, singleThread ? 1 : 0);
    }
}

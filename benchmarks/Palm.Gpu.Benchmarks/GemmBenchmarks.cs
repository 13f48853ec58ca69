using System.Diagnostics;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tensors;
using Palm.Gpu.Training;

namespace Palm.Gpu.Benchmarks;

/// <summary>One GEMM call: C (M,N) = op(A) (M,K) · op(B) (K,N).</summary>
public sealed record GemmShape(string Name, int M, int N, int K, bool TransA = false, bool TransB = false)
{
    public double Flops => 2.0 * M * N * K;
    public override string ToString() => Name;
}

/// <summary>
/// The CPU GEMM on 1024³ and on every matmul of the small preset (N = B·T = 4·512 = 2048 rows, D 512, F 2048, V 8192),
/// against OpenBLAS's cblas_sgemm on the same shapes, threads and data in the same run (when libopenblas is installed).
/// Reports GFLOP/s (2·M·N·K / mean time) and the share of the fp32 peak measured on the same threads.
/// </summary>
[Config(typeof(Config))]
public class GemmBenchmarks
{
    private const int Rows = 2048, D = 512, F = 2048, V = 8192;
    /// <summary>The fused parallel block's widths: input [Wq | Wk | Wv | Wgate | Wup] (multi-query: one K and V head of 64), output [Wo ; Wdown].</summary>
    private const int FusedIn = D + 2 * 64 + 2 * F, FusedOut = D + F;

    public static IEnumerable<GemmShape> Shapes() => new[]
    {
        new GemmShape("1024³", 1024, 1024, 1024),
        new GemmShape("x·Wqkv/o (N,D)(D,D)", Rows, D, D),
        new GemmShape("x·Wup (N,D)(D,F)", Rows, F, D),
        new GemmShape("h·Wdown (N,F)(F,D)", Rows, D, F),
        new GemmShape("logits h·Eᵀ (N,D)(V,D)ᵀ", Rows, V, D, TransB: true),
        new GemmShape("dx=dy·Wupᵀ (N,F)(D,F)ᵀ", Rows, D, F, TransB: true),
        new GemmShape("dh=dy·Wdownᵀ (N,D)(F,D)ᵀ", Rows, F, D, TransB: true),
        new GemmShape("dWup+=xᵀ·dy (N,D)ᵀ(N,F)", D, F, Rows, TransA: true),
        new GemmShape("dWdown+=hᵀ·dy (N,F)ᵀ(N,D)", F, D, Rows, TransA: true),
        new GemmShape("dWqkv+=xᵀ·dy (N,D)ᵀ(N,D)", D, D, Rows, TransA: true),
        new GemmShape("dh=dlogits·E (N,V)(V,D)", Rows, D, V),
        new GemmShape("dE+=dlogitsᵀ·h (N,V)ᵀ(N,D)", V, D, Rows, TransA: true),
        // The fused parallel block's six calls per layer (the model runs these, not the unfused ones above).
        new GemmShape("fused x·Win (N,D)(D,Fin)", Rows, FusedIn, D),
        new GemmShape("fused u·Wout (N,Fo)(Fo,D)", Rows, D, FusedOut),
        new GemmShape("fused dx=dy·Winᵀ", Rows, D, FusedIn, TransB: true),
        new GemmShape("fused du=dy·Woutᵀ", Rows, FusedOut, D, TransB: true),
        new GemmShape("fused dWin+=xᵀ·dy", D, FusedIn, Rows, TransA: true),
        new GemmShape("fused dWout+=uᵀ·dy", FusedOut, D, Rows, TransA: true),
    };

    [ParamsSource(nameof(Shapes))]
    public GemmShape Shape { get; set; } = null!;

    [Params(1, 2)]
    public int Threads { get; set; }

    // The model's tensors: CPU backend buffers, each starting on a cache line. Both libraries get the same memory.
    private CpuView<float> _a, _b, _c;

    [GlobalSetup]
    public void Setup()
    {
        if (OpenBlas.Available) OpenBlas.SetThreads(Threads);
        var rng = new Random(1);
        _a = new CpuBuffer("a", (long)Shape.M * Shape.K, ElementType.F32).F;
        _b = new CpuBuffer("b", (long)Shape.K * Shape.N, ElementType.F32).F;
        _c = new CpuBuffer("c", (long)Shape.M * Shape.N, ElementType.F32).F;
        foreach (var x in new[] { _a, _b }) for (long i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() - 0.5);
    }

    [Benchmark(Baseline = true)]
    public void Matmul() => CpuMatmul.Run(Threads, _c, _a, _b, Shape.M, Shape.N, Shape.K, Shape.TransA, Shape.TransB, 1f, Shape.TransA);

    /// <summary>The same call with a given path and blocking instead of the tuner's (gemm-blocking).</summary>
    internal void Matmul(GemmPath path, GemmBlocking blocking) =>
        CpuMatmul.Run(Threads, _c, _a, _b, Shape.M, Shape.N, Shape.K, Shape.TransA, Shape.TransB, 1f, Shape.TransA, path, blocking);

    /// <summary>cblas_sgemm on the same call; does nothing (and its columns read n/a) when OpenBLAS is absent.</summary>
    [Benchmark]
    public void OpenBlasSgemm()
    {
        if (OpenBlas.Available) OpenBlas.Sgemm(_c, _a, _b, Shape.M, Shape.N, Shape.K, Shape.TransA, Shape.TransB, 1f, Shape.TransA);
    }

    private sealed class Config : ManualConfig
    {
        public Config()
        {
            AddJob(Job.Default.WithWarmupCount(3).WithIterationCount(8).WithLaunchCount(1));
            var peaks = new Dictionary<int, double>();   // measured once per thread count when the table is printed
            AddColumn(
                new MetricColumn("GFLOP/s", "2·M·N·K / mean time", (s, bc) => double.IsNaN(Gflops(s, bc)) ? "n/a" : Gflops(s, bc).ToString("F1")),
                new MetricColumn("% peak", "GFLOP/s ÷ CpuPeak.MeasureGflops(threads), measured once per thread count when the table is printed", (s, bc) =>
                {
                    int threads = ThreadsOf(bc);
                    if (!peaks.TryGetValue(threads, out double peak)) peaks[threads] = peak = CpuPeak.MeasureGflops(threads);
                    double g = Gflops(s, bc);
                    return double.IsNaN(g) ? "n/a" : (100 * g / peak).ToString("F0");
                }, priority: 1));
        }
    }

    private static GemmShape ShapeOf(BenchmarkCase bc) => (GemmShape)bc.Parameters["Shape"];
    private static int ThreadsOf(BenchmarkCase bc) => (int)bc.Parameters["Threads"];

    private static double Gflops(Summary summary, BenchmarkCase bc)
    {
        if (bc.Descriptor.WorkloadMethod.Name == nameof(OpenBlasSgemm) && !OpenBlas.Available) return double.NaN;
        var stats = summary[bc]?.ResultStatistics;
        return stats is null ? double.NaN : ShapeOf(bc).Flops / stats.Mean; // FLOP per ns = GFLOP/s
    }

    /// <summary>
    /// One shape timed with our GEMM and with OpenBLAS (NaN when absent), back to back on the same data: the best call of
    /// each, and the median of all its timed calls (how far the median is above the best shows how busy the machine was).
    /// </summary>
    public sealed record Comparison(GemmShape Shape, double OursSeconds, double OpenBlasSeconds, double OursMedianSeconds, double OpenBlasMedianSeconds);

    /// <summary>
    /// Ours and OpenBLAS timed in alternating blocks (3 rounds of each, at least 3 calls or ~150 ms a block), the best
    /// call of each, so that load from other processes on the machine falls on both alike. Blocks, not single calls
    /// in turn: OpenBLAS's idle threads keep spinning for a while after a call (THREAD_TIMEOUT, about 0.1 s), and a
    /// call of ours made during that time shares a core with them (on 2 cores our median call then ran at 65–90% of
    /// its best). Each block starts after <see cref="SettleMs"/> with the other library idle.
    /// </summary>
    public static IEnumerable<Comparison> Compare(int threads, string match = "")
    {
        foreach (var shape in Shapes().Where(s => s.Name.Contains(match, StringComparison.OrdinalIgnoreCase)))
        {
            var bench = new GemmBenchmarks { Shape = shape, Threads = threads };
            bench.Setup();
            var ours = new List<double>();
            var blas = new List<double>();
            // Three rounds; up to ExtraRounds more while either library's median is Statistics.BusySpread or more above its best
            // (other work had the cores for part of the shape), so that a brief burst of load does not set the best.
            for (int round = 0; round < 3 || round < 3 + ExtraRounds && (Busy(ours) || OpenBlas.Available && Busy(blas)); round++)
            {
                Block(bench.Matmul, ours);
                if (OpenBlas.Available) Block(bench.OpenBlasSgemm, blas);
            }
            yield return new Comparison(shape, ours.Min(), OpenBlas.Available ? blas.Min() : double.NaN,
                                        Statistics.Median(ours), OpenBlas.Available ? Statistics.Median(blas) : double.NaN);
        }
    }

    /// <summary>How long a block waits first, for the other library's threads to go idle.</summary>
    const int SettleMs = 250;

    /// <summary>One untimed call, then at least 3 timed calls (up to 10 or ~150 ms), each one's seconds added to <paramref name="times"/>.</summary>
    static void Block(Action call, List<double> times)
    {
        Thread.Sleep(SettleMs);
        call();
        var clock = Stopwatch.StartNew();
        for (int rep = 0; rep < 10 && (rep < 3 || clock.ElapsedMilliseconds < 150); rep++)
        {
            long t0 = Stopwatch.GetTimestamp();
            call();
            times.Add(Stopwatch.GetElapsedTime(t0).TotalSeconds);
        }
    }

    /// <summary>Rounds added to a shape's three while its median call is Statistics.BusySpread or more above its best.</summary>
    const int ExtraRounds = 3;

    static bool Busy(List<double> times) => Statistics.SpreadAboveBest(Statistics.Median(times), times.Min()) >= Statistics.BusySpread;

    /// <summary>
    /// A quick table without BenchmarkDotNet (best of a few timed calls per shape) for tuning:
    /// `dotnet run -c Release --project benchmarks/Palm.Gpu.Benchmarks -- gemm-quick [threads] [match]`.
    /// </summary>
    public static void Quick(int threads, string match = "")
    {
        double peak = CpuPeak.MeasureGflops(threads);
        Console.WriteLine($"fp32 peak on {threads} thread(s): {peak:F1} GFLOP/s ({CpuMatmul.BestPath}, {CpuPeak.Lanes} lanes)");
        Console.WriteLine(OpenBlas.Description);
        Console.WriteLine($"our GEMM: {GemmTuner.For(threads).Description}");
        Console.WriteLine($"{"shape",-32} {"M×N×K",-17} {"ours ms",8} {"GFLOP/s",8} {"% peak",6}   {"OpenBLAS ms",11} {"GFLOP/s",8} {"% peak",6}  ours/OpenBLAS  median/best: ours, OpenBLAS");
        int busy = 0, shapes = 0;
        foreach (var r in Compare(threads, match))
        {
            double ours = r.Shape.Flops / r.OursSeconds / 1e9, blas = r.Shape.Flops / r.OpenBlasSeconds / 1e9;
            double oursSpread = Statistics.SpreadAboveBest(r.OursMedianSeconds, r.OursSeconds), blasSpread = Statistics.SpreadAboveBest(r.OpenBlasMedianSeconds, r.OpenBlasSeconds);
            shapes++;
            if (oursSpread >= Statistics.BusySpread || blasSpread >= Statistics.BusySpread) busy++;
            Console.WriteLine($"{r.Shape.Name,-32} {$"{r.Shape.M}×{r.Shape.N}×{r.Shape.K}",-17} {r.OursSeconds * 1e3,8:F2} {ours,8:F1} {100 * ours / peak,5:F0}%   " +
                              (double.IsNaN(blas) ? $"{"n/a",11}{"",27}  +{100 * oursSpread:F0}%"
                                                  : $"{r.OpenBlasSeconds * 1e3,11:F2} {blas,8:F1} {100 * blas / peak,5:F0}%  {ours / blas,8:F2}×      +{100 * oursSpread:F0}%, +{100 * blasSpread:F0}%"));
        }
        if (busy > 0)
            Console.WriteLine($"{busy} of {shapes} shapes had a median call {100 * Statistics.BusySpread:F0}% or more above the best: other work shared the cores, " +
                              "so those shapes' ratios may be off by as much; run again when the machine is quieter.");
    }
}

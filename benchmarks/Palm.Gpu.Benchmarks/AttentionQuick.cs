using System.Diagnostics;
using System.Runtime.InteropServices;
using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Benchmarks;

/// <summary>
/// A quick GFLOP/s table of the CPU attention kernels without BenchmarkDotNet, for tuning:
///   dotnet run -c Release --project benchmarks/Palm.Gpu.Benchmarks -- attention-quick [threads] [rounds]
/// Shapes: the small preset's (B 4, T 512, H 8, K 64, multi-query and multi-head) and a longer sequence. Forward and
/// backward are timed alternately with a 1024³ GEMM on the same threads (best call of each over the rounds), so load
/// from other processes falls on all alike: the attention/GEMM ratio is the figure to compare between runs. FLOPs are
/// <see cref="OpCosts"/>' (causal pairs only, the backward's recomputed scores counted). On a shared machine the
/// wall-clock figures follow the load; the "cpu" columns divide by the process CPU time per thread instead (Linux:
/// CLOCK_PROCESS_CPUTIME_ID), which time slices lost to other processes do not inflate.
/// </summary>
public static partial class AttentionQuick
{
    sealed record Case(string Name, int B, int T, int H, int G, int K);

    static readonly Case[] Cases =
    [
        new("small multi-query", 4, 512, 8, 1, 64),
        new("small multi-head", 4, 512, 8, 8, 64),
        new("T 2048 multi-query", 1, 2048, 8, 1, 64),
    ];

    public static void Run(int threads, int rounds)
    {
        double peak = CpuPeak.MeasureGflops(threads);
        Console.WriteLine($"fp32 peak on {threads} thread(s): {peak:F1} GFLOP/s ({CpuSimd.Description}); best of {rounds} rounds");

        const int G = 1024;
        var ga = Fill(G * G, 1); var gb = Fill(G * G, 2); var gc = Zeros(G * G);
        double gemmFlops = 2.0 * G * G * G, gemmBest = double.MaxValue, gemmCpu = double.MaxValue;
        void Gemm() => CpuMatmul.Run(threads, gc, ga, gb, G, G, G, false, false, 1f, false);

        Console.WriteLine($"{"case",-20} {"fwd ms",8} {"GFLOP/s",8} {"% peak",6} {"bwd ms",8} {"GFLOP/s",8} {"% peak",6}  {"fwd/GEMM",8} {"bwd/GEMM",8}   {"cpu: fwd %",10} {"bwd %",6} {"GEMM %",6}");
        var lines = new List<string>();
        foreach (var c in Cases)
        {
            long nq = (long)c.B * c.T * c.H * c.K, nkv = (long)c.B * c.T * c.G * c.K;
            var q = Fill(nq, 3); var k = Fill(nkv, 4); var v = Fill(nkv, 5); var dout = Fill(nq, 6);
            var o = Zeros(nq); var lse = Zeros((long)c.B * c.H * c.T);
            var dq = Zeros(nq); var dk = Zeros(nkv); var dv = Zeros(nkv);
            void Fwd() => CpuAttention.Forward(threads, o, lse, q, k, v, c.B, c.T, c.H, c.G, c.K);
            void Bwd() => CpuAttention.Backward(threads, dq, dk, dv, dout, q, k, v, o, lse, c.B, c.T, c.H, c.G, c.K);
            Fwd(); Bwd(); Gemm();
            double fwd = double.MaxValue, bwd = double.MaxValue, fwdCpu = double.MaxValue, bwdCpu = double.MaxValue;
            for (int r = 0; r < rounds; r++)
            {
                Keep(ref fwd, ref fwdCpu, Time(Fwd, threads));
                Keep(ref bwd, ref bwdCpu, Time(Bwd, threads));
                Keep(ref gemmBest, ref gemmCpu, Time(Gemm, threads));
            }
            double ff = OpCosts.AttentionForward(c.B, c.T, c.H, c.G, c.K).Flops / fwd / 1e9;
            double bf = OpCosts.AttentionBackward(c.B, c.T, c.H, c.G, c.K).Flops / bwd / 1e9;
            double gf = gemmFlops / gemmBest / 1e9;
            double fc = OpCosts.AttentionForward(c.B, c.T, c.H, c.G, c.K).Flops / fwdCpu / 1e9;
            double bc = OpCosts.AttentionBackward(c.B, c.T, c.H, c.G, c.K).Flops / bwdCpu / 1e9;
            double gc2 = gemmFlops / gemmCpu / 1e9;
            Console.WriteLine($"{c.Name,-20} {fwd * 1e3,8:F2} {ff,8:F1} {100 * ff / peak,5:F0}% {bwd * 1e3,8:F2} {bf,8:F1} {100 * bf / peak,5:F0}%  {ff / gf,8:F2} {bf / gf,8:F2}   " +
                              $"{100 * fc / peak,9:F0}% {100 * bc / peak,5:F0}% {100 * gc2 / peak,5:F0}%");
        }
        Console.WriteLine($"GEMM 1024³ (the peer): {gemmFlops / gemmBest / 1e9:F1} GFLOP/s = {100 * gemmFlops / gemmBest / 1e9 / peak:F0}% of peak");
    }

    static void Keep(ref double wall, ref double cpu, (double Wall, double Cpu) t)
    {
        wall = Math.Min(wall, t.Wall);
        cpu = Math.Min(cpu, t.Cpu);
    }

    /// <summary>Wall seconds of one call, and the process CPU seconds it took per thread (NaN off Linux).</summary>
    static (double Wall, double Cpu) Time(Action call, int threads)
    {
        double c0 = CpuSeconds();
        long t0 = Stopwatch.GetTimestamp();
        call();
        double wall = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        return (wall, (CpuSeconds() - c0) / threads);
    }

    [StructLayout(LayoutKind.Sequential)]
    struct TimeSpec { public long Seconds, Nanoseconds; }

    [LibraryImport("libc", EntryPoint = "clock_gettime")]
    private static partial int ClockGetTime(int clock, out TimeSpec time);

    static double CpuSeconds()
    {
        const int ProcessCpuTime = 2;   // CLOCK_PROCESS_CPUTIME_ID
        if (!OperatingSystem.IsLinux() || ClockGetTime(ProcessCpuTime, out var ts) != 0) return double.NaN;
        return ts.Seconds + ts.Nanoseconds * 1e-9;
    }

    // Operands as the model holds them: CPU backend buffers, each starting on a cache line.
    static CpuView<float> Zeros(long n) => new CpuBuffer("x", n, ElementType.F32).F;

    static CpuView<float> Fill(long n, int seed)
    {
        var rng = new Random(seed);
        var a = Zeros(n);
        for (long i = 0; i < n; i++) a[i] = (float)(2 * rng.NextDouble() - 1);
        return a;
    }
}

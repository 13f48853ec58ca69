using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Palm.Gpu.Backends.Cpu;

/// <summary>
/// Measures this machine's fp32 peak: independent chains of vector FMAs (nothing but the FMA units busy),
/// one per core asked for. The MFU denominator, and the yardstick the GEMM is judged by.
/// </summary>
internal static class CpuPeak
{
    // 12 independent accumulators cover an FMA latency of up to 6 cycles at 2 FMAs per cycle, more than any x86 core needs.
    private const int Chains = 12;
    private const int Rounds = 4096;

    /// <summary>Instruction width the measurement uses: 16 lanes with Vector512, 8 with Vector256, else 4.</summary>
    public static int Lanes => Vector512.IsHardwareAccelerated ? 16 : Vector256.IsHardwareAccelerated ? 8 : 4;

    /// <summary>
    /// Peak fp32 GFLOP/s of <paramref name="threads"/> cores (an FMA counts 2 FLOPs per lane). Runs ~<paramref name="milliseconds"/>
    /// ms; each thread keeps its best 2 ms slice: shorter than a scheduler time slice, so other processes sharing the cores
    /// lower the figure little (the peak is what the cores can do, not what they did while shared).
    /// </summary>
    public static double MeasureGflops(int threads, int milliseconds = 200)
    {
        if (threads < 1) throw new ArgumentOutOfRangeException(nameof(threads), $"threads must be ≥ 1, got {threads}");
        var best = new double[threads];
        using var start = new Barrier(threads);
        var workers = new Thread[threads];
        for (int t = 0; t < threads; t++)
        {
            int id = t;
            workers[t] = new Thread(() =>
            {
                start.SignalAndWait();
                best[id] = BestRate(milliseconds);
            }) { IsBackground = true, Name = $"peak-{t}" };
            workers[t].Start();
        }
        foreach (var w in workers) w.Join();
        return best.Sum() / 1e9;
    }

    /// <summary>FLOP/s of the fastest ~2 ms slice in a run of the given length, on the calling thread.</summary>
    private static double BestRate(int milliseconds)
    {
        double flopsPerCall = 2.0 * Lanes * Chains * Rounds;
        // Calibrate the calls per slice so a slice lasts about 2 ms.
        var clock = Stopwatch.StartNew();
        Burn(Rounds);
        int calls = 1;
        while (clock.Elapsed.TotalMilliseconds < 1) { Burn(Rounds); calls++; }
        int callsPerSlice = Math.Max(1, calls * 2);

        double best = 0;
        float sink = 0;
        var total = Stopwatch.StartNew();
        while (total.ElapsedMilliseconds < milliseconds)
        {
            long t0 = Stopwatch.GetTimestamp();
            for (int i = 0; i < callsPerSlice; i++) sink += Burn(Rounds);
            double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            best = Math.Max(best, callsPerSlice * flopsPerCall / seconds);
        }
        GC.KeepAlive(sink);
        return best;
    }

    // Fused where the hardware fuses; otherwise a multiply and an add, still 2 FLOPs per lane.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> MulAdd(Vector512<float> x, Vector512<float> m, Vector512<float> d) => CpuSimd.HasFma ? Vector512.FusedMultiplyAdd(x, m, d) : x * m + d;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> MulAdd(Vector256<float> x, Vector256<float> m, Vector256<float> d) => CpuSimd.HasFma ? Vector256.FusedMultiplyAdd(x, m, d) : x * m + d;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> MulAdd(Vector128<float> x, Vector128<float> m, Vector128<float> d) => CpuSimd.HasFma ? Vector128.FusedMultiplyAdd(x, m, d) : x * m + d;

    private static float Burn(int rounds) =>
        Vector512.IsHardwareAccelerated ? Burn512(rounds) :
        Vector256.IsHardwareAccelerated ? Burn256(rounds) : Burn128(rounds);

    // x·m + d keeps every chain finite (it converges towards d / (1 − m)) and never denormal.
    // No calls inside the loops: a call would force the accumulators out of registers.

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Burn512(int rounds)
    {
        var m = Vector512.Create(0.999f);
        var d = Vector512.Create(0.001f);
        Vector512<float> x0 = d, x1 = d, x2 = d, x3 = d, x4 = d, x5 = d, x6 = d, x7 = d, x8 = d, x9 = d, x10 = d, x11 = d;
        for (int i = 0; i < rounds; i++)
        {
            x0 = MulAdd(x0, m, d); x1 = MulAdd(x1, m, d);
            x2 = MulAdd(x2, m, d); x3 = MulAdd(x3, m, d);
            x4 = MulAdd(x4, m, d); x5 = MulAdd(x5, m, d);
            x6 = MulAdd(x6, m, d); x7 = MulAdd(x7, m, d);
            x8 = MulAdd(x8, m, d); x9 = MulAdd(x9, m, d);
            x10 = MulAdd(x10, m, d); x11 = MulAdd(x11, m, d);
        }
        return Vector512.Sum(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10 + x11);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Burn256(int rounds)
    {
        var m = Vector256.Create(0.999f);
        var d = Vector256.Create(0.001f);
        Vector256<float> x0 = d, x1 = d, x2 = d, x3 = d, x4 = d, x5 = d, x6 = d, x7 = d, x8 = d, x9 = d, x10 = d, x11 = d;
        for (int i = 0; i < rounds; i++)
        {
            x0 = MulAdd(x0, m, d); x1 = MulAdd(x1, m, d);
            x2 = MulAdd(x2, m, d); x3 = MulAdd(x3, m, d);
            x4 = MulAdd(x4, m, d); x5 = MulAdd(x5, m, d);
            x6 = MulAdd(x6, m, d); x7 = MulAdd(x7, m, d);
            x8 = MulAdd(x8, m, d); x9 = MulAdd(x9, m, d);
            x10 = MulAdd(x10, m, d); x11 = MulAdd(x11, m, d);
        }
        return Vector256.Sum(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10 + x11);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Burn128(int rounds)
    {
        var m = Vector128.Create(0.999f);
        var d = Vector128.Create(0.001f);
        Vector128<float> x0 = d, x1 = d, x2 = d, x3 = d, x4 = d, x5 = d, x6 = d, x7 = d, x8 = d, x9 = d, x10 = d, x11 = d;
        for (int i = 0; i < rounds; i++)
        {
            x0 = MulAdd(x0, m, d); x1 = MulAdd(x1, m, d);
            x2 = MulAdd(x2, m, d); x3 = MulAdd(x3, m, d);
            x4 = MulAdd(x4, m, d); x5 = MulAdd(x5, m, d);
            x6 = MulAdd(x6, m, d); x7 = MulAdd(x7, m, d);
            x8 = MulAdd(x8, m, d); x9 = MulAdd(x9, m, d);
            x10 = MulAdd(x10, m, d); x11 = MulAdd(x11, m, d);
        }
        return Vector128.Sum(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10 + x11);
    }
}

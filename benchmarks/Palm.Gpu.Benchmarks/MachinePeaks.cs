using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Palm.Gpu.Backends;

namespace Palm.Gpu.Benchmarks;

/// <summary>The two ceilings a kernel is measured against: fp32 FLOP/s and memory bandwidth.</summary>
public sealed record DevicePeak(double Gflops, double GBps, string Source, MachinePeaks.Bandwidth? Detail = null)
{
    /// <summary>FLOPs per byte where the roofline turns from memory-bound to compute-bound.</summary>
    public double Ridge => Gflops / GBps;
    /// <summary>The fastest a kernel of this intensity can run, in GFLOP/s-equivalent time: min(peak, intensity·bandwidth).</summary>
    public double SecondsAtRoofline(OpCost c) => Math.Max(c.Flops / (Gflops * 1e9), c.Bytes / (GBps * 1e9));
}

/// <summary>
/// Measures this machine's ceilings: the fp32 peak from <see cref="Peak.Measure"/> (an FMA loop), and memory
/// bandwidth from STREAM-like loops over 256 MiB arrays (far beyond any cache) on every core, the best of
/// read, copy, in-place update and triad (see <see cref="BandwidthGBps"/>).
/// </summary>
public static class MachinePeaks
{
    static readonly Dictionary<string, DevicePeak> Cache = [];

    /// <summary>
    /// The ceilings of a backend's device. CPU: measured. A backend whose peak cannot be measured but whose
    /// device is this CPU (PoCL) gets the CPU's ceilings; otherwise NaN (pass the device's figures instead).
    /// </summary>
    public static DevicePeak For(IBackend backend)
    {
        lock (Cache)
        {
            string key = backend.Name + "|" + backend.DeviceName;
            if (Cache.TryGetValue(key, out var p)) return p;
            double bw = double.NaN;
            Bandwidth? detail = null;
            double gflops;
            string source;
            try
            {
                // Best of three: other work on a shared machine can only slow the FMA loop, and a peak measured low
                // would put a step above 100% of it.
                gflops = Enumerable.Range(0, 3).Max(_ => BackendRegistry.MeasurePeakGflops(backend));
                detail = BandwidthGBps(Environment.ProcessorCount);
                bw = detail.Best;
                source = "measured: best of 3 FMA loops; best of STREAM-like read, copy, update, triad";
            }
            catch (ArgumentException)
            {
                if (IsThisCpu(backend.DeviceName))
                {
                    using var cpu = BackendRegistry.Create("cpu");
                    var c = For(cpu);
                    gflops = c.Gflops;
                    bw = c.GBps;
                    source = "this CPU's measured ceilings (the device runs on it)";
                }
                else
                {
                    gflops = double.NaN;
                    source = "unknown: the device's peak is not measurable here";
                }
            }
            return Cache[key] = new DevicePeak(gflops, bw, source, detail);
        }
    }

    static bool IsThisCpu(string device) =>
        device.Contains("pthread", StringComparison.OrdinalIgnoreCase) || device.Contains("cpu", StringComparison.OrdinalIgnoreCase) ||
        device.Contains("pocl", StringComparison.OrdinalIgnoreCase);

    /// <summary>GB/s of four STREAM-like loops on <paramref name="threads"/> threads, each the best pass of ~0.5 s.</summary>
    public sealed record Bandwidth(double Read, double Copy, double Update, double Triad)
    {
        /// <summary>The ceiling: the best of the four (kernels move data in all these patterns).</summary>
        public double Best => Math.Max(Math.Max(Read, Copy), Math.Max(Update, Triad));
    }

    /// <summary>
    /// read Σa (4 bytes/element), copy b = a (8), in-place update a = s·a (8), triad a = b + s·c (12), counting bytes
    /// the way OpCosts does (each operand once), over arrays of 64M floats.
    /// </summary>
    public static Bandwidth BandwidthGBps(int threads, long elements = 64L << 20)
    {
        var a = GC.AllocateUninitializedArray<float>((int)elements);
        var b = GC.AllocateUninitializedArray<float>((int)elements);
        var c = GC.AllocateUninitializedArray<float>((int)elements);
        Array.Fill(a, 1f); Array.Fill(b, 2f); Array.Fill(c, 3f);
        const int Chunk = 1 << 20;
        int chunks = (int)(elements / Chunk);
        var options = new ParallelOptions { MaxDegreeOfParallelism = threads };
        var partial = new float[chunks];

        double Best(Action pass, double bytes)
        {
            pass();
            double best = double.MaxValue;
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < 5 || clock.ElapsedMilliseconds < 500; i++)
            {
                long t0 = Stopwatch.GetTimestamp();
                pass();
                best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
            }
            return bytes / best / 1e9;
        }

        double read = Best(() => Parallel.For(0, chunks, options, i => partial[i] = Sum(a.AsSpan(i * Chunk, Chunk))), 4.0 * elements);
        double copy = Best(() => Parallel.For(0, chunks, options, i => a.AsSpan(i * Chunk, Chunk).CopyTo(b.AsSpan(i * Chunk, Chunk))), 8.0 * elements);
        double update = Best(() => Parallel.For(0, chunks, options, i => Scale(a.AsSpan(i * Chunk, Chunk), 1.0000001f)), 8.0 * elements);
        double triad = Best(() => Parallel.For(0, chunks, options, i => Triad(a.AsSpan(i * Chunk, Chunk), b.AsSpan(i * Chunk, Chunk), c.AsSpan(i * Chunk, Chunk), 0.5f)),
                            12.0 * elements);
        GC.KeepAlive(partial);
        return new Bandwidth(read, copy, update, triad);
    }

    static void Scale(Span<float> a, float s)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            var va = MemoryMarshal.Cast<float, Vector512<float>>(a);
            var vs = Vector512.Create(s);
            for (int i = 0; i < va.Length; i++) va[i] *= vs;
            return;
        }
        var wa = MemoryMarshal.Cast<float, Vector256<float>>(a);
        var ws = Vector256.Create(s);
        for (int i = 0; i < wa.Length; i++) wa[i] *= ws;
    }

    static float Sum(ReadOnlySpan<float> x)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            var v = MemoryMarshal.Cast<float, Vector512<float>>(x);
            Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
            int i = 0;
            for (; i + 4 <= v.Length; i += 4) { s0 += v[i]; s1 += v[i + 1]; s2 += v[i + 2]; s3 += v[i + 3]; }
            for (; i < v.Length; i++) s0 += v[i];
            return Vector512.Sum(s0 + s1 + s2 + s3);
        }
        var w = MemoryMarshal.Cast<float, Vector256<float>>(x);
        Vector256<float> t0 = default, t1 = default;
        int j = 0;
        for (; j + 2 <= w.Length; j += 2) { t0 += w[j]; t1 += w[j + 1]; }
        for (; j < w.Length; j++) t0 += w[j];
        return Vector256.Sum(t0 + t1);
    }

    static void Triad(Span<float> a, ReadOnlySpan<float> b, ReadOnlySpan<float> c, float s)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            var va = MemoryMarshal.Cast<float, Vector512<float>>(a);
            var vb = MemoryMarshal.Cast<float, Vector512<float>>(b);
            var vc = MemoryMarshal.Cast<float, Vector512<float>>(c);
            var vs = Vector512.Create(s);
            for (int i = 0; i < va.Length; i++) va[i] = vb[i] + vs * vc[i];
            return;
        }
        var wa = MemoryMarshal.Cast<float, Vector256<float>>(a);
        var wb = MemoryMarshal.Cast<float, Vector256<float>>(b);
        var wc = MemoryMarshal.Cast<float, Vector256<float>>(c);
        var ws = Vector256.Create(s);
        for (int i = 0; i < wa.Length; i++) wa[i] = wb[i] + ws * wc[i];
    }
}

using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Model;
using Palm.Gpu.Research;

namespace Palm.Gpu.Benchmarks;

/// <summary>
/// The results board, benchmarks/results/MACHINE.md: the machine's ceilings, every kernel case with its
/// share of them, our GEMM against OpenBLAS, and an end-to-end training step (MFU and where its time goes).
/// Regenerate with `benchmarks/run-board.sh` (or `dotnet run -c Release --project benchmarks/Palm.Gpu.Benchmarks -- board`).
/// Kernel times here are the best of a few calls (the minimum is least disturbed by other processes on the
/// machine); the BenchmarkDotNet suites give means with error bars for the same cases.
/// </summary>
public static class ResultsBoard
{
    /// <param name="Passes">times every case (and the end-to-end step) is measured, minutes apart; the best counts</param>
    public sealed record Options(string OutDir, string? Machine, string Preset, int Batch, int? Seq, int Passes = 1);

    sealed record KernelRow(KernelCase Case, double Seconds, DevicePeak Peak, string? Problem)
    {
        public double Gflops => Case.Cost.Flops / Seconds / 1e9;
        public double GBps => Case.Cost.Bytes / Seconds / 1e9;
        public double FlopShare => Gflops / Peak.Gflops;
        public double BandwidthShare => GBps / Peak.GBps;
        public double Roofline => Peak.SecondsAtRoofline(Case.Cost) / Seconds;
        public bool MemoryBound => Case.Cost.Intensity < Peak.Ridge;
    }

    static string N(double x, string f) => double.IsFinite(x) ? x.ToString(f, CultureInfo.InvariantCulture) : "n/a";
    static string Pct(double x) => double.IsFinite(x) ? (100 * x).ToString(x < 0.1 ? "F1" : "F0", CultureInfo.InvariantCulture) + "%" : "n/a";

    /// <summary>The CPU's model name, from /proc/cpuinfo where there is one.</summary>
    public static string CpuModel()
    {
        try
        {
            if (File.Exists("/proc/cpuinfo"))
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                    if (line.StartsWith("model name", StringComparison.Ordinal)) return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException) { }
        return RuntimeInformation.ProcessArchitecture.ToString();
    }

    /// <summary>A file name for this machine: CPU model and core count, e.g. "amd-epyc-2c".</summary>
    public static string MachineSlug()
    {
        var sb = new StringBuilder();
        foreach (char ch in CpuModel().ToLowerInvariant())
            sb.Append(char.IsAsciiLetterOrDigit(ch) ? ch : '-');
        string slug = string.Join('-', sb.ToString().Split('-', StringSplitOptions.RemoveEmptyEntries).Take(5));
        return $"{(slug.Length > 0 ? slug : "machine")}-{Environment.ProcessorCount}c";
    }

    /// <summary>
    /// Best seconds of a kernel: one untimed call, then at least 3 timed (fewer only past 3 s), up to 20 or 0.5 s,
    /// each after evicting the caches (cold, as in a training step).
    /// </summary>
    static double TimeKernel(PreparedKernel k)
    {
        k.Run();
        k.Backend.Synchronize();
        double best = double.MaxValue;
        var clock = Stopwatch.StartNew();
        for (int rep = 0; rep < 20; rep++)
        {
            if (rep >= 3 && clock.Elapsed.TotalSeconds > 0.5) break;
            if (rep >= 1 && clock.Elapsed.TotalSeconds > 3) break;
            KernelCases.EvictCaches();
            long t0 = Stopwatch.GetTimestamp();
            k.Run();
            k.Backend.Synchronize();
            best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
        }
        return best;
    }

    public static string Generate(Options o, TextWriter log)
    {
        var started = DateTime.UtcNow;
        var backends = KernelCases.Backends;
        var sb = new StringBuilder();
        string machine = o.Machine ?? MachineSlug();
        sb.AppendLine($"# Results board: {machine}");
        sb.AppendLine();
        sb.AppendLine($"Regenerate: `benchmarks/run-board.sh` (writes this file). Generated {started:yyyy-MM-dd HH:mm} UTC.");
        sb.AppendLine();
        sb.AppendLine("| | |");
        sb.AppendLine("|---|---|");
        sb.AppendLine($"| CPU | {CpuModel()}, {Environment.ProcessorCount} cores, {CpuBackendInfo()} |");
        sb.AppendLine($"| memory | {N(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 1073741824.0, "F1")} GiB |");
        sb.AppendLine($"| runtime | {RuntimeInformation.FrameworkDescription}, {RuntimeInformation.OSDescription} |");
        sb.AppendLine($"| load | load average {LoadAverage()} when the board started (other processes share the cores; times are best-of-N) |");
        sb.AppendLine();

        // ---- ceilings ---------------------------------------------------------------------------
        log.WriteLine("measuring peaks ...");
        var peaks = new Dictionary<string, (string Device, DevicePeak Peak)>();
        foreach (var name in backends)
        {
            using var be = BackendRegistry.Create(name);
            peaks[name] = (be.DeviceName, MachinePeaks.For(be));
        }
        sb.AppendLine("## Ceilings");
        sb.AppendLine();
        sb.AppendLine("| backend | device | fp32 peak GFLOP/s | memory GB/s | ridge FLOP/byte | source |");
        sb.AppendLine("|---|---|---:|---:|---:|---|");
        foreach (var (name, (device, p)) in peaks)
            sb.AppendLine($"| {name} | {device} | {N(p.Gflops, "F1")} | {N(p.GBps, "F1")} | {N(p.Ridge, "F1")} | {p.Source} |");
        var bw = peaks.Values.Select(p => p.Peak.Detail).FirstOrDefault(d => d is not null) ?? MachinePeaks.BandwidthGBps(Environment.ProcessorCount);
        sb.AppendLine();
        sb.AppendLine($"CPU bandwidth detail: read {N(bw.Read, "F1")}, copy {N(bw.Copy, "F1")}, in-place update {N(bw.Update, "F1")}, triad {N(bw.Triad, "F1")} GB/s " +
                      "(256 MiB arrays, all cores, bytes counted as OpCosts counts them). " +
                      "A kernel below the ridge intensity is limited by memory, above it by arithmetic; " +
                      "**% of roofline** = the time the kernel would take at the nearer limit ÷ its measured time.");
        sb.AppendLine();

        // ---- end-to-end and kernels, in passes spread over the run (other processes come and go) ---
        var best = new Dictionary<string, StepBenchmarkResult>();
        var rows = new Dictionary<string, KernelRow>();
        var gemmBest = new Dictionary<string, GemmBenchmarks.Comparison>();
        int passes = Math.Max(1, o.Passes);
        for (int pass = 1; pass <= passes; pass++)
        {
            foreach (var name in backends)
            {
                log.WriteLine($"pass {pass}/{passes}: end-to-end step on {name} ...");
                var config = ModelConfig.Preset(o.Preset) with { SeqLen = o.Seq ?? ModelConfig.Preset(o.Preset).SeqLen };
                using var be = BackendRegistry.Create(name);
                try
                {
                    var r = StepBenchmark.Run(be, config, o.Batch, warmup: 1, steps: 3, profiledSteps: 2, peakGflops: peaks[name].Peak.Gflops);
                    if (!best.TryGetValue(name, out var b) || r.MeanStepSeconds < b.MeanStepSeconds) best[name] = r;
                }
                catch (Exception e) when (e is not OutOfMemoryException) { log.WriteLine($"  {name}: {e.Message}"); }
            }
            foreach (var name in backends)
                foreach (var c in KernelCases.All().Where(c => c.Backend == name))
                {
                    log.Write($"pass {pass}/{passes}: {c} ... ");
                    string key = c.ToString();
                    try
                    {
                        using var be = BackendRegistry.Create(name);
                        using var k = c.Prepare(be);
                        double sec = TimeKernel(k);
                        if (!rows.TryGetValue(key, out var old) || old.Problem is not null || sec < old.Seconds) rows[key] = new KernelRow(c, sec, peaks[name].Peak, null);
                        log.WriteLine($"{sec * 1e3:F2} ms");
                    }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    {
                        rows.TryAdd(key, new KernelRow(c, double.NaN, peaks[name].Peak, e.Message));
                        log.WriteLine($"failed: {e.Message}");
                    }
                }
            log.WriteLine($"pass {pass}/{passes}: GEMM vs OpenBLAS ...");
            foreach (var g in GemmBenchmarks.Compare(Environment.ProcessorCount))
                gemmBest[g.Shape.Name] = gemmBest.TryGetValue(g.Shape.Name, out var old)
                    ? old with { OursSeconds = Math.Min(old.OursSeconds, g.OursSeconds), OpenBlasSeconds = Math.Min(old.OpenBlasSeconds, g.OpenBlasSeconds) }
                    : g;
        }
        var steps = backends.Where(best.ContainsKey).Select(n => (Backend: n, Result: best[n])).ToList();

        var gemm = gemmBest.Values.ToList();
        double cpuPeak = CpuPeak.MeasureGflops(Environment.ProcessorCount);

        // ---- summary ----------------------------------------------------------------------------
        sb.AppendLine("## End to end");
        sb.AppendLine();
        sb.AppendLine($"`palm bench`'s measurement: preset `{o.Preset}`, batch {o.Batch}, random tokens; tokens/s and MFU from plain steps " +
                      "(model FLOPs 6·N + 12·L·T·D per token ÷ the fp32 peak); the breakdown from a separate profiled step (every kernel synchronized and timed).");
        sb.AppendLine();
        sb.AppendLine("| backend | parameters | seq | step s | tokens/s | achieved GFLOP/s | MFU | device high-water |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var (name, r) in steps)
            sb.AppendLine($"| {name} | {r.Parameters:N0} | {r.Config.SeqLen} | {N(r.MeanStepSeconds, "F3")} | {N(r.TokensPerSecond, "F0")} | " +
                          $"{N(r.AchievedGflops, "F1")} | {Pct(r.Mfu)}{(r.Mfu > 1 ? " (above the measured peak: its FMA loop was slowed by other work; rerun)" : "")} | {StepBreakdown.Mib(r.Memory.HighWaterBytes)} |");
        sb.AppendLine();
        foreach (var (name, r) in steps)
        {
            var peak = peaks[name].Peak;
            sb.AppendLine($"**{name}: where the time goes and how far each kernel is from its limit** (kernels over 1% of the profiled step; " +
                          "% of roofline = the time at the nearer of the FLOP and bandwidth ceilings ÷ the measured time):");
            sb.AppendLine();
            double stepMs = 1e3 * r.ProfiledStepSeconds;
            foreach (var g in r.Ops.GroupBy(x => x.Kernel).Select(g => (Kernel: g.Key, Seconds: g.Sum(x => x.Seconds), Flops: g.Sum(x => x.Flops), Bytes: g.Sum(x => x.Bytes)))
                                   .OrderByDescending(g => g.Seconds))
            {
                double share = 1e3 * g.Seconds / Math.Max(1, r.ProfiledSteps) / stepMs;
                if (share < 0.01) continue;
                double roof = peak.SecondsAtRoofline(new OpCost(g.Kernel, g.Flops, g.Bytes)) / g.Seconds;
                bool memory = new OpCost(g.Kernel, g.Flops, g.Bytes).Intensity < peak.Ridge;
                sb.AppendLine($"- `{g.Kernel}`: {Pct(share)} of the step, {N(g.Flops / g.Seconds / 1e9, "F1")} GFLOP/s, {N(g.Bytes / g.Seconds / 1e9, "F1")} GB/s — " +
                              $"{(memory ? "memory" : "compute")}-bound, at {Pct(roof)} of its roofline");
            }
            sb.AppendLine();
            sb.AppendLine($"### Where a step's time goes ({name}, ms per step)");
            sb.AppendLine();
            sb.Append(StepBreakdown.Markdown(r));
            var m = r.Memory;
            sb.AppendLine();
            sb.AppendLine($"Memory: device high-water {StepBreakdown.Mib(m.HighWaterBytes)} = parameters {StepBreakdown.Mib(m.ParameterBytes)} + gradients " +
                          $"{StepBreakdown.Mib(m.GradientBytes)} + optimizer {StepBreakdown.Mib(m.OptimizerBytes)} + activations and scratch " +
                          $"{StepBreakdown.Mib(m.HighWaterBytes - m.ParameterBytes - m.GradientBytes - m.OptimizerBytes)}. Collectives: none (one device).");
            sb.AppendLine();
        }

        // ---- GEMM vs OpenBLAS -------------------------------------------------------------------
        sb.AppendLine("## GEMM: ours vs OpenBLAS cblas_sgemm");
        sb.AppendLine();
        sb.AppendLine($"Same run, same data, {Environment.ProcessorCount} threads each, in alternating blocks (each after the other library's threads have gone idle), best call of each" + (passes > 1 ? $" over {passes} passes" : "") + $". {OpenBlas.Description}. " +
                      $"fp32 peak {N(cpuPeak, "F1")} GFLOP/s.");
        sb.AppendLine();
        sb.AppendLine("| shape | M×N×K | ours ms | ours GFLOP/s | ours % peak | OpenBLAS ms | OpenBLAS GFLOP/s | OpenBLAS % peak | ours ÷ OpenBLAS |");
        sb.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var g in gemm)
        {
            double ours = g.Shape.Flops / g.OursSeconds / 1e9, blas = g.Shape.Flops / g.OpenBlasSeconds / 1e9;
            sb.AppendLine($"| {g.Shape.Name} | {g.Shape.M}×{g.Shape.N}×{g.Shape.K} | {N(g.OursSeconds * 1e3, "F2")} | {N(ours, "F1")} | {Pct(ours / cpuPeak)} | " +
                          $"{N(g.OpenBlasSeconds * 1e3, "F2")} | {N(blas, "F1")} | {Pct(blas / cpuPeak)} | {N(ours / blas, "F2")}× |");
        }
        sb.AppendLine();

        // ---- every kernel -----------------------------------------------------------------------
        sb.AppendLine("## Every kernel");
        sb.AppendLine();
        sb.AppendLine("Shapes: `small` = B 4, T 512, D 512, H 8, G 1, K 64, F 2048, V 8192 (N = 2048 rows); " +
                      "`palm-8b-layer` = one PaLM 8B block at B 1, T 2048, D 4096, H 16, G 1, K 256, F 16384, with the head kernels at V 256k " +
                      "(the two 4-TFLOP logits GEMMs left out). GEMMs are named by their role in the model. Each call is timed with cold caches " +
                      "(128 MiB read on every core first); a row is the best of 3–20 calls" + (passes > 1 ? $" in each of {passes} passes over all cases, minutes apart" : "") +
                      ". FLOPs and bytes are counted by `OpCosts` (legend below): bytes are the minimum traffic, so GB/s and % BW peak are lower bounds. " +
                      "Other processes share this machine's two cores: a GEMM row near half of its neighbours' GFLOP/s was measured while one core was taken.");
        sb.AppendLine();
        foreach (var name in backends)
        {
            sb.AppendLine($"### {name}: {peaks[name].Device}");
            sb.AppendLine();
            sb.AppendLine("| kernel | pass | shape | ms | GFLOP/s | GB/s | FLOP/byte | % FLOP peak | % BW peak | bound | % of roofline |");
            sb.AppendLine("|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|");
            foreach (var r in rows.Values.Where(r => r.Case.Backend == name))
            {
                if (r.Problem is not null)
                {
                    sb.AppendLine($"| {r.Case.Name} | {r.Case.Pass} | {r.Case.Shape.Name} | failed: {r.Problem.ReplaceLineEndings(" ")} | | | | | | | |");
                    continue;
                }
                var c = r.Case.Cost;
                sb.AppendLine($"| {r.Case.Name} | {r.Case.Pass} | {r.Case.Shape.Name} | {N(r.Seconds * 1e3, "F3")} | {(c.Flops == 0 ? "–" : N(r.Gflops, "F1"))} | " +
                              $"{N(r.GBps, "F1")} | {(c.Flops == 0 ? "0" : N(c.Intensity, "F1"))} | {(c.Flops == 0 ? "–" : Pct(r.FlopShare))} | {Pct(r.BandwidthShare)} | " +
                              $"{(r.MemoryBound ? "memory" : "compute")} | {Pct(r.Roofline)} |");
            }
            sb.AppendLine();
        }

        sb.AppendLine("## How costs are counted (OpCosts)");
        sb.AppendLine();
        sb.AppendLine("| kernel | contract | FLOPs | bytes |");
        sb.AppendLine("|---|---|---|---|");
        foreach (var d in OpCosts.Catalog)
            sb.AppendLine($"| {d.Kernel} | {d.Contract} | {d.Flops} | {d.Bytes} |");
        sb.AppendLine();
        sb.AppendLine($"Board generated in {N((DateTime.UtcNow - started).TotalSeconds, "F0")} s.");

        Directory.CreateDirectory(o.OutDir);
        string path = Path.Combine(o.OutDir, machine + ".md");
        File.WriteAllText(path, sb.ToString());
        return path;
    }

    static string CpuBackendInfo()
    {
        using var cpu = new CpuBackend();
        return cpu.DeviceName;
    }

    static string LoadAverage()
    {
        try { return File.Exists("/proc/loadavg") ? string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "n/a"; }
        catch (IOException) { return "n/a"; }
    }
}

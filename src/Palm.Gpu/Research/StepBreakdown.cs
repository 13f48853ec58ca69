using System.Globalization;
using System.Text;
using Palm.Gpu.Backends;

namespace Palm.Gpu.Research;

/// <summary>One kernel's per-step time in each phase of a profiled step.</summary>
public sealed record BreakdownRow(string Kernel, double ForwardMs, double BackwardMs, double OptimizerMs, double CollectivesMs, double OtherMs,
                                  double Calls, double Gflops, double GBps)
{
    public double TotalMs => ForwardMs + BackwardMs + OptimizerMs + CollectivesMs + OtherMs;
}

/// <summary>The per-kernel breakdown of a <see cref="StepBenchmarkResult"/>, as rows, a text table and a Markdown table.</summary>
public static class StepBreakdown
{
    /// <summary>One row per kernel (all phases), largest total first; times and calls are per step.</summary>
    public static IReadOnlyList<BreakdownRow> Rows(StepBenchmarkResult r)
    {
        int steps = Math.Max(1, r.ProfiledSteps);
        return [.. r.Ops.GroupBy(o => o.Kernel).Select(g =>
        {
            double Ms(ProfilePhase p) => 1e3 * g.Where(o => o.Phase == p).Sum(o => o.Seconds) / steps;
            double seconds = g.Sum(o => o.Seconds);
            return new BreakdownRow(g.Key, Ms(ProfilePhase.Forward), Ms(ProfilePhase.Backward), Ms(ProfilePhase.Optimizer),
                                    Ms(ProfilePhase.Collectives), Ms(ProfilePhase.Other), (double)g.Sum(o => o.Calls) / steps,
                                    seconds > 0 ? g.Sum(o => o.Flops) / seconds / 1e9 : 0, seconds > 0 ? g.Sum(o => o.Bytes) / seconds / 1e9 : 0);
        }).OrderByDescending(x => x.TotalMs).ThenBy(x => x.Kernel, StringComparer.Ordinal)];
    }

    static string N(double x, string f) => x.ToString(f, CultureInfo.InvariantCulture);
    static string Ms(double x) => x == 0 ? "" : N(x, x < 10 ? "F2" : "F1");

    public static string Mib(long bytes) => N(bytes / 1048576.0, "F1") + " MiB";

    /// <summary>A fixed-width table for the terminal.</summary>
    public static string Text(StepBenchmarkResult r)
    {
        var rows = Rows(r);
        double kernels = rows.Sum(x => x.TotalMs);
        double step = 1e3 * r.ProfiledStepSeconds;
        var sb = new StringBuilder();
        sb.AppendLine($"per-step kernel time, profiled pass ({r.ProfiledSteps} step(s), {N(step, "F1")} ms/step; unprofiled steps {N(1e3 * r.MeanStepSeconds, "F1")} ms)");
        sb.AppendLine($"{"kernel",-24}{"forward",10}{"backward",10}{"optimizer",10}{"collect.",10}{"other",9}{"calls",8}{"GFLOP/s",9}{"GB/s",8}{"share",7}");
        foreach (var x in rows)
            sb.AppendLine($"{x.Kernel,-24}{Ms(x.ForwardMs),10}{Ms(x.BackwardMs),10}{Ms(x.OptimizerMs),10}{Ms(x.CollectivesMs),10}{Ms(x.OtherMs),9}" +
                          $"{N(x.Calls, "F0"),8}{N(x.Gflops, "F1"),9}{N(x.GBps, "F1"),8}{N(100 * x.TotalMs / step, "F1") + "%",7}");
        sb.AppendLine($"{"all kernels",-24}{Ms(rows.Sum(x => x.ForwardMs)),10}{Ms(rows.Sum(x => x.BackwardMs)),10}{Ms(rows.Sum(x => x.OptimizerMs)),10}" +
                      $"{Ms(rows.Sum(x => x.CollectivesMs)),10}{Ms(rows.Sum(x => x.OtherMs)),9}{"",8}{"",9}{"",8}{N(100 * kernels / step, "F1") + "%",7}");
        sb.AppendLine($"{"host, between kernels",-24}{"",10}{"",10}{"",10}{"",10}{"",9}{"",8}{"",9}{"",8}{N(100 * (step - kernels) / step, "F1") + "%",7}");
        if (rows.All(x => x.CollectivesMs == 0)) sb.AppendLine("collectives: none (one device)");
        var m = r.Memory;
        sb.AppendLine($"memory: device high-water {Mib(m.HighWaterBytes)} = parameters {Mib(m.ParameterBytes)} + gradients {Mib(m.GradientBytes)} + " +
                      $"optimizer {Mib(m.OptimizerBytes)} + activations and scratch {Mib(m.HighWaterBytes - m.ParameterBytes - m.GradientBytes - m.OptimizerBytes)}; " +
                      $"process peak working set {Mib(m.ProcessPeakBytes)}");
        return sb.ToString();
    }

    /// <summary>The same breakdown as a Markdown table (times in ms per step).</summary>
    public static string Markdown(StepBenchmarkResult r)
    {
        var rows = Rows(r);
        double kernels = rows.Sum(x => x.TotalMs);
        double step = 1e3 * r.ProfiledStepSeconds;
        var sb = new StringBuilder();
        sb.AppendLine("| kernel | forward ms | backward ms | optimizer ms | collectives ms | other ms | calls/step | GFLOP/s | GB/s | share of step |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var x in rows)
            sb.AppendLine($"| {x.Kernel} | {Ms(x.ForwardMs)} | {Ms(x.BackwardMs)} | {Ms(x.OptimizerMs)} | {Ms(x.CollectivesMs)} | {Ms(x.OtherMs)} | " +
                          $"{N(x.Calls, "F0")} | {N(x.Gflops, "F1")} | {N(x.GBps, "F1")} | {N(100 * x.TotalMs / step, "F1")}% |");
        sb.AppendLine($"| **all kernels** | {Ms(rows.Sum(x => x.ForwardMs))} | {Ms(rows.Sum(x => x.BackwardMs))} | {Ms(rows.Sum(x => x.OptimizerMs))} | " +
                      $"{Ms(rows.Sum(x => x.CollectivesMs))} | {Ms(rows.Sum(x => x.OtherMs))} | | | | {N(100 * kernels / step, "F1")}% |");
        sb.AppendLine($"| host, between kernels | | | | | | | | | {N(100 * (step - kernels) / step, "F1")}% |");
        return sb.ToString();
    }
}

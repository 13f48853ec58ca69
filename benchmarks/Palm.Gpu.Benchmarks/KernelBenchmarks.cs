using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using Palm.Gpu.Backends;

namespace Palm.Gpu.Benchmarks;

/// <summary>
/// One BenchmarkDotNet suite per op family: every case of <see cref="KernelCases"/> for that family, forward
/// and backward, on every backend present and both model shapes. Columns: GFLOP/s and GB/s from the op's
/// <see cref="OpCosts"/> description over the mean time, and the share of the device's FLOP and bandwidth
/// ceilings and of its roofline. Every measured call starts with cold caches (a training step streams far
/// more than the caches hold). Runs in process (the shape and backend filters are process state):
///   dotnet run -c Release --project benchmarks/Palm.Gpu.Benchmarks -- --filter '*Attention*' [--shapes small] [--backends cpu]
/// </summary>
[Config(typeof(KernelConfig))]
public abstract class KernelSuite
{
    protected abstract string Suite { get; }

    public IEnumerable<KernelCase> Cases() => KernelCases.For(Suite);

    [ParamsSource(nameof(Cases))]
    public KernelCase Case { get; set; } = null!;

    IBackend _backend = null!;
    PreparedKernel _kernel = null!;

    [GlobalSetup]
    public void Setup()
    {
        _backend = BackendRegistry.Create(Case.Backend);
        _kernel = Case.Prepare(_backend);
        _backend.Synchronize();
    }

    /// <summary>Each measured call starts with cold caches, as inside a training step.</summary>
    [IterationSetup]
    public void Evict() => KernelCases.EvictCaches();

    [Benchmark]
    public void Run()
    {
        _kernel.Run();
        _backend.Synchronize();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _kernel.Dispose();
        _backend.Dispose();
    }
}

public class MatmulKernels : KernelSuite { protected override string Suite => "matmul"; }
public class EmbeddingKernels : KernelSuite { protected override string Suite => "embedding"; }
public class LayerNormKernels : KernelSuite { protected override string Suite => "layernorm"; }
public class RopeKernels : KernelSuite { protected override string Suite => "rope"; }
public class AttentionKernels : KernelSuite { protected override string Suite => "attention"; }
public class SwiGluKernels : KernelSuite { protected override string Suite => "swiglu"; }
public class ResidualKernels : KernelSuite { protected override string Suite => "residual"; }
public class CrossEntropyKernels : KernelSuite { protected override string Suite => "cross_entropy"; }
public class ReduceKernels : KernelSuite { protected override string Suite => "reduce"; }
public class AdafactorKernels : KernelSuite { protected override string Suite => "adafactor"; }

/// <summary>A short in-process job (each suite well under a minute at the small shapes) plus the cost columns.</summary>
public sealed class KernelConfig : ManualConfig
{
    public KernelConfig()
    {
        AddJob(Job.Default.WithToolchain(InProcessEmitToolchain.Instance)
                  .WithLaunchCount(1).WithWarmupCount(1).WithIterationCount(10)
                  .WithInvocationCount(1).WithUnrollFactor(1)); // one cold call per iteration (see IterationSetup)
        WithSummaryStyle(SummaryStyle.Default.WithMaxParameterColumnWidth(48));
        AddColumn(
            Column("GFLOP/s", "FLOPs (OpCosts) / mean time", (c, s) => c.Cost.Flops == 0 ? "–" : (c.Cost.Flops / s / 1e9).ToString("F1")),
            Column("GB/s", "minimum bytes moved (OpCosts) / mean time", (c, s) => (c.Cost.Bytes / s / 1e9).ToString("F1")),
            Column("% FLOP peak", "GFLOP/s ÷ the device's fp32 peak", (c, s) => Share(c.Cost.Flops / s / 1e9, Peak(c).Gflops)),
            Column("% BW peak", "GB/s ÷ the device's measured memory bandwidth", (c, s) => Share(c.Cost.Bytes / s / 1e9, Peak(c).GBps)),
            Column("% roofline", "time at the roofline (max of FLOPs/peak, bytes/bandwidth) ÷ mean time", (c, s) => Share(Peak(c).SecondsAtRoofline(c.Cost), s)));
    }

    static MetricColumn Column(string name, string legend, Func<KernelCase, double, string> value) =>
        MetricColumn.FromSeconds(name, legend, (bc, seconds) => bc.Parameters["Case"] is KernelCase c ? value(c, seconds) : "–");

    static string Share(double x, double of) => double.IsFinite(x / of) ? (100 * x / of).ToString("F0") : "n/a";

    static readonly Dictionary<string, DevicePeak> Peaks = [];
    static DevicePeak Peak(KernelCase c)
    {
        lock (Peaks)
        {
            if (Peaks.TryGetValue(c.Backend, out var p)) return p;
            using var be = BackendRegistry.Create(c.Backend);
            return Peaks[c.Backend] = MachinePeaks.For(be);
        }
    }
}

using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace Palm.Gpu.Benchmarks;

/// <summary>
/// A numeric column derived from a case's measured mean (GFLOP/s, GB/s, % of peak, MB/s): the suites differ
/// only in the name, the legend and how the value is computed.
/// </summary>
internal sealed class MetricColumn(string name, string legend, Func<Summary, BenchmarkCase, string> value, int priority = 0) : IColumn
{
    /// <summary>A column computed from the mean time in seconds of a case that has one; "–" otherwise.</summary>
    public static MetricColumn FromSeconds(string name, string legend, Func<BenchmarkCase, double, string> value, int priority = 0) =>
        new(name, legend, (summary, bc) =>
        {
            var stats = summary[bc]?.ResultStatistics;
            return stats is null || stats.Mean <= 0 ? "–" : value(bc, stats.Mean / 1e9);
        }, priority);

    public string Id => "Metric" + name;
    public string ColumnName => name;
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => priority;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => legend;
    public bool IsDefault(Summary summary, BenchmarkCase bc) => false;
    public bool IsAvailable(Summary summary) => true;
    public string GetValue(Summary summary, BenchmarkCase bc) => value(summary, bc);
    public string GetValue(Summary summary, BenchmarkCase bc, SummaryStyle style) => value(summary, bc);
}

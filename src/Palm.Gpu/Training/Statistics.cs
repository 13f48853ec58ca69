namespace Palm.Gpu.Training;

/// <summary>Small order statistics shared by the spike guard, the ablation report and the benchmarks.</summary>
public static class Statistics
{
    /// <summary>The median (the mean of the two middle values for an even count); NaN when empty.</summary>
    public static double Median(IEnumerable<double> values)
    {
        var s = values.Order().ToArray();
        int n = s.Length;
        return n == 0 ? double.NaN : n % 2 == 1 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    }

    /// <summary>How far a typical timing (a mean or median) lies above the best one, as a fraction.</summary>
    public static double SpreadAboveBest(double typical, double best) => typical / best - 1;

    /// <summary>
    /// A typical timing this far above the best, or more, means other work shared the cores while it was measured:
    /// the benchmarks (palm bench, gemm-quick) say so beside their figures.
    /// </summary>
    public const double BusySpread = 0.10;
}

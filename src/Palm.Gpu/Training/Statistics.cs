namespace Palm.Gpu.Training;

/// <summary>Small order statistics shared by the spike guard, the ablation report and the step benchmark.</summary>
public static class Statistics
{
    /// <summary>The median (the mean of the two middle values for an even count); NaN when empty.</summary>
    public static double Median(IEnumerable<double> values)
    {
        var s = values.Order().ToArray();
        int n = s.Length;
        return n == 0 ? double.NaN : n % 2 == 1 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    }
}

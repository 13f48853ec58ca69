using Xunit.Sdk;

namespace Palm.Gpu.Tests.Support;

/// <summary>
/// The one tolerance helper every test uses: |a − e| ≤ atol + rtol·|e| elementwise, NaN and ±Inf
/// must match exactly. On failure it names the worst element, its index and both values.
/// </summary>
public static class Tolerance
{
    public static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double atol, double rtol, string what)
    {
        var e = new double[expected.Length];
        var a = new double[actual.Length];
        for (int i = 0; i < e.Length; i++) e[i] = expected[i];
        for (int i = 0; i < a.Length; i++) a[i] = actual[i];
        AssertClose(e, a, atol, rtol, what);
    }

    public static void AssertClose(ReadOnlySpan<double> expected, ReadOnlySpan<float> actual, double atol, double rtol, string what)
    {
        var a = new double[actual.Length];
        for (int i = 0; i < a.Length; i++) a[i] = actual[i];
        AssertClose(expected, a, atol, rtol, what);
    }

    public static void AssertClose(ReadOnlySpan<double> expected, ReadOnlySpan<double> actual, double atol, double rtol, string what)
    {
        if (expected.Length != actual.Length)
            throw new XunitException($"{what}: length {actual.Length}, expected {expected.Length}");
        int worst = -1;
        double worstExcess = 0;
        int failures = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double e = expected[i], x = actual[i];
            if (double.IsNaN(e) || double.IsInfinity(e) || double.IsNaN(x) || double.IsInfinity(x))
            {
                if (!(e.Equals(x))) { failures++; if (worst < 0 || double.IsFinite(worstExcess)) { worst = i; worstExcess = double.PositiveInfinity; } }
                continue;
            }
            double excess = Math.Abs(x - e) - (atol + rtol * Math.Abs(e));
            if (excess > 0)
            {
                failures++;
                if (excess > worstExcess) { worstExcess = excess; worst = i; }
            }
        }
        if (failures > 0)
            throw new XunitException(
                $"{what}: {failures}/{expected.Length} elements outside atol={atol:g3} rtol={rtol:g3}; worst at [{worst}]: got {actual[worst]:g9}, expected {expected[worst]:g9}");
    }

    /// <summary>Largest |a−e| / (atol + rtol·|e|) ratio, for reporting how close a comparison came.</summary>
    public static double WorstRatio(ReadOnlySpan<double> expected, ReadOnlySpan<float> actual, double atol, double rtol)
    {
        double worst = 0;
        for (int i = 0; i < expected.Length; i++)
            worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]) / (atol + rtol * Math.Abs(expected[i])));
        return worst;
    }
}

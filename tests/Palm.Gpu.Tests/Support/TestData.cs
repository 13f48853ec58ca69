namespace Palm.Gpu.Tests.Support;

/// <summary>Seeded random inputs and finite differences shared by the kernel tests.</summary>
public static class TestData
{
    /// <summary>n values uniform in [−scale, scale), reproducible from the seed.</summary>
    public static float[] Uniform(int seed, int n, float scale = 1f)
    {
        var rng = new Random(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)((rng.NextDouble() * 2 - 1) * scale);
        return x;
    }

    public static int[] Tokens(int seed, int n, int vocab)
    {
        var rng = new Random(seed);
        var x = new int[n];
        for (int i = 0; i < n; i++) x[i] = rng.Next(vocab);
        return x;
    }

    public static double[] ToDouble(float[] x) => Array.ConvertAll(x, v => (double)v);

    /// <summary>
    /// Central finite differences of a scalar function in double precision:
    /// grad[i] = (f(x + h·e_i) − f(x − h·e_i)) / 2h. x is restored afterwards.
    /// </summary>
    public static double[] NumericGradient(Func<double[], double> f, double[] x, double h = 1e-6)
    {
        var g = new double[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            double old = x[i];
            x[i] = old + h; double fp = f(x);
            x[i] = old - h; double fm = f(x);
            x[i] = old;
            g[i] = (fp - fm) / (2 * h);
        }
        return g;
    }

    /// <summary>Σ w·y: turns a vector output into a scalar loss with a fixed random upstream gradient w.</summary>
    public static double Dot(double[] w, double[] y)
    {
        double s = 0;
        for (int i = 0; i < w.Length; i++) s += w[i] * y[i];
        return s;
    }
}

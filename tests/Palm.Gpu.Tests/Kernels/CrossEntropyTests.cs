using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

public class CrossEntropyTests
{
    const int Threads = 2;

    // Per row: logZ = log Σ exp(x) (max-subtracted), loss = logZ − x[target], in double.
    static void Reference(double[] logits, int[] targets, int n, int v, double[] losses, double[] logZ)
    {
        for (int i = 0; i < n; i++)
        {
            double max = double.NegativeInfinity;
            for (int j = 0; j < v; j++) max = Math.Max(max, logits[i * v + j]);
            double sum = 0;
            for (int j = 0; j < v; j++) sum += Math.Exp(logits[i * v + j] - max);
            logZ[i] = max + Math.Log(sum);
            losses[i] = logZ[i] - logits[i * v + targets[i]];
        }
    }

    // The scalar the backward differentiates: scale · Σ_rows (CE + zLoss·logZ²).
    static double Objective(double[] logits, int[] targets, int n, int v, double scale, double zLoss)
    {
        var losses = new double[n];
        var logZ = new double[n];
        Reference(logits, targets, n, v, losses, logZ);
        double total = 0;
        for (int i = 0; i < n; i++) total += losses[i] + zLoss * logZ[i] * logZ[i];
        return scale * total;
    }

    static int[] Targets(int seed, int n, int v)
    {
        var t = TestData.Tokens(seed, n, v);
        t[0] = v - 1; // the last logit of a row
        if (n > 1) t[1] = 0;
        return t;
    }




    // With logits near ±1000 every row of dlogits must be finite and sum to scale·2·zLoss·logZ
    // (the softmax part sums to scale·(1 + 2·zLoss·logZ), the one-hot part to −scale).
    [Fact]
    public void Backward_LargeLogits_FiniteAndRowSumsMatch()
    {
        const int n = 2, v = 67;
        const float scale = 0.5f, zLoss = 1e-4f;
        var logits = TestData.Uniform(87, n * v, 5f);
        for (int j = 0; j < v; j++) { logits[j] += 1000f; logits[v + j] -= 1000f; }
        var targets = Targets(88, n, v);
        var losses = new float[n];
        var logZ = new float[n];
        CpuCrossEntropy.Forward(Threads, losses, logZ, logits, targets, n, v);
        CpuCrossEntropy.Backward(Threads, logits, logits, logZ, targets, scale, zLoss, n, v);
        for (int i = 0; i < n; i++)
        {
            double sum = 0;
            for (int j = 0; j < v; j++) { Assert.True(float.IsFinite(logits[i * v + j])); sum += logits[i * v + j]; }
            Tolerance.AssertClose(new[] { scale * 2.0 * zLoss * logZ[i] }, new[] { (float)sum }, 1e-6, 1e-3, $"row {i} sum of dlogits");
        }
    }

    [Fact]
    public void OutOfRangeTarget_Throws()
    {
        const int n = 2, v = 5;
        var logits = TestData.Uniform(89, n * v);
        var e = Assert.Throws<IndexOutOfRangeException>(() =>
            CpuCrossEntropy.Forward(Threads, new float[n], new float[n], logits, new[] { 1, v }, n, v));
        Assert.Contains("target 5", e.Message);
        Assert.Throws<IndexOutOfRangeException>(() =>
            CpuCrossEntropy.Backward(Threads, new float[n * v], logits, new float[n], new[] { -1, 0 }, 1f, 0f, n, v));
    }
}

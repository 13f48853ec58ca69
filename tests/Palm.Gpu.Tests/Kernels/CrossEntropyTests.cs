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

    [Theory]
    [InlineData(3, 7, 0f)]
    [InlineData(5, 37, 2f)]
    [InlineData(4, 1003, -1f)]
    [InlineData(3, 50, 1000f)]  // exp(1000) overflows: only the max-subtracted form survives
    [InlineData(3, 50, -1000f)]
    public void Forward_MatchesReference(int n, int v, float offset)
    {
        var logits = TestData.Uniform(81, n * v, 4f);
        for (int i = 0; i < logits.Length; i++) logits[i] += offset;
        var targets = Targets(82, n, v);
        var targetLogit = new float[n];
        var logZ = new float[n];
        CpuCrossEntropy.Forward(Threads, logZ, targetLogit, logits, targets, n, v, 0);

        var expectedLosses = new double[n];
        var expectedLogZ = new double[n];
        Reference(TestData.ToDouble(logits), targets, n, v, expectedLosses, expectedLogZ);
        var losses = new double[n];
        for (int i = 0; i < n; i++)
        {
            Assert.Equal(logits[i * v + targets[i]], targetLogit[i]);   // the logit itself, not a difference
            losses[i] = (double)logZ[i] - targetLogit[i];
        }
        Tolerance.AssertClose(expectedLosses, losses.Select(x => (float)x).ToArray(), 1e-5, 1e-5, "losses");
        Tolerance.AssertClose(expectedLogZ, logZ, 1e-5, 1e-6, "logZ");
    }

    // zLoss = 1e-4 is PaLM's value; 0.1 makes the z-loss term a large part of the gradient.
    // The logits carry an offset so logZ is far from 0 and the z term matters.
    [Theory]
    [InlineData(3, 7, 1e-4f)]
    [InlineData(3, 7, 0.1f)]
    [InlineData(5, 37, 1e-4f)]
    [InlineData(5, 37, 0.1f)]
    public void Backward_MatchesFiniteDifferences(int n, int v, float zLoss)
    {
        var logits = TestData.Uniform(83, n * v, 3f);
        for (int i = 0; i < logits.Length; i++) logits[i] += 1.5f;
        var targets = Targets(84, n, v);
        float scale = 1f / n;
        var targetLogit = new float[n];
        var logZ = new float[n];
        CpuCrossEntropy.Forward(Threads, logZ, targetLogit, logits, targets, n, v, 0);
        var dlogits = new float[n * v];
        dlogits.AsSpan().Fill(42f); // overwritten
        CpuCrossEntropy.Backward(Threads, dlogits, logits, logZ, targets, scale, zLoss, n, v, 0);

        var expected = TestData.NumericGradient(x => Objective(x, targets, n, v, scale, zLoss), TestData.ToDouble(logits));
        Tolerance.AssertClose(expected, dlogits, 1e-7, 1e-5, "dlogits");

        // The comparison is sharp enough to see the z-loss term: dropping it must fail.
        var withoutZ = new float[n * v];
        CpuCrossEntropy.Backward(Threads, withoutZ, logits, logZ, targets, scale, 0f, n, v, 0);
        Assert.True(Tolerance.WorstRatio(expected, withoutZ, 1e-7, 1e-5) > 1, "the z-loss term is below the test's resolution");
    }

    [Fact]
    public void Backward_InPlaceOverLogits_GivesSameBits()
    {
        const int n = 4, v = 1003;
        var logits = TestData.Uniform(85, n * v, 5f);
        var targets = Targets(86, n, v);
        var targetLogit = new float[n];
        var logZ = new float[n];
        CpuCrossEntropy.Forward(Threads, logZ, targetLogit, logits, targets, n, v, 0);
        var dlogits = new float[n * v];
        CpuCrossEntropy.Backward(Threads, dlogits, logits, logZ, targets, 0.25f, 1e-4f, n, v, 0);

        var inPlace = (float[])logits.Clone();
        CpuCrossEntropy.Backward(Threads, inPlace, inPlace, logZ, targets, 0.25f, 1e-4f, n, v, 0);
        Assert.Equal(Array.ConvertAll(dlogits, BitConverter.SingleToInt32Bits), Array.ConvertAll(inPlace, BitConverter.SingleToInt32Bits));
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
        var targetLogit = new float[n];
        var logZ = new float[n];
        CpuCrossEntropy.Forward(Threads, logZ, targetLogit, logits, targets, n, v, 0);
        CpuCrossEntropy.Backward(Threads, logits, logits, logZ, targets, scale, zLoss, n, v, 0);
        for (int i = 0; i < n; i++)
        {
            double sum = 0;
            for (int j = 0; j < v; j++) { Assert.True(float.IsFinite(logits[i * v + j])); sum += logits[i * v + j]; }
            Tolerance.AssertClose(new[] { scale * 2.0 * zLoss * logZ[i] }, new[] { (float)sum }, 1e-6, 1e-3, $"row {i} sum of dlogits");
        }
    }

    // Three unequal shards of a vocabulary: the per-shard normalisers combined by the shift / finish kernels (max,
    // then Σ exp in double rounded once, as the collectives add) equal the one-shard logZ, the target logits summed
    // over shards equal the target's logit exactly, and each shard's backward with the global logZ is its columns
    // of the unsharded gradient (finite differences of the unsharded objective).
    [Theory]
    [InlineData(5, 37, new[] { 12, 12, 13 }, 0.1f)]
    [InlineData(4, 64, new[] { 16, 32, 16 }, 1e-4f)]
    public void Shards_CombineToUnsharded(int n, int v, int[] widths, float zLoss)
    {
        Assert.Equal(v, widths.Sum());
        var logits = TestData.Uniform(90, n * v, 4f);
        var targets = Targets(91, n, v);
        targets[n - 1] = widths[0];   // the first column of the second shard
        var logZ = new float[n];
        var targetLogit = new float[n];
        CpuCrossEntropy.Forward(Threads, logZ, targetLogit, logits, targets, n, v, 0);

        int shards = widths.Length;
        var shardLogits = new float[shards][];
        var shardLogZ = new float[shards][];
        var shardTarget = new float[shards][];
        for (int m = 0, v0 = 0; m < shards; v0 += widths[m], m++)
        {
            shardLogits[m] = new float[n * widths[m]];
            for (int i = 0; i < n; i++) Array.Copy(logits, i * v + v0, shardLogits[m], i * widths[m], widths[m]);
            shardLogZ[m] = new float[n];
            shardTarget[m] = new float[n];
            shardTarget[m].AsSpan().Fill(float.NaN);   // written for every row, in the shard or not
            CpuCrossEntropy.Forward(Threads, shardLogZ[m], shardTarget[m], shardLogits[m], targets, n, widths[m], v0);
        }
        var max = new float[n];
        var sumExp = new double[n];
        var tl = new float[n];
        for (int i = 0; i < n; i++) max[i] = Enumerable.Range(0, shards).Max(m => shardLogZ[m][i]);
        for (int m = 0; m < shards; m++)
        {
            var shifted = new float[n];
            CpuCrossEntropy.LogSumExpShift(Threads, shifted, shardLogZ[m], max, n);
            for (int i = 0; i < n; i++) { sumExp[i] += shifted[i]; tl[i] += shardTarget[m][i]; }
        }
        var combined = new float[n];
        CpuCrossEntropy.LogSumExpFinish(Threads, combined, max, sumExp.Select(x => (float)x).ToArray(), n);
        Tolerance.AssertClose(TestData.ToDouble(logZ), combined, 1e-6, 1e-6, "combined logZ");
        Assert.Equal(targetLogit, tl);

        float scale = 1f / n;
        var expected = TestData.NumericGradient(x => Objective(x, targets, n, v, scale, zLoss), TestData.ToDouble(logits));
        for (int m = 0, v0 = 0; m < shards; v0 += widths[m], m++)
        {
            var dlogits = new float[n * widths[m]];
            CpuCrossEntropy.Backward(Threads, dlogits, shardLogits[m], combined, targets, scale, zLoss, n, widths[m], v0);
            var cols = new double[n * widths[m]];
            for (int i = 0; i < n; i++) Array.Copy(expected, i * v + v0, cols, i * widths[m], widths[m]);
            Tolerance.AssertClose(cols, dlogits, 1e-7, 1e-5, $"dlogits of shard {m}");
        }
    }

    [Fact]
    public void NegativeTarget_Throws()
    {
        const int n = 2, v = 5;
        var logits = TestData.Uniform(89, n * v);
        var e = Assert.Throws<IndexOutOfRangeException>(() =>
            CpuCrossEntropy.Forward(Threads, new float[n], new float[n], logits, new[] { 1, -2 }, n, v, 0));
        Assert.Contains("target -2", e.Message);
        Assert.Throws<IndexOutOfRangeException>(() =>
            CpuCrossEntropy.Backward(Threads, new float[n * v], logits, new float[n], new[] { -1, 0 }, 1f, 0f, n, v, 0));
    }
}

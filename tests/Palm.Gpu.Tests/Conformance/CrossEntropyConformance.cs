using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

// Softmax cross-entropy with z-loss on every backend. logits (N,V), targets (N) -> logZ (N), targetLogit (N) (loss = logZ − targetLogit);
// backward dlogits (N,V) = scale·(softmax·(1 + 2·zLoss·logZ) − onehot), may alias logits. exp/log and the
// row-sum trees differ between backends: a few ulps vs the CPU.
[Collection(ConformanceCollection.Name)]
public class CrossEntropyConformance(ConformanceFixture fx)
{
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
        t[0] = v - 1;
        if (n > 1) t[1] = 0;
        return t;
    }

    static float[] Logits(int n, int v, float offset)
    {
        var x = TestData.Uniform(81, n * v, 4f);
        for (int i = 0; i < x.Length; i++) x[i] += offset;
        return x;
    }

    static Action<Palm.Gpu.Backends.IBackend, Func<string, Palm.Gpu.Tensors.DeviceBuffer>> Call(int n, int v, float scale, float zLoss) => (be, t) =>
    {
        be.CrossEntropyForward(t("logZ"), t("targetLogit"), t("logits"), t("targets"), n, v, 0);
        be.CrossEntropyBackward(t("dlogits"), t("logits"), t("logZ"), t("targets"), scale, zLoss, n, v, 0);
        be.CrossEntropyBackward(t("logits2"), t("logits2"), t("logZ"), t("targets"), scale, zLoss, n, v, 0);   // in place
        be.CrossEntropyBackward(t("noZ"), t("logits"), t("logZ"), t("targets"), scale, 0f, n, v, 0);
    };

    static OpCase Case(int n, int v, float offset) => new OpCase().F("logits", Logits(n, v, offset)).F("logits2", Logits(n, v, offset))
        .I("targets", Targets(82, n, v)).Zeros("targetLogit", n).Zeros("logZ", n).F("dlogits", TestData.Uniform(83, n * v)).Zeros("noZ", n * v);

    // 1000 / −1000: exp overflows unless the max is subtracted; 1000, 1003 and 8192: many vectors, blocks and a tail.
    // zLoss = 1e-4 is PaLM's value; 0.1 makes the z-loss term a large part of the gradient.
    public static IEnumerable<object[]> Shapes => ConformanceBackends.Cross(
        [3, 7, 0f, 1e-4f], [3, 7, 1.5f, 0.1f], [5, 37, 1.5f, 1e-4f], [5, 37, 1.5f, 0.1f], [4, 64, 2f, 1e-4f], [3, 1000, 0f, 1e-4f], [4, 1003, -1f, 1e-4f],
        [3, 50, 1000f, 1e-4f], [3, 50, -1000f, 1e-4f], [2, 8192, 0f, 1e-4f]);

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Forward_and_backward_match_reference_finite_differences_and_cpu(string backend, int n, int v, float offset, float zLoss)
    {
        float scale = 1f / n;
        var (actual, cpu) = fx.RunBoth(backend, Case(n, v, offset), Call(n, v, scale, zLoss), "targetLogit", "logZ", "dlogits", "logits2", "noZ");
        var logits = TestData.ToDouble(Logits(n, v, offset));
        var targets = Targets(82, n, v);
        var el = new double[n]; var ez = new double[n];
        Reference(logits, targets, n, v, el, ez);
        var losses = actual["logZ"].Zip(actual["targetLogit"], (z, t) => (float)((double)z - t)).ToArray();
        Tolerance.AssertClose(el, losses, 1e-5, 1e-5, $"{backend}: losses");
        var logitsF = Logits(n, v, offset);
        Bits.AssertIdentical(Enumerable.Range(0, n).Select(i => logitsF[i * v + targets[i]]).ToArray(), actual["targetLogit"], $"{backend}: target logits are copied");
        Tolerance.AssertClose(ez, actual["logZ"], 1e-5, 1e-6, $"{backend}: logZ");
        Bits.AssertIdentical(actual["dlogits"], actual["logits2"], $"{backend}: dlogits in place over logits");
        if (n * v <= 200 && Math.Abs(offset) < 100)
        {
            var expected = TestData.NumericGradient(x => Objective(x, targets, n, v, scale, zLoss), logits);
            Tolerance.AssertClose(expected, actual["dlogits"], 1e-7, 1e-5, $"{backend}: dlogits");
            // The comparison is sharp enough to see the z-loss term: dropping it must fail.
            Assert.True(Tolerance.WorstRatio(expected, actual["noZ"], 1e-7, 1e-5) > 1, $"{backend}: the z-loss term is below the test's resolution");
        }
        for (int i = 0; i < n * v; i++) Assert.True(float.IsFinite(actual["dlogits"][i]), $"{backend}: dlogits[{i}] not finite");
        fx.AssertMatchesCpu(backend, actual, cpu, 1e-7, 1e-5, "cross-entropy");
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Same_bits_on_every_run(string backend) =>
        fx.AssertDeterministic(backend, Case(4, 1003, 0f), Call(4, 1003, 0.25f, 1e-4f), "targetLogit", "logZ", "dlogits");

    // With logits near ±1000 every row of dlogits must be finite and sum to scale·2·zLoss·logZ (the softmax part sums
    // to scale·(1 + 2·zLoss·logZ), the one-hot part to −scale).
    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Backward_rows_sum_to_the_z_loss_term_at_large_logits(string backend)
    {
        const int n = 2, v = 67;
        const float scale = 0.5f, zLoss = 1e-4f;
        var logits = TestData.Uniform(87, n * v, 5f);
        for (int j = 0; j < v; j++) { logits[j] += 1000f; logits[v + j] -= 1000f; }
        var targets = Targets(88, n, v);
        var be = fx.Get(backend);
        var r = new OpCase().F("logits", logits).I("targets", targets).Zeros("targetLogit", n).Zeros("logZ", n).Run(be, t =>
        {
            be.CrossEntropyForward(t("logZ"), t("targetLogit"), t("logits"), t("targets"), n, v, 0);
            be.CrossEntropyBackward(t("logits"), t("logits"), t("logZ"), t("targets"), scale, zLoss, n, v, 0);
        }, "logits", "logZ");
        for (int i = 0; i < n; i++)
        {
            double sum = 0;
            for (int j = 0; j < v; j++) { Assert.True(float.IsFinite(r["logits"][i * v + j]), $"{backend}: dlogits[{i},{j}] not finite"); sum += r["logits"][i * v + j]; }
            Tolerance.AssertClose(new[] { scale * 2.0 * zLoss * r["logZ"][i] }, new[] { (float)sum }, 1e-6, 1e-3, $"{backend}: row {i} sum of dlogits");
        }
    }

    // ---- a vocabulary split over devices ------------------------------------------------------------

    /// <summary>
    /// Unequal shards of a vocabulary (columns [v0, v0 + width) of the logits): each shard's forward with vocabStart, the
    /// per-shard normalisers combined as the collectives do (max over shards; LogSumExpShift per shard; Σ exp in double
    /// rounded once; LogSumExpFinish, also with logZ over sumExp), and each shard's backward with the combined logZ
    /// (also in place). Also the unsharded forward and backward for comparison.
    /// </summary>
    internal static (OpCase Op, Action<IBackend, Func<string, DeviceBuffer>> Call, string[] Outputs) ShardCase(int n, int v, int[] widths, float zLoss,
                                                                                                               out float[] logits, out int[] targets)
    {
        logits = TestData.Uniform(90, n * v, 4f);
        targets = Targets(91, n, v);
        targets[n - 1] = widths[0];   // the first column of the second shard
        int shards = widths.Length;
        var v0 = widths.Select((_, m) => widths.Take(m).Sum()).ToArray();
        float scale = 1f / n;
        var op = new OpCase().F("logits", logits).I("targets", targets).Zeros("logZ", n).Zeros("targetLogit", n).Zeros("full", n * v)
            .Zeros("max", n).Zeros("sum", n).Zeros("combined", n).Zeros("aliased", n);
        var outputs = new List<string> { "logZ", "targetLogit", "full", "combined", "aliased" };
        for (int m = 0; m < shards; m++)
        {
            var part = new float[n * widths[m]];
            for (int i = 0; i < n; i++) Array.Copy(logits, i * v + v0[m], part, i * widths[m], widths[m]);
            op.F("l" + m, part).F("li" + m, part).Zeros("z" + m, n).F("t" + m, Enumerable.Repeat(float.NaN, n).ToArray())   // written for every row
                .Zeros("s" + m, n).F("d" + m, TestData.Uniform(92 + m, n * widths[m]));   // overwritten
            outputs.AddRange(["z" + m, "t" + m, "s" + m, "d" + m, "li" + m]);
        }
        void Call(IBackend be, Func<string, DeviceBuffer> t)
        {
            be.CrossEntropyForward(t("logZ"), t("targetLogit"), t("logits"), t("targets"), n, v, 0);
            be.CrossEntropyBackward(t("full"), t("logits"), t("logZ"), t("targets"), scale, zLoss, n, v, 0);
            var max = Enumerable.Repeat(float.NegativeInfinity, n).ToArray();
            for (int m = 0; m < shards; m++)
            {
                be.CrossEntropyForward(t("z" + m), t("t" + m), t("l" + m), t("targets"), n, widths[m], v0[m]);
                var z = be.ToHost(t("z" + m));
                for (int i = 0; i < n; i++) max[i] = Math.Max(max[i], z[i]);
            }
            be.Upload(t("max"), max);
            var sumExp = new double[n];
            for (int m = 0; m < shards; m++)
            {
                be.LogSumExpShift(t("s" + m), t("z" + m), t("max"), n);
                var shifted = be.ToHost(t("s" + m));
                for (int i = 0; i < n; i++) sumExp[i] += shifted[i];
            }
            var rounded = sumExp.Select(x => (float)x).ToArray();
            be.Upload(t("sum"), rounded);
            be.Upload(t("aliased"), rounded);
            be.LogSumExpFinish(t("combined"), t("max"), t("sum"), n);
            be.LogSumExpFinish(t("aliased"), t("max"), t("aliased"), n);   // logZ aliases sumExp
            for (int m = 0; m < shards; m++)
            {
                be.CrossEntropyBackward(t("d" + m), t("l" + m), t("combined"), t("targets"), scale, zLoss, n, widths[m], v0[m]);
                be.CrossEntropyBackward(t("li" + m), t("li" + m), t("combined"), t("targets"), scale, zLoss, n, widths[m], v0[m]);   // in place
            }
        }
        return (op, Call, [.. outputs]);
    }

    public static IEnumerable<object[]> ShardCases => ConformanceBackends.Cross(
        [5, 37, new[] { 12, 12, 13 }, 0.1f], [4, 64, new[] { 16, 32, 16 }, 1e-4f], [6, 1000, new[] { 200, 333, 467 }, 1e-4f]);

    // The combined normaliser equals the one-shard logZ; the target logits summed over shards equal the target's logit
    // exactly (each shard gives the logit itself or 0); each shard's backward is its columns of the unsharded gradient
    // (finite differences of the unsharded objective where small, else the unsharded backward).
    [Theory]
    [MemberData(nameof(ShardCases))]
    public void Shards_combine_to_unsharded(string backend, int n, int v, int[] widths, float zLoss)
    {
        Assert.Equal(v, widths.Sum());
        var (op, call, outputs) = ShardCase(n, v, widths, zLoss, out var logits, out var targets);
        var (actual, cpu) = fx.RunBoth(backend, op, call, outputs);
        Tolerance.AssertClose(TestData.ToDouble(actual["logZ"]), actual["combined"], 1e-6, 1e-6, $"{backend}: combined logZ");
        Bits.AssertIdentical(actual["combined"], actual["aliased"], $"{backend}: LogSumExpFinish with logZ over sumExp");
        var tl = new float[n];
        for (int m = 0, v0 = 0; m < widths.Length; v0 += widths[m], m++)
        {
            var expectedT = Enumerable.Range(0, n).Select(i => targets[i] >= v0 && targets[i] < v0 + widths[m] ? logits[i * v + targets[i]] : 0f).ToArray();
            Bits.AssertIdentical(expectedT, actual["t" + m], $"{backend}: target logits of shard {m}");
            for (int i = 0; i < n; i++) tl[i] += actual["t" + m][i];
        }
        Assert.Equal(actual["targetLogit"], tl);

        float scale = 1f / n;
        var expected = n * v <= 400
            ? TestData.NumericGradient(x => Objective(x, targets, n, v, scale, zLoss), TestData.ToDouble(logits))
            : TestData.ToDouble(actual["full"]);
        for (int m = 0, v0 = 0; m < widths.Length; v0 += widths[m], m++)
        {
            var cols = new double[n * widths[m]];
            for (int i = 0; i < n; i++) Array.Copy(expected, i * v + v0, cols, i * widths[m], widths[m]);
            Tolerance.AssertClose(cols, actual["d" + m], 1e-7, 1e-5, $"{backend}: dlogits of shard {m}");
            Bits.AssertIdentical(actual["d" + m], actual["li" + m], $"{backend}: shard {m} backward in place");
        }
        fx.AssertMatchesCpu(backend, actual, cpu, 1e-7, 1e-5, "cross-entropy shards");
    }
}

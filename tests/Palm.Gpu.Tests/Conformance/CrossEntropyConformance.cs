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
    };

    static OpCase Case(int n, int v, float offset) => new OpCase().F("logits", Logits(n, v, offset)).F("logits2", Logits(n, v, offset))
        .I("targets", Targets(82, n, v)).Zeros("targetLogit", n).Zeros("logZ", n).F("dlogits", TestData.Uniform(83, n * v));

    // 1000 / −1000: exp overflows unless the max is subtracted; 1003 and 8192: many vectors, blocks and a tail.
    public static IEnumerable<object[]> Shapes => ConformanceBackends.Cross(
        [3, 7, 0f, 1e-4f], [5, 37, 1.5f, 0.1f], [4, 64, 2f, 1e-4f], [4, 1003, -1f, 1e-4f], [3, 50, 1000f, 1e-4f], [3, 50, -1000f, 1e-4f], [2, 8192, 0f, 1e-4f]);

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Forward_and_backward_match_reference_finite_differences_and_cpu(string backend, int n, int v, float offset, float zLoss)
    {
        float scale = 1f / n;
        var (actual, cpu) = fx.RunBoth(backend, Case(n, v, offset), Call(n, v, scale, zLoss), "targetLogit", "logZ", "dlogits", "logits2");
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
        }
        for (int i = 0; i < n * v; i++) Assert.True(float.IsFinite(actual["dlogits"][i]), $"{backend}: dlogits[{i}] not finite");
        fx.AssertMatchesCpu(backend, actual, cpu, 1e-7, 1e-5, "cross-entropy");
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Same_bits_on_every_run(string backend) =>
        fx.AssertDeterministic(backend, Case(4, 1003, 0f), Call(4, 1003, 0.25f, 1e-4f), "targetLogit", "logZ", "dlogits");
}

using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

// Token embedding on every backend. tokens (N), table (rows,D) of vocabulary rows [v0, v0 + rows) -> out (N,D) =
// table[tokens − v0], a zero row for a token outside the shard; backward dtable (rows,D) += scatter-add of dout rows by
// token, nothing for tokens outside. A gather and additions in token order: every backend promises the CPU's bits.
[Collection(ConformanceCollection.Name)]
public class EmbeddingConformance(ConformanceFixture fx)
{
    static double[] Reference(int[] tokens, double[] table, int n, int d, int v0, int rows)
    {
        var y = new double[n * d];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++)
                y[i * d + j] = tokens[i] - v0 >= 0 && tokens[i] - v0 < rows ? table[(tokens[i] - v0) * d + j] : 0;
        return y;
    }

    // n, d, v, v0, rows: one device (v0 0, all rows) on odd and aligned sizes, rows nobody asks for (v > n), and
    // shards of a vocabulary whose tokens fall on both sides of them.
    public static IEnumerable<object[]> Shapes => ConformanceBackends.Cross(
        [3, 7, 5, 0, 5], [7, 37, 4, 0, 4], [6, 133, 3, 0, 3], [64, 128, 50, 0, 50], [5, 37, 11, 0, 11], [9, 130, 4, 0, 4],
        [9, 7, 9, 3, 3], [12, 19, 8, 4, 4]);

    static OpCase Case(int n, int d, int v, int v0, int rows, out int[] tokens)
    {
        tokens = TestData.Tokens(43, n, v);
        tokens[0] = tokens[n - 1] = v0 + rows - 1;   // the shard's last row, and at least one repeat
        return new OpCase().I("tokens", tokens).F("table", TestData.Uniform(44, rows * d)).F("dout", TestData.Uniform(45, n * d))
            .Zeros("out", n * d).F("dtable", TestData.Uniform(46, rows * d));
    }

    static Action<IBackend, Func<string, DeviceBuffer>> Call(int n, int d, int v0, int rows) => (be, t) =>
    {
        be.EmbeddingForward(t("out"), t("tokens"), t("table"), n, d, v0, rows);
        be.EmbeddingBackward(t("dtable"), t("tokens"), t("dout"), n, d, v0, rows);
    };

    // L = Σ w ⊙ table[tokens − v0]; repeated tokens make rows of dtable sum several upstream rows; dtable starts
    // non-zero because it accumulates.
    [Theory]
    [MemberData(nameof(Shapes))]
    public void Forward_gathers_rows_and_backward_matches_finite_differences(string backend, int n, int d, int v, int v0, int rows)
    {
        var op = Case(n, d, v, v0, rows, out var tokens);
        var (actual, cpu) = fx.RunBoth(backend, op, Call(n, d, v0, rows), "out", "dtable");
        var table = TestData.ToDouble(TestData.Uniform(44, rows * d));
        Tolerance.AssertClose(Reference(tokens, table, n, d, v0, rows), actual["out"], 0, 0, $"{backend}: gather");
        var wd = TestData.ToDouble(TestData.Uniform(45, n * d));
        var dtable0 = TestData.Uniform(46, rows * d);
        var expected = TestData.NumericGradient(tt => TestData.Dot(wd, Reference(tokens, tt, n, d, v0, rows)), table);
        for (int i = 0; i < expected.Length; i++) expected[i] += dtable0[i];
        Tolerance.AssertClose(expected, actual["dtable"], 1e-6, 1e-5, $"{backend}: dtable");
        fx.AssertMatchesCpu(backend, actual, cpu, 0, 0, "embedding");
    }

    /// <summary>
    /// A shard with ids on both sides of it: the rows just past each end, an id past the vocabulary (nobody's row), a
    /// repeated row; out starts as garbage (every row is written), dtable accumulates into existing values.
    /// </summary>
    internal static (OpCase Op, Action<IBackend, Func<string, DeviceBuffer>> Call) OutsideCase(int n, int d, int v, int v0, int rows, out int[] tokens)
    {
        tokens = TestData.Tokens(11, n, v);
        tokens[n - 1] = tokens[0] = v0 + rows - 1;
        if (n > 2) tokens[1] = v + 3;
        if (n > 4) { tokens[2] = v0 + rows; tokens[3] = Math.Max(0, v0 - 1); }
        var op = new OpCase().I("tokens", tokens).F("table", TestData.Uniform(12, rows * d)).F("dout", TestData.Uniform(13, n * d))
            .F("out", TestData.Uniform(15, n * d)).F("dtable", TestData.Uniform(14, rows * d));
        return (op, Call(n, d, v0, rows));
    }

    // Sizes past one row block and token load (300 × 70 into 200 rows at 130), a one-row shard at the end.
    public static IEnumerable<object[]> OutsideShapes => ConformanceBackends.Cross([7, 13, 5, 0, 5], [300, 70, 400, 130, 200], [33, 9, 40, 39, 1]);

    [Theory]
    [MemberData(nameof(OutsideShapes))]
    public void Tokens_outside_the_shard_give_zero_rows_and_no_gradient(string backend, int n, int d, int v, int v0, int rows)
    {
        var (op, call) = OutsideCase(n, d, v, v0, rows, out var tokens);
        var (actual, cpu) = fx.RunBoth(backend, op, call, "out", "dtable");
        Tolerance.AssertClose(Reference(tokens, TestData.ToDouble(TestData.Uniform(12, rows * d)), n, d, v0, rows), actual["out"], 0, 0, $"{backend}: gather");
        var dtable = TestData.ToDouble(TestData.Uniform(14, rows * d));
        var dout = TestData.Uniform(13, n * d);
        for (int i = 0; i < n; i++)
            if (tokens[i] - v0 >= 0 && tokens[i] - v0 < rows)
                for (int j = 0; j < d; j++) dtable[(tokens[i] - v0) * d + j] += dout[i * d + j];
        Tolerance.AssertClose(dtable, actual["dtable"], 1e-6, 1e-5, $"{backend}: dtable");
        fx.AssertMatchesCpu(backend, actual, cpu, 0, 0, "embedding shard");
    }

    // The shards' lookups sum to the unsharded one and their gradients are its rows, bit for bit (each row comes from one shard).
    public static IEnumerable<object[]> Splits => ConformanceBackends.Cross([11, 7, 12, 3], [40, 33, 10, 2]);

    [Theory]
    [MemberData(nameof(Splits))]
    public void Shards_sum_to_unsharded(string backend, int n, int d, int v, int shards)
    {
        var tokens = TestData.Tokens(53, n, v);
        tokens[0] = v - 1;
        tokens[1] = 0;
        var table = TestData.Uniform(54, v * d);
        var dtable = TestData.Uniform(56, v * d);
        int rows = v / shards;
        var op = new OpCase().I("tokens", tokens).F("table", table).F("dout", TestData.Uniform(55, n * d)).Zeros("full", n * d).F("dfull", dtable);
        for (int m = 0; m < shards; m++)
            op.F("part" + m, table[(m * rows * d)..((m + 1) * rows * d)]).F("out" + m, Enumerable.Repeat(float.NaN, n * d).ToArray())   // every row is written
                .F("dpart" + m, dtable[(m * rows * d)..((m + 1) * rows * d)]);
        var outputs = new[] { "full", "dfull" }.Concat(Enumerable.Range(0, shards).SelectMany(m => new[] { "out" + m, "dpart" + m })).ToArray();
        var be = fx.Get(backend);
        var r = op.Run(be, t =>
        {
            be.EmbeddingForward(t("full"), t("tokens"), t("table"), n, d, 0, v);
            be.EmbeddingBackward(t("dfull"), t("tokens"), t("dout"), n, d, 0, v);
            for (int m = 0; m < shards; m++)
            {
                be.EmbeddingForward(t("out" + m), t("tokens"), t("part" + m), n, d, m * rows, rows);
                be.EmbeddingBackward(t("dpart" + m), t("tokens"), t("dout"), n, d, m * rows, rows);
            }
        }, outputs);
        var summed = new float[n * d];
        var dsharded = (float[])dtable.Clone();
        for (int m = 0; m < shards; m++)
        {
            var part = TestData.ToDouble(table[(m * rows * d)..((m + 1) * rows * d)]);
            Tolerance.AssertClose(Reference(tokens, part, n, d, m * rows, rows), r["out" + m], 0, 0, $"{backend}: shard {m}");
            for (int i = 0; i < summed.Length; i++) summed[i] += r["out" + m][i];
            r["dpart" + m].CopyTo(dsharded, m * rows * d);
        }
        Bits.AssertIdentical(r["full"], summed, $"{backend}: shards' lookups summed");
        Bits.AssertIdentical(r["dfull"], dsharded, $"{backend}: shards' gradients");
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Backward_same_bits_on_every_run(string backend)
    {
        const int n = 600, d = 300, v = 9;   // several column blocks; every token repeats ~67 times
        var dout = TestData.Uniform(48, n * d);
        for (int i = 0; i < dout.Length; i += 13) dout[i] *= 1000f;   // make the summation order visible in the bits
        var op = new OpCase().I("tokens", TestData.Tokens(47, n, v)).F("table", TestData.Uniform(49, v * d)).F("dout", dout)
            .Zeros("out", n * d).F("dtable", TestData.Uniform(50, v * d));
        fx.AssertDeterministic(backend, op, Call(n, d, 0, v), "out", "dtable");
        var (actual, cpu) = fx.RunBoth(backend, op, Call(n, d, 0, v), "dtable");
        fx.AssertMatchesCpu(backend, actual, cpu, 0, 0, "embedding, many repeats");
    }

    // The entry points check the shard's table and rows against the sizes before any pointer arithmetic.
    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Buffers_too_small_for_the_shard_are_refused(string backend)
    {
        var be = fx.Get(backend);
        using var tokens = be.Allocate("tokens", 4, ElementType.I32);
        be.Upload(tokens, new[] { 5, 6, 7, 0 });
        using var table = be.Allocate("table", 3 * 8);
        using var rows = be.Allocate("rows", 4 * 8);
        be.EmbeddingBackward(table, tokens, rows, 4, 8, 5, 3);
        var e = Assert.Throws<ArgumentException>(() => be.EmbeddingBackward(table, tokens, rows, 4, 8, 5, 4));
        Assert.Contains("table", e.Message);
        Assert.Throws<ArgumentException>(() => be.EmbeddingForward(rows, tokens, table, 5, 8, 0, 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => be.EmbeddingForward(rows, tokens, table, 4, 8, -1, 3));
    }
}

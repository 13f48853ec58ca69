using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

// The decode ops of the KV-cache generator on every backend.
// rope forward at:   inp (B,Hs,K), positions (B) -> out (B,Hs,K), the bits of RopeForward at each position
// attention decode:  q (B,H,K), kCache, vCache (B,Tmax,G,K), lengths (B) -> out (B,H,K)
[Collection(ConformanceCollection.Name)]
public class DecodeConformance(ConformanceFixture fx)
{
    // K/2 = 1, 4, 32; positions 0, past 64, up to 299.
    public static IEnumerable<object[]> RopeShapes => ConformanceBackends.Cross(
        [1, 4, 1, 2], [3, 70, 3, 8], [2, 300, 2, 64]);

    [Theory]
    [MemberData(nameof(RopeShapes))]
    public void Rope_at_a_position_equals_rope_over_the_sequence_at_that_row(string backend, int b, int t, int heads, int kd)
    {
        int row = heads * kd, n = b * t * row;
        var x = TestData.Uniform(61, n);
        var positions = Enumerable.Range(0, b).Select(s => (s * 37 + t - 1) % t).ToArray();
        positions[0] = 0;
        var gathered = new float[b * row];
        for (int s = 0; s < b; s++) Array.Copy(x, ((long)s * t + positions[s]) * row, gathered, (long)s * row, row);
        var be = fx.Get(backend);
        var full = new OpCase().F("x", x).Zeros("out", n).Run(be, v => be.RopeForward(v("out"), v("x"), b, t, heads, kd), "out")["out"];
        var op = new OpCase().F("x", gathered).I("pos", positions).Zeros("out", b * row).F("inplace", gathered);
        var (actual, cpu) = fx.RunBoth(backend, op, (e, v) =>
        {
            e.RopeForwardAt(v("out"), v("x"), v("pos"), b, heads, kd);
            e.RopeForwardAt(v("inplace"), v("inplace"), v("pos"), b, heads, kd);
        }, "out", "inplace");
        var expected = new float[b * row];
        for (int s = 0; s < b; s++) Array.Copy(full, ((long)s * t + positions[s]) * row, expected, (long)s * row, row);
        // Same formula for the angle as the table: the same bits as the full-sequence op on this backend.
        Bits.AssertIdentical(expected, actual["out"], $"{backend}: rope at vs rope");
        Bits.AssertIdentical(actual["out"], actual["inplace"], $"{backend}: in place");
        fx.AssertMatchesCpu(backend, actual, cpu, 1e-6, 1e-5, "rope at");
    }

    static double[] Reference(float[] q, float[] kc, float[] vc, int[] lengths, int b, int tMax, int heads, int kvHeads, int kd)
    {
        var o = new double[b * heads * kd];
        int group = heads / kvHeads;
        for (int s = 0; s < b; s++)
            for (int h = 0; h < heads; h++)
            {
                int g = h / group, len = lengths[s];
                var sc = new double[len];
                double max = double.NegativeInfinity;
                for (int j = 0; j < len; j++)
                {
                    double dot = 0;
                    for (int d = 0; d < kd; d++) dot += (double)q[(s * heads + h) * kd + d] * kc[((s * tMax + j) * kvHeads + g) * kd + d];
                    sc[j] = dot / Math.Sqrt(kd);
                    max = Math.Max(max, sc[j]);
                }
                double sum = 0;
                for (int j = 0; j < len; j++) { sc[j] = Math.Exp(sc[j] - max); sum += sc[j]; }
                for (int j = 0; j < len; j++)
                    for (int d = 0; d < kd; d++) o[(s * heads + h) * kd + d] += sc[j] / sum * vc[((s * tMax + j) * kvHeads + g) * kd + d];
            }
        return o;
    }

    // (b, tMax, H, G, K): multi-query, multi-head, groups of 2; K below, at and past 16 lanes; caches past one work-group.
    public static IEnumerable<object[]> AttentionShapes => ConformanceBackends.Cross(
        [1, 1, 1, 1, 2], [2, 9, 4, 1, 8], [3, 130, 4, 4, 20], [2, 70, 8, 2, 64], [4, 33, 2, 1, 128]);

    [Theory]
    [MemberData(nameof(AttentionShapes))]
    public void Attention_decode_matches_reference_and_cpu(string backend, int b, int tMax, int heads, int kvHeads, int kd)
    {
        int nq = b * heads * kd, nkv = b * tMax * kvHeads * kd;
        var lengths = Enumerable.Range(0, b).Select(s => s == 0 ? tMax : 1 + (s * 29) % tMax).ToArray();
        var q = TestData.Uniform(71, nq);
        var kc = TestData.Uniform(72, nkv);
        var vc = TestData.Uniform(73, nkv);
        for (int i = 0; i < q.Length; i++) q[i] *= 3f;   // sharper softmax than uniform noise gives
        var op = new OpCase().F("q", q).F("k", kc).F("v", vc).I("len", lengths).Zeros("out", nq);
        var (actual, cpu) = fx.RunBoth(backend, op, (e, v) =>
            e.AttentionDecode(v("out"), v("q"), v("k"), v("v"), v("len"), b, tMax, heads, kvHeads, kd), "out");
        Tolerance.AssertClose(Reference(q, kc, vc, lengths, b, tMax, heads, kvHeads, kd), actual["out"], 1e-6, 1e-5, $"{backend}: out");
        fx.AssertMatchesCpu(backend, actual, cpu, 1e-6, 1e-5, "attention decode");
    }

    // Decoding row t against a cache of t + 1 rows is causal attention's row t.
    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Attention_decode_equals_causal_attention_at_the_last_row(string backend)
    {
        const int b = 2, t = 37, heads = 4, kvHeads = 1, kd = 16;
        int nq = b * t * heads * kd, nkv = b * t * kvHeads * kd;
        var q = TestData.Uniform(81, nq);
        var kc = TestData.Uniform(82, nkv);
        var vc = TestData.Uniform(83, nkv);
        var be = fx.Get(backend);
        var full = new OpCase().F("q", q).F("k", kc).F("v", vc).Zeros("out", nq).Zeros("lse", b * heads * t)
            .Run(be, v => be.AttentionForward(v("out"), v("lse"), v("q"), v("k"), v("v"), b, t, heads, kvHeads, kd), "out")["out"];
        int[] rows = [t - 1, 11];
        var qRows = new float[b * heads * kd];
        var expected = new float[b * heads * kd];
        for (int s = 0; s < b; s++)
        {
            Array.Copy(q, ((long)s * t + rows[s]) * heads * kd, qRows, (long)s * heads * kd, heads * kd);
            Array.Copy(full, ((long)s * t + rows[s]) * heads * kd, expected, (long)s * heads * kd, heads * kd);
        }
        var got = new OpCase().F("q", qRows).F("k", kc).F("v", vc).I("len", rows.Select(r => r + 1).ToArray()).Zeros("out", b * heads * kd)
            .Run(be, v => be.AttentionDecode(v("out"), v("q"), v("k"), v("v"), v("len"), b, t, heads, kvHeads, kd), "out")["out"];
        Tolerance.AssertClose(TestData.ToDouble(expected), got, 1e-6, 1e-5, $"{backend}: decode vs forward");
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Same_bits_on_every_run(string backend)
    {
        const int b = 3, tMax = 90, heads = 8, kvHeads = 1, kd = 64;
        fx.AssertDeterministic(backend,
            new OpCase().F("q", TestData.Uniform(91, b * heads * kd)).F("k", TestData.Uniform(92, b * tMax * kd)).F("v", TestData.Uniform(93, b * tMax * kd))
                .I("len", [90, 45, 3]).I("pos", [0, 44, 89]).Zeros("out", b * heads * kd).Zeros("rope", b * heads * kd),
            (be, v) =>
            {
                be.AttentionDecode(v("out"), v("q"), v("k"), v("v"), v("len"), b, tMax, heads, kvHeads, kd);
                be.RopeForwardAt(v("rope"), v("q"), v("pos"), b, heads, kd);
            }, "out", "rope");
    }

    [Fact]
    public void Bad_sizes_and_lengths_are_refused()
    {
        var be = fx.Cpu;
        var op = new OpCase().F("q", new float[8]).F("k", new float[8]).F("v", new float[8]).I("len", [2]).I("bad", [0]).Zeros("out", 8).F("f", new float[1]);
        op.Run(be, v =>
        {
            var e = Assert.Throws<ArgumentException>(() => be.AttentionDecode(v("out"), v("q"), v("k"), v("v"), v("len"), 1, 3, 2, 1, 4));
            Assert.Contains("kCache", e.Message);
            Assert.Throws<ArgumentException>(() => be.AttentionDecode(v("out"), v("q"), v("k"), v("v"), v("f"), 1, 2, 2, 1, 4));
            Assert.Throws<ArgumentOutOfRangeException>(() => be.AttentionDecode(v("out"), v("q"), v("k"), v("v"), v("bad"), 1, 2, 2, 1, 4));
            Assert.Throws<ArgumentException>(() => be.RopeForwardAt(v("out"), v("q"), v("f"), 1, 2, 4));
        });
    }
}

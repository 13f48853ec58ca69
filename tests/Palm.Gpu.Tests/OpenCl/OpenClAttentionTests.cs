using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.OpenCl;

/// <summary>
/// Tiled causal attention on OpenCL against the CPU backend and against a plain double-precision
/// reference (full softmax, analytic gradients), for multi-query (G = 1), grouped and multi-head
/// (G = H) layouts, with T below, equal to and past the 16-row tiles of CPU devices.
/// </summary>
[Collection(OpenClCollection.Name)]
public class OpenClAttentionTests(OpenClFixture fx)
{
    public static TheoryData<int, int, int, int, int> Shapes => new()
    {
        { 2, 13, 4, 1, 8 },    // multi-query, one partial tile
        { 1, 37, 3, 3, 8 },    // multi-head, three tiles, the last partial
        { 2, 32, 4, 2, 16 },   // grouped, whole tiles
        { 1, 1, 2, 1, 8 },     // a single position
        { 1, 19, 2, 1, 6 },    // head dim not a multiple of 4
    };

    static int Kv(int h, int heads, int kvHeads) => h / (heads / kvHeads);

    /// <summary>Double-precision forward and backward with the full T×T softmax.</summary>
    static (double[] Out, double[] Lse, double[] Dq, double[] Dk, double[] Dv) Reference(
        float[] q, float[] k, float[] v, float[] dout, int b, int t, int heads, int kvHeads, int headDim)
    {
        double scale = 1 / Math.Sqrt(headDim);
        var o = new double[q.Length]; var lse = new double[b * heads * t];
        var dq = new double[q.Length]; var dk = new double[k.Length]; var dv = new double[v.Length];
        long Q(int bb, int tt, int h) => ((long)(bb * t + tt) * heads + h) * headDim;
        long KV(int bb, int tt, int g) => ((long)(bb * t + tt) * kvHeads + g) * headDim;
        for (int bb = 0; bb < b; bb++)
            for (int h = 0; h < heads; h++)
            {
                int g = Kv(h, heads, kvHeads);
                for (int i = 0; i < t; i++)
                {
                    var s = new double[i + 1];
                    double max = double.NegativeInfinity;
                    for (int j = 0; j <= i; j++)
                    {
                        double dot = 0;
                        for (int d = 0; d < headDim; d++) dot += (double)q[Q(bb, i, h) + d] * k[KV(bb, j, g) + d];
                        s[j] = dot * scale;
                        max = Math.Max(max, s[j]);
                    }
                    double z = 0;
                    for (int j = 0; j <= i; j++) z += Math.Exp(s[j] - max);
                    lse[(bb * heads + h) * t + i] = max + Math.Log(z);
                    var p = new double[i + 1];
                    for (int j = 0; j <= i; j++) p[j] = Math.Exp(s[j] - max) / z;
                    for (int j = 0; j <= i; j++)
                        for (int d = 0; d < headDim; d++) o[Q(bb, i, h) + d] += p[j] * v[KV(bb, j, g) + d];
                    // Backward: dp_j = dout·v_j, ds_j = p_j (dp_j − Σ p dp).
                    var dp = new double[i + 1];
                    double pdp = 0;
                    for (int j = 0; j <= i; j++)
                    {
                        for (int d = 0; d < headDim; d++) dp[j] += (double)dout[Q(bb, i, h) + d] * v[KV(bb, j, g) + d];
                        pdp += p[j] * dp[j];
                    }
                    for (int j = 0; j <= i; j++)
                    {
                        double ds = p[j] * (dp[j] - pdp);
                        for (int d = 0; d < headDim; d++)
                        {
                            dv[KV(bb, j, g) + d] += p[j] * dout[Q(bb, i, h) + d];
                            dq[Q(bb, i, h) + d] += ds * k[KV(bb, j, g) + d] * scale;
                            dk[KV(bb, j, g) + d] += ds * q[Q(bb, i, h) + d] * scale;
                        }
                    }
                }
            }
        return (o, lse, dq, dk, dv);
    }

    static OpCase Case(int b, int t, int heads, int kvHeads, int headDim, int seed)
    {
        int nq = b * t * heads * headDim, nkv = b * t * kvHeads * headDim;
        return new OpCase()
            .F("q", TestData.Uniform(seed, nq, 2f)).F("k", TestData.Uniform(seed + 1, nkv, 2f)).F("v", TestData.Uniform(seed + 2, nkv))
            .F("dout", TestData.Uniform(seed + 3, nq))
            .Zeros("out", nq).Zeros("lse", b * heads * t)
            .F("dq", TestData.Uniform(seed + 4, nq)).F("dk", TestData.Uniform(seed + 5, nkv)).F("dv", TestData.Uniform(seed + 6, nkv));   // overwritten
    }

    static readonly string[] Outputs = ["out", "lse", "dq", "dk", "dv"];

    Dictionary<string, float[]> Run(Palm.Gpu.Backends.IBackend be, OpCase op, int b, int t, int heads, int kvHeads, int headDim)
        => op.Run(be, x =>
        {
            be.AttentionForward(x("out"), x("lse"), x("q"), x("k"), x("v"), b, t, heads, kvHeads, headDim);
            be.AttentionBackward(x("dq"), x("dk"), x("dv"), x("dout"), x("q"), x("k"), x("v"), x("out"), x("lse"), b, t, heads, kvHeads, headDim);
        }, Outputs);

    [Theory]
    [MemberData(nameof(Shapes))]
    public void ForwardAndBackward_MatchDoubleReference(int b, int t, int heads, int kvHeads, int headDim)
    {
        var op = Case(b, t, heads, kvHeads, headDim, 100 + t);
        var ocl = Run(fx.Ocl, op, b, t, heads, kvHeads, headDim);
        var inputs = op.Run(fx.Ocl, _ => { }, "q", "k", "v", "dout");
        var r = Reference(inputs["q"], inputs["k"], inputs["v"], inputs["dout"], b, t, heads, kvHeads, headDim);
        Tolerance.AssertClose(r.Out, ocl["out"], 1e-5, 1e-5, "out");
        Tolerance.AssertClose(r.Lse, ocl["lse"], 1e-5, 1e-5, "lse");
        Tolerance.AssertClose(r.Dq, ocl["dq"], 2e-5, 1e-4, "dq");
        Tolerance.AssertClose(r.Dk, ocl["dk"], 2e-5, 1e-4, "dk");
        Tolerance.AssertClose(r.Dv, ocl["dv"], 2e-5, 1e-4, "dv");
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void ForwardAndBackward_MatchCpu(int b, int t, int heads, int kvHeads, int headDim)
    {
        var op = Case(b, t, heads, kvHeads, headDim, 200 + t);
        var ocl = Run(fx.Ocl, op, b, t, heads, kvHeads, headDim);
        var cpu = Run(fx.Cpu, op, b, t, heads, kvHeads, headDim);
        Tolerance.AssertClose(cpu["out"], ocl["out"], 1e-5, 1e-5, "out");
        Tolerance.AssertClose(cpu["lse"], ocl["lse"], 1e-5, 1e-5, "lse");
        foreach (var name in new[] { "dq", "dk", "dv" }) Tolerance.AssertClose(cpu[name], ocl[name], 2e-5, 1e-4, name);
    }

    [Fact]
    public void SameBitsOnEveryRun()
    {
        var op = Case(2, 37, 4, 1, 8, 300);
        var first = Run(fx.Ocl, op, 2, 37, 4, 1, 8);
        var second = Run(fx.Ocl, op, 2, 37, 4, 1, 8);
        foreach (var name in Outputs) Bits.AssertIdentical(first[name], second[name], name);
    }
}

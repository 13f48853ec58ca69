using Palm.Gpu.Backends;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

// The fused GEMM of the parallel block: C, A and B given as pieces concatenated along M, N or K, each piece its own
// row-major matrix, with every transpose, alpha and accumulate. Checked against the reference on the whole operands
// (every backend, pieces as views of one allocation with guards around each), against the CPU, and, on the CPU, bit
// for bit: pieces along M or N equal one Matmul per piece, pieces along K one Matmul on the concatenated operands.
[Collection(ConformanceCollection.Name)]
public class MatmulPiecesConformance(ConformanceFixture fx)
{
    // Sizes across the 14×32 / 6×16 tiles and the 256-deep K block; extents that cut tiles and K blocks in odd places,
    // and an empty piece.
    public static IEnumerable<object[]> Cases => ConformanceBackends.Cross(
        ["M", 33, 65, 300, new[] { 5, 20, 0, 8 }],
        ["N", 33, 65, 300, new[] { 7, 40, 18 }],
        ["K", 33, 65, 300, new[] { 100, 3, 0, 197 }],
        ["M", 61, 70, 40, new[] { 30, 31 }],
        ["N", 29, 130, 20, new[] { 64, 2, 64 }],
        ["K", 45, 70, 600, new[] { 250, 350 }]);

    /// <summary>Rows [r0, r1) × columns [c0, c1) of a row-major matrix with `cols` columns, as its own matrix.</summary>
    static float[] Block(float[] x, int cols, int r0, int r1, int c0, int c1)
    {
        var y = new float[(r1 - r0) * (c1 - c0)];
        for (int r = r0; r < r1; r++) Array.Copy(x, r * cols + c0, y, (r - r0) * (c1 - c0), c1 - c0);
        return y;
    }

    /// <summary>Pieces of a stored rows × cols matrix along its rows (byRows) or its columns, by extents.</summary>
    static float[][] Split(float[] x, int rows, int cols, bool byRows, int[] extents)
    {
        var pieces = new float[extents.Length][];
        for (int i = 0, at = 0; i < extents.Length; at += extents[i], i++)
            pieces[i] = byRows ? Block(x, cols, at, at + extents[i], 0, cols) : Block(x, cols, 0, rows, at, at + extents[i]);
        return pieces;
    }

    /// <summary>The operands as the op takes them: A, B and C pieces (one piece where the axis does not split it).</summary>
    static (float[][] A, float[][] B, float[][] C) Pieces(MatmulSplit split, int[] ext, float[] a, float[] b, float[] c, int m, int n, int k, bool transA, bool transB)
    {
        float[][] one(float[] x) => [x];
        // A stored (M,K), or (K,M) when transA; B stored (K,N), or (N,K) when transB.
        var pa = split switch
        {
            MatmulSplit.M => Split(a, transA ? k : m, transA ? m : k, byRows: !transA, ext),
            MatmulSplit.K => Split(a, transA ? k : m, transA ? m : k, byRows: transA, ext),
            _ => one(a),
        };
        var pb = split switch
        {
            MatmulSplit.N => Split(b, transB ? n : k, transB ? k : n, byRows: transB, ext),
            MatmulSplit.K => Split(b, transB ? n : k, transB ? k : n, byRows: !transB, ext),
            _ => one(b),
        };
        var pc = split switch
        {
            MatmulSplit.M => Split(c, m, n, byRows: true, ext),
            MatmulSplit.N => Split(c, m, n, byRows: false, ext),
            _ => one(c),
        };
        return (pa, pb, pc);
    }

    /// <summary>The C pieces put back together as one (M,N) matrix.</summary>
    static float[] Join(MatmulSplit split, int[] ext, Dictionary<string, float[]> r, int m, int n)
    {
        if (split == MatmulSplit.K) return r["c0"];
        var c = new float[m * n];
        for (int i = 0, at = 0; i < ext.Length; at += ext[i], i++)
        {
            var p = r[$"c{i}"];
            for (int row = 0; row < (split == MatmulSplit.M ? ext[i] : m); row++)
                if (split == MatmulSplit.M) Array.Copy(p, row * n, c, (at + row) * n, n);
                else Array.Copy(p, row * ext[i], c, row * n + at, ext[i]);
        }
        return c;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Pieces_match_the_whole_operands_on_every_transpose(string backend, string axis, int m, int n, int k, int[] ext)
    {
        var split = Enum.Parse<MatmulSplit>(axis);
        var a = TestData.Uniform(11, m * k); var b = TestData.Uniform(12, k * n); var c0 = TestData.Uniform(13, m * n);
        var be = fx.Get(backend);
        foreach (bool transA in new[] { false, true })
            foreach (bool transB in new[] { false, true })
                foreach (bool accumulate in new[] { false, true })
                {
                    float alpha = accumulate ? -0.75f : 1.5f;
                    var prior = accumulate ? c0 : Enumerable.Repeat(float.NaN, m * n).ToArray();
                    var (pa, pb, pc) = Pieces(split, ext, a, b, prior, m, n, k, transA, transB);
                    var op = new OpCase();
                    for (int i = 0; i < pa.Length; i++) op.F($"a{i}", pa[i]);
                    for (int i = 0; i < pb.Length; i++) op.F($"b{i}", pb[i]);
                    for (int i = 0; i < pc.Length; i++) op.F($"c{i}", pc[i]);
                    var outputs = Enumerable.Range(0, pc.Length).Select(i => $"c{i}").ToArray();
                    void Call(IBackend x, Func<string, Palm.Gpu.Tensors.DeviceBuffer> t) => x.MatmulPieces(split, ext,
                        outputs.Select(t).ToArray(), Enumerable.Range(0, pa.Length).Select(i => t($"a{i}")).ToArray(),
                        Enumerable.Range(0, pb.Length).Select(i => t($"b{i}")).ToArray(), m, n, k, transA, transB, alpha, accumulate);
                    var actual = op.RunInViews(be, t => Call(be, t), outputs);
                    var cpu = op.Run(fx.Cpu, t => Call(fx.Cpu, t), outputs);
                    string what = $"{axis} {string.Join(",", ext)} {m}x{n}x{k} transA={transA} transB={transB} accumulate={accumulate}";

                    var (expected, atol) = MatmulConformance.Reference(a, b, accumulate ? c0 : null, m, n, k, transA, transB, alpha);
                    Tolerance.AssertClose(expected, Join(split, ext, actual, m, n), atol, 0, $"{backend}: {what}");
                    fx.AssertMatchesCpu(backend, actual, cpu, 2e-6 * Math.Sqrt(k), 1e-5, what);

                    // The CPU's promise: the bits of one Matmul per piece (M, N) or of one Matmul on the whole operands (K).
                    if (!fx.SameBitsAsCpu(backend)) continue;
                    if (split == MatmulSplit.K)
                    {
                        var whole = new OpCase().F("a", a).F("b", b).F("c", prior)
                            .Run(fx.Cpu, t => fx.Cpu.Matmul(t("c"), t("a"), t("b"), m, n, k, transA, transB, alpha, accumulate), "c");
                        Bits.AssertIdentical(whole["c"], actual["c0"], $"{backend} {what}: vs one Matmul on the whole operands");
                    }
                    else
                    {
                        for (int i = 0; i < ext.Length; i++)
                        {
                            int pm = split == MatmulSplit.M ? ext[i] : m, pn = split == MatmulSplit.N ? ext[i] : n;
                            var one = new OpCase().F("a", pa[split == MatmulSplit.M ? i : 0]).F("b", pb[split == MatmulSplit.N ? i : 0]).F("c", pc[i])
                                .Run(fx.Cpu, t => fx.Cpu.Matmul(t("c"), t("a"), t("b"), pm, pn, k, transA, transB, alpha, accumulate), "c");
                            Bits.AssertIdentical(one["c"], actual[$"c{i}"], $"{backend} {what}: piece {i} vs its own Matmul");
                        }
                    }
                }
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Bad_pieces_are_refused_with_what_is_wrong(string backend)
    {
        var be = fx.Get(backend);
        using var a = be.Allocate("a", 4 * 6); using var b0 = be.Allocate("b0", 6 * 2); using var b1 = be.Allocate("b1", 6 * 3);
        using var c0 = be.Allocate("c0", 4 * 2); using var c1 = be.Allocate("c1", 4 * 3);
        var ex = Assert.Throws<ArgumentException>(() => be.MatmulPieces(MatmulSplit.N, [2, 2], [c0, c1], [a], [b0, b1], 4, 5, 6));
        Assert.Contains("sum to 4 but N = 5", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => be.MatmulPieces(MatmulSplit.N, [2, 3], [c0], [a], [b0, b1], 4, 5, 6));
        Assert.Contains("c has 1 buffers; split along N it needs 2", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => be.MatmulPieces(MatmulSplit.N, [3, 2], [c0, c1], [a], [b0, b1], 4, 5, 6));
        Assert.Contains("c[0] 'c0' has 8 elements", ex.Message);
        using var cc = be.Allocate("cc", 32);
        ex = Assert.Throws<ArgumentException>(() => be.MatmulPieces(MatmulSplit.N, [2, 3], [cc.Slice(0, 16), cc.Slice(0, 16)], [a], [b0, b1], 4, 5, 6));
        Assert.Contains("overlaps", ex.Message);
    }
}

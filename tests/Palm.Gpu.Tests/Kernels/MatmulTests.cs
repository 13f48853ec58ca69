using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

// C (M,N) = alpha · op(A) (M,K) · op(B) (K,N) [+ C]; A stored (M,K) or (K,M) when transA, B stored (K,N) or (N,K) when transB.
// Checked against a double-precision scalar reference for every transpose combination, with and without accumulate,
// on sizes that are not multiples of any tile, and for identical bits across thread counts and instruction paths.
// In the SIMD-width collection: these tests read CpuMatmul.BestPath, which SimdWidthTests lower while they run.
[Collection(SimdWidthCollection.Name)]
public class MatmulTests
{
    private const float Alpha = 0.37f;

    /// <summary>Blocking small enough that modest sizes cross many K, M and N blocks.</summary>
    private static readonly GemmBlocking Tiny = new(Kc: 16, McPanels: 2, Nc: 64);
    /// <summary>The default blocking of the widest path this machine runs (GemmBlocking.For sizes it per tile height).</summary>
    private static readonly GemmBlocking BestDefault = GemmBlocking.For(CpuMatmul.BestPath);

    private static readonly (bool TransA, bool TransB)[] Transposes = { (false, false), (false, true), (true, false), (true, true) };

    private static IEnumerable<GemmPath> SupportedPaths() =>
        Enum.GetValues<GemmPath>().Where(CpuMatmul.IsSupported);

    // Double-precision C = alpha·op(A)·op(B) [+ C0] and twice the worst-case fp32 error: the conformance suite's.
    private static (double[] Expected, double Atol) Reference(float[] a, float[] b, float[]? c0, int m, int n, int k,
                                                              bool transA, bool transB, float alpha)
        => Conformance.MatmulConformance.Reference(a, b, c0, m, n, k, transA, transB, alpha);

    /// <summary>Runs the kernel into a C that has a NaN sentinel tail, checks the tail survived and returns the M·N result.</summary>
    private static float[] RunMatmul(int threads, float[] a, float[] b, float[]? c0, int m, int n, int k, bool transA, bool transB,
                                     float alpha, GemmPath path, GemmBlocking blocking)
    {
        const int Guard = 40;
        var c = new float[m * n + Guard];
        if (c0 is not null) Array.Copy(c0, c, m * n);
        else Array.Fill(c, float.NaN, 0, m * n); // overwrite mode must not read C
        Array.Fill(c, float.NaN, m * n, Guard);
        CpuMatmul.Run(threads, c, a, b, m, n, k, transA, transB, alpha, c0 is not null, path, blocking);
        for (int t = m * n; t < c.Length; t++)
            Assert.True(float.IsNaN(c[t]), $"matmul wrote past the end of C at offset {t - m * n}");
        return c[..(m * n)];
    }

    private static void AssertSameBits(float[] expected, float[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
                Assert.Fail($"{what}: element {i} differs: {expected[i]:g9} vs {actual[i]:g9}");
    }

    // The tuner may pick any of its candidates (path, KC, MC, NC): every one must give the same bits, on
    // shapes that cross several K blocks, A blocks and B panels, so that what the machine measures fastest never
    // changes a result.
    [Theory]
    [InlineData(300, 1100, 600)]
    [InlineData(97, 4200, 270)]
    public void Every_tuner_variant_gives_the_same_bits(int m, int n, int k)
    {
        var a = TestData.Uniform(21, m * k);
        var b = TestData.Uniform(22, k * n);
        var prior = TestData.Uniform(23, m * n);
        var candidates = GemmTuner.Candidates();
        Assert.Contains(candidates, c => c.Blocking.Kc != candidates[0].Blocking.Kc);
        // The tuner measures the hardware, not the path a test has narrowed the kernels to: its choice is made once per
        // process, whichever call comes first.
        int saved = CpuSimd.Bits;
        try
        {
            CpuSimd.Bits = 0;
            Assert.Equal(candidates, GemmTuner.Candidates());
        }
        finally
        {
            CpuSimd.Bits = saved;
        }
        foreach (var (transA, transB) in new[] { (false, false), (true, false), (false, true) })
        {
            var first = RunMatmul(2, a, b, prior, m, n, k, transA, transB, Alpha, candidates[0].Path, candidates[0].Blocking);
            foreach (var (path, blocking) in candidates.Skip(1))
                AssertSameBits(first, RunMatmul(2, a, b, prior, m, n, k, transA, transB, Alpha, path, blocking),
                               $"{m}x{n}x{k} transA={transA} transB={transB}: {path} {blocking} vs {candidates[0].Path} {candidates[0].Blocking}");
        }
        // What it chose is one of them and says so.
        var choice = GemmTuner.For(2);
        Assert.True(choice.Candidates == 1 || new[] { choice.Blocking, choice.BlockingTransA, choice.BlockingTransATall }.All(b => candidates.Contains((choice.Path, b))),
                    $"the tuner chose {choice.Description}, not one of its candidates");
        Assert.Contains($"kc {choice.Blocking.Kc}", choice.Description);
        Assert.Equal(choice.Blocking, choice.For(transA: false, m: 4096));
        Assert.Equal(choice.BlockingTransA, choice.For(transA: true, m: GemmChoice.ShortM));
        Assert.Equal(choice.BlockingTransATall, choice.For(transA: true, m: GemmChoice.ShortM + 1));
    }

    // PALM_GEMM pins the blocking for A/B runs across processes: each kind of call gets its own or the forward one, the
    // rows become whole tiles of the path, and anything malformed is refused with the form it should have.
    [Fact]
    public void PalmGemmPinsTheBlockingOrSaysWhatItShouldBe()
    {
        Assert.Null(GemmTuner.Pinned(null, GemmPath.Vector512, "cpu"));
        Assert.Null(GemmTuner.Pinned(" ", GemmPath.Vector512, "cpu"));

        var fixedDefault = GemmTuner.Pinned("default", GemmPath.Vector256, "cpu")!;
        Assert.Equal(GemmBlocking.For(GemmPath.Vector256), fixedDefault.Blocking);
        Assert.Equal(fixedDefault.Blocking, fixedDefault.BlockingTransATall);
        Assert.EndsWith("(default)", fixedDefault.Description);

        var one = GemmTuner.Pinned("512:336", GemmPath.Vector512, "cpu")!;
        Assert.Equal(new GemmBlocking(512, 24, 4096), one.Blocking);   // 336 rows = 24 tiles of 14
        Assert.Equal(one.Blocking, one.BlockingTransA);
        Assert.Equal(one.Blocking, one.BlockingTransATall);

        var three = GemmTuner.Pinned(" 512:336, 256:168 ,128:96", GemmPath.Vector256, "cpu")!;
        Assert.Equal(new GemmBlocking(512, 56, 4096), three.Blocking);  // 6-row tiles on the AVX2 path
        Assert.Equal(new GemmBlocking(256, 28, 4096), three.BlockingTransA);
        Assert.Equal(new GemmBlocking(128, 16, 4096), three.BlockingTransATall);
        Assert.Equal(three.BlockingTransATall, three.For(transA: true, m: GemmChoice.ShortM + 1));
        Assert.Contains("pinned: PALM_GEMM=512:336, 256:168 ,128:96", three.Description);

        foreach (var bad in new[] { "defualt", "512", "512:", "512:336:4096", "0:168", "512:-1", "8192:168", "1:1,1:1,1:1,1:1", "a:b" })
        {
            var e = Assert.Throws<Palm.Gpu.Model.ConfigException>(() => GemmTuner.Pinned(bad, GemmPath.Vector512, "cpu"));
            Assert.Contains($"PALM_GEMM='{bad}' is not understood", e.Message);
            Assert.Contains("KC:ROWS[,KC:ROWS[,KC:ROWS]]", e.Message);
        }
    }

    // Each element is one chain of FMAs over all of K, so where the K blocks fall (one step deep, uneven, deeper than
    // K) changes no bit, with alpha, with and without accumulate, on every path.
    [Fact]
    public void Any_k_block_gives_the_same_bits()
    {
        const int m = 45, n = 70, k = 300;
        var a = TestData.Uniform(31, m * k);
        var b = TestData.Uniform(32, k * n);
        var c0 = TestData.Uniform(33, m * n);
        foreach (var path in SupportedPaths())
            foreach (var (transA, transB) in Transposes)
                foreach (var prior in new[] { null, c0 })
                {
                    var first = RunMatmul(2, a, b, prior, m, n, k, transA, transB, Alpha, path, new GemmBlocking(k, 2, 64));
                    foreach (int kc in new[] { 1, 7, 16, 256, 1000 })
                        AssertSameBits(first, RunMatmul(2, a, b, prior, m, n, k, transA, transB, Alpha, path, new GemmBlocking(kc, 2, 64)),
                                       $"{path} kc {kc} vs {k} transA={transA} transB={transB} accumulate={prior is not null}");
                }
    }

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(7, 13, 5)]
    [InlineData(33, 65, 17)]
    [InlineData(97, 31, 129)]
    [InlineData(15, 33, 300)]
    [InlineData(20, 300, 50)] // few rows, many columns: work is split over column groups too
    public void EveryPathMatchesDoubleReference(int m, int n, int k)
    {
        var a = TestData.Uniform(1, m * k);
        var b = TestData.Uniform(2, k * n);
        var c0 = TestData.Uniform(3, m * n, 2f);
        foreach (var path in SupportedPaths())
            foreach (var blocking in new[] { GemmBlocking.For(path), Tiny })
                foreach (var (transA, transB) in Transposes)
                    foreach (var accumulate in new[] { false, true })
                    {
                        var prior = accumulate ? c0 : null;
                        var (expected, atol) = Reference(a, b, prior, m, n, k, transA, transB, Alpha);
                        var got = RunMatmul(2, a, b, prior, m, n, k, transA, transB, Alpha, path, blocking);
                        Tolerance.AssertClose(expected, got, atol, 0,
                            $"{m}×{n}×{k} {path} {blocking} transA={transA} transB={transB} accumulate={accumulate}");
                    }
    }

    [Fact]
    public void LargerThanOneCacheBlockInEveryDimensionMatchesReference()
    {
        // 300 rows > one 168-row A block, 520 columns > many 32-column slivers, K 700 = three K blocks;
        // a 64-column B panel makes N span several panels too.
        const int m = 300, n = 520, k = 700;
        var a = TestData.Uniform(4, m * k);
        var b = TestData.Uniform(5, k * n);
        var c0 = TestData.Uniform(6, m * n);
        var path = CpuMatmul.BestPath;
        var blockings = new[] { BestDefault, BestDefault with { Nc = 64 } };
        foreach (var (transA, transB) in Transposes)
            foreach (var accumulate in new[] { false, true })
            {
                var prior = accumulate ? c0 : null;
                var (expected, atol) = Reference(a, b, prior, m, n, k, transA, transB, Alpha);
                foreach (var blocking in blockings)
                {
                    var got = RunMatmul(2, a, b, prior, m, n, k, transA, transB, Alpha, path, blocking);
                    Tolerance.AssertClose(expected, got, atol, 0, $"{m}×{n}×{k} {blocking} transA={transA} transB={transB} accumulate={accumulate}");
                }
            }
    }

    [Fact]
    public void BPanelOverTheCacheBudgetIsSplitIntoColumnPanels()
    {
        // K × N = 1100 × 4100 floats = 18 MB of packed B: more than PanelFloats allows (≤ 16 MiB), so N is cut into even
        // column panels (each a parallel loop of its own) even though the blocking asks for 8192 columns.
        const int m = 16, n = 4100, k = 1100;
        var a = TestData.Uniform(10, m * k);
        var b = TestData.Uniform(11, k * n);
        var c0 = TestData.Uniform(12, m * n);
        var blocking = BestDefault with { Nc = 8192 };
        foreach (var (transA, transB) in Transposes)
        {
            var (expected, atol) = Reference(a, b, c0, m, n, k, transA, transB, Alpha);
            var one = RunMatmul(1, a, b, c0, m, n, k, transA, transB, Alpha, CpuMatmul.BestPath, blocking);
            Tolerance.AssertClose(expected, one, atol, 0, $"{m}×{n}×{k} transA={transA} transB={transB}");
            AssertSameBits(one, RunMatmul(2, a, b, c0, m, n, k, transA, transB, Alpha, CpuMatmul.BestPath, blocking), $"transA={transA} transB={transB}: 1 vs 2 threads");
            AssertSameBits(one, RunMatmul(1, a, b, c0, m, n, k, transA, transB, Alpha, CpuMatmul.BestPath, BestDefault with { Nc = 512 }), $"transA={transA} transB={transB}: 8192 vs 512 columns");
        }
    }

    [Theory]
    [InlineData(300, 520, 700, false)]
    [InlineData(97, 131, 129, true)]
    [InlineData(2048, 40, 33, false)]
    [InlineData(20, 300, 50, false)]
    public void ThreadCountDoesNotChangeBits(int m, int n, int k, bool tinyBlocks)
    {
        var a = TestData.Uniform(7, m * k);
        var b = TestData.Uniform(8, k * n);
        var c0 = TestData.Uniform(9, m * n);
        var blocking = tinyBlocks ? Tiny : BestDefault;
        foreach (var (transA, transB) in Transposes)
            foreach (var accumulate in new[] { false, true })
            {
                var prior = accumulate ? c0 : null;
                var one = RunMatmul(1, a, b, prior, m, n, k, transA, transB, Alpha, CpuMatmul.BestPath, blocking);
                foreach (int threads in new[] { 2, 3 })
                {
                    var many = RunMatmul(threads, a, b, prior, m, n, k, transA, transB, Alpha, CpuMatmul.BestPath, blocking);
                    AssertSameBits(one, many, $"{m}×{n}×{k} transA={transA} transB={transB} accumulate={accumulate}: 1 vs {threads} threads");
                }
            }
    }

    [Fact]
    public void InstructionPathsGiveTheSameBits()
    {
        // Every kernel performs the same fused multiply-adds in the same order, so hardware never changes a result.
        const int m = 61, n = 75, k = 530;
        var a = TestData.Uniform(10, m * k);
        var b = TestData.Uniform(11, k * n);
        var c0 = TestData.Uniform(12, m * n);
        foreach (var (transA, transB) in Transposes)
        {
            var scalar = RunMatmul(1, a, b, c0, m, n, k, transA, transB, Alpha, GemmPath.Scalar, GemmBlocking.For(GemmPath.Scalar));
            foreach (var path in SupportedPaths())
            {
                var got = RunMatmul(2, a, b, c0, m, n, k, transA, transB, Alpha, path, GemmBlocking.For(path));
                AssertSameBits(scalar, got, $"{path} vs Scalar transA={transA} transB={transB}");
            }
        }
    }

    // The ragged last panel of A runs the shortest kernel that covers its rows (EdgeKernel), into C when it is exactly
    // that tall and through the scratch tile otherwise: every row count 1..MR on every path, against the scalar
    // kernel's bits, in one A block and across several, overwriting and accumulating.
    [Fact]
    public void EveryRaggedPanelHeightGivesTheScalarBits()
    {
        const int n = 70, k = 37;
        foreach (var path in SupportedPaths())
        {
            int mr = CpuMatmul.TileOf(path).Mr;
            for (int rows = 1; rows <= mr; rows++)
            {
                int m = 2 * mr + rows;
                var a = TestData.Uniform(40 + rows, m * k);
                var b = TestData.Uniform(41, k * n);
                var c0 = TestData.Uniform(42, m * n);
                foreach (var (transA, transB) in Transposes)
                    foreach (var prior in new[] { null, c0 })
                        foreach (var blocking in new[] { GemmBlocking.For(path), new GemmBlocking(16, 1, 64) })
                        {
                            var scalar = RunMatmul(1, a, b, prior, m, n, k, transA, transB, Alpha, GemmPath.Scalar, GemmBlocking.For(GemmPath.Scalar));
                            var got = RunMatmul(2, a, b, prior, m, n, k, transA, transB, Alpha, path, blocking);
                            AssertSameBits(scalar, got, $"{path} M {m} ({rows} rows in the last panel) {blocking} transA={transA} transB={transB} accumulate={prior is not null}");
                        }
            }
        }
    }

    [Fact]
    public void EmptySumClearsOrKeepsC()
    {
        var c = new float[] { 1, 2, 3, 4, 5, 6 };
        CpuMatmul.Run(2, c, Array.Empty<float>(), Array.Empty<float>(), 2, 3, 0, false, false, Alpha, accumulate: true);
        Assert.Equal(new float[] { 1, 2, 3, 4, 5, 6 }, c);
        CpuMatmul.Run(2, c, Array.Empty<float>(), Array.Empty<float>(), 2, 3, 0, false, false, Alpha, accumulate: false);
        Assert.Equal(new float[6], c);
    }

    [Fact]
    public void TooSmallBuffersAreRejected()
    {
        var a = new float[6 * 5];
        var b = new float[5 * 7];
        var c = new float[6 * 7];
        var ex = Assert.Throws<ArgumentException>(() => CpuMatmul.Run(1, c, a, b, 6, 7, 6, false, false, 1f, false));
        Assert.Contains("op(A)", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => CpuMatmul.Run(1, c, a, b, 6, 8, 5, false, false, 1f, false));
        Assert.Contains("op(B)", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => CpuMatmul.Run(1, new float[41], a, b, 6, 7, 5, false, false, 1f, false));
        Assert.Contains("C is 6×7", ex.Message);
    }
}

using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.OpenCl;

/// <summary>
/// OpenCL matmul against the CPU backend for all four transpose combinations, alpha and accumulate,
/// on sizes that fill whole register tiles (8×32 on CPU devices) and on sizes that leave partial tiles
/// on the right and bottom edges. The two backends sum K in different orders, so the tolerance is
/// a few float ulps of the magnitude of a K-term dot product of values in [−1, 1].
/// </summary>
[Collection(OpenClCollection.Name)]
public class OpenClMatmulTests(OpenClFixture fx)
{
    public static TheoryData<int, int, int> Shapes => new()
    {
        { 16, 64, 32 },    // whole tiles
        { 37, 45, 29 },    // partial tiles on both edges
        { 1, 70, 33 },     // a single row: every tile is a bottom edge
        { 9, 31, 1 },      // K = 1, fewer columns than one tile
        { 64, 96, 130 },   // several tiles each way, K past a power of two
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void MatchesCpu_AllTransposes(int m, int n, int k)
    {
        foreach (bool transA in new[] { false, true })
            foreach (bool transB in new[] { false, true })
            {
                var op = new OpCase()
                    .F("a", TestData.Uniform(m * 7 + k, m * k))
                    .F("b", TestData.Uniform(n * 5 + k, k * n))
                    .Zeros("c", (long)m * n);
                void Run(Func<string, Palm.Gpu.Tensors.DeviceBuffer> t, Palm.Gpu.Backends.IBackend be)
                    => be.Matmul(t("c"), t("a"), t("b"), m, n, k, transA, transB);
                var cpu = op.Run(fx.Cpu, t => Run(t, fx.Cpu), "c");
                var ocl = op.Run(fx.Ocl, t => Run(t, fx.Ocl), "c");
                Tolerance.AssertClose(cpu["c"], ocl["c"], 2e-6 * Math.Sqrt(k), 1e-5, $"C ({m}x{n}x{k}, transA={transA}, transB={transB})");
            }
    }

    [Theory]
    [InlineData(37, 45, 29, false, false)]
    [InlineData(37, 45, 29, true, true)]
    [InlineData(24, 64, 40, false, true)]
    public void AlphaAndAccumulate_MatchCpu(int m, int n, int k, bool transA, bool transB)
    {
        var op = new OpCase()
            .F("a", TestData.Uniform(1, m * k))
            .F("b", TestData.Uniform(2, k * n))
            .F("c", TestData.Uniform(3, m * n, 4f));
        var cpu = op.Run(fx.Cpu, t => fx.Cpu.Matmul(t("c"), t("a"), t("b"), m, n, k, transA, transB, alpha: -0.37f, accumulate: true), "c");
        var ocl = op.Run(fx.Ocl, t => fx.Ocl.Matmul(t("c"), t("a"), t("b"), m, n, k, transA, transB, alpha: -0.37f, accumulate: true), "c");
        Tolerance.AssertClose(cpu["c"], ocl["c"], 2e-6 * Math.Sqrt(k), 1e-5, "C += alpha·A·B");

        // accumulate = false must overwrite whatever C held.
        var fresh = op.Run(fx.Ocl, t => fx.Ocl.Matmul(t("c"), t("a"), t("b"), m, n, k, transA, transB, alpha: 2f), "c");
        var cpuFresh = op.Run(fx.Cpu, t => fx.Cpu.Matmul(t("c"), t("a"), t("b"), m, n, k, transA, transB, alpha: 2f), "c");
        Tolerance.AssertClose(cpuFresh["c"], fresh["c"], 4e-6 * Math.Sqrt(k), 1e-5, "C = 2·A·B");
    }

    [Fact]
    public void SameBitsOnEveryRun()
    {
        int m = 45, n = 77, k = 61;
        var op = new OpCase().F("a", TestData.Uniform(5, m * k)).F("b", TestData.Uniform(6, n * k)).Zeros("c", m * n);
        var first = op.Run(fx.Ocl, t => fx.Ocl.Matmul(t("c"), t("a"), t("b"), m, n, k, transB: true), "c");
        var second = op.Run(fx.Ocl, t => fx.Ocl.Matmul(t("c"), t("a"), t("b"), m, n, k, transB: true), "c");
        Bits.AssertIdentical(first["c"], second["c"], "C");
    }
}

using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Ilgpu;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Ilgpu;

/// <summary>
/// The tuning knobs change launch shapes, not the orders the contract fixes: the GEMM sums K in order and the
/// embedding backward adds tokens in order whatever the group shape and tile depth, so another tuning gives the same
/// bits on the CPU accelerator.
/// </summary>
public class IlgpuTuningTests
{
    static readonly IlgpuTuning Other = IlgpuTuning.SimulatorGroups with
    {
        MatmulThreadsX = 4, MatmulThreadsY = 2, MatmulTileK = 3, ElementwiseGroup = 8, ElementwiseMaxGroups = 3,
        EmbeddingGroup = 2, EmbeddingGroups = 2,
    };

    static float[] MatmulOn(IlgpuTuning tuning, float[] a, float[] b, float[] c0, int m, int n, int k, bool transA, bool transB)
    {
        using var be = new IlgpuBackend(IlgpuDevices.SimulatorIndex, tuning);
        using var da = be.Allocate("a", a.Length); using var db = be.Allocate("b", b.Length); using var dc = be.Allocate("c", c0.Length);
        be.Upload(da, a); be.Upload(db, b); be.Upload(dc, c0);
        be.Matmul(dc, da, db, m, n, k, transA, transB, alpha: 0.5f, accumulate: true);
        return be.ToHost(dc);
    }

    [Theory]
    [InlineData(13, 9, 31, false, false)]
    [InlineData(5, 17, 20, true, true)]
    public void Matmul_bits_do_not_depend_on_the_tiles(int m, int n, int k, bool transA, bool transB)
    {
        var a = TestData.Uniform(1, m * k); var b = TestData.Uniform(2, k * n); var c0 = TestData.Uniform(3, m * n);
        var single = MatmulOn(IlgpuTuning.Simulator, a, b, c0, m, n, k, transA, transB);
        Bits.AssertIdentical(single, MatmulOn(IlgpuTuning.SimulatorGroups, a, b, c0, m, n, k, transA, transB), $"matmul {m}x{n}x{k}: 1-thread vs 2×2 groups");
        Bits.AssertIdentical(single, MatmulOn(Other, a, b, c0, m, n, k, transA, transB), $"matmul {m}x{n}x{k}: 1-thread vs 4×2 groups, K tiles of 3");
    }

    [Fact]
    public void Embedding_backward_bits_do_not_depend_on_the_row_blocks()
    {
        const int n = 37, d = 11, rows = 9;
        var tokens = Enumerable.Range(0, n).Select(i => i * 7 % rows).ToArray();   // every row repeats
        var dout = TestData.Uniform(4, n * d, 10f);
        var table0 = TestData.Uniform(5, rows * d);
        float[] Run(IlgpuTuning tuning)
        {
            using var be = new IlgpuBackend(IlgpuDevices.SimulatorIndex, tuning);
            using var t = be.Allocate("tokens", n, Palm.Gpu.Tensors.ElementType.I32); using var g = be.Allocate("dout", n * d); using var table = be.Allocate("dtable", rows * d);
            be.Upload(t, tokens); be.Upload(g, dout); be.Upload(table, table0);
            be.EmbeddingBackward(table, t, g, n, d, 0, rows);
            return be.ToHost(table);
        }
        var single = Run(IlgpuTuning.Simulator);
        Bits.AssertIdentical(single, Run(IlgpuTuning.SimulatorGroups), "embedding backward: 1-thread vs 8-thread groups");
        Bits.AssertIdentical(single, Run(Other), "embedding backward: 1-thread vs 2-thread groups, 2 row blocks");
    }
}

using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

/// <summary>The test-only wrapper really sits between the caller and the CPU backend: every op it forwards is counted.</summary>
public class CountingBackendTests
{
    [Fact]
    public void Forwards_and_counts_every_op()
    {
        using var counting = new CountingBackend(1);
        int n = 3, d = 7;
        new OpCase().F("x", TestData.Uniform(1, n * d)).F("w", TestData.Uniform(2, d)).Zeros("out", n * d).Zeros("mean", n).Zeros("rstd", n)
            .Run(counting, t =>
            {
                counting.LayerNormForward(t("out"), t("mean"), t("rstd"), t("x"), t("w"), n, d);
                counting.AddInPlace(t("out"), t("x"), n * d);
                counting.AddInPlace(t("out"), t("x"), n * d);
            }, "out");
        Assert.Equal("counting-cpu", counting.Name);
        Assert.Equal(1, counting.Calls["LayerNormForward"]);
        Assert.Equal(2, counting.Calls["AddInPlace"]);
        Assert.Equal(5, counting.Calls["Allocate"]);
        Assert.False(counting.Calls.ContainsKey("Matmul"));
    }
}

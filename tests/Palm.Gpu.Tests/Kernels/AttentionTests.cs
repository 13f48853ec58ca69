using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

/// <summary>
/// CPU-only attention checks. The kernel's numerics (reference, finite differences, determinism) run on every
/// backend in Conformance/AttentionConformance.cs; its vector paths are compared bit for bit in SimdWidthTests.
/// </summary>
public class AttentionTests
{
    [Fact]
    public void Rejects_heads_not_divisible_by_kv_heads()
    {
        int b = 1, t = 4, h = 3, g = 2, kd = 4;
        var q = TestData.Uniform(1, b * t * h * kd);
        var kv = TestData.Uniform(2, b * t * g * kd);
        Assert.Throws<ArgumentException>(() => CpuAttention.Forward(2, new float[q.Length], new float[b * h * t], q, kv, kv, b, t, h, g, kd));
    }
}

using Palm.Gpu.Backends.Cpu;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

// The CPU kernel's own check; RoPE itself is tested on every backend in Conformance/RopeConformance.cs.
public class RopeTests
{
    [Fact]
    public void Rejects_odd_head_dim()
    {
        var x = new float[15];
        Assert.Throws<ArgumentException>(() => CpuRope.Forward(1, x, x, 1, 1, 3, 5));
    }
}

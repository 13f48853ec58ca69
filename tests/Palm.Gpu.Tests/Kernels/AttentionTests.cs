using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.OpenCl;
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

    // 64 heads make one-step query blocks, so T 200 is four chunks of 64 blocks whose dk, dv sums are added chunk by
    // chunk; key tiles start on chunk starts. 1 thread takes the fused chunks, 8 threads the two passes (4 items).
    [Fact]
    public void Fused_and_two_pass_backward_give_the_same_bits_over_several_chunks()
    {
        int b = 1, t = 200, h = 64, g = 1, kd = 16, nq = b * t * h * kd, nkv = b * t * g * kd;
        var q = TestData.Uniform(3, nq, 2f);
        var k = TestData.Uniform(4, nkv);
        var v = TestData.Uniform(5, nkv);
        var dout = TestData.Uniform(6, nq);
        var output = new float[nq];
        var lse = new float[b * h * t];
        CpuAttention.Forward(1, output, lse, q, k, v, b, t, h, g, kd);
        (float[], float[], float[]) Grads(int threads)
        {
            var (dq, dk, dv) = (new float[nq], new float[nkv], new float[nkv]);
            CpuAttention.Backward(threads, dq, dk, dv, dout, q, k, v, output, lse, b, t, h, g, kd);
            return (dq, dk, dv);
        }
        var fused = Grads(1);
        var twoPass = Grads(8);
        Bits.AssertIdentical(fused.Item1, twoPass.Item1, "dq");
        Bits.AssertIdentical(fused.Item2, twoPass.Item2, "dk");
        Bits.AssertIdentical(fused.Item3, twoPass.Item3, "dv");
        Assert.Contains(fused.Item2, x => x != 0);
    }
}

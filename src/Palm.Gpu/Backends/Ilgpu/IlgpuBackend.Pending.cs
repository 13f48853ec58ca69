using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Ilgpu;

// Ops of the contract whose ILGPU kernels are not written yet: each raises one clear error until its kernel lands
// (its entry then moves to an IlgpuBackend.<Family>.cs file and leaves this one).
public sealed partial class IlgpuBackend
{
    static NotSupportedException Pending(string op) => new($"{op} is not yet implemented on ilgpu; use --backend cpu or opencl for now");

    protected override void AttentionForwardCore(DeviceBuffer output, DeviceBuffer lse, DeviceBuffer q, DeviceBuffer k, DeviceBuffer v,
                                                 int b, int t, int heads, int kvHeads, int headDim) => throw Pending("attention forward");

    protected override void AttentionBackwardCore(DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, DeviceBuffer dout, DeviceBuffer q, DeviceBuffer k,
                                                  DeviceBuffer v, DeviceBuffer output, DeviceBuffer lse, int b, int t, int heads, int kvHeads, int headDim)
        => throw Pending("attention backward");

    protected override void AttentionDecodeCore(DeviceBuffer output, DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer lengths,
                                                int b, int tMax, int heads, int kvHeads, int headDim) => throw Pending("attention decode");

    protected override void CrossEntropyForwardCore(DeviceBuffer logZ, DeviceBuffer targetLogit, DeviceBuffer logits, DeviceBuffer targets, int n, int v, int vocabStart)
        => throw Pending("cross-entropy forward");

    protected override void CrossEntropyBackwardCore(DeviceBuffer dlogits, DeviceBuffer logits, DeviceBuffer logZ, DeviceBuffer targets,
                                                     float scale, float zLoss, int n, int v, int vocabStart) => throw Pending("cross-entropy backward");

    protected override void AdafactorUpdateCore(DeviceBuffer param, DeviceBuffer grad, AdafactorBuffers state, int rows, int cols, in AdafactorStep step)
        => throw Pending("adafactor update");

    protected override void AdafactorSumsCore(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer secondMoment, IReadOnlyList<Segment> segments,
                                              in AdafactorStep step, Span<double> sumU2, Span<double> sumP2) => throw Pending("adafactor sums");

    protected override void AdafactorApplyCore(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer? momentum, DeviceBuffer secondMoment,
                                               IReadOnlyList<Segment> segments, ReadOnlySpan<double> sumU2, ReadOnlySpan<double> sumP2,
                                               ReadOnlySpan<long> tensorCounts, in AdafactorStep step) => throw Pending("adafactor apply");
}

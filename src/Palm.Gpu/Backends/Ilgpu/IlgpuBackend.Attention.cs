using ILGPU;
using ILGPU.Runtime;
using Palm.Gpu.Kernels;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Ilgpu;

// Causal multi-query attention, its backward and KV-cache decoding (kernels/attention/AttentionKernels.cs).
public sealed partial class IlgpuBackend
{
    IlgpuKernelTuning? kernelTuning;

    /// <summary>Launch shapes of the attention, cross-entropy and Adafactor kernels (and the tensor-core switch); set before use to change them.</summary>
    public IlgpuKernelTuning KernelTuning
    {
        get => kernelTuning ??= IsSimulator ? IlgpuKernelTuning.Simulator : IlgpuKernelTuning.Gpu;
        set
        {
            ArgumentNullException.ThrowIfNull(value);
            value.Validate(accelerator.MaxNumThreadsPerGroup);
            kernelTuning = value;
        }
    }

    /// <summary>
    /// Tiles for one attention shape: the tuning's, with the heads per tile a divisor of H/G, shrunk (heads first, then
    /// times and keys) until every pass fits the tuning's and the device's shared memory.
    /// </summary>
    internal AttentionKernels.Shape AttentionShapeFor(int b, int t, int heads, int kvHeads, int headDim)
    {
        var kt = KernelTuning;
        int perKv = heads / kvHeads;
        int ht = LargestDivisorAtMost(perKv, Math.Min(perKv, kt.AttentionHeadsPerTile));
        var s = new AttentionKernels.Shape
        {
            B = b, T = t, H = heads, G = kvHeads, K = headDim,
            QueryTimes = Math.Min(kt.AttentionQueryTimes, t), HeadsPerTile = ht, KeyTile = Math.Min(kt.AttentionKeyTile, t),
            Scale = (float)(1.0 / Math.Sqrt(headDim)),
        };
        long limit = Math.Min(kt.AttentionSharedBytes, accelerator.MaxSharedMemoryPerGroup);
        while (4L * Math.Max(s.ForwardShared, Math.Max(s.QueryGradShared, s.KeyGradShared)) > limit)
        {
            if (s.HeadsPerTile > 1) s.HeadsPerTile = LargestDivisorAtMost(perKv, s.HeadsPerTile - 1);
            else if (s.QueryTimes > 1 || s.KeyTile > 1) { s.QueryTimes = Math.Max(1, s.QueryTimes / 2); s.KeyTile = Math.Max(1, s.KeyTile / 2); }
            else throw new NotSupportedException($"attention: head dim {headDim} needs more shared memory than {limit} bytes even with one-row tiles");
        }
        return s;
    }

    static int LargestDivisorAtMost(int n, int atMost)
    {
        for (int d = Math.Max(1, atMost); d > 1; d--) if (n % d == 0) return d;
        return 1;
    }

    int AttentionThreads => Math.Min(KernelTuning.AttentionThreads, accelerator.MaxNumThreadsPerGroup);

    protected override void AttentionForwardCore(DeviceBuffer output, DeviceBuffer lse, DeviceBuffer q, DeviceBuffer k, DeviceBuffer v,
                                                 int b, int t, int heads, int kvHeads, int headDim)
    {
        if (b == 0 || t == 0 || heads == 0) return;
        var s = AttentionShapeFor(b, t, heads, kvHeads, headDim);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                      AttentionKernels.Shape>>(AttentionKernels.Forward)(
            stream, new KernelConfig(s.QueryGroups, AttentionThreads, SharedMemoryConfig.RequestDynamic<float>(s.ForwardShared)),
            Buf(output).F, Buf(lse).F, Buf(q).F, Buf(k).F, Buf(v).F, s);
    }

    protected override void AttentionBackwardCore(DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, DeviceBuffer dout, DeviceBuffer q, DeviceBuffer k,
                                                  DeviceBuffer v, DeviceBuffer output, DeviceBuffer lse, int b, int t, int heads, int kvHeads, int headDim)
    {
        if (b == 0 || t == 0 || heads == 0) return;
        var s = AttentionShapeFor(b, t, heads, kvHeads, headDim);
        var delta = Scratch<float>("attention.delta", (long)b * heads * t);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionKernels.Shape>>(AttentionKernels.Delta)(
            stream, Elementwise((long)b * heads * t), delta, Buf(dout).F, Buf(output).F, s);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                      ArrayView<float>, ArrayView<float>, AttentionKernels.Shape>>(AttentionKernels.BackwardQuery)(
            stream, new KernelConfig(s.QueryGroups, AttentionThreads, SharedMemoryConfig.RequestDynamic<float>(s.QueryGradShared)),
            Buf(dq).F, Buf(dout).F, Buf(q).F, Buf(k).F, Buf(v).F, Buf(lse).F, delta, s);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                      ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionKernels.Shape>>(AttentionKernels.BackwardKeyValue)(
            stream, new KernelConfig(s.KeyGroups, AttentionThreads, SharedMemoryConfig.RequestDynamic<float>(s.KeyGradShared)),
            Buf(dk).F, Buf(dv).F, Buf(dout).F, Buf(q).F, Buf(k).F, Buf(v).F, Buf(lse).F, delta, s);
    }

    protected override void AttentionDecodeCore(DeviceBuffer output, DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer lengths,
                                                int b, int tMax, int heads, int kvHeads, int headDim)
    {
        if (b == 0 || heads == 0 || tMax == 0) return;
        int threads = Math.Min(KernelTuning.DecodeThreads, accelerator.MaxNumThreadsPerGroup);
        var scores = Scratch<float>("attention.decode.scores", (long)b * heads * tMax);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                      ArrayView<int>, int, int, int, int, float>>(AttentionKernels.Decode)(
            stream, new KernelConfig(b * heads, threads, SharedMemoryConfig.RequestDynamic<float>(threads)),
            Buf(output).F, scores, Buf(q).F, Buf(kCache).F, Buf(vCache).F, Buf(lengths).I, tMax, heads, kvHeads, headDim,
            (float)(1.0 / Math.Sqrt(headDim)));
    }
}

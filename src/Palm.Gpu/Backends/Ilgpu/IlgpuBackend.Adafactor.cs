using ILGPU;
using ILGPU.Runtime;
using Palm.Gpu.Kernels;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Ilgpu;

// Adafactor: the fused update of one tensor and the two passes over a flat arena (kernels/adafactor/AdafactorKernels.cs),
// the CPU backend's arithmetic and reduction orders, so the CPU's bits.
public sealed partial class IlgpuBackend
{
    // Adafactor's segment table, (S,3) longs: offset, count, first chunk; uploaded when the list changes.
    Segment[]? adafactorSegments;
    long adafactorChunks;

    static AdafactorKernels.Step AdafactorStepArgs(in AdafactorStep s) => new()
    {
        GradScale = s.GradScale, Beta1 = s.Beta1, Beta2 = s.Beta2, Epsilon1 = s.Epsilon1, Epsilon2 = s.Epsilon2,
        ClipThreshold = s.ClipThreshold, LearningRate = s.LearningRate, WeightDecay = s.WeightDecay,
    };

    /// <summary>Threads per chunk and the shared doubles of one pass-1 group.</summary>
    (int Threads, int PerThread, KernelConfig Config) AdafactorLaunch(long chunks)
    {
        var kt = KernelTuning;
        int threads = Math.Min(kt.AdafactorThreads, accelerator.MaxNumThreadsPerGroup);
        return (threads, kt.AdafactorPerThread, new KernelConfig((int)chunks, threads, SharedMemoryConfig.RequestDynamic<double>(2 * threads * kt.AdafactorPerThread)));
    }

    ArrayView<float> AdafactorUnused => Scratch<float>("adafactor.unused", 1);

    protected override void AdafactorUpdateCore(DeviceBuffer param, DeviceBuffer grad, AdafactorBuffers state, int rows, int cols, in AdafactorStep step)
    {
        long count = (long)rows * cols;
        if (count == 0) return;
        bool factored = state.SecondMoment is null;
        var s = AdafactorStepArgs(step);
        var p = Buf(param).F;
        var g = Buf(grad).F;
        var v = factored ? AdafactorUnused : Buf(state.SecondMoment!).F;
        var momentum = state.Momentum is null ? AdafactorUnused : Buf(state.Momentum).F;
        var scalars = Scratch<float>("adafactor.scalars", 4);
        ArrayView<float> rowScale = AdafactorUnused, colScale = AdafactorUnused;
        if (factored)
        {
            var vRow = Buf(state.RowMoment!).F;
            var vCol = Buf(state.ColMoment!).F;
            rowScale = Scratch<float>("adafactor.rowScale", rows);
            colScale = Scratch<float>("adafactor.colScale", cols);
            Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, AdafactorKernels.Step, int, int>>(AdafactorKernels.RowMoments)(
                stream, Elementwise(rows), vRow, g, s, rows, cols);
            Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, AdafactorKernels.Step, int, int>>(AdafactorKernels.ColMoments)(
                stream, Elementwise(cols), vCol, g, s, rows, cols);
            Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, int>>(AdafactorKernels.RowMean)(
                stream, new KernelConfig(1, 1), scalars, vRow, rows);
            Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>>(
                AdafactorKernels.FactorScales)(stream, Elementwise((long)rows + cols), rowScale, colScale, vRow, vCol, scalars, rows, cols);
        }
        long chunks = KernelMath.DivUp(count, AdafactorKernels.Chunk);
        var partial = Scratch<double>("adafactor.partial", 2 * chunks);
        var (_, perThread, config) = AdafactorLaunch(chunks);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<double>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                      AdafactorKernels.Step, int, long, int, int>>(AdafactorKernels.Pass1)(
            stream, config, partial, v, p, g, rowScale, colScale, s, cols, count, factored ? 1 : 0, perThread);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<double>, int, long, AdafactorKernels.Step>>(AdafactorKernels.Finish)(
            stream, new KernelConfig(1, 1), scalars, partial, (int)chunks, count, s);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                      ArrayView<float>, AdafactorKernels.Step, int, long, int, int>>(AdafactorKernels.Pass2)(
            stream, Elementwise(count), p, momentum, g, v, rowScale, colScale, scalars, s, cols, count, factored ? 1 : 0, state.Momentum is null ? 0 : 1);
    }

    /// <summary>The segment table on the device and the chunks it cuts (chunks of <see cref="AdafactorKernels.Chunk"/> from each segment's start).</summary>
    (ArrayView<long> Table, long Chunks) AdafactorTable(IReadOnlyList<Segment> segments) =>
        SegmentTable("adafactor.table", segments, AdafactorKernels.Chunk, ref adafactorSegments, ref adafactorChunks);

    protected override void AdafactorSumsCore(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer secondMoment, IReadOnlyList<Segment> segments,
                                              in AdafactorStep step, Span<double> sumU2, Span<double> sumP2)
    {
        int count = segments.Count;
        if (count == 0) return;
        var (table, chunks) = AdafactorTable(segments);
        if (chunks == 0) { sumU2[..count].Clear(); sumP2[..count].Clear(); return; }
        var partial = Scratch<double>("adafactor.partial", 2 * chunks);
        var totals = Scratch<double>("adafactor.totals", 2L * count);
        var (_, perThread, config) = AdafactorLaunch(chunks);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<double>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<long>, int,
                      AdafactorKernels.Step, int>>(AdafactorKernels.SegmentPass1)(
            stream, config, partial, Buf(secondMoment).Kernel, Buf(param).Kernel, Buf(grad).Kernel, table, count, AdafactorStepArgs(step), perThread);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<double>, ArrayView<double>, ArrayView<long>, int, long>>(AdafactorKernels.SegmentTotals)(
            stream, Elementwise(count), totals, partial, table, count, chunks);
        var both = new double[2 * count];
        Download(stream, totals, both.AsSpan());
        stream.Synchronize();
        for (int i = 0; i < count; i++) { sumU2[i] = both[2 * i]; sumP2[i] = both[2 * i + 1]; }
    }

    protected override void AdafactorApplyCore(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer? momentum, DeviceBuffer secondMoment,
                                               IReadOnlyList<Segment> segments, ReadOnlySpan<double> sumU2, ReadOnlySpan<double> sumP2,
                                               ReadOnlySpan<long> tensorCounts, in AdafactorStep step)
    {
        int count = segments.Count;
        if (count == 0) return;
        var (table, chunks) = AdafactorTable(segments);
        if (chunks == 0) return;
        // Per segment the clip factor and step size from the whole tensor's sums (the one definition, AdafactorStep.Scalars).
        var factors = new float[2 * count];
        for (int i = 0; i < count; i++) (factors[2 * i], factors[2 * i + 1]) = step.Scalars(sumU2[i], sumP2[i], tensorCounts[i]);
        var factorView = Scratch<float>("adafactor.factors", 2L * count);
        Upload(stream, factorView, factors.AsSpan());
        stream.Synchronize();
        int threads = Math.Min(KernelTuning.AdafactorThreads, accelerator.MaxNumThreadsPerGroup);
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<long>, ArrayView<float>,
                      int, AdafactorKernels.Step, int>>(AdafactorKernels.SegmentPass2)(
            stream, new KernelConfig((int)chunks, threads), Buf(param).Kernel, momentum is null ? AdafactorUnused : Buf(momentum).Kernel, Buf(grad).Kernel,
            Buf(secondMoment).Kernel, table, factorView, count, AdafactorStepArgs(step), momentum is null ? 0 : 1);
    }
}

using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Cpu;

/// <summary>
/// The C# SIMD backend: every kernel in managed code with Vector512/Vector256 and a scalar tail,
/// multi-threaded with deterministic partitioning. It is the reference every other backend is tested
/// against. <see cref="BackendBase"/> validates every call; this class only dispatches the cores to the op
/// files (CpuMatmul.cs, CpuAttention.cs, ...), forward and backward side by side.
/// </summary>
public class CpuBackend : BackendBase
{
    public CpuBackend(int threads = 0)
    {
        if (threads < 0) throw new ArgumentOutOfRangeException(nameof(threads), $"threads must be ≥ 0 (0 = all {Environment.ProcessorCount} cores), got {threads}");
        Threads = threads == 0 ? Environment.ProcessorCount : threads;
    }

    /// <summary>Worker threads used by every kernel.</summary>
    public int Threads { get; }
    public override string Name => "cpu";
    public override string DeviceName => $"CPU ({Threads} threads, {SimdDescription}; GEMM {Gemm})";

    /// <summary>The GEMM variant the start-up tuner picked for this thread count (GemmTuner.cs), for logs and a run's config.</summary>
    public string Gemm => GemmTuner.For(Threads).Description;
    /// <summary>64 bytes: a cache line, and whole 512-bit vectors from a view's start.</summary>
    public override long ViewAlignment => 16;

    /// <summary>The vector path the kernels take (CpuSimd), and a warning where fused multiply-adds are emulated.</summary>
    internal static string SimdDescription =>
        CpuSimd.Description +
        (CpuSimd.HasFma ? "" : ", no hardware FMA: emulated, about 100× slower; use a CPU with FMA (x86-64-v3 or ARM64) or --backend opencl");

    static CpuView<float> F(DeviceBuffer b) => ((CpuBuffer)b).F;
    static CpuView<float> F0(DeviceBuffer? b) => b is null ? default : ((CpuBuffer)b).F;
    static CpuView<int> I(DeviceBuffer b) => ((CpuBuffer)b).I;

    protected override DeviceBuffer AllocateCore(string name, long length, ElementType type) => new CpuBuffer(name, length, type);
    protected override void UploadCore(DeviceBuffer dst, ReadOnlySpan<float> src, long dstOffset) => src.CopyTo(F(dst).AsSpan(dstOffset));
    protected override void UploadCore(DeviceBuffer dst, ReadOnlySpan<int> src, long dstOffset) => src.CopyTo(I(dst).AsSpan(dstOffset));
    protected override void DownloadCore(DeviceBuffer src, Span<float> dst, long srcOffset) => F(src).AsSpan(srcOffset, dst.Length).CopyTo(dst);
    protected override void DownloadCore(DeviceBuffer src, Span<int> dst, long srcOffset) => I(src).AsSpan(srcOffset, dst.Length).CopyTo(dst);
    // Large fills (the gradients, 4 bytes a parameter, each step) on every thread, in chunks of FillChunk (a smaller
    // fill is one chunk and stays on the calling thread): one thread writes at about half the machine's store bandwidth.
    protected override void FillCore(DeviceBuffer dst, float value, long n)
    {
        var view = F(dst);
        CpuParallel.ForChunks(Threads, n, FillChunk, (start, end) => view.AsSpan(start, end - start).Fill(value));
    }
    const long FillChunk = 1 << 18;
    protected override void CopyCore(DeviceBuffer dst, DeviceBuffer src, long n, long dstOffset, long srcOffset)
    {
        if (dst.Type == ElementType.I32) I(src).AsSpan(srcOffset, n).CopyTo(I(dst).AsSpan(dstOffset));
        else F(src).AsSpan(srcOffset, n).CopyTo(F(dst).AsSpan(dstOffset));
    }
    protected override void SynchronizeCore() { }

    protected override void MatmulCore(DeviceBuffer c, DeviceBuffer a, DeviceBuffer b, int m, int n, int k,
                                       bool transA, bool transB, float alpha, bool accumulate)
        => CpuMatmul.Run(Threads, F(c), F(a), F(b), m, n, k, transA, transB, alpha, accumulate);
    protected override void MatmulPiecesCore(MatmulSplit split, int[] extents, DeviceBuffer[] c, DeviceBuffer[] a, DeviceBuffer[] b, int m, int n, int k,
                                             bool transA, bool transB, float alpha, bool accumulate)
        => CpuMatmul.RunPieces(Threads, split, extents, c.Select(F).ToArray(), a.Select(F).ToArray(), b.Select(F).ToArray(), m, n, k, transA, transB, alpha, accumulate);

    protected override void EmbeddingForwardCore(DeviceBuffer output, DeviceBuffer tokens, DeviceBuffer table, int n, int d, int vocabStart, int vocabRows)
        => CpuEmbedding.Forward(Threads, F(output), I(tokens), F(table), n, d, vocabStart, vocabRows);
    protected override void EmbeddingBackwardCore(DeviceBuffer dtable, DeviceBuffer tokens, DeviceBuffer dout, int n, int d, int vocabStart, int vocabRows)
        => CpuEmbedding.Backward(Threads, F(dtable), I(tokens), F(dout), n, d, vocabStart, vocabRows);

    protected override void LayerNormForwardCore(DeviceBuffer output, DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer input, DeviceBuffer weight, int n, int d)
        => CpuLayerNorm.Forward(Threads, F(output), F(mean), F(rstd), F(input), F(weight), n, d);
    protected override void LayerNormBackwardCore(DeviceBuffer dinput, DeviceBuffer dweight, DeviceBuffer dout, DeviceBuffer input, DeviceBuffer weight,
                                                  DeviceBuffer mean, DeviceBuffer rstd, int n, int d, bool accumulate)
        => CpuLayerNorm.Backward(Threads, F(dinput), F(dweight), F(dout), F(input), F(weight), F(mean), F(rstd), n, d, accumulate);

    protected override void RopeForwardCore(DeviceBuffer output, DeviceBuffer input, int b, int t, int heads, int headDim)
        => CpuRope.Forward(Threads, F(output), F(input), b, t, heads, headDim);
    protected override void RopeBackwardCore(DeviceBuffer dinput, DeviceBuffer dout, int b, int t, int heads, int headDim)
        => CpuRope.Backward(Threads, F(dinput), F(dout), b, t, heads, headDim);

    protected override void RopeForwardAtCore(DeviceBuffer output, DeviceBuffer input, DeviceBuffer positions, int b, int heads, int headDim)
        => CpuRope.ForwardAt(F(output), F(input), I(positions), b, heads, headDim);
    protected override void AttentionDecodeCore(DeviceBuffer output, DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer lengths,
                                                int b, int tMax, int heads, int kvHeads, int headDim)
        => CpuDecode.Attention(Threads, F(output), F(q), F(kCache), F(vCache), I(lengths), b, tMax, heads, kvHeads, headDim);

    protected override void AttentionForwardCore(DeviceBuffer output, DeviceBuffer lse, DeviceBuffer q, DeviceBuffer k, DeviceBuffer v,
                                                 int b, int t, int heads, int kvHeads, int headDim)
        => CpuAttention.Forward(Threads, F(output), F(lse), F(q), F(k), F(v), b, t, heads, kvHeads, headDim);
    protected override void AttentionBackwardCore(DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, DeviceBuffer dout, DeviceBuffer q, DeviceBuffer k,
                                                  DeviceBuffer v, DeviceBuffer output, DeviceBuffer lse, int b, int t, int heads, int kvHeads, int headDim)
        => CpuAttention.Backward(Threads, F(dq), F(dk), F(dv), F(dout), F(q), F(k), F(v), F(output), F(lse), b, t, heads, kvHeads, headDim);

    protected override void SwiGluForwardCore(DeviceBuffer output, DeviceBuffer gate, DeviceBuffer up, long count)
        => CpuSwiGlu.Forward(Threads, F(output), F(gate), F(up), count);
    protected override void SwiGluBackwardCore(DeviceBuffer dgate, DeviceBuffer dup, DeviceBuffer dout, DeviceBuffer gate, DeviceBuffer up, long count)
        => CpuSwiGlu.Backward(Threads, F(dgate), F(dup), F(dout), F(gate), F(up), count);

    protected override void AddCore(DeviceBuffer output, DeviceBuffer a, DeviceBuffer b, long count) => CpuResidual.Add(Threads, F(output), F(a), F(b), count);
    protected override void AddInPlaceCore(DeviceBuffer acc, DeviceBuffer x, long count) => CpuResidual.AddInPlace(Threads, F(acc), F(x), count);

    protected override void CrossEntropyForwardCore(DeviceBuffer logZ, DeviceBuffer targetLogit, DeviceBuffer logits, DeviceBuffer targets, int n, int v, int vocabStart)
        => CpuCrossEntropy.Forward(Threads, F(logZ), F(targetLogit), F(logits), I(targets), n, v, vocabStart);
    protected override void CrossEntropyBackwardCore(DeviceBuffer dlogits, DeviceBuffer logits, DeviceBuffer logZ, DeviceBuffer targets,
                                                     float scale, float zLoss, int n, int v, int vocabStart)
        => CpuCrossEntropy.Backward(Threads, F(dlogits), F(logits), F(logZ), I(targets), scale, zLoss, n, v, vocabStart);
    protected override void LogSumExpShiftCore(DeviceBuffer output, DeviceBuffer logZ, DeviceBuffer max, long n)
        => CpuCrossEntropy.LogSumExpShift(Threads, F(output), F(logZ), F(max), n);
    protected override void LogSumExpFinishCore(DeviceBuffer logZ, DeviceBuffer max, DeviceBuffer sumExp, long n)
        => CpuCrossEntropy.LogSumExpFinish(Threads, F(logZ), F(max), F(sumExp), n);

    protected override double SumOfSquaresCore(DeviceBuffer x, long count) => CpuReduce.SumOfSquares(Threads, F(x), count);

    protected override void AdafactorUpdateCore(DeviceBuffer param, DeviceBuffer grad, AdafactorBuffers state, int rows, int cols, in AdafactorStep step)
        => CpuAdafactor.Update(Threads, F(param), F(grad), F0(state.Momentum), F0(state.SecondMoment), F0(state.RowMoment), F0(state.ColMoment),
                               rows, cols, step);

    protected override void SumOfSquaresSegmentsCore(DeviceBuffer x, IReadOnlyList<Segment> segments, Span<double> sums)
        => CpuReduce.SumOfSquaresSegments(Threads, F(x), segments, sums);

    protected override void AdafactorSumsCore(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer secondMoment, IReadOnlyList<Segment> segments,
                                              in AdafactorStep step, Span<double> sumU2, Span<double> sumP2)
        => CpuAdafactor.SegmentSums(Threads, F(param), F(grad), F(secondMoment), segments, step, sumU2, sumP2);

    protected override void AdafactorApplyCore(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer? momentum, DeviceBuffer secondMoment,
                                               IReadOnlyList<Segment> segments, ReadOnlySpan<double> sumU2, ReadOnlySpan<double> sumP2,
                                               ReadOnlySpan<long> tensorCounts, in AdafactorStep step)
        => CpuAdafactor.SegmentApply(Threads, F(param), F(grad), F0(momentum), F(secondMoment), segments, sumU2, sumP2, tensorCounts, step);
}

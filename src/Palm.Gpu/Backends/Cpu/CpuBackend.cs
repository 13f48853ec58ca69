using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Cpu;

/// <summary>
/// The C# SIMD backend: every kernel in managed code with Vector512/Vector256 and a scalar tail,
/// multi-threaded with deterministic partitioning. It is the reference every other backend is tested
/// against. This class only validates buffer kinds and dispatches; each op lives in its own file
/// (CpuMatmul.cs, CpuAttention.cs, ...), forward and backward side by side.
/// </summary>
public sealed class CpuBackend : IBackend
{
    public CpuBackend(int threads = 0)
    {
        if (threads < 0) throw new ArgumentOutOfRangeException(nameof(threads), $"threads must be ≥ 0 (0 = all {Environment.ProcessorCount} cores), got {threads}");
        Threads = threads == 0 ? Environment.ProcessorCount : threads;
    }

    /// <summary>Worker threads used by every kernel.</summary>
    public int Threads { get; }
    public string Name => "cpu";
    public string DeviceName => $"CPU ({Threads} threads, {SimdDescription})";

    internal static string SimdDescription =>
        System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated ? "AVX-512" :
        System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated ? "AVX2" : "scalar";

    static float[] F(DeviceBuffer b) => ((CpuBuffer)b).F;
    static int[] I(DeviceBuffer b) => ((CpuBuffer)b).I;

    public DeviceBuffer Allocate(string name, long length, ElementType type = ElementType.F32) => new CpuBuffer(name, length, type);
    public void Upload(DeviceBuffer dst, ReadOnlySpan<float> src, long dstOffset = 0) => src.CopyTo(F(dst).AsSpan((int)dstOffset));
    public void Upload(DeviceBuffer dst, ReadOnlySpan<int> src, long dstOffset = 0) => src.CopyTo(I(dst).AsSpan((int)dstOffset));
    public void Download(DeviceBuffer src, Span<float> dst, long srcOffset = 0) => F(src).AsSpan((int)srcOffset, dst.Length).CopyTo(dst);
    public void Fill(DeviceBuffer dst, float value, long n) => F(dst).AsSpan(0, (int)n).Fill(value);
    public void Copy(DeviceBuffer dst, DeviceBuffer src, long n, long dstOffset = 0, long srcOffset = 0)
    {
        if (dst.Type == ElementType.I32) I(src).AsSpan((int)srcOffset, (int)n).CopyTo(I(dst).AsSpan((int)dstOffset));
        else F(src).AsSpan((int)srcOffset, (int)n).CopyTo(F(dst).AsSpan((int)dstOffset));
    }
    public void Synchronize() { }

    public void Matmul(DeviceBuffer c, DeviceBuffer a, DeviceBuffer b, int m, int n, int k,
                       bool transA = false, bool transB = false, float alpha = 1f, bool accumulate = false)
        => CpuMatmul.Run(Threads, F(c), F(a), F(b), m, n, k, transA, transB, alpha, accumulate);

    public void EmbeddingForward(DeviceBuffer output, DeviceBuffer tokens, DeviceBuffer table, int n, int d, int vocabStart, int vocabRows)
    {
        BufferChecks.Embedding("embedding forward", tokens, table, output, n, d, vocabStart, vocabRows);
        CpuEmbedding.Forward(Threads, F(output), I(tokens), F(table), n, d, vocabStart, vocabRows);
    }
    public void EmbeddingBackward(DeviceBuffer dtable, DeviceBuffer tokens, DeviceBuffer dout, int n, int d, int vocabStart, int vocabRows)
    {
        BufferChecks.Embedding("embedding backward", tokens, dtable, dout, n, d, vocabStart, vocabRows);
        CpuEmbedding.Backward(Threads, F(dtable), I(tokens), F(dout), n, d, vocabStart, vocabRows);
    }

    public void LayerNormForward(DeviceBuffer output, DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer input, DeviceBuffer weight, int n, int d)
        => CpuLayerNorm.Forward(Threads, F(output), F(mean), F(rstd), F(input), F(weight), n, d);
    public void LayerNormBackward(DeviceBuffer dinput, DeviceBuffer dweight, DeviceBuffer dout, DeviceBuffer input, DeviceBuffer weight,
                                  DeviceBuffer mean, DeviceBuffer rstd, int n, int d, bool accumulate)
        => CpuLayerNorm.Backward(Threads, F(dinput), F(dweight), F(dout), F(input), F(weight), F(mean), F(rstd), n, d, accumulate);

    public void RopeForward(DeviceBuffer output, DeviceBuffer input, int b, int t, int heads, int headDim)
        => CpuRope.Forward(Threads, F(output), F(input), b, t, heads, headDim);
    public void RopeBackward(DeviceBuffer dinput, DeviceBuffer dout, int b, int t, int heads, int headDim)
        => CpuRope.Backward(Threads, F(dinput), F(dout), b, t, heads, headDim);

    public void AttentionForward(DeviceBuffer output, DeviceBuffer lse, DeviceBuffer q, DeviceBuffer k, DeviceBuffer v,
                                 int b, int t, int heads, int kvHeads, int headDim)
        => CpuAttention.Forward(Threads, F(output), F(lse), F(q), F(k), F(v), b, t, heads, kvHeads, headDim);
    public void AttentionBackward(DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, DeviceBuffer dout, DeviceBuffer q, DeviceBuffer k,
                                  DeviceBuffer v, DeviceBuffer output, DeviceBuffer lse, int b, int t, int heads, int kvHeads, int headDim)
        => CpuAttention.Backward(Threads, F(dq), F(dk), F(dv), F(dout), F(q), F(k), F(v), F(output), F(lse), b, t, heads, kvHeads, headDim);

    public void SwiGluForward(DeviceBuffer output, DeviceBuffer gate, DeviceBuffer up, long count)
        => CpuSwiGlu.Forward(Threads, F(output), F(gate), F(up), count);
    public void SwiGluBackward(DeviceBuffer dgate, DeviceBuffer dup, DeviceBuffer dout, DeviceBuffer gate, DeviceBuffer up, long count)
        => CpuSwiGlu.Backward(Threads, F(dgate), F(dup), F(dout), F(gate), F(up), count);

    public void Add(DeviceBuffer output, DeviceBuffer a, DeviceBuffer b, long count) => CpuResidual.Add(Threads, F(output), F(a), F(b), count);
    public void AddInPlace(DeviceBuffer acc, DeviceBuffer x, long count) => CpuResidual.AddInPlace(Threads, F(acc), F(x), count);
    public void Scale(DeviceBuffer x, float s, long count) => CpuResidual.Scale(Threads, F(x), s, count);

    public void CrossEntropyForward(DeviceBuffer logZ, DeviceBuffer targetLogit, DeviceBuffer logits, DeviceBuffer targets, int n, int v, int vocabStart)
    {
        BufferChecks.CrossEntropy("cross-entropy forward", logits, targets, logZ, n, v, vocabStart);
        BufferChecks.Need(targetLogit, n, "cross-entropy forward", nameof(targetLogit));
        CpuCrossEntropy.Forward(Threads, F(logZ), F(targetLogit), F(logits), I(targets), n, v, vocabStart);
    }
    public void CrossEntropyBackward(DeviceBuffer dlogits, DeviceBuffer logits, DeviceBuffer logZ, DeviceBuffer targets,
                                     float scale, float zLoss, int n, int v, int vocabStart)
    {
        BufferChecks.CrossEntropy("cross-entropy backward", logits, targets, logZ, n, v, vocabStart);
        BufferChecks.Need(dlogits, (long)n * v, "cross-entropy backward", nameof(dlogits));
        CpuCrossEntropy.Backward(Threads, F(dlogits), F(logits), F(logZ), I(targets), scale, zLoss, n, v, vocabStart);
    }
    public void LogSumExpShift(DeviceBuffer output, DeviceBuffer logZ, DeviceBuffer max, long n)
    {
        foreach (var b in new[] { output, logZ, max }) BufferChecks.Need(b, n, "log-sum-exp shift", b.Name);
        CpuCrossEntropy.LogSumExpShift(Threads, F(output), F(logZ), F(max), n);
    }
    public void LogSumExpFinish(DeviceBuffer logZ, DeviceBuffer max, DeviceBuffer sumExp, long n)
    {
        foreach (var b in new[] { logZ, max, sumExp }) BufferChecks.Need(b, n, "log-sum-exp finish", b.Name);
        CpuCrossEntropy.LogSumExpFinish(Threads, F(logZ), F(max), F(sumExp), n);
    }

    public double SumOfSquares(DeviceBuffer x, long count) => CpuReduce.SumOfSquares(Threads, F(x), count);
    public void SumOfSquaresSegments(DeviceBuffer x, IReadOnlyList<Segment> segments, Span<double> sums)
    {
        Segments.Validate("sum of squares", segments, x.Length, sums.Length);
        CpuReduce.SumOfSquaresSegments(Threads, F(x), segments, sums);
    }

    public void AdafactorUpdate(DeviceBuffer param, DeviceBuffer grad, AdafactorBuffers state, int rows, int cols, in AdafactorStep step)
        => CpuAdafactor.Update(Threads, F(param), F(grad),
                               state.Momentum is null ? null : F(state.Momentum),
                               state.SecondMoment is null ? null : F(state.SecondMoment),
                               state.RowMoment is null ? null : F(state.RowMoment),
                               state.ColMoment is null ? null : F(state.ColMoment),
                               rows, cols, step);

    public void AdafactorSums(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer secondMoment, IReadOnlyList<Segment> segments,
                              in AdafactorStep step, Span<double> sumU2, Span<double> sumP2)
    {
        Segments.Validate("Adafactor sums", segments, Math.Min(Math.Min(param.Length, grad.Length), secondMoment.Length), sumU2.Length, sumP2.Length);
        CpuAdafactor.SegmentSums(Threads, F(param), F(grad), F(secondMoment), segments, step, sumU2, sumP2);
    }

    public void AdafactorApply(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer? momentum, DeviceBuffer secondMoment,
                               IReadOnlyList<Segment> segments, ReadOnlySpan<double> sumU2, ReadOnlySpan<double> sumP2,
                               ReadOnlySpan<long> tensorCounts, in AdafactorStep step)
    {
        long length = Math.Min(Math.Min(param.Length, grad.Length), Math.Min(secondMoment.Length, momentum?.Length ?? long.MaxValue));
        Segments.Validate("Adafactor apply", segments, length, sumU2.Length, sumP2.Length, tensorCounts.Length);
        Segments.ValidateCounts("Adafactor apply", segments, tensorCounts);
        CpuAdafactor.SegmentApply(Threads, F(param), F(grad), momentum is null ? null : F(momentum), F(secondMoment), segments, sumU2, sumP2, tensorCounts, step);
    }

    public void Dispose() { }
}

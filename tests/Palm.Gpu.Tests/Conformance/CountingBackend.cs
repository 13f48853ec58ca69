using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Tests.Conformance;

/// <summary>
/// A test-only backend: the CPU backend's kernels, every op counted by name on its way in. It exists to show that a
/// new backend is a subclass of <see cref="BackendBase"/> (here through <see cref="CpuBackend"/>) plus one entry in
/// ConformanceBackends, after which it runs the whole conformance suite; it promises the CPU backend's bits.
/// </summary>
public sealed class CountingBackend(int threads) : CpuBackend(threads)
{
    readonly Dictionary<string, int> calls = new();

    /// <summary>How many times each op ran (by the op's public name).</summary>
    public IReadOnlyDictionary<string, int> Calls { get { lock (calls) return new Dictionary<string, int>(calls); } }

    void Count(string op)
    {
        lock (calls) calls[op] = calls.GetValueOrDefault(op) + 1;
    }

    public override string Name => "counting-cpu";
    public override string DeviceName => "counting " + base.DeviceName;

    protected override DeviceBuffer AllocateCore(string name, long length, ElementType type) { Count("Allocate"); return base.AllocateCore(name, length, type); }
    protected override void UploadCore(DeviceBuffer dst, ReadOnlySpan<float> src, long dstOffset) { Count("Upload"); base.UploadCore(dst, src, dstOffset); }
    protected override void UploadCore(DeviceBuffer dst, ReadOnlySpan<int> src, long dstOffset) { Count("Upload"); base.UploadCore(dst, src, dstOffset); }
    protected override void DownloadCore(DeviceBuffer src, Span<float> dst, long srcOffset) { Count("Download"); base.DownloadCore(src, dst, srcOffset); }
    protected override void DownloadCore(DeviceBuffer src, Span<int> dst, long srcOffset) { Count("Download"); base.DownloadCore(src, dst, srcOffset); }
    protected override void FillCore(DeviceBuffer dst, float value, long n) { Count("Fill"); base.FillCore(dst, value, n); }
    protected override void CopyCore(DeviceBuffer dst, DeviceBuffer src, long n, long dstOffset, long srcOffset) { Count("Copy"); base.CopyCore(dst, src, n, dstOffset, srcOffset); }
    protected override void SynchronizeCore() { Count("Synchronize"); base.SynchronizeCore(); }
    protected override void MatmulCore(DeviceBuffer c, DeviceBuffer a, DeviceBuffer b, int m, int n, int k, bool transA, bool transB, float alpha, bool accumulate) { Count("Matmul"); base.MatmulCore(c, a, b, m, n, k, transA, transB, alpha, accumulate); }
    protected override void MatmulPiecesCore(MatmulSplit split, int[] extents, DeviceBuffer[] c, DeviceBuffer[] a, DeviceBuffer[] b, int m, int n, int k, bool transA, bool transB, float alpha, bool accumulate) { Count("MatmulPieces"); base.MatmulPiecesCore(split, extents, c, a, b, m, n, k, transA, transB, alpha, accumulate); }
    protected override void EmbeddingForwardCore(DeviceBuffer output, DeviceBuffer tokens, DeviceBuffer table, int n, int d, int vocabStart, int vocabRows) { Count("EmbeddingForward"); base.EmbeddingForwardCore(output, tokens, table, n, d, vocabStart, vocabRows); }
    protected override void EmbeddingBackwardCore(DeviceBuffer dtable, DeviceBuffer tokens, DeviceBuffer dout, int n, int d, int vocabStart, int vocabRows) { Count("EmbeddingBackward"); base.EmbeddingBackwardCore(dtable, tokens, dout, n, d, vocabStart, vocabRows); }
    protected override void LayerNormForwardCore(DeviceBuffer output, DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer input, DeviceBuffer weight, int n, int d) { Count("LayerNormForward"); base.LayerNormForwardCore(output, mean, rstd, input, weight, n, d); }
    protected override void LayerNormBackwardCore(DeviceBuffer dinput, DeviceBuffer dweight, DeviceBuffer dout, DeviceBuffer input, DeviceBuffer weight, DeviceBuffer mean, DeviceBuffer rstd, int n, int d, bool accumulate) { Count("LayerNormBackward"); base.LayerNormBackwardCore(dinput, dweight, dout, input, weight, mean, rstd, n, d, accumulate); }
    protected override void RopeForwardCore(DeviceBuffer output, DeviceBuffer input, int b, int t, int heads, int headDim) { Count("RopeForward"); base.RopeForwardCore(output, input, b, t, heads, headDim); }
    protected override void RopeBackwardCore(DeviceBuffer dinput, DeviceBuffer dout, int b, int t, int heads, int headDim) { Count("RopeBackward"); base.RopeBackwardCore(dinput, dout, b, t, heads, headDim); }
    protected override void AttentionForwardCore(DeviceBuffer output, DeviceBuffer lse, DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, int b, int t, int heads, int kvHeads, int headDim) { Count("AttentionForward"); base.AttentionForwardCore(output, lse, q, k, v, b, t, heads, kvHeads, headDim); }
    protected override void AttentionBackwardCore(DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, DeviceBuffer dout, DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer output, DeviceBuffer lse, int b, int t, int heads, int kvHeads, int headDim) { Count("AttentionBackward"); base.AttentionBackwardCore(dq, dk, dv, dout, q, k, v, output, lse, b, t, heads, kvHeads, headDim); }
    protected override void RopeForwardAtCore(DeviceBuffer output, DeviceBuffer input, DeviceBuffer positions, int b, int heads, int headDim) { Count("RopeForwardAt"); base.RopeForwardAtCore(output, input, positions, b, heads, headDim); }
    protected override void AttentionDecodeCore(DeviceBuffer output, DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer lengths, int b, int tMax, int heads, int kvHeads, int headDim) { Count("AttentionDecode"); base.AttentionDecodeCore(output, q, kCache, vCache, lengths, b, tMax, heads, kvHeads, headDim); }
    protected override void SwiGluForwardCore(DeviceBuffer output, DeviceBuffer gate, DeviceBuffer up, long count) { Count("SwiGluForward"); base.SwiGluForwardCore(output, gate, up, count); }
    protected override void SwiGluBackwardCore(DeviceBuffer dgate, DeviceBuffer dup, DeviceBuffer dout, DeviceBuffer gate, DeviceBuffer up, long count) { Count("SwiGluBackward"); base.SwiGluBackwardCore(dgate, dup, dout, gate, up, count); }
    protected override void AddCore(DeviceBuffer output, DeviceBuffer a, DeviceBuffer b, long count) { Count("Add"); base.AddCore(output, a, b, count); }
    protected override void AddInPlaceCore(DeviceBuffer acc, DeviceBuffer x, long count) { Count("AddInPlace"); base.AddInPlaceCore(acc, x, count); }
    protected override void CrossEntropyForwardCore(DeviceBuffer logZ, DeviceBuffer targetLogit, DeviceBuffer logits, DeviceBuffer targets, int n, int v, int vocabStart) { Count("CrossEntropyForward"); base.CrossEntropyForwardCore(logZ, targetLogit, logits, targets, n, v, vocabStart); }
    protected override void CrossEntropyBackwardCore(DeviceBuffer dlogits, DeviceBuffer logits, DeviceBuffer logZ, DeviceBuffer targets, float scale, float zLoss, int n, int v, int vocabStart) { Count("CrossEntropyBackward"); base.CrossEntropyBackwardCore(dlogits, logits, logZ, targets, scale, zLoss, n, v, vocabStart); }
    protected override void LogSumExpShiftCore(DeviceBuffer output, DeviceBuffer logZ, DeviceBuffer max, long n) { Count("LogSumExpShift"); base.LogSumExpShiftCore(output, logZ, max, n); }
    protected override void LogSumExpFinishCore(DeviceBuffer logZ, DeviceBuffer max, DeviceBuffer sumExp, long n) { Count("LogSumExpFinish"); base.LogSumExpFinishCore(logZ, max, sumExp, n); }
    protected override double SumOfSquaresCore(DeviceBuffer x, long count) { Count("SumOfSquares"); return base.SumOfSquaresCore(x, count); }
    protected override void AdafactorUpdateCore(DeviceBuffer param, DeviceBuffer grad, AdafactorBuffers state, int rows, int cols, in AdafactorStep step) { Count("AdafactorUpdate"); base.AdafactorUpdateCore(param, grad, state, rows, cols, in step); }
    protected override void SumOfSquaresSegmentsCore(DeviceBuffer x, IReadOnlyList<Segment> segments, Span<double> sums) { Count("SumOfSquaresSegments"); base.SumOfSquaresSegmentsCore(x, segments, sums); }
    protected override void AdafactorSumsCore(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer secondMoment, IReadOnlyList<Segment> segments, in AdafactorStep step, Span<double> sumU2, Span<double> sumP2) { Count("AdafactorSums"); base.AdafactorSumsCore(param, grad, secondMoment, segments, in step, sumU2, sumP2); }
    protected override void AdafactorApplyCore(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer? momentum, DeviceBuffer secondMoment, IReadOnlyList<Segment> segments, ReadOnlySpan<double> sumU2, ReadOnlySpan<double> sumP2, ReadOnlySpan<long> tensorCounts, in AdafactorStep step) { Count("AdafactorApply"); base.AdafactorApplyCore(param, grad, momentum, secondMoment, segments, sumU2, sumP2, tensorCounts, in step); }
}

using System.Runtime.CompilerServices;
using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Tests.Conformance;

/// <summary>
/// A test-only backend: every op delegates to an inner backend and is counted by name. It exists to show that a
/// backend joins the conformance suite with one entry in ConformanceBackends, and it promises the inner backend's bits.
/// </summary>
public sealed class CountingBackend(IBackend inner) : IBackend
{
    readonly Dictionary<string, int> calls = new();

    /// <summary>How many times each op ran.</summary>
    public IReadOnlyDictionary<string, int> Calls { get { lock (calls) return new Dictionary<string, int>(calls); } }

    T Count<T>(T result, [CallerMemberName] string op = "")
    {
        lock (calls) calls[op] = calls.GetValueOrDefault(op) + 1;
        return result;
    }

    void Count([CallerMemberName] string op = "") => Count(0, op);

    public string Name => "counting-" + inner.Name;
    public string DeviceName => "counting " + inner.DeviceName;

    public DeviceBuffer Allocate(string name, long length, ElementType type = ElementType.F32) => Count(inner.Allocate(name, length, type));
    public void Upload(DeviceBuffer dst, ReadOnlySpan<float> src, long dstOffset = 0) { Count(); inner.Upload(dst, src, dstOffset); }
    public void Upload(DeviceBuffer dst, ReadOnlySpan<int> src, long dstOffset = 0) { Count(); inner.Upload(dst, src, dstOffset); }
    public void Download(DeviceBuffer src, Span<float> dst, long srcOffset = 0) { Count(); inner.Download(src, dst, srcOffset); }
    public void Fill(DeviceBuffer dst, float value, long n) { Count(); inner.Fill(dst, value, n); }
    public void Copy(DeviceBuffer dst, DeviceBuffer src, long n, long dstOffset = 0, long srcOffset = 0) { Count(); inner.Copy(dst, src, n, dstOffset, srcOffset); }
    public void Synchronize() { Count(); inner.Synchronize(); }

    public void Matmul(DeviceBuffer c, DeviceBuffer a, DeviceBuffer b, int m, int n, int k, bool transA = false, bool transB = false, float alpha = 1f, bool accumulate = false)
    { Count(); inner.Matmul(c, a, b, m, n, k, transA, transB, alpha, accumulate); }

    public void EmbeddingForward(DeviceBuffer output, DeviceBuffer tokens, DeviceBuffer table, int n, int d) { Count(); inner.EmbeddingForward(output, tokens, table, n, d); }
    public void EmbeddingBackward(DeviceBuffer dtable, DeviceBuffer tokens, DeviceBuffer dout, int n, int d, int v) { Count(); inner.EmbeddingBackward(dtable, tokens, dout, n, d, v); }

    public void LayerNormForward(DeviceBuffer output, DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer input, DeviceBuffer weight, int n, int d)
    { Count(); inner.LayerNormForward(output, mean, rstd, input, weight, n, d); }
    public void LayerNormBackward(DeviceBuffer dinput, DeviceBuffer dweight, DeviceBuffer dout, DeviceBuffer input, DeviceBuffer weight,
                                  DeviceBuffer mean, DeviceBuffer rstd, int n, int d, bool accumulate)
    { Count(); inner.LayerNormBackward(dinput, dweight, dout, input, weight, mean, rstd, n, d, accumulate); }

    public void RopeForward(DeviceBuffer output, DeviceBuffer input, int b, int t, int heads, int headDim) { Count(); inner.RopeForward(output, input, b, t, heads, headDim); }
    public void RopeBackward(DeviceBuffer dinput, DeviceBuffer dout, int b, int t, int heads, int headDim) { Count(); inner.RopeBackward(dinput, dout, b, t, heads, headDim); }

    public void AttentionForward(DeviceBuffer output, DeviceBuffer lse, DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, int b, int t, int heads, int kvHeads, int headDim)
    { Count(); inner.AttentionForward(output, lse, q, k, v, b, t, heads, kvHeads, headDim); }
    public void AttentionBackward(DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, DeviceBuffer dout, DeviceBuffer q, DeviceBuffer k, DeviceBuffer v,
                                  DeviceBuffer output, DeviceBuffer lse, int b, int t, int heads, int kvHeads, int headDim)
    { Count(); inner.AttentionBackward(dq, dk, dv, dout, q, k, v, output, lse, b, t, heads, kvHeads, headDim); }

    public void SwiGluForward(DeviceBuffer output, DeviceBuffer gate, DeviceBuffer up, long count) { Count(); inner.SwiGluForward(output, gate, up, count); }
    public void SwiGluBackward(DeviceBuffer dgate, DeviceBuffer dup, DeviceBuffer dout, DeviceBuffer gate, DeviceBuffer up, long count)
    { Count(); inner.SwiGluBackward(dgate, dup, dout, gate, up, count); }

    public void Add(DeviceBuffer output, DeviceBuffer a, DeviceBuffer b, long count) { Count(); inner.Add(output, a, b, count); }
    public void AddInPlace(DeviceBuffer acc, DeviceBuffer x, long count) { Count(); inner.AddInPlace(acc, x, count); }
    public void Scale(DeviceBuffer x, float s, long count) { Count(); inner.Scale(x, s, count); }

    public void CrossEntropyForward(DeviceBuffer losses, DeviceBuffer logZ, DeviceBuffer logits, DeviceBuffer targets, int n, int v)
    { Count(); inner.CrossEntropyForward(losses, logZ, logits, targets, n, v); }
    public void CrossEntropyBackward(DeviceBuffer dlogits, DeviceBuffer logits, DeviceBuffer logZ, DeviceBuffer targets, float scale, float zLoss, int n, int v)
    { Count(); inner.CrossEntropyBackward(dlogits, logits, logZ, targets, scale, zLoss, n, v); }

    public double SumOfSquares(DeviceBuffer x, long count) => Count(inner.SumOfSquares(x, count));

    public void AdafactorUpdate(DeviceBuffer param, DeviceBuffer grad, AdafactorBuffers state, int rows, int cols, in AdafactorStep step)
    { Count(); inner.AdafactorUpdate(param, grad, state, rows, cols, step); }
    public (double SumU2, double SumP2) AdafactorPieceSums(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer secondMoment, long n, in AdafactorStep step)
        => Count(inner.AdafactorPieceSums(param, grad, secondMoment, n, step));
    public void AdafactorPieceApply(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer? momentum, DeviceBuffer secondMoment, long n,
                                    double sumU2, double sumP2, long tensorCount, in AdafactorStep step)
    { Count(); inner.AdafactorPieceApply(param, grad, momentum, secondMoment, n, sumU2, sumP2, tensorCount, step); }

    public void Dispose() => inner.Dispose();
}

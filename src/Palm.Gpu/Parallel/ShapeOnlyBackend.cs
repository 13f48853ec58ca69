using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Sharding;

/// <summary>
/// A backend that hands out storage-less buffers, so a <see cref="Model.ParameterSet"/> can describe names,
/// shapes and order of a fully sharded model without holding its weights. Any kernel call is a bug.
/// </summary>
internal sealed class ShapeOnlyBackend : IBackend
{
    public static readonly ShapeOnlyBackend Instance = new();

    sealed class ShapeBuffer : DeviceBuffer
    {
        public ShapeBuffer(string name, long length, ElementType type) : base(name, length, type) { }
        ShapeBuffer(ShapeBuffer parent, long offset, long length) : base(parent, offset, length) { }
        protected override DeviceBuffer CreateView(long offset, long length) => new ShapeBuffer(this, offset, length);
        protected override void Release() { }
    }

    public string Name => "shape-only";
    public string DeviceName => "none (shapes only)";
    public long ViewAlignment => 1;
    public BackendProfiler? Profiler { get => null; set => throw No(); }
    public long HostSyncs => 0;
    public long LiveBytes => 0;
    public long HighWaterBytes => 0;
    public int LiveBuffers => 0;
    public void ResetHighWater() { }
    public DeviceBuffer Allocate(string name, long length, ElementType type = ElementType.F32) => new ShapeBuffer(name, length, type);
    public void Dispose() { }

    static NotSupportedException No() => new("a shape-only buffer holds no data");
    public void Upload(DeviceBuffer dst, ReadOnlySpan<float> src, long dstOffset = 0) => throw No();
    public void Upload(DeviceBuffer dst, ReadOnlySpan<int> src, long dstOffset = 0) => throw No();
    public void Download(DeviceBuffer src, Span<float> dst, long srcOffset = 0) => throw No();
    public void Download(DeviceBuffer src, Span<int> dst, long srcOffset = 0) => throw No();
    public void Fill(DeviceBuffer dst, float value, long n) => throw No();
    public void Copy(DeviceBuffer dst, DeviceBuffer src, long n, long dstOffset = 0, long srcOffset = 0) => throw No();
    public void Synchronize() { }
    public void Matmul(DeviceBuffer c, DeviceBuffer a, DeviceBuffer b, int m, int n, int k, bool transA = false, bool transB = false, float alpha = 1f, bool accumulate = false) => throw No();
    public void EmbeddingForward(DeviceBuffer output, DeviceBuffer tokens, DeviceBuffer table, int n, int d) => throw No();
    public void EmbeddingBackward(DeviceBuffer dtable, DeviceBuffer tokens, DeviceBuffer dout, int n, int d, int v) => throw No();
    public void LayerNormForward(DeviceBuffer output, DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer input, DeviceBuffer weight, int n, int d) => throw No();
    public void LayerNormBackward(DeviceBuffer dinput, DeviceBuffer dweight, DeviceBuffer dout, DeviceBuffer input, DeviceBuffer weight, DeviceBuffer mean, DeviceBuffer rstd, int n, int d, bool accumulate) => throw No();
    public void RopeForward(DeviceBuffer output, DeviceBuffer input, int b, int t, int heads, int headDim) => throw No();
    public void RopeBackward(DeviceBuffer dinput, DeviceBuffer dout, int b, int t, int heads, int headDim) => throw No();
    public void AttentionForward(DeviceBuffer output, DeviceBuffer lse, DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, int b, int t, int heads, int kvHeads, int headDim) => throw No();
    public void AttentionBackward(DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, DeviceBuffer dout, DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer output, DeviceBuffer lse, int b, int t, int heads, int kvHeads, int headDim) => throw No();
    public void SwiGluForward(DeviceBuffer output, DeviceBuffer gate, DeviceBuffer up, long count) => throw No();
    public void SwiGluBackward(DeviceBuffer dgate, DeviceBuffer dup, DeviceBuffer dout, DeviceBuffer gate, DeviceBuffer up, long count) => throw No();
    public void Add(DeviceBuffer output, DeviceBuffer a, DeviceBuffer b, long count) => throw No();
    public void AddInPlace(DeviceBuffer acc, DeviceBuffer x, long count) => throw No();
    public void CrossEntropyForward(DeviceBuffer losses, DeviceBuffer logZ, DeviceBuffer logits, DeviceBuffer targets, int n, int v) => throw No();
    public void CrossEntropyBackward(DeviceBuffer dlogits, DeviceBuffer logits, DeviceBuffer logZ, DeviceBuffer targets, float scale, float zLoss, int n, int v) => throw No();
    public double SumOfSquares(DeviceBuffer x, long count) => throw No();
    public void AdafactorUpdate(DeviceBuffer param, DeviceBuffer grad, AdafactorBuffers state, int rows, int cols, in AdafactorStep step) => throw No();
    public (double SumU2, double SumP2) AdafactorPieceSums(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer secondMoment, long n, in AdafactorStep step) => throw No();
    public void AdafactorPieceApply(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer? momentum, DeviceBuffer secondMoment, long n,
                                    double sumU2, double sumP2, long tensorCount, in AdafactorStep step) => throw No();
}

using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends;

/// <summary>
/// The kernel contract every backend implements: memory management plus the forward and backward
/// kernel of every op the PaLM model uses.
///
/// Dimension legend used in the shape lines:
///   B batch, T time (sequence), D model width, H query heads, G key/value heads (1 for multi-query),
///   K head dim, F MLP hidden width, V vocabulary, N = B·T rows.
///
/// Conventions (see DESIGN.md): outputs first, then inputs, then sizes. Gradients carry a `d` prefix.
/// Parameter gradients accumulate (+=). Activation gradients overwrite (=) unless the op takes an
/// explicit <c>accumulate</c> flag. Implementations are deterministic: the same inputs give the same
/// bits for any thread count. Every backend derives from <see cref="BackendBase"/>, whose public methods validate
/// (buffer ownership, element types, lengths against the sizes given, aliasing) before calling the backend's
/// trusted core; outputs may alias inputs only where an op says so. Buffers may be views
/// (<see cref="DeviceBuffer.Slice"/>) of a larger allocation.
/// </summary>
public interface IBackend : IDisposable
{
    /// <summary>Short backend name, e.g. "cpu" or "opencl".</summary>
    string Name { get; }

    /// <summary>Human-readable device description.</summary>
    string DeviceName { get; }

    /// <summary>
    /// A view's offset (<see cref="DeviceBuffer.Slice"/>, in elements from the start of its allocation) must be a
    /// multiple of this. CPU: 16 (64 bytes); OpenCL: the device's CL_DEVICE_MEM_BASE_ADDR_ALIGN.
    /// </summary>
    long ViewAlignment { get; }

    /// <summary>When set, every call synchronises before and after and is timed into it; null (the default) for full speed.</summary>
    BackendProfiler? Profiler { get; set; }

    /// <summary>Calls since construction that made the host wait for the device (see <see cref="BackendBase.HostSyncs"/>).</summary>
    long HostSyncs { get; }

    /// <summary>Bytes of allocations made through <see cref="Allocate"/> and not yet disposed.</summary>
    long LiveBytes { get; }
    /// <summary>The largest <see cref="LiveBytes"/> since construction or <see cref="ResetHighWater"/>.</summary>
    long HighWaterBytes { get; }
    int LiveBuffers { get; }
    void ResetHighWater();

    // ---- memory -------------------------------------------------------------------------------
    DeviceBuffer Allocate(string name, long length, ElementType type = ElementType.F32);
    void Upload(DeviceBuffer dst, ReadOnlySpan<float> src, long dstOffset = 0);
    void Upload(DeviceBuffer dst, ReadOnlySpan<int> src, long dstOffset = 0);
    void Download(DeviceBuffer src, Span<float> dst, long srcOffset = 0);
    /// <summary>Reads int32 elements (token ids), for tests and tools.</summary>
    void Download(DeviceBuffer src, Span<int> dst, long srcOffset = 0);
    /// <summary>dst[0..n) = value.</summary>
    void Fill(DeviceBuffer dst, float value, long n);
    /// <summary>dst[dstOffset..+n) = src[srcOffset..+n).</summary>
    void Copy(DeviceBuffer dst, DeviceBuffer src, long n, long dstOffset = 0, long srcOffset = 0);
    /// <summary>Waits until every queued kernel has finished (no-op on synchronous backends).</summary>
    void Synchronize();

    // ---- matmul -------------------------------------------------------------------------------
    /// <summary>
    /// C (M,N) = alpha · op(A) · op(B) [+ C when accumulate], row-major.
    /// op(A) is (M,K): A is stored (M,K), or (K,M) when transA. op(B) is (K,N): B is stored (K,N), or (N,K) when transB.
    /// </summary>
    void Matmul(DeviceBuffer c, DeviceBuffer a, DeviceBuffer b, int m, int n, int k,
                bool transA = false, bool transB = false, float alpha = 1f, bool accumulate = false);
    /// <summary>
    /// One GEMM whose operands are pieces concatenated along one axis of it (PaLM's fused block projections), with
    /// <see cref="Matmul"/>'s transposes, alpha and accumulate: C (M,N) = alpha · op([A pieces]) · op([B pieces]) [+ C].
    /// <paramref name="split"/> names the axis and <paramref name="extents"/> its pieces' sizes (summing to M, N or K):
    /// M: piece i of A is op(A_i) (m_i,K) and of C (m_i,N), B is one buffer; N: op(B_i) (K,n_i) and C_i (M,n_i), A is one
    /// buffer; K: op(A_i) (M,k_i) and op(B_i) (k_i,N), C is one buffer. Each piece is a row-major matrix of its own
    /// (its own leading dimension). Pieces along M or N give the bits of one Matmul per piece; pieces along K the bits
    /// of one call on the concatenated operands on backends that fuse (CPU), of one call per piece where it is split.
    /// </summary>
    void MatmulPieces(MatmulSplit split, int[] extents, DeviceBuffer[] c, DeviceBuffer[] a, DeviceBuffer[] b, int m, int n, int k,
                      bool transA = false, bool transB = false, float alpha = 1f, bool accumulate = false);

    // ---- embedding ----------------------------------------------------------------------------
    /// <summary>
    /// tokens (N), table (Vl,D) -> out (N,D). tokens are global ids; table holds vocabulary rows
    /// [vocabStart, vocabStart + vocabRows) (one device: 0, V). A token outside that range gives a zero row, so
    /// the shards' outputs sum to the unsharded lookup. A negative token is an error.
    /// </summary>
    void EmbeddingForward(DeviceBuffer output, DeviceBuffer tokens, DeviceBuffer table, int n, int d, int vocabStart, int vocabRows);
    /// <summary>
    /// dout (N,D), tokens (N) -> dtable (Vl,D) +=, only for tokens inside [vocabStart, vocabStart + vocabRows);
    /// each row receives its tokens' rows of dout in token order.
    /// </summary>
    void EmbeddingBackward(DeviceBuffer dtable, DeviceBuffer tokens, DeviceBuffer dout, int n, int d, int vocabStart, int vocabRows);

    // ---- layer norm (scale, no bias) ----------------------------------------------------------
    /// <summary>inp (N,D), weight (D) -> out (N,D), mean (N), rstd (N)</summary>
    void LayerNormForward(DeviceBuffer output, DeviceBuffer mean, DeviceBuffer rstd,
                          DeviceBuffer input, DeviceBuffer weight, int n, int d);
    /// <summary>dout (N,D), inp, weight, mean, rstd -> dinp (N,D) (= or += when accumulate), dweight (D) +=. dinp may alias dout when not accumulating.</summary>
    void LayerNormBackward(DeviceBuffer dinput, DeviceBuffer dweight, DeviceBuffer dout, DeviceBuffer input,
                           DeviceBuffer weight, DeviceBuffer mean, DeviceBuffer rstd, int n, int d, bool accumulate);

    // ---- rotary position embedding ------------------------------------------------------------
    /// <summary>
    /// inp (B,T,Hs,K) -> out (B,T,Hs,K), rotate-half RoPE with base 10000 applied to all K dims,
    /// position = t. out may alias inp.
    /// </summary>
    void RopeForward(DeviceBuffer output, DeviceBuffer input, int b, int t, int heads, int headDim);
    /// <summary>dout (B,T,Hs,K) -> dinp (B,T,Hs,K) (the inverse rotation). dinp may alias dout.</summary>
    void RopeBackward(DeviceBuffer dinput, DeviceBuffer dout, int b, int t, int heads, int headDim);

    // ---- causal attention (multi-query when G = 1) --------------------------------------------
    /// <summary>
    /// q (B,T,H,K), k (B,T,G,K), v (B,T,G,K) -> out (B,T,H,K), lse (B,H,T).
    /// Scores are q·k/√K with a causal mask; query head h reads K/V head h / (H/G).
    /// lse is the natural log of the softmax normaliser, kept for backward.
    /// </summary>
    void AttentionForward(DeviceBuffer output, DeviceBuffer lse, DeviceBuffer q, DeviceBuffer k, DeviceBuffer v,
                          int b, int t, int heads, int kvHeads, int headDim);
    /// <summary>dout (B,T,H,K), q, k, v, out, lse -> dq (B,T,H,K), dk (B,T,G,K), dv (B,T,G,K), all overwritten.</summary>
    void AttentionBackward(DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, DeviceBuffer dout,
                           DeviceBuffer q, DeviceBuffer k, DeviceBuffer v, DeviceBuffer output, DeviceBuffer lse,
                           int b, int t, int heads, int kvHeads, int headDim);

    // ---- decoding with a KV cache ---------------------------------------------------------------
    /// <summary>
    /// inp (B,Hs,K), positions (B) -> out (B,Hs,K): one token per sequence, sequence b rotated at position
    /// positions[b] (≥ 0), the same rotation and bits as <see cref="RopeForward"/> at that t. out may alias inp.
    /// </summary>
    void RopeForwardAt(DeviceBuffer output, DeviceBuffer input, DeviceBuffer positions, int b, int heads, int headDim);
    /// <summary>
    /// q (B,H,K), kCache (B,Tmax,G,K), vCache (B,Tmax,G,K), lengths (B) -> out (B,H,K): the one query row of each
    /// sequence attends to cache rows [0, lengths[b]) (1 ≤ lengths[b] ≤ Tmax), scores q·k/√K, query head h reads
    /// kv head h / (H/G). Keys are visited in order with an online softmax; no lse is kept (no backward).
    /// </summary>
    void AttentionDecode(DeviceBuffer output, DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer lengths,
                         int b, int tMax, int heads, int kvHeads, int headDim);

    // ---- SwiGLU -------------------------------------------------------------------------------
    /// <summary>gate (N,F), up (N,F) -> out (N,F) = gate·sigmoid(gate) ⊙ up</summary>
    void SwiGluForward(DeviceBuffer output, DeviceBuffer gate, DeviceBuffer up, long count);
    /// <summary>dout (N,F), gate, up -> dgate (N,F), dup (N,F)</summary>
    void SwiGluBackward(DeviceBuffer dgate, DeviceBuffer dup, DeviceBuffer dout, DeviceBuffer gate, DeviceBuffer up, long count);

    // ---- residual -----------------------------------------------------------------------------
    /// <summary>a (n), b (n) -> out (n) = a + b. out may alias a or b.</summary>
    void Add(DeviceBuffer output, DeviceBuffer a, DeviceBuffer b, long count);
    /// <summary>acc (n) += x (n). acc may alias x. The backward of a residual add is routing dout to both inputs.</summary>
    void AddInPlace(DeviceBuffer acc, DeviceBuffer x, long count);

    // ---- softmax cross-entropy with z-loss ----------------------------------------------------
    /// <summary>
    /// logits (N,Vl), targets (N) -> logZ (N), targetLogit (N). logits are vocabulary columns
    /// [vocabStart, vocabStart + v); targets are global ids. logZ = log Σ exp over this shard's columns;
    /// targetLogit = logits[row, target − vocabStart] when the target is in the shard, else 0. One device:
    /// loss = logZ − targetLogit. Shards combine logZ with <see cref="LogSumExpShift"/> and
    /// <see cref="LogSumExpFinish"/> around all-reduces, and targetLogit by a sum. A negative target is an error.
    /// </summary>
    void CrossEntropyForward(DeviceBuffer logZ, DeviceBuffer targetLogit, DeviceBuffer logits, DeviceBuffer targets, int n, int v, int vocabStart);
    /// <summary>
    /// logits (N,Vl), logZ (N) global normaliser, targets (N) global ids -> dlogits (N,Vl) =
    /// scale · (softmax·(1 + 2·zLoss·logZ) − onehot), the one-hot term only where the target is in the shard.
    /// The loss is scale · Σ (CE + zLoss·logZ²), so scale = 1/N for a mean. dlogits may alias logits.
    /// </summary>
    void CrossEntropyBackward(DeviceBuffer dlogits, DeviceBuffer logits, DeviceBuffer logZ, DeviceBuffer targets,
                              float scale, float zLoss, int n, int v, int vocabStart);
    /// <summary>logZ (n), max (n) -> out (n) = exp(logZ − max): a shard's normaliser relative to the all-shard max. out may alias an input.</summary>
    void LogSumExpShift(DeviceBuffer output, DeviceBuffer logZ, DeviceBuffer max, long n);
    /// <summary>max (n), sumExp (n) -> logZ (n) = max + log(sumExp) (in double where the device has it, rounded once). logZ may alias an input.</summary>
    void LogSumExpFinish(DeviceBuffer logZ, DeviceBuffer max, DeviceBuffer sumExp, long n);

    // ---- reductions and optimizer -------------------------------------------------------------
    /// <summary>Σ x² over x (n), in double with a fixed reduction order, returned to the host.</summary>
    double SumOfSquares(DeviceBuffer x, long count);

    /// <summary>
    /// x (flat), segments (S) -> sums (S): Σ x² over every segment, in double, one read-back for all. Order: each
    /// segment in runs of 1024 from its start (16 lanes, then lanes pairwise), then its runs in 64 strided
    /// partials and a fixed tree; the same bits for any thread count, SIMD width or backend (with fp64).
    /// </summary>
    void SumOfSquaresSegments(DeviceBuffer x, IReadOnlyList<Segment> segments, Span<double> sums);

    /// <summary>
    /// One Adafactor step for one parameter tensor viewed as (rows, cols). See Training/Adafactor.cs for the maths.
    /// state.Momentum (rows·cols) when β1 > 0; state.SecondMoment (rows·cols) when unfactored,
    /// otherwise state.RowMoment (rows) and state.ColMoment (cols).
    /// </summary>
    void AdafactorUpdate(DeviceBuffer param, DeviceBuffer grad, AdafactorBuffers state, int rows, int cols, in AdafactorStep step);

    /// <summary>
    /// Adafactor pass 1 on every segment (unfactored): param, grad, secondMoment (flat), segments (S) ->
    /// secondMoment updated; sumU2 (S), sumP2 (S) per segment (double; chunks of 16384 from the segment's start,
    /// each in index order, then the chunks in order). One read-back. A tensor split over devices adds its pieces'
    /// sums in rank order before <see cref="AdafactorApply"/>, so its RMS(u) and RMS(p) never need it on one device.
    /// </summary>
    void AdafactorSums(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer secondMoment, IReadOnlyList<Segment> segments,
                       in AdafactorStep step, Span<double> sumU2, Span<double> sumP2);

    /// <summary>
    /// Adafactor pass 2 on every segment: grad, secondMoment (flat), per segment the whole tensor's Σu², Σp² and
    /// element count (S each) -> momentum (flat, when β1 > 0) and param (flat) updated, with the clip factor and
    /// step size of <see cref="AdafactorStep.Scalars"/>. Per segment the bits of the fused unfactored update.
    /// </summary>
    void AdafactorApply(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer? momentum, DeviceBuffer secondMoment,
                        IReadOnlyList<Segment> segments, ReadOnlySpan<double> sumU2, ReadOnlySpan<double> sumP2,
                        ReadOnlySpan<long> tensorCounts, in AdafactorStep step);
}

/// <summary>flat [Offset, Offset + Count): one tensor, or one device's piece of it, inside a flat buffer.</summary>
public readonly record struct Segment(long Offset, long Count);

/// <summary>Optimizer state buffers of one parameter tensor. Unused ones are null.</summary>
public sealed record AdafactorBuffers(DeviceBuffer? Momentum, DeviceBuffer? SecondMoment, DeviceBuffer? RowMoment, DeviceBuffer? ColMoment);

/// <summary>Per-step scalars of an Adafactor update (the same for every tensor of a step).</summary>
public readonly record struct AdafactorStep(
    float LearningRate,     // ρ_k, the relative step size
    float Beta1,            // momentum decay (0 disables momentum)
    float Beta2,            // second-moment decay 1 − k^−0.8 for this step
    float Epsilon1,         // added to g² (1e-30)
    float Epsilon2,         // floor of the parameter RMS used for parameter scaling (1e-3)
    float ClipThreshold,    // update clipping d: u /= max(1, RMS(u)/d)
    float GradScale,        // global-norm clip factor min(1, maxNorm/‖g‖) applied to g first
    float WeightDecay)      // decoupled decay: p -= WeightDecay·p (PaLM: lr²)
{
    /// <summary>
    /// The per-tensor factors of the update from Σu² and Σp² over its count elements: clip = 1/max(1, RMS(u)/d),
    /// step size = max(ε2, RMS(p))·ρ. One definition for every backend and for tensors split over devices.
    /// </summary>
    public (float Clip, float StepSize) Scalars(double sumU2, double sumP2, long count)
    {
        float rmsU = (float)Math.Sqrt(sumU2 / count);
        float rmsP = (float)Math.Sqrt(sumP2 / count);
        return (1f / Math.Max(1f, rmsU / ClipThreshold), Math.Max(Epsilon2, rmsP) * LearningRate);
    }
}

/// <summary>Host copies of device buffers.</summary>
public static class BackendHostCopies
{
    /// <summary>A new host array holding the first <paramref name="count"/> values of <paramref name="src"/> (all of it by default).</summary>
    public static float[] ToHost(this IBackend backend, DeviceBuffer src, long count = -1)
    {
        var host = new float[count < 0 ? src.Length : count];
        backend.Download(src, host);
        return host;
    }
}

/// <summary>The GEMM axis the pieces of <see cref="IBackend.MatmulPieces"/> are concatenated along.</summary>
public enum MatmulSplit
{
    /// <summary>Rows: A and C are split (e.g. dW of stacked output projections, [dWo; dWdown] += [att | act]ᵀ·dy).</summary>
    M,
    /// <summary>Columns: B and C are split (e.g. the fused input projection h·[Wq | Wk | Wv | Wgate | Wup]).</summary>
    N,
    /// <summary>The summed axis: A and B are split (e.g. the fused output projection [att | act]·[Wo ; Wdown]).</summary>
    K,
}

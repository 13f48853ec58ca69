using System.Diagnostics;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends;

/// <summary>
/// The checked surface of every backend. Each public method of <see cref="IBackend"/> validates its arguments
/// (the buffers belong to this instance and are not disposed, element types, lengths against the sizes given,
/// non-negative sizes, ranges, aliasing), counts host synchronisations, brackets the call for an attached
/// <see cref="Profiler"/>, then calls a protected <c>...Core</c> method that trusts everything it is given. A
/// backend derives from this class and implements only the cores (and <see cref="AllocateCore"/>, buffer views
/// through its <see cref="DeviceBuffer"/> type).
///
/// Aliasing: outputs may not share storage with inputs or with each other, except where an op's documentation says
/// "may alias", and then only the same elements (same storage, same offset). A partial overlap is always an error.
///
/// Adding an op: declare it on <see cref="IBackend"/>; add the public method here (checks with <see cref="Need"/>,
/// <see cref="NonNegative"/> and <see cref="Distinct"/>, then <c>long t0 = Begin(); XCore(...); End(t0, OpCosts.X(...));</c>);
/// add its cost to <see cref="OpCosts"/>; declare <c>protected abstract void XCore(...)</c>; implement it in each backend.
/// </summary>
public abstract class BackendBase : IBackend
{
    readonly Action<DeviceBuffer> released;
    BackendProfiler? profiler;
    long hostSyncs;

    protected BackendBase() => released = OnReleased;

    public abstract string Name { get; }
    public abstract string DeviceName { get; }
    public abstract long ViewAlignment { get; }

    /// <summary>When set, every public call synchronises before and after and is recorded here (see <see cref="BackendProfiler"/>).</summary>
    public BackendProfiler? Profiler { get => profiler; set => profiler = value; }

    /// <summary>
    /// Calls that made the host wait for the device since construction: <see cref="Synchronize"/>, uploads and
    /// downloads (blocking), and every call that returns a device result to the host (<see cref="SumOfSquares"/>,
    /// <see cref="SumOfSquaresSegments"/>, <see cref="AdafactorSums"/>); plus waits a backend needs inside an op (<see cref="CountHostSync"/>).
    /// The profiler's own synchronisations are not counted.
    /// </summary>
    public long HostSyncs => hostSyncs;

    /// <summary>A core that blocks on the device outside the calls the base counts reports it here.</summary>
    protected void CountHostSync() => hostSyncs++;

    // ---- memory tracking ------------------------------------------------------------------------

    /// <summary>Bytes of the allocations made through <see cref="Allocate"/> and not yet disposed (views hold none).</summary>
    public long LiveBytes { get; private set; }
    /// <summary>The largest <see cref="LiveBytes"/> since construction or <see cref="ResetHighWater"/>.</summary>
    public long HighWaterBytes { get; private set; }
    public int LiveBuffers { get; private set; }
    public void ResetHighWater() => HighWaterBytes = LiveBytes;

    void OnReleased(DeviceBuffer b)
    {
        LiveBytes -= b.Bytes;
        LiveBuffers--;
    }

    // ---- profiling --------------------------------------------------------------------------------

    /// <summary>Start of a profiled call: waits for queued work so the time is this call's own. 0 when not profiling.</summary>
    protected long Begin()
    {
        if (profiler is null) return 0;
        SynchronizeCore();
        return Stopwatch.GetTimestamp();
    }

    /// <summary>End of a profiled call: waits for it (unless it already blocked) and records it.</summary>
    protected void End(long t0, in OpCost cost, bool waited = false)
    {
        if (profiler is null || t0 == 0) return;
        if (!waited) SynchronizeCore();
        profiler.Record(cost, Stopwatch.GetElapsedTime(t0).TotalSeconds);
    }

    // ---- validation ------------------------------------------------------------------------------

    /// <summary>Checks that <paramref name="b"/> is a live buffer of this instance.</summary>
    protected void Own(string op, DeviceBuffer b, string role)
    {
        ArgumentNullException.ThrowIfNull(b, role);
        if (!ReferenceEquals(b.Owner, this))
            throw new ArgumentException(
                $"{op}: {role} '{b.Name}' is not a buffer of this {Name} backend instance ({DeviceName}); " +
                (b.Owner is IBackend other ? $"it belongs to {other.Name} ({other.DeviceName})" : $"it is a {b.GetType().Name} of no backend"), role);
        if (b.IsDisposed || b.Root.IsDisposed)
            throw new ObjectDisposedException(b.Name, $"{op}: {role} '{b.Name}' was disposed");
    }

    /// <summary>Checks ownership, element type and that <paramref name="b"/> holds at least <paramref name="need"/> elements.</summary>
    protected void Need(string op, DeviceBuffer b, string role, long need, string what, ElementType type = ElementType.F32)
    {
        Own(op, b, role);
        if (b.Type != type)
            throw new ArgumentException($"{op}: {role} '{b.Name}' holds {b.Type} elements, needs {type}", role);
        if (b.Length < need)
            throw new ArgumentException($"{op}: {role} '{b.Name}' has {b.Length} elements, needs {what} = {need}", role);
    }

    protected static void NonNegative(string op, long value, string name)
    {
        if (value < 0) throw new ArgumentOutOfRangeException(name, $"{op}: {name} = {value} is negative");
    }

    /// <summary>
    /// Checks that the first <paramref name="outLength"/> elements of output <paramref name="output"/> share no storage
    /// with the first <paramref name="inLength"/> of <paramref name="other"/>, or, when <paramref name="mayAlias"/>, are
    /// exactly the same elements.
    /// </summary>
    protected static void Distinct(string op, DeviceBuffer output, long outLength, string outRole, DeviceBuffer other, long inLength, string otherRole,
                                   bool mayAlias = false)
    {
        if (!ReferenceEquals(output.Root, other.Root) || outLength <= 0 || inLength <= 0) return;
        if (output.Offset >= other.Offset + inLength || other.Offset >= output.Offset + outLength) return;
        if (mayAlias && output.Offset == other.Offset) return;
        throw new ArgumentException(
            $"{op}: {outRole} '{output.Name}' overlaps {otherRole} '{other.Name}' (elements [{output.Offset}, {output.Offset + outLength}) and " +
            $"[{other.Offset}, {other.Offset + inLength}) of '{output.Root.Name}'); " +
            (mayAlias ? $"{outRole} may be {otherRole} itself, but not a partial overlap" : $"{outRole} may not alias {otherRole}"), outRole);
    }

    /// <summary>The first <see cref="Length"/> elements of a buffer an op reads or writes, and its role, for <see cref="DistinctFrom"/>.</summary>
    protected readonly record struct Use(DeviceBuffer Buffer, long Length, string Role);

    /// <summary><see cref="Distinct"/> of one output against each of <paramref name="others"/> (no aliasing allowed).</summary>
    protected static void DistinctFrom(string op, DeviceBuffer output, long outLength, string outRole, params ReadOnlySpan<Use> others)
    {
        foreach (var o in others) Distinct(op, output, outLength, outRole, o.Buffer, o.Length, o.Role);
    }

    static void Range(string op, DeviceBuffer b, string role, long offset, long count)
    {
        if (offset < 0 || count < 0 || offset > b.Length - count)
            throw new ArgumentOutOfRangeException(role, $"{op}: range [{offset}, {offset + count}) is outside {role} '{b.Name}' of {b.Length} elements");
    }

    // ---- memory ----------------------------------------------------------------------------------

    public DeviceBuffer Allocate(string name, long length, ElementType type = ElementType.F32)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), $"allocate: buffer '{name}' length {length} is negative");
        var b = AllocateCore(name, length, type);
        b.Owner = this;
        b.Released = released;
        LiveBytes += b.Bytes;
        LiveBuffers++;
        HighWaterBytes = Math.Max(HighWaterBytes, LiveBytes);
        return b;
    }

    public void Upload(DeviceBuffer dst, ReadOnlySpan<float> src, long dstOffset = 0)
    {
        Need("upload", dst, nameof(dst), 0, "0");
        Range("upload", dst, nameof(dst), dstOffset, src.Length);
        hostSyncs++;
        long t0 = Begin();
        UploadCore(dst, src, dstOffset);
        End(t0, OpCosts.Upload(src.Length));
    }

    public void Upload(DeviceBuffer dst, ReadOnlySpan<int> src, long dstOffset = 0)
    {
        Need("upload", dst, nameof(dst), 0, "0", ElementType.I32);
        Range("upload", dst, nameof(dst), dstOffset, src.Length);
        hostSyncs++;
        long t0 = Begin();
        UploadCore(dst, src, dstOffset);
        End(t0, OpCosts.Upload(src.Length));
    }

    public void Download(DeviceBuffer src, Span<float> dst, long srcOffset = 0)
    {
        Need("download", src, nameof(src), 0, "0");
        Range("download", src, nameof(src), srcOffset, dst.Length);
        hostSyncs++;
        long t0 = Begin();
        DownloadCore(src, dst, srcOffset);
        End(t0, OpCosts.Download(dst.Length), waited: true);
    }

    /// <summary>Reads int32 elements (token ids); used by tests and tools.</summary>
    public void Download(DeviceBuffer src, Span<int> dst, long srcOffset = 0)
    {
        Need("download", src, nameof(src), 0, "0", ElementType.I32);
        Range("download", src, nameof(src), srcOffset, dst.Length);
        hostSyncs++;
        long t0 = Begin();
        DownloadCore(src, dst, srcOffset);
        End(t0, OpCosts.Download(dst.Length), waited: true);
    }

    public void Fill(DeviceBuffer dst, float value, long n)
    {
        NonNegative("fill", n, nameof(n));
        Need("fill", dst, nameof(dst), n, "n");
        long t0 = Begin();
        FillCore(dst, value, n);
        End(t0, OpCosts.Fill(n));
    }

    public void Copy(DeviceBuffer dst, DeviceBuffer src, long n, long dstOffset = 0, long srcOffset = 0)
    {
        Own("copy", dst, nameof(dst));
        Own("copy", src, nameof(src));
        if (dst.Type != src.Type) throw new ArgumentException($"copy from '{src.Name}' ({src.Type}) to '{dst.Name}' ({dst.Type}): element types differ", nameof(dst));
        Range("copy", dst, nameof(dst), dstOffset, n);
        Range("copy", src, nameof(src), srcOffset, n);
        if (ReferenceEquals(dst.Root, src.Root) && n > 0)
        {
            long d = dst.Offset + dstOffset, s = src.Offset + srcOffset;
            if (d < s + n && s < d + n)
                throw new ArgumentException($"copy: destination [{d}, {d + n}) and source [{s}, {s + n}) of '{dst.Root.Name}' overlap", nameof(dst));
        }
        long t0 = Begin();
        CopyCore(dst, src, n, dstOffset, srcOffset);
        End(t0, OpCosts.Copy(n));
    }

    public void Synchronize()
    {
        hostSyncs++;
        SynchronizeCore();
    }

    protected abstract DeviceBuffer AllocateCore(string name, long length, ElementType type);
    protected abstract void UploadCore(DeviceBuffer dst, ReadOnlySpan<float> src, long dstOffset);
    protected abstract void UploadCore(DeviceBuffer dst, ReadOnlySpan<int> src, long dstOffset);
    protected abstract void DownloadCore(DeviceBuffer src, Span<float> dst, long srcOffset);
    protected abstract void DownloadCore(DeviceBuffer src, Span<int> dst, long srcOffset);
    protected abstract void FillCore(DeviceBuffer dst, float value, long n);
    protected abstract void CopyCore(DeviceBuffer dst, DeviceBuffer src, long n, long dstOffset, long srcOffset);
    protected abstract void SynchronizeCore();

    // ---- matmul ----------------------------------------------------------------------------------

    public void Matmul(DeviceBuffer c, DeviceBuffer a, DeviceBuffer b, int m, int n, int k,
                       bool transA = false, bool transB = false, float alpha = 1f, bool accumulate = false)
    {
        CheckMatmul("matmul", c, a, b, m, n, k);
        long t0 = Begin();
        MatmulCore(c, a, b, m, n, k, transA, transB, alpha, accumulate);
        End(t0, OpCosts.Matmul(m, n, k, accumulate));
    }

    /// <summary>The checks of <see cref="Matmul"/>, for a backend's own matmul variants (e.g. a tensor-core GEMM).</summary>
    protected void CheckMatmul(string op, DeviceBuffer c, DeviceBuffer a, DeviceBuffer b, int m, int n, int k)
    {
        NonNegative(op, m, nameof(m)); NonNegative(op, n, nameof(n)); NonNegative(op, k, nameof(k));
        long mn = (long)m * n, mk = (long)m * k, kn = (long)k * n;
        Need(op, c, nameof(c), mn, "m·n");
        Need(op, a, nameof(a), mk, "m·k");
        Need(op, b, nameof(b), kn, "k·n");
        Distinct(op, c, mn, nameof(c), a, mk, nameof(a));
        Distinct(op, c, mn, nameof(c), b, kn, nameof(b));
    }

    protected abstract void MatmulCore(DeviceBuffer c, DeviceBuffer a, DeviceBuffer b, int m, int n, int k,
                                       bool transA, bool transB, float alpha, bool accumulate);

    public void MatmulPieces(MatmulSplit split, int[] extents, DeviceBuffer[] c, DeviceBuffer[] a, DeviceBuffer[] b, int m, int n, int k,
                             bool transA = false, bool transB = false, float alpha = 1f, bool accumulate = false)
    {
        const string op = "matmul-pieces";
        ArgumentNullException.ThrowIfNull(extents); ArgumentNullException.ThrowIfNull(c); ArgumentNullException.ThrowIfNull(a); ArgumentNullException.ThrowIfNull(b);
        NonNegative(op, m, nameof(m)); NonNegative(op, n, nameof(n)); NonNegative(op, k, nameof(k));
        if (extents.Length == 0) throw new ArgumentException($"{op}: no pieces; give at least one extent", nameof(extents));
        foreach (int e in extents) NonNegative(op, e, "extent");
        long total = extents.Sum(e => (long)e), axis = split switch { MatmulSplit.M => m, MatmulSplit.N => n, _ => k };
        if (total != axis)
            throw new ArgumentException($"{op}: the extents along {split} sum to {total} but {split} = {axis}; the pieces must tile the axis", nameof(extents));
        int pieces = extents.Length;
        void Count(DeviceBuffer[] list, string role, bool split_)
        {
            int want = split_ ? pieces : 1;
            if (list.Length != want)
                throw new ArgumentException($"{op}: {role} has {list.Length} buffers; split along {split} it needs {want}", role);
        }
        Count(c, "c", split != MatmulSplit.K);
        Count(a, "a", split != MatmulSplit.N);
        Count(b, "b", split != MatmulSplit.M);
        long LenC(int i) => (split == MatmulSplit.M ? extents[i] : (long)m) * (split == MatmulSplit.N ? extents[i] : n);
        long LenA(int i) => (split == MatmulSplit.M ? extents[i] : (long)m) * (split == MatmulSplit.K ? extents[i] : k);
        long LenB(int i) => (split == MatmulSplit.K ? extents[i] : (long)k) * (split == MatmulSplit.N ? extents[i] : n);
        for (int i = 0; i < c.Length; i++) Need(op, c[i], $"c[{i}]", LenC(i), "its piece's rows·columns");
        for (int i = 0; i < a.Length; i++) Need(op, a[i], $"a[{i}]", LenA(i), "its piece's rows·columns");
        for (int i = 0; i < b.Length; i++) Need(op, b[i], $"b[{i}]", LenB(i), "its piece's rows·columns");
        for (int i = 0; i < c.Length; i++)
        {
            for (int j = 0; j < a.Length; j++) Distinct(op, c[i], LenC(i), $"c[{i}]", a[j], LenA(j), $"a[{j}]");
            for (int j = 0; j < b.Length; j++) Distinct(op, c[i], LenC(i), $"c[{i}]", b[j], LenB(j), $"b[{j}]");
            for (int j = 0; j < i; j++) Distinct(op, c[i], LenC(i), $"c[{i}]", c[j], LenC(j), $"c[{j}]");
        }
        long t0 = Begin();
        MatmulPiecesCore(split, extents, c, a, b, m, n, k, transA, transB, alpha, accumulate);
        End(t0, OpCosts.MatmulPieces(m, n, k, accumulate));
    }

    /// <summary>
    /// The default: one <see cref="MatmulCore"/> per piece (along K the first takes <paramref name="accumulate"/>, the
    /// rest accumulate), so every backend runs the fused block; a backend that packs pieces directly overrides it.
    /// </summary>
    protected virtual void MatmulPiecesCore(MatmulSplit split, int[] extents, DeviceBuffer[] c, DeviceBuffer[] a, DeviceBuffer[] b, int m, int n, int k,
                                            bool transA, bool transB, float alpha, bool accumulate)
    {
        for (int i = 0; i < extents.Length; i++)
        {
            int e = extents[i];
            switch (split)
            {
                case MatmulSplit.M: if (e > 0) MatmulCore(c[i], a[i], b[0], e, n, k, transA, transB, alpha, accumulate); break;
                case MatmulSplit.N: if (e > 0) MatmulCore(c[i], a[0], b[i], m, e, k, transA, transB, alpha, accumulate); break;
                default: if (e > 0 || i == 0) MatmulCore(c[0], a[i], b[i], m, n, e, transA, transB, alpha, i == 0 ? accumulate : true); break;
            }
        }
    }

    // ---- embedding -------------------------------------------------------------------------------

    public void EmbeddingForward(DeviceBuffer output, DeviceBuffer tokens, DeviceBuffer table, int n, int d, int vocabStart, int vocabRows)
    {
        const string op = "embedding forward";
        NonNegative(op, n, nameof(n)); NonNegative(op, d, nameof(d)); NonNegative(op, vocabStart, nameof(vocabStart)); NonNegative(op, vocabRows, nameof(vocabRows));
        long nd = (long)n * d, vd = (long)vocabRows * d;
        Need(op, output, nameof(output), nd, "n·d");
        Need(op, tokens, nameof(tokens), n, "n", ElementType.I32);
        Need(op, table, nameof(table), vd, "vocabRows·d");
        Distinct(op, output, nd, nameof(output), table, vd, nameof(table));
        Distinct(op, output, nd, nameof(output), tokens, n, nameof(tokens));
        long t0 = Begin();
        EmbeddingForwardCore(output, tokens, table, n, d, vocabStart, vocabRows);
        End(t0, OpCosts.EmbeddingForward(n, d));
    }

    public void EmbeddingBackward(DeviceBuffer dtable, DeviceBuffer tokens, DeviceBuffer dout, int n, int d, int vocabStart, int vocabRows)
    {
        const string op = "embedding backward";
        NonNegative(op, n, nameof(n)); NonNegative(op, d, nameof(d)); NonNegative(op, vocabStart, nameof(vocabStart)); NonNegative(op, vocabRows, nameof(vocabRows));
        long vd = (long)vocabRows * d, nd = (long)n * d;
        Need(op, dtable, nameof(dtable), vd, "vocabRows·d");
        Need(op, tokens, nameof(tokens), n, "n", ElementType.I32);
        Need(op, dout, nameof(dout), nd, "n·d");
        Distinct(op, dtable, vd, nameof(dtable), dout, nd, nameof(dout));
        Distinct(op, dtable, vd, nameof(dtable), tokens, n, nameof(tokens));
        long t0 = Begin();
        EmbeddingBackwardCore(dtable, tokens, dout, n, d, vocabStart, vocabRows);
        End(t0, OpCosts.EmbeddingBackward(n, d, vocabRows));
    }

    protected abstract void EmbeddingForwardCore(DeviceBuffer output, DeviceBuffer tokens, DeviceBuffer table, int n, int d, int vocabStart, int vocabRows);
    protected abstract void EmbeddingBackwardCore(DeviceBuffer dtable, DeviceBuffer tokens, DeviceBuffer dout, int n, int d, int vocabStart, int vocabRows);

    // ---- layer norm ------------------------------------------------------------------------------

    public void LayerNormForward(DeviceBuffer output, DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer input, DeviceBuffer weight, int n, int d)
    {
        const string op = "layer norm forward";
        NonNegative(op, n, nameof(n)); NonNegative(op, d, nameof(d));
        long nd = (long)n * d;
        Need(op, output, nameof(output), nd, "n·d");
        Need(op, mean, nameof(mean), n, "n");
        Need(op, rstd, nameof(rstd), n, "n");
        Need(op, input, nameof(input), nd, "n·d");
        Need(op, weight, nameof(weight), d, "d");
        Use inp = new(input, nd, nameof(input)), w = new(weight, d, nameof(weight));
        DistinctFrom(op, output, nd, nameof(output), inp, w, new(mean, n, nameof(mean)), new(rstd, n, nameof(rstd)));
        DistinctFrom(op, mean, n, nameof(mean), inp, w, new(rstd, n, nameof(rstd)));
        DistinctFrom(op, rstd, n, nameof(rstd), inp, w);
        long t0 = Begin();
        LayerNormForwardCore(output, mean, rstd, input, weight, n, d);
        End(t0, OpCosts.LayerNormForward(n, d));
    }

    public void LayerNormBackward(DeviceBuffer dinput, DeviceBuffer dweight, DeviceBuffer dout, DeviceBuffer input, DeviceBuffer weight,
                                  DeviceBuffer mean, DeviceBuffer rstd, int n, int d, bool accumulate)
    {
        const string op = "layer norm backward";
        NonNegative(op, n, nameof(n)); NonNegative(op, d, nameof(d));
        long nd = (long)n * d;
        Need(op, dinput, nameof(dinput), nd, "n·d");
        Need(op, dweight, nameof(dweight), d, "d");
        Need(op, dout, nameof(dout), nd, "n·d");
        Need(op, input, nameof(input), nd, "n·d");
        Need(op, weight, nameof(weight), d, "d");
        Need(op, mean, nameof(mean), n, "n");
        Need(op, rstd, nameof(rstd), n, "n");
        // dinp may alias dout (the kernels read dout for dweight first); not when accumulating, which reads dinp too.
        Distinct(op, dinput, nd, nameof(dinput), dout, nd, nameof(dout), mayAlias: !accumulate);
        Use inp = new(input, nd, nameof(input)), w = new(weight, d, nameof(weight)), mu = new(mean, n, nameof(mean)), rs = new(rstd, n, nameof(rstd));
        DistinctFrom(op, dinput, nd, nameof(dinput), new(dweight, d, nameof(dweight)), inp, w, mu, rs);
        DistinctFrom(op, dweight, d, nameof(dweight), new(dout, nd, nameof(dout)), inp, w, mu, rs);
        long t0 = Begin();
        LayerNormBackwardCore(dinput, dweight, dout, input, weight, mean, rstd, n, d, accumulate);
        End(t0, OpCosts.LayerNormBackward(n, d, accumulate));
    }

    protected abstract void LayerNormForwardCore(DeviceBuffer output, DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer input, DeviceBuffer weight, int n, int d);
    protected abstract void LayerNormBackwardCore(DeviceBuffer dinput, DeviceBuffer dweight, DeviceBuffer dout, DeviceBuffer input, DeviceBuffer weight,
                                                  DeviceBuffer mean, DeviceBuffer rstd, int n, int d, bool accumulate);

    // ---- rotary position embedding ------------------------------------------------------------------

    void CheckRope(string op, DeviceBuffer output, string outRole, DeviceBuffer input, string inRole, int b, int t, int heads, int headDim)
    {
        NonNegative(op, b, nameof(b)); NonNegative(op, t, nameof(t)); NonNegative(op, heads, nameof(heads));
        if (headDim <= 0 || headDim % 2 != 0) throw new ArgumentException($"{op}: RoPE needs an even, positive head dim, got {headDim}", nameof(headDim));
        long count = (long)b * t * heads * headDim;
        Need(op, output, outRole, count, "b·t·heads·headDim");
        Need(op, input, inRole, count, "b·t·heads·headDim");
        Distinct(op, output, count, outRole, input, count, inRole, mayAlias: true);
    }

    public void RopeForward(DeviceBuffer output, DeviceBuffer input, int b, int t, int heads, int headDim)
    {
        CheckRope("rope forward", output, nameof(output), input, nameof(input), b, t, heads, headDim);
        long t0 = Begin();
        RopeForwardCore(output, input, b, t, heads, headDim);
        End(t0, OpCosts.RopeForward(b, t, heads, headDim));
    }

    public void RopeBackward(DeviceBuffer dinput, DeviceBuffer dout, int b, int t, int heads, int headDim)
    {
        CheckRope("rope backward", dinput, nameof(dinput), dout, nameof(dout), b, t, heads, headDim);
        long t0 = Begin();
        RopeBackwardCore(dinput, dout, b, t, heads, headDim);
        End(t0, OpCosts.RopeBackward(b, t, heads, headDim));
    }

    protected abstract void RopeForwardCore(DeviceBuffer output, DeviceBuffer input, int b, int t, int heads, int headDim);
    protected abstract void RopeBackwardCore(DeviceBuffer dinput, DeviceBuffer dout, int b, int t, int heads, int headDim);

    // ---- attention ---------------------------------------------------------------------------------

    static (long Q, long Kv, long Lse) AttentionSizes(string op, int b, int t, int heads, int kvHeads, int headDim)
    {
        NonNegative(op, b, nameof(b)); NonNegative(op, t, nameof(t)); NonNegative(op, heads, nameof(heads));
        if (headDim <= 0) throw new ArgumentOutOfRangeException(nameof(headDim), $"{op}: head dim {headDim} must be positive");
        if (kvHeads <= 0 || heads % kvHeads != 0)
            throw new ArgumentException($"{op}: the query heads ({heads}) must be a multiple of the kv heads ({kvHeads})", nameof(kvHeads));
        return ((long)b * t * heads * headDim, (long)b * t * kvHeads * headDim, (long)b * heads * t);
    }

    public void AttentionForward(DeviceBuffer output, DeviceBuffer lse, DeviceBuffer q, DeviceBuffer k, DeviceBuffer v,
                                 int b, int t, int heads, int kvHeads, int headDim)
    {
        const string op = "attention forward";
        var (nq, nkv, nl) = AttentionSizes(op, b, t, heads, kvHeads, headDim);
        Need(op, output, nameof(output), nq, "b·t·heads·headDim");
        Need(op, lse, nameof(lse), nl, "b·heads·t");
        Need(op, q, nameof(q), nq, "b·t·heads·headDim");
        Need(op, k, nameof(k), nkv, "b·t·kvHeads·headDim");
        Need(op, v, nameof(v), nkv, "b·t·kvHeads·headDim");
        Use uq = new(q, nq, nameof(q)), uk = new(k, nkv, nameof(k)), uv = new(v, nkv, nameof(v));
        DistinctFrom(op, output, nq, nameof(output), new(lse, nl, nameof(lse)), uq, uk, uv);
        DistinctFrom(op, lse, nl, nameof(lse), uq, uk, uv);
        long t0 = Begin();
        AttentionForwardCore(output, lse, q, k, v, b, t, heads, kvHeads, headDim);
        End(t0, OpCosts.AttentionForward(b, t, heads, kvHeads, headDim));
    }

    public void AttentionBackward(DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, DeviceBuffer dout, DeviceBuffer q, DeviceBuffer k,
                                  DeviceBuffer v, DeviceBuffer output, DeviceBuffer lse, int b, int t, int heads, int kvHeads, int headDim)
    {
        const string op = "attention backward";
        var (nq, nkv, nl) = AttentionSizes(op, b, t, heads, kvHeads, headDim);
        Need(op, dq, nameof(dq), nq, "b·t·heads·headDim");
        Need(op, dk, nameof(dk), nkv, "b·t·kvHeads·headDim");
        Need(op, dv, nameof(dv), nkv, "b·t·kvHeads·headDim");
        Need(op, dout, nameof(dout), nq, "b·t·heads·headDim");
        Need(op, q, nameof(q), nq, "b·t·heads·headDim");
        Need(op, k, nameof(k), nkv, "b·t·kvHeads·headDim");
        Need(op, v, nameof(v), nkv, "b·t·kvHeads·headDim");
        Need(op, output, nameof(output), nq, "b·t·heads·headDim");
        Need(op, lse, nameof(lse), nl, "b·heads·t");
        Use ud = new(dout, nq, nameof(dout)), uq = new(q, nq, nameof(q)), uk = new(k, nkv, nameof(k)), uv = new(v, nkv, nameof(v)),
            uo = new(output, nq, nameof(output)), ul = new(lse, nl, nameof(lse));
        DistinctFrom(op, dq, nq, nameof(dq), new(dk, nkv, nameof(dk)), new(dv, nkv, nameof(dv)), ud, uq, uk, uv, uo, ul);
        DistinctFrom(op, dk, nkv, nameof(dk), new(dv, nkv, nameof(dv)), ud, uq, uk, uv, uo, ul);
        DistinctFrom(op, dv, nkv, nameof(dv), ud, uq, uk, uv, uo, ul);
        long t0 = Begin();
        AttentionBackwardCore(dq, dk, dv, dout, q, k, v, output, lse, b, t, heads, kvHeads, headDim);
        End(t0, OpCosts.AttentionBackward(b, t, heads, kvHeads, headDim));
    }

    protected abstract void AttentionForwardCore(DeviceBuffer output, DeviceBuffer lse, DeviceBuffer q, DeviceBuffer k, DeviceBuffer v,
                                                 int b, int t, int heads, int kvHeads, int headDim);
    protected abstract void AttentionBackwardCore(DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, DeviceBuffer dout, DeviceBuffer q, DeviceBuffer k,
                                                  DeviceBuffer v, DeviceBuffer output, DeviceBuffer lse, int b, int t, int heads, int kvHeads, int headDim);

    // ---- decoding with a KV cache ------------------------------------------------------------------

    public void RopeForwardAt(DeviceBuffer output, DeviceBuffer input, DeviceBuffer positions, int b, int heads, int headDim)
    {
        const string op = "rope forward at";
        CheckRope(op, output, nameof(output), input, nameof(input), b, 1, heads, headDim);
        Need(op, positions, nameof(positions), b, "b", ElementType.I32);
        long t0 = Begin();
        RopeForwardAtCore(output, input, positions, b, heads, headDim);
        End(t0, OpCosts.RopeForwardAt(b, heads, headDim));
    }

    public void AttentionDecode(DeviceBuffer output, DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer lengths,
                                int b, int tMax, int heads, int kvHeads, int headDim)
    {
        const string op = "attention decode";
        NonNegative(op, tMax, nameof(tMax));
        var (nq, _, _) = AttentionSizes(op, b, 1, heads, kvHeads, headDim);
        long nkv = (long)b * tMax * kvHeads * headDim;
        Need(op, output, nameof(output), nq, "b·heads·headDim");
        Need(op, q, nameof(q), nq, "b·heads·headDim");
        Need(op, kCache, nameof(kCache), nkv, "b·tMax·kvHeads·headDim");
        Need(op, vCache, nameof(vCache), nkv, "b·tMax·kvHeads·headDim");
        Need(op, lengths, nameof(lengths), b, "b", ElementType.I32);
        DistinctFrom(op, output, nq, nameof(output), new(q, nq, nameof(q)), new(kCache, nkv, nameof(kCache)), new(vCache, nkv, nameof(vCache)));
        long t0 = Begin();
        AttentionDecodeCore(output, q, kCache, vCache, lengths, b, tMax, heads, kvHeads, headDim);
        End(t0, OpCosts.AttentionDecode(b, tMax, heads, kvHeads, headDim));
    }

    protected abstract void RopeForwardAtCore(DeviceBuffer output, DeviceBuffer input, DeviceBuffer positions, int b, int heads, int headDim);
    protected abstract void AttentionDecodeCore(DeviceBuffer output, DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer lengths,
                                                int b, int tMax, int heads, int kvHeads, int headDim);

    // ---- SwiGLU ------------------------------------------------------------------------------------

    public void SwiGluForward(DeviceBuffer output, DeviceBuffer gate, DeviceBuffer up, long count)
    {
        const string op = "swiglu forward";
        NonNegative(op, count, nameof(count));
        Need(op, output, nameof(output), count, "count");
        Need(op, gate, nameof(gate), count, "count");
        Need(op, up, nameof(up), count, "count");
        Distinct(op, output, count, nameof(output), gate, count, nameof(gate));
        Distinct(op, output, count, nameof(output), up, count, nameof(up));
        long t0 = Begin();
        SwiGluForwardCore(output, gate, up, count);
        End(t0, OpCosts.SwiGluForward(count));
    }

    public void SwiGluBackward(DeviceBuffer dgate, DeviceBuffer dup, DeviceBuffer dout, DeviceBuffer gate, DeviceBuffer up, long count)
    {
        const string op = "swiglu backward";
        NonNegative(op, count, nameof(count));
        Need(op, dgate, nameof(dgate), count, "count");
        Need(op, dup, nameof(dup), count, "count");
        Need(op, dout, nameof(dout), count, "count");
        Need(op, gate, nameof(gate), count, "count");
        Need(op, up, nameof(up), count, "count");
        Use ud = new(dout, count, nameof(dout)), ug = new(gate, count, nameof(gate)), uu = new(up, count, nameof(up));
        DistinctFrom(op, dgate, count, nameof(dgate), new(dup, count, nameof(dup)), ud, ug, uu);
        DistinctFrom(op, dup, count, nameof(dup), ud, ug, uu);
        long t0 = Begin();
        SwiGluBackwardCore(dgate, dup, dout, gate, up, count);
        End(t0, OpCosts.SwiGluBackward(count));
    }

    protected abstract void SwiGluForwardCore(DeviceBuffer output, DeviceBuffer gate, DeviceBuffer up, long count);
    protected abstract void SwiGluBackwardCore(DeviceBuffer dgate, DeviceBuffer dup, DeviceBuffer dout, DeviceBuffer gate, DeviceBuffer up, long count);

    // ---- residual ----------------------------------------------------------------------------------

    public void Add(DeviceBuffer output, DeviceBuffer a, DeviceBuffer b, long count)
    {
        const string op = "add";
        NonNegative(op, count, nameof(count));
        Need(op, output, nameof(output), count, "count");
        Need(op, a, nameof(a), count, "count");
        Need(op, b, nameof(b), count, "count");
        Distinct(op, output, count, nameof(output), a, count, nameof(a), mayAlias: true);
        Distinct(op, output, count, nameof(output), b, count, nameof(b), mayAlias: true);
        long t0 = Begin();
        AddCore(output, a, b, count);
        End(t0, OpCosts.Add(count));
    }

    public void AddInPlace(DeviceBuffer acc, DeviceBuffer x, long count)
    {
        const string op = "add in place";
        NonNegative(op, count, nameof(count));
        Need(op, acc, nameof(acc), count, "count");
        Need(op, x, nameof(x), count, "count");
        Distinct(op, acc, count, nameof(acc), x, count, nameof(x), mayAlias: true);
        long t0 = Begin();
        AddInPlaceCore(acc, x, count);
        End(t0, OpCosts.AddInPlace(count));
    }

    protected abstract void AddCore(DeviceBuffer output, DeviceBuffer a, DeviceBuffer b, long count);
    protected abstract void AddInPlaceCore(DeviceBuffer acc, DeviceBuffer x, long count);

    // ---- cross-entropy -----------------------------------------------------------------------------

    public void CrossEntropyForward(DeviceBuffer logZ, DeviceBuffer targetLogit, DeviceBuffer logits, DeviceBuffer targets, int n, int v, int vocabStart)
    {
        const string op = "cross-entropy forward";
        NonNegative(op, n, nameof(n)); NonNegative(op, v, nameof(v)); NonNegative(op, vocabStart, nameof(vocabStart));
        long nv = (long)n * v;
        Need(op, logZ, nameof(logZ), n, "n");
        Need(op, targetLogit, nameof(targetLogit), n, "n");
        Need(op, logits, nameof(logits), nv, "n·v");
        Need(op, targets, nameof(targets), n, "n", ElementType.I32);
        Use ul = new(logits, nv, nameof(logits)), ut = new(targets, n, nameof(targets));
        DistinctFrom(op, logZ, n, nameof(logZ), new(targetLogit, n, nameof(targetLogit)), ul, ut);
        DistinctFrom(op, targetLogit, n, nameof(targetLogit), ul, ut);
        long t0 = Begin();
        CrossEntropyForwardCore(logZ, targetLogit, logits, targets, n, v, vocabStart);
        End(t0, OpCosts.CrossEntropyForward(n, v));
    }

    public void CrossEntropyBackward(DeviceBuffer dlogits, DeviceBuffer logits, DeviceBuffer logZ, DeviceBuffer targets,
                                     float scale, float zLoss, int n, int v, int vocabStart)
    {
        const string op = "cross-entropy backward";
        NonNegative(op, n, nameof(n)); NonNegative(op, v, nameof(v)); NonNegative(op, vocabStart, nameof(vocabStart));
        long nv = (long)n * v;
        Need(op, dlogits, nameof(dlogits), nv, "n·v");
        Need(op, logits, nameof(logits), nv, "n·v");
        Need(op, logZ, nameof(logZ), n, "n");
        Need(op, targets, nameof(targets), n, "n", ElementType.I32);
        Distinct(op, dlogits, nv, nameof(dlogits), logits, nv, nameof(logits), mayAlias: true);
        Distinct(op, dlogits, nv, nameof(dlogits), logZ, n, nameof(logZ));
        Distinct(op, dlogits, nv, nameof(dlogits), targets, n, nameof(targets));
        long t0 = Begin();
        CrossEntropyBackwardCore(dlogits, logits, logZ, targets, scale, zLoss, n, v, vocabStart);
        End(t0, OpCosts.CrossEntropyBackward(n, v));
    }

    public void LogSumExpShift(DeviceBuffer output, DeviceBuffer logZ, DeviceBuffer max, long n)
    {
        const string op = "log-sum-exp shift";
        NonNegative(op, n, nameof(n));
        Need(op, output, nameof(output), n, "n");
        Need(op, logZ, nameof(logZ), n, "n");
        Need(op, max, nameof(max), n, "n");
        // Element-wise: the output may be an input itself, never a partial overlap.
        Distinct(op, output, n, nameof(output), logZ, n, nameof(logZ), mayAlias: true);
        Distinct(op, output, n, nameof(output), max, n, nameof(max), mayAlias: true);
        long t0 = Begin();
        LogSumExpShiftCore(output, logZ, max, n);
        End(t0, OpCosts.LogSumExpShift(n));
    }

    public void LogSumExpFinish(DeviceBuffer logZ, DeviceBuffer max, DeviceBuffer sumExp, long n)
    {
        const string op = "log-sum-exp finish";
        NonNegative(op, n, nameof(n));
        Need(op, logZ, nameof(logZ), n, "n");
        Need(op, max, nameof(max), n, "n");
        Need(op, sumExp, nameof(sumExp), n, "n");
        Distinct(op, logZ, n, nameof(logZ), max, n, nameof(max), mayAlias: true);
        Distinct(op, logZ, n, nameof(logZ), sumExp, n, nameof(sumExp), mayAlias: true);
        long t0 = Begin();
        LogSumExpFinishCore(logZ, max, sumExp, n);
        End(t0, OpCosts.LogSumExpFinish(n));
    }

    protected abstract void CrossEntropyForwardCore(DeviceBuffer logZ, DeviceBuffer targetLogit, DeviceBuffer logits, DeviceBuffer targets, int n, int v, int vocabStart);
    protected abstract void CrossEntropyBackwardCore(DeviceBuffer dlogits, DeviceBuffer logits, DeviceBuffer logZ, DeviceBuffer targets,
                                                     float scale, float zLoss, int n, int v, int vocabStart);
    protected abstract void LogSumExpShiftCore(DeviceBuffer output, DeviceBuffer logZ, DeviceBuffer max, long n);
    protected abstract void LogSumExpFinishCore(DeviceBuffer logZ, DeviceBuffer max, DeviceBuffer sumExp, long n);

    // ---- reductions and optimizer --------------------------------------------------------------------

    public double SumOfSquares(DeviceBuffer x, long count)
    {
        const string op = "sum of squares";
        NonNegative(op, count, nameof(count));
        Need(op, x, nameof(x), count, "count");
        hostSyncs++;
        long t0 = Begin();
        double result = SumOfSquaresCore(x, count);
        End(t0, OpCosts.SumOfSquares(count), waited: true);
        return result;
    }

    public void AdafactorUpdate(DeviceBuffer param, DeviceBuffer grad, AdafactorBuffers state, int rows, int cols, in AdafactorStep step)
    {
        const string op = "adafactor";
        ArgumentNullException.ThrowIfNull(state);
        NonNegative(op, rows, nameof(rows)); NonNegative(op, cols, nameof(cols));
        long count = (long)rows * cols;
        Need(op, param, nameof(param), count, "rows·cols");
        Need(op, grad, nameof(grad), count, "rows·cols");
        if (step.Beta1 > 0 && state.Momentum is null) throw new ArgumentException($"{op}: β1 = {step.Beta1} > 0 needs a momentum buffer", nameof(state));
        if (state.Momentum is { } mo) Need(op, mo, "momentum", count, "rows·cols");
        if (state.SecondMoment is { } sm) Need(op, sm, "second moment", count, "rows·cols");
        else
        {
            if (state.RowMoment is null || state.ColMoment is null)
                throw new ArgumentException($"{op}: factored state (no second moment) needs row and column moments", nameof(state));
            Need(op, state.RowMoment, "row moment", rows, "rows");
            Need(op, state.ColMoment, "column moment", cols, "cols");
        }
        // Every buffer the update writes is distinct from the gradient and from every other one; absent ones are skipped.
        Span<Use> written = [new(param, count, nameof(param)), default, default, default, default];
        int w = 1;
        if (state.Momentum is not null) written[w++] = new(state.Momentum, count, "momentum");
        if (state.SecondMoment is not null) written[w++] = new(state.SecondMoment, count, "second moment");
        if (state.RowMoment is not null && state.SecondMoment is null) written[w++] = new(state.RowMoment, rows, "row moment");
        if (state.ColMoment is not null && state.SecondMoment is null) written[w++] = new(state.ColMoment, cols, "column moment");
        for (int i = 0; i < w; i++)
        {
            Distinct(op, written[i].Buffer, written[i].Length, written[i].Role, grad, count, nameof(grad));
            DistinctFrom(op, written[i].Buffer, written[i].Length, written[i].Role, written[(i + 1)..w]);
        }
        long t0 = Begin();
        AdafactorUpdateCore(param, grad, state, rows, cols, step);
        End(t0, OpCosts.Adafactor(rows, cols, state.Momentum is not null, state.SecondMoment is null));
    }

    public void SumOfSquaresSegments(DeviceBuffer x, IReadOnlyList<Segment> segments, Span<double> sums)
    {
        const string op = "sum of squares (segments)";
        ArgumentNullException.ThrowIfNull(segments);
        Own(op, x, nameof(x));
        Segments.Validate(op, segments, x.Length, sums.Length);
        hostSyncs++;
        long t0 = Begin();
        SumOfSquaresSegmentsCore(x, segments, sums);
        End(t0, OpCosts.SumOfSquaresSegments(Segments.Total(segments)), waited: true);
    }

    /// <summary>The buffers of a segmented Adafactor pass: owned, F32, and no written one overlapping another.</summary>
    void CheckSegmented(string op, DeviceBuffer param, DeviceBuffer grad, DeviceBuffer? momentum, DeviceBuffer secondMoment, IReadOnlyList<Segment> segments)
    {
        ArgumentNullException.ThrowIfNull(segments);
        long end = Segments.End(segments);
        Need(op, param, nameof(param), end, "the segments' end");
        Need(op, grad, nameof(grad), end, "the segments' end");
        Need(op, secondMoment, nameof(secondMoment), end, "the segments' end");
        Distinct(op, param, end, nameof(param), grad, end, nameof(grad));
        Distinct(op, param, end, nameof(param), secondMoment, end, nameof(secondMoment));
        Distinct(op, secondMoment, end, nameof(secondMoment), grad, end, nameof(grad));
        if (momentum is null) return;
        Need(op, momentum, nameof(momentum), end, "the segments' end");
        Distinct(op, momentum, end, nameof(momentum), param, end, nameof(param));
        Distinct(op, momentum, end, nameof(momentum), grad, end, nameof(grad));
        Distinct(op, momentum, end, nameof(momentum), secondMoment, end, nameof(secondMoment));
    }

    public void AdafactorSums(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer secondMoment, IReadOnlyList<Segment> segments,
                              in AdafactorStep step, Span<double> sumU2, Span<double> sumP2)
    {
        const string op = "adafactor sums";
        CheckSegmented(op, param, grad, null, secondMoment, segments);
        Segments.Validate(op, segments, Math.Min(Math.Min(param.Length, grad.Length), secondMoment.Length), sumU2.Length, sumP2.Length);
        hostSyncs++;
        long t0 = Begin();
        AdafactorSumsCore(param, grad, secondMoment, segments, step, sumU2, sumP2);
        End(t0, OpCosts.AdafactorSums(Segments.Total(segments)), waited: true);
    }

    public void AdafactorApply(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer? momentum, DeviceBuffer secondMoment,
                               IReadOnlyList<Segment> segments, ReadOnlySpan<double> sumU2, ReadOnlySpan<double> sumP2,
                               ReadOnlySpan<long> tensorCounts, in AdafactorStep step)
    {
        const string op = "adafactor apply";
        CheckSegmented(op, param, grad, momentum, secondMoment, segments);
        if (step.Beta1 > 0 && momentum is null) throw new ArgumentException($"{op}: β1 = {step.Beta1} > 0 needs a momentum buffer", nameof(momentum));
        long length = Math.Min(Math.Min(param.Length, grad.Length), Math.Min(secondMoment.Length, momentum?.Length ?? long.MaxValue));
        Segments.Validate(op, segments, length, sumU2.Length, sumP2.Length, tensorCounts.Length);
        Segments.ValidateCounts(op, segments, tensorCounts);
        long t0 = Begin();
        AdafactorApplyCore(param, grad, momentum, secondMoment, segments, sumU2, sumP2, tensorCounts, step);
        End(t0, OpCosts.AdafactorApply(Segments.Total(segments), momentum is not null));
    }

    protected abstract double SumOfSquaresCore(DeviceBuffer x, long count);
    protected abstract void AdafactorUpdateCore(DeviceBuffer param, DeviceBuffer grad, AdafactorBuffers state, int rows, int cols, in AdafactorStep step);
    protected abstract void SumOfSquaresSegmentsCore(DeviceBuffer x, IReadOnlyList<Segment> segments, Span<double> sums);
    protected abstract void AdafactorSumsCore(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer secondMoment, IReadOnlyList<Segment> segments,
                                              in AdafactorStep step, Span<double> sumU2, Span<double> sumP2);
    protected abstract void AdafactorApplyCore(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer? momentum, DeviceBuffer secondMoment,
                                               IReadOnlyList<Segment> segments, ReadOnlySpan<double> sumU2, ReadOnlySpan<double> sumP2,
                                               ReadOnlySpan<long> tensorCounts, in AdafactorStep step);

    public virtual void Dispose() => GC.SuppressFinalize(this);
}

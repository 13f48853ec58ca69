using System.Runtime.InteropServices;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.OpenCl;

/// <summary>
/// The OpenCL backend: every op of the kernel contract runs as OpenCL C from the top-level kernels/ folder
/// (embedded in this assembly), compiled at run time for the chosen device. Tensors stay on the device; only
/// uploads, downloads and the scalar result of <see cref="SumOfSquares"/> cross to the host. One in-order
/// queue per instance, so kernels run in submission order and scratch buffers can be reused between them.
/// Not thread-safe: drive one instance from one thread (a device mesh holds one instance per device).
/// </summary>
public sealed class OpenClBackend : BackendBase
{
    // Prepended to every program: no silent contraction of a·b+c (kernels that want fused multiply-adds
    // call fma explicitly), fp64 where the device has it.
    const string Prelude =
        "#pragma OPENCL FP_CONTRACT OFF\n" +
        "#ifdef PALM_FP64\n#pragma OPENCL EXTENSION cl_khr_fp64 : enable\n#endif\n";

    const int SumSquaresRun = 1024, SumSquaresGroup = 64;   // SUMSQ_RUN, SUMSQ_WG in reduce.cl
    const int LayerNormRowsPerChunk = 64;                    // LN_ROWS_PER_CHUNK in layernorm.cl
    const int AdafactorChunk = 16384;                        // ADA_CHUNK in adafactor.cl (= CpuAdafactor)
    const int EmbeddingGroup = 64;                           // EMB_WG in embedding.cl
    const int ReduceRanksPerItem = 4;                        // RR_PER_ITEM in collectives.cl

    readonly OpenClContext context;
    readonly string baseOptions;
    readonly Dictionary<string, OpenClProgram> programs = new();
    readonly Dictionary<string, string> sources = new();
    readonly Dictionary<string, OpenClBuffer> scratch = new();
    // Index errors found by kernels (bad token ids, bad targets): (1 + position, value, bound) per kind,
    // raised on the host at the next synchronisation point. See embedding.cl and crossentropy.cl.
    readonly OpenClBuffer deviceErrors;
    bool disposed;

    /// <summary>Opens device <paramref name="device"/> of <see cref="OpenClDevice.All"/> (platform order, then device order).</summary>
    public OpenClBackend(int device = 0, OpenClTuning? tuning = null) : this(SelectDevice(device), tuning) { }

    public OpenClBackend(OpenClDevice device, OpenClTuning? tuning = null) : this(new OpenClContext(device), tuning) { }

    /// <summary>
    /// Runs on <paramref name="context"/>'s device and queue; the backend owns the view and disposes it. Views of one
    /// shared context (<see cref="OpenClContext.CreateShared"/>) give backends whose buffers the device-side
    /// collectives can copy between.
    /// </summary>
    public OpenClBackend(OpenClContext context, OpenClTuning? tuning = null)
    {
        this.context = context;
        var device = context.Device;
        try
        {
            Tuning = tuning ?? OpenClTuning.For(device);
            Tuning.Validate();
            Device = device;
            var options = new List<string>();
            if (!device.OpenClCVersion.Contains("C 1.0") && !device.OpenClCVersion.Contains("C 1.1")) options.Add("-cl-std=CL1.2");
            if (device.CorrectlyRoundedDivideSqrt) options.Add("-cl-fp32-correctly-rounded-divide-sqrt");
            if (device.HasFp64) options.Add("-D PALM_FP64=1");
            baseOptions = string.Join(' ', options);
            deviceErrors = context.CreateBuffer("device errors", 6, ElementType.I32);
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    static OpenClDevice SelectDevice(int index)
    {
        var devices = OpenClDevice.All();
        if (devices.Count == 0)
            throw new OpenClUnavailableException("the installed OpenCL platforms expose no device");
        if (index < 0 || index >= devices.Count)
            throw new Palm.Gpu.Model.ConfigException(
                $"--device {index}: OpenCL device index {index} does not exist: {devices.Count} device(s) found, valid indices 0..{devices.Count - 1}: " +
                string.Join("; ", devices.Select((d, i) => $"[{i}] {d}")) + ". Run `palm devices` to list them.");
        return devices[index];
    }

    public OpenClDevice Device { get; }
    public OpenClTuning Tuning { get; }
    public OpenClContext Context => context;
    public override string Name => "opencl";
    public override string DeviceName => Device.ToString();
    /// <summary>CL_DEVICE_MEM_BASE_ADDR_ALIGN in elements: where a sub-buffer may start.</summary>
    public override long ViewAlignment => Device.BaseAddressAlignElements;

    /// <summary>When set, every launch waits for its kernel and records its device (event) time here (slows the queue).</summary>
    public OpenClProfiler? EventProfiler { get; set; }

    /// <summary>Bytes this backend's queue has moved between host and device (both directions), since it was opened.</summary>
    public long HostTransferBytes => context.Queue.HostToDeviceBytes + context.Queue.DeviceToHostBytes;

    /// <summary>Options every program is built with (before the per-program knobs).</summary>
    public string BaseOptions => baseOptions;

    // ---- programs -----------------------------------------------------------------------------

    /// <summary>
    /// Builds an OpenCL C source through the same path as the kernel files (prelude, base options, cache).
    /// A compile error throws <see cref="OpenClBuildException"/> with the compiler log.
    /// </summary>
    public OpenClProgram BuildProgram(string sourceName, string source, string extraOptions = "")
        => context.Build(sourceName, Prelude + $"#line 1 \"{sourceName}\"\n" + source, (baseOptions + " " + extraOptions).Trim());

    OpenClKernel Kernel(string file, string kernel, string knobs = "")
    {
        string key = file + "|" + knobs;
        if (!programs.TryGetValue(key, out var program))
        {
            if (!sources.TryGetValue(file, out var source)) sources[file] = source = OpenClKernelSources.Load(file);
            program = BuildProgram(file, source, knobs);
            programs[key] = program;
        }
        return program.Kernel(kernel);
    }

    string MatmulKnobs => $"-D MWI={Tuning.MatmulRows} -D VWN={Tuning.MatmulVectorWidth} -D NVEC={Tuning.MatmulVectors}";
    string AttentionKnobs(int headDim) =>
        $"-D HEAD_DIM={headDim} -D BQ={Tuning.AttentionQueryBlock} -D BK={Tuning.AttentionKeyBlock} -D RPI={AttentionRows(headDim)}";

    /// <summary>
    /// Attention rows per work-item: the tuning's value, lowered for wide heads so the RPI·K accumulators
    /// (twice that in dk/dv) still fit in registers.
    /// </summary>
    int AttentionRows(int headDim)
    {
        int rows = Tuning.AttentionRowsPerItem;
        while (rows > 1 && rows * headDim > 256) rows /= 2;
        return rows;
    }

    int Group => Tuning.ElementwiseGroup;

    /// <summary>A backend-owned temporary buffer of at least <paramref name="length"/> elements, reused across calls.</summary>
    OpenClBuffer Scratch(string name, long length)
    {
        length = Math.Max(length, 1);
        if (scratch.TryGetValue(name, out var buffer) && buffer.Length >= length) return buffer;
        buffer?.Dispose();   // the driver keeps it alive until queued kernels that use it finish
        buffer = context.CreateBuffer("scratch:" + name, length, ElementType.F32);
        scratch[name] = buffer;
        return buffer;
    }

    // The base checked that every buffer is one of this instance's.
    static OpenClBuffer Buf(DeviceBuffer buffer, string role) => (OpenClBuffer)buffer;

    // ---- memory -------------------------------------------------------------------------------

    protected override DeviceBuffer AllocateCore(string name, long length, ElementType type) => context.CreateBuffer(name, length, type);

    protected override void UploadCore(DeviceBuffer dst, ReadOnlySpan<float> src, long dstOffset)
        => context.Queue.Write(Buf(dst, nameof(dst)), dstOffset * 4, MemoryMarshal.AsBytes(src));

    protected override void UploadCore(DeviceBuffer dst, ReadOnlySpan<int> src, long dstOffset)
        => context.Queue.Write(Buf(dst, nameof(dst)), dstOffset * 4, MemoryMarshal.AsBytes(src));

    protected override void DownloadCore(DeviceBuffer src, Span<float> dst, long srcOffset)
    {
        context.Queue.Read(Buf(src, nameof(src)), srcOffset * 4, MemoryMarshal.AsBytes(dst));
        ThrowDeviceErrors();
    }

    protected override void DownloadCore(DeviceBuffer src, Span<int> dst, long srcOffset)
        => context.Queue.Read(Buf(src, nameof(src)), srcOffset * 4, MemoryMarshal.AsBytes(dst));

    protected override void FillCore(DeviceBuffer dst, float value, long n)
    {
        if (n == 0) return;
        context.Queue.Fill(Buf(dst, nameof(dst)), BitConverter.SingleToUInt32Bits(value), 0, n * 4);
    }

    protected override void CopyCore(DeviceBuffer dst, DeviceBuffer src, long n, long dstOffset, long srcOffset)
    {
        if (n == 0) return;
        context.Queue.Copy(Buf(dst, nameof(dst)), Buf(src, nameof(src)), dstOffset * 4, srcOffset * 4, n * 4);
    }

    protected override void SynchronizeCore()
    {
        context.Queue.Finish();
        ThrowDeviceErrors();
    }

    /// <summary>Raises an index error a kernel recorded (the queue must be finished, as after any blocking read).</summary>
    void ThrowDeviceErrors()
    {
        Span<int> e = stackalloc int[6];
        context.Queue.Read(deviceErrors, 0, MemoryMarshal.AsBytes(e));
        if (e[0] == 0 && e[3] == 0) return;
        context.Queue.FillZero(deviceErrors, 6 * 4);
        if (e[0] != 0)
            throw new IndexOutOfRangeException(
                $"embedding: token {e[1]} at position {e[0] - 1} is negative; token ids are vocabulary rows from 0.");
        throw new IndexOutOfRangeException(
            $"cross-entropy: target {e[4]} at row {e[3] - 1} is negative; targets are vocabulary ids from 0.");
    }

    // ---- matmul -------------------------------------------------------------------------------

    protected override void MatmulCore(DeviceBuffer c, DeviceBuffer a, DeviceBuffer b, int m, int n, int k,
                                       bool transA, bool transB, float alpha, bool accumulate)
    {
        if (m == 0 || n == 0) return;
        // Pack op(A) into row panels and op(B) into column panels (see matmul.cl): O(M·K + K·N) copies that
        // let the O(M·N·K) kernel stream contiguous memory whatever the layouts and sizes.
        int rowsPerItem = Tuning.MatmulRows, columnsPerItem = Tuning.MatmulVectorWidth * Tuning.MatmulVectors;
        long tilesM = DivUp(m, rowsPerItem), tilesN = DivUp(n, columnsPerItem);
        var packedA = Scratch("matmul.packedA", tilesM * k * rowsPerItem);
        var packedB = Scratch("matmul.packedB", tilesN * k * columnsPerItem);
        if (k > 0)
        {
            Kernel("matmul.cl", "pack_a", MatmulKnobs).Call()
                .Arg(packedA).Arg(Buf(a, nameof(a))).Arg(m).Arg(k).Arg(transA ? 1 : k).Arg(transA ? m : 1)
                .Launch(k, tilesM, Group, 1, EventProfiler);
            Kernel("matmul.cl", "pack_b", MatmulKnobs).Call()
                .Arg(packedB).Arg(Buf(b, nameof(b))).Arg(k).Arg(n).Arg(transB ? 1 : n).Arg(transB ? k : 1)
                .Launch(k, tilesN, Group, 1, EventProfiler);
        }
        Kernel("matmul.cl", "matmul", MatmulKnobs).Call()
            .Arg(Buf(c, nameof(c))).Arg(packedA).Arg(packedB)
            .Arg(m).Arg(n).Arg(k).Arg(alpha).Arg(accumulate ? 1 : 0)
            .Launch(tilesM, tilesN, Tuning.MatmulGroup0, Tuning.MatmulGroup1, EventProfiler);
    }

    static long DivUp(long x, long d) => (x + d - 1) / d;

    // ---- embedding ----------------------------------------------------------------------------

    protected override void EmbeddingForwardCore(DeviceBuffer output, DeviceBuffer tokens, DeviceBuffer table, int n, int d, int vocabStart, int vocabRows)
    {
        if (n == 0 || d == 0) return;
        Kernel("embedding.cl", "embedding_forward", EmbeddingKnobs).Call()
            .Arg(Buf(output, nameof(output))).Arg(Buf(tokens, nameof(tokens))).Arg(Buf(table, nameof(table))).Arg(deviceErrors)
            .Arg(n).Arg(d).Arg(vocabStart).Arg(vocabRows)
            .Launch((long)n * d, Group, EventProfiler);
    }

    protected override void EmbeddingBackwardCore(DeviceBuffer dtable, DeviceBuffer tokens, DeviceBuffer dout, int n, int d, int vocabStart, int vocabRows)
    {
        if (n == 0 || d == 0 || vocabRows == 0) return;
        // A work-group per (EMB_WG columns, a block of table rows): the tokens in order, no atomics (embedding.cl).
        // Every group reads all N tokens, so the row blocks are as few as keep the device busy.
        long columnBlocks = DivUp(d, EmbeddingGroup);
        long rowBlocks = Math.Clamp(DivUp((long)Device.ComputeUnits * Tuning.EmbeddingGroupsPerUnit, columnBlocks), 1, vocabRows);
        int rowsPerGroup = (int)DivUp(vocabRows, rowBlocks);
        Kernel("embedding.cl", "embedding_backward", EmbeddingKnobs).Call()
            .Arg(Buf(dtable, nameof(dtable))).Arg(Buf(tokens, nameof(tokens))).Arg(Buf(dout, nameof(dout))).Arg(deviceErrors)
            .Arg(n).Arg(d).Arg(vocabStart).Arg(vocabRows).Arg(rowsPerGroup)
            .Launch(d, DivUp(vocabRows, rowsPerGroup), EmbeddingGroup, 1, EventProfiler);
    }

    string EmbeddingKnobs => $"-D EMB_WG={EmbeddingGroup}";

    // ---- layer norm ---------------------------------------------------------------------------

    string LayerNormKnobs => $"-D LN_WG={Tuning.RowGroup} -D LN_ROWS_PER_CHUNK={LayerNormRowsPerChunk}";

    protected override void LayerNormForwardCore(DeviceBuffer output, DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer input, DeviceBuffer weight, int n, int d)
    {
        if (n == 0) return;
        Kernel("layernorm.cl", "layernorm_forward", LayerNormKnobs).Call()
            .Arg(Buf(output, nameof(output))).Arg(Buf(mean, nameof(mean))).Arg(Buf(rstd, nameof(rstd)))
            .Arg(Buf(input, nameof(input))).Arg(Buf(weight, nameof(weight))).Arg(n).Arg(d)
            .Launch((long)n * Tuning.RowGroup, Tuning.RowGroup, EventProfiler);
    }

    protected override void LayerNormBackwardCore(DeviceBuffer dinput, DeviceBuffer dweight, DeviceBuffer dout, DeviceBuffer input, DeviceBuffer weight,
                                  DeviceBuffer mean, DeviceBuffer rstd, int n, int d, bool accumulate)
    {
        if (n == 0 || d == 0) return;
        var doutB = Buf(dout, nameof(dout));
        var inputB = Buf(input, nameof(input));
        var meanB = Buf(mean, nameof(mean));
        var rstdB = Buf(rstd, nameof(rstd));
        // dweight first: dinp may alias dout, and the dinput kernel overwrites it.
        int chunks = (int)DivUp(n, LayerNormRowsPerChunk);
        var partial = Scratch("layernorm.dweight", (long)chunks * d);
        Kernel("layernorm.cl", "layernorm_backward_dweight_partial", LayerNormKnobs).Call()
            .Arg(partial).Arg(doutB).Arg(inputB).Arg(meanB).Arg(rstdB).Arg(n).Arg(d)
            .Launch(DivUp(d, 16), chunks, Group, 1, EventProfiler);
        Kernel("layernorm.cl", "layernorm_backward_dinput", LayerNormKnobs).Call()
            .Arg(Buf(dinput, nameof(dinput))).Arg(doutB).Arg(inputB).Arg(Buf(weight, nameof(weight))).Arg(meanB).Arg(rstdB)
            .Arg(n).Arg(d).Arg(accumulate ? 1 : 0)
            .Launch((long)n * Tuning.RowGroup, Tuning.RowGroup, EventProfiler);

        Kernel("layernorm.cl", "layernorm_backward_dweight_reduce", LayerNormKnobs).Call()
            .Arg(Buf(dweight, nameof(dweight))).Arg(partial).Arg(d).Arg(chunks)
            .Launch(d, Group, EventProfiler);
    }

    // ---- RoPE ---------------------------------------------------------------------------------

    protected override void RopeForwardCore(DeviceBuffer output, DeviceBuffer input, int b, int t, int heads, int headDim)
        => Rope(Buf(output, nameof(output)), Buf(input, nameof(input)), b, t, heads, headDim, 1f);

    protected override void RopeBackwardCore(DeviceBuffer dinput, DeviceBuffer dout, int b, int t, int heads, int headDim)
        => Rope(Buf(dinput, nameof(dinput)), Buf(dout, nameof(dout)), b, t, heads, headDim, -1f);

    void Rope(OpenClBuffer output, OpenClBuffer input, int b, int t, int heads, int headDim, float sign)
    {
        if (b == 0 || t == 0 || heads == 0) return;
        string tableName = $"rope.table.{t}.{headDim}";
        if (!scratch.ContainsKey(tableName))
        {
            var fresh = Scratch(tableName, (long)t * headDim);   // (T, K/2, 2): built once, kept
            Kernel("rope.cl", "rope_table").Call().Arg(fresh).Arg(t).Arg(headDim).Launch((long)t * (headDim / 2), Group, EventProfiler);
        }
        Kernel("rope.cl", "rope").Call()
            .Arg(output).Arg(input).Arg(scratch[tableName]).Arg(b).Arg(t).Arg(heads).Arg(headDim).Arg(sign)
            .Launch((long)b * t * heads * (headDim / 2), Group, EventProfiler);
    }

    protected override void RopeForwardAtCore(DeviceBuffer output, DeviceBuffer input, DeviceBuffer positions, int b, int heads, int headDim)
    {
        if (b == 0 || heads == 0) return;
        Kernel("rope.cl", "rope_at").Call()
            .Arg(Buf(output, nameof(output))).Arg(Buf(input, nameof(input))).Arg(Buf(positions, nameof(positions)))
            .Arg(b).Arg(heads).Arg(headDim)
            .Launch((long)b * heads * (headDim / 2), Group, EventProfiler);
    }

    // ---- attention ----------------------------------------------------------------------------

    static float AttentionScale(int headDim) => (float)(1.0 / Math.Sqrt(headDim));

    /// <summary>T rounded up to a whole number of query and key tiles: the padded length of transposed operands.</summary>
    long PaddedTime(int t) => DivUp(t, Math.Max(Tuning.AttentionQueryBlock, Tuning.AttentionKeyBlock)) * Math.Max(Tuning.AttentionQueryBlock, Tuning.AttentionKeyBlock);

    /// <summary>x (B,T,Hs,K) -> scratch (B,Hs,Tp/W,K,W), transposed tiles of width W zero-padded past T (see attention.cl).</summary>
    OpenClBuffer PackTiles(string scratchName, OpenClBuffer x, int b, int t, int heads, int headDim, int width)
    {
        long tp = PaddedTime(t);
        var xt = Scratch(scratchName, (long)b * heads * headDim * tp);
        Kernel("attention.cl", "attention_pack_tiles", AttentionKnobs(headDim)).Call()
            .Arg(xt).Arg(x).Arg(b).Arg(t).Arg(heads).Arg((int)tp).Arg(width)
            .Launch(tp, (long)b * heads, Group, 1, EventProfiler);
        return xt;
    }

    protected override void AttentionForwardCore(DeviceBuffer output, DeviceBuffer lse, DeviceBuffer q, DeviceBuffer k, DeviceBuffer v,
                                 int b, int t, int heads, int kvHeads, int headDim)
    {
        if (b == 0 || t == 0) return;
        int bq = Tuning.AttentionQueryBlock, rows = AttentionRows(headDim);
        var kt = PackTiles("attention.kT", Buf(k, nameof(k)), b, t, kvHeads, headDim, Tuning.AttentionKeyBlock);
        Kernel("attention.cl", "attention_forward", AttentionKnobs(headDim)).Call()
            .Arg(Buf(output, nameof(output))).Arg(Buf(lse, nameof(lse)))
            .Arg(Buf(q, nameof(q))).Arg(kt).Arg(Buf(v, nameof(v)))
            .Arg(b).Arg(t).Arg(heads).Arg(kvHeads).Arg((int)PaddedTime(t)).Arg(AttentionScale(headDim))
            .Launch(DivUp(t, bq) * (bq / rows), (long)b * heads, bq / rows, 1, EventProfiler);
    }

    const int DecodeGroup = 64;   // DECODE_WG in attention.cl

    protected override void AttentionDecodeCore(DeviceBuffer output, DeviceBuffer q, DeviceBuffer kCache, DeviceBuffer vCache, DeviceBuffer lengths,
                                                int b, int tMax, int heads, int kvHeads, int headDim)
    {
        if (b == 0 || heads == 0 || tMax == 0) return;
        var scores = Scratch("attention.decode.scores", (long)b * heads * tMax);
        Kernel("attention.cl", "attention_decode", AttentionKnobs(headDim) + $" -D DECODE_WG={DecodeGroup}").Call()
            .Arg(Buf(output, nameof(output))).Arg(scores).Arg(Buf(q, nameof(q)))
            .Arg(Buf(kCache, nameof(kCache))).Arg(Buf(vCache, nameof(vCache))).Arg(Buf(lengths, nameof(lengths)))
            .Arg(b).Arg(tMax).Arg(heads).Arg(kvHeads).Arg(AttentionScale(headDim))
            .Launch(DecodeGroup, (long)b * heads, DecodeGroup, 1, EventProfiler);
    }

    protected override void AttentionBackwardCore(DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, DeviceBuffer dout, DeviceBuffer q, DeviceBuffer k,
                                  DeviceBuffer v, DeviceBuffer output, DeviceBuffer lse, int b, int t, int heads, int kvHeads, int headDim)
    {
        if (b == 0 || t == 0) return;
        string knobs = AttentionKnobs(headDim);
        int bq = Tuning.AttentionQueryBlock, bk = Tuning.AttentionKeyBlock, rows = AttentionRows(headDim), tp = (int)PaddedTime(t);
        float scale = AttentionScale(headDim);
        var doutB = Buf(dout, nameof(dout));
        var qB = Buf(q, nameof(q));
        var kB = Buf(k, nameof(k));
        var vB = Buf(v, nameof(v));
        var lseB = Buf(lse, nameof(lse));
        var delta = Scratch("attention.delta", (long)b * heads * t);

        Kernel("attention.cl", "attention_backward_delta", knobs).Call()
            .Arg(delta).Arg(doutB).Arg(Buf(output, nameof(output))).Arg(b).Arg(t).Arg(heads)
            .Launch(t, (long)b * heads, Group, 1, EventProfiler);

        var kt = PackTiles("attention.kT", kB, b, t, kvHeads, headDim, bk);
        var vt = PackTiles("attention.vT", vB, b, t, kvHeads, headDim, bk);
        Kernel("attention.cl", "attention_backward_dq", knobs).Call()
            .Arg(Buf(dq, nameof(dq))).Arg(doutB).Arg(qB).Arg(kB).Arg(kt).Arg(vt).Arg(lseB).Arg(delta)
            .Arg(b).Arg(t).Arg(heads).Arg(kvHeads).Arg(tp).Arg(scale)
            .Launch(DivUp(t, bq) * (bq / rows), (long)b * heads, bq / rows, 1, EventProfiler);

        var qt = PackTiles("attention.qT", qB, b, t, heads, headDim, bq);
        var doutT = PackTiles("attention.doutT", doutB, b, t, heads, headDim, bq);
        Kernel("attention.cl", "attention_backward_dkdv", knobs).Call()
            .Arg(Buf(dk, nameof(dk))).Arg(Buf(dv, nameof(dv))).Arg(kB).Arg(vB).Arg(qB).Arg(qt).Arg(doutB).Arg(doutT).Arg(lseB).Arg(delta)
            .Arg(b).Arg(t).Arg(heads).Arg(kvHeads).Arg(tp).Arg(scale)
            .Launch(DivUp(t, bk) * (bk / rows), (long)b * kvHeads, bk / rows, 1, EventProfiler);
    }

    // ---- SwiGLU -------------------------------------------------------------------------------

    protected override void SwiGluForwardCore(DeviceBuffer output, DeviceBuffer gate, DeviceBuffer up, long count)
        => Kernel("swiglu.cl", "swiglu_forward").Call()
            .Arg(Buf(output, nameof(output))).Arg(Buf(gate, nameof(gate))).Arg(Buf(up, nameof(up))).Arg(count)
            .Launch(count, Group, EventProfiler);

    protected override void SwiGluBackwardCore(DeviceBuffer dgate, DeviceBuffer dup, DeviceBuffer dout, DeviceBuffer gate, DeviceBuffer up, long count)
        => Kernel("swiglu.cl", "swiglu_backward").Call()
            .Arg(Buf(dgate, nameof(dgate))).Arg(Buf(dup, nameof(dup))).Arg(Buf(dout, nameof(dout)))
            .Arg(Buf(gate, nameof(gate))).Arg(Buf(up, nameof(up))).Arg(count)
            .Launch(count, Group, EventProfiler);

    // ---- residual -----------------------------------------------------------------------------

    protected override void AddCore(DeviceBuffer output, DeviceBuffer a, DeviceBuffer b, long count)
        => Kernel("residual.cl", "add").Call()
            .Arg(Buf(output, nameof(output))).Arg(Buf(a, nameof(a))).Arg(Buf(b, nameof(b))).Arg(count)
            .Launch(count, Group, EventProfiler);

    protected override void AddInPlaceCore(DeviceBuffer acc, DeviceBuffer x, long count)
        => Kernel("residual.cl", "add_inplace").Call()
            .Arg(Buf(acc, nameof(acc))).Arg(Buf(x, nameof(x))).Arg(count)
            .Launch(count, Group, EventProfiler);

    // ---- cross-entropy ------------------------------------------------------------------------

    protected override void CrossEntropyForwardCore(DeviceBuffer logZ, DeviceBuffer targetLogit, DeviceBuffer logits, DeviceBuffer targets, int n, int v, int vocabStart)
    {
        if (n == 0) return;
        Kernel("crossentropy.cl", "crossentropy_forward", $"-D CE_WG={Tuning.RowGroup}").Call()
            .Arg(Buf(logZ, nameof(logZ))).Arg(Buf(targetLogit, nameof(targetLogit))).Arg(Buf(logits, nameof(logits))).Arg(Buf(targets, nameof(targets)))
            .Arg(deviceErrors).Arg(n).Arg(v).Arg(vocabStart)
            .Launch((long)n * Tuning.RowGroup, Tuning.RowGroup, EventProfiler);
    }

    protected override void CrossEntropyBackwardCore(DeviceBuffer dlogits, DeviceBuffer logits, DeviceBuffer logZ, DeviceBuffer targets,
                                     float scale, float zLoss, int n, int v, int vocabStart)
    {
        Kernel("crossentropy.cl", "crossentropy_backward", $"-D CE_WG={Tuning.RowGroup}").Call()
            .Arg(Buf(dlogits, nameof(dlogits))).Arg(Buf(logits, nameof(logits))).Arg(Buf(logZ, nameof(logZ))).Arg(Buf(targets, nameof(targets)))
            .Arg(scale).Arg(zLoss).Arg(n).Arg(v).Arg(vocabStart)
            .Launch(DivUp(v, 16), n, Group, 1, EventProfiler);
    }

    protected override void LogSumExpShiftCore(DeviceBuffer output, DeviceBuffer logZ, DeviceBuffer max, long n)
    {
        if (n == 0) return;
        Kernel("crossentropy.cl", "logsumexp_shift", $"-D CE_WG={Tuning.RowGroup}").Call()
            .Arg(Buf(output, nameof(output))).Arg(Buf(logZ, nameof(logZ))).Arg(Buf(max, nameof(max))).Arg(n)
            .Launch(n, Group, EventProfiler);
    }

    protected override void LogSumExpFinishCore(DeviceBuffer logZ, DeviceBuffer max, DeviceBuffer sumExp, long n)
    {
        if (n == 0) return;
        Kernel("crossentropy.cl", "logsumexp_finish", $"-D CE_WG={Tuning.RowGroup}").Call()
            .Arg(Buf(logZ, nameof(logZ))).Arg(Buf(max, nameof(max))).Arg(Buf(sumExp, nameof(sumExp))).Arg(n)
            .Launch(n, Group, EventProfiler);
    }

    // ---- reductions and optimizer -------------------------------------------------------------

    int RealBytes => Device.HasFp64 ? 8 : 4;
    string ReduceKnobs => $"-D SUMSQ_RUN={SumSquaresRun} -D SUMSQ_WG={SumSquaresGroup}";

    protected override double SumOfSquaresCore(DeviceBuffer x, long count)
    {
        if (count == 0) return 0;
        var xB = Buf(x, nameof(x));
        long runs = DivUp(count, SumSquaresRun);
        var partial = Scratch("sumsq.partial", runs * RealBytes / 4);
        var total = Scratch("sumsq.total", 2);
        Kernel("reduce.cl", "sum_squares_partial", ReduceKnobs).Call().Arg(partial).Arg(xB).Arg(count).Launch(runs, Group, EventProfiler);
        Kernel("reduce.cl", "sum_partials", ReduceKnobs).Call().Arg(total).Arg(partial).Arg(runs).Launch(SumSquaresGroup, SumSquaresGroup, EventProfiler);
        Span<byte> bytes = stackalloc byte[8];
        context.Queue.Read(total, 0, bytes[..RealBytes]);
        ThrowDeviceErrors();
        return RealAt(bytes, 0);
    }

    protected override void SumOfSquaresSegmentsCore(DeviceBuffer x, IReadOnlyList<Segment> segments, Span<double> sums)
    {
        var xB = Buf(x, nameof(x));
        int count = segments.Count;
        if (count == 0) return;
        var (table, runs) = SegmentTable("sumsq.table", segments, SumSquaresRun);
        if (runs == 0) { sums.Clear(); return; }
        var partial = Scratch("sumsq.partial", runs * RealBytes / 4);
        var totals = Scratch("sumsq.segment_totals", (long)count * RealBytes / 4);
        Kernel("reduce.cl", "sum_squares_segment_runs", ReduceKnobs).Call()
            .Arg(partial).Arg(xB).Arg(table).Arg(count).Arg(runs)
            .Launch(runs, Group, EventProfiler);
        Kernel("reduce.cl", "sum_squares_segment_totals", ReduceKnobs).Call()
            .Arg(totals).Arg(partial).Arg(table).Arg(count).Arg(runs)
            .Launch((long)count * SumSquaresGroup, SumSquaresGroup, EventProfiler);
        ReadReals(totals, count, sums);
    }

    // Segment tables, (S,3) longs: offset, count, first tile. Uploaded when the list changes (the optimizer
    // passes the same list every step), so a step's reductions need no upload.
    readonly Dictionary<string, (Segment[] Segments, OpenClBuffer Buffer, long Tiles)> segmentTables = new();

    (OpenClBuffer Table, long Tiles) SegmentTable(string name, IReadOnlyList<Segment> segments, long tile)
    {
        var buffer = Scratch(name, 6L * segments.Count);   // 3 longs per segment, in float slots
        if (segmentTables.TryGetValue(name, out var known) && ReferenceEquals(known.Buffer, buffer) && known.Segments.AsSpan().SequenceEqual(segments.ToArray()))
            return (buffer, known.Tiles);
        var first = Segments.FirstTiles(segments, tile);
        var host = new long[3 * segments.Count];
        for (int i = 0; i < segments.Count; i++) { host[3 * i] = segments[i].Offset; host[3 * i + 1] = segments[i].Count; host[3 * i + 2] = first[i]; }
        context.Queue.Write(buffer, 0, MemoryMarshal.AsBytes(host.AsSpan()));
        segmentTables[name] = (segments.ToArray(), buffer, first[segments.Count]);
        return (buffer, first[segments.Count]);
    }

    /// <summary>Reads count REALs (double with fp64, else float) from a reduction scratch into dst.</summary>
    void ReadReals(OpenClBuffer src, int count, Span<double> dst)
    {
        var bytes = new byte[count * RealBytes];
        context.Queue.Read(src, 0, bytes);
        ThrowDeviceErrors();
        for (int i = 0; i < count; i++) dst[i] = RealAt(bytes, i);
    }

    protected override void AdafactorUpdateCore(DeviceBuffer param, DeviceBuffer grad, AdafactorBuffers state, int rows, int cols, in AdafactorStep step)
    {
        long count = (long)rows * cols;
        if (count == 0) return;
        bool factored = state.SecondMoment is null;
        var p = Buf(param, nameof(param));
        var g = Buf(grad, nameof(grad));
        var unused = Scratch("adafactor.unused", 1);
        var v = state.SecondMoment is null ? unused : Buf(state.SecondMoment, "second moment");
        var vRow = state.RowMoment is null ? unused : Buf(state.RowMoment, "row moment");
        var vCol = state.ColMoment is null ? unused : Buf(state.ColMoment, "column moment");
        var momentum = state.Momentum is null ? null : Buf(state.Momentum, "momentum");
        var scalars = Scratch("adafactor.scalars", 4);

        if (factored)
        {
            Kernel("adafactor.cl", "adafactor_row_moments", AdafactorKnobs).Call()
                .Arg(vRow).Arg(g).Arg(step.GradScale).Arg(step.Beta2).Arg(step.Epsilon1).Arg(rows).Arg(cols)
                .Launch(rows, Group, EventProfiler);
            Kernel("adafactor.cl", "adafactor_col_moments", AdafactorKnobs).Call()
                .Arg(vCol).Arg(g).Arg(step.GradScale).Arg(step.Beta2).Arg(step.Epsilon1).Arg(rows).Arg(cols)
                .Launch(cols, Group, EventProfiler);
            Kernel("adafactor.cl", "adafactor_row_mean", AdafactorKnobs).Call()
                .Arg(scalars).Arg(vRow).Arg(rows)
                .Launch(AdafactorGroup, AdafactorGroup, EventProfiler);
        }
        var (partial, chunks) = AdafactorPass1(p, g, v, vRow, vCol, scalars, cols, count, factored, step);
        Kernel("adafactor.cl", "adafactor_finish", AdafactorKnobs).Call()
            .Arg(scalars).Arg(partial).Arg(chunks).Arg(count).Arg(step.ClipThreshold).Arg(step.Epsilon2).Arg(step.LearningRate)
            .Launch(AdafactorGroup, AdafactorGroup, EventProfiler);
        AdafactorPass2(p, g, momentum, v, vRow, vCol, scalars, cols, count, factored, step);
    }

    protected override void AdafactorSumsCore(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer secondMoment, IReadOnlyList<Segment> segments,
                              in AdafactorStep step, Span<double> sumU2, Span<double> sumP2)
    {
        var p = Buf(param, nameof(param));
        var g = Buf(grad, nameof(grad));
        var v = Buf(secondMoment, "second moment");
        int count = segments.Count;
        if (count == 0) return;
        var (table, chunks) = SegmentTable("adafactor.table", segments, AdafactorChunk);
        if (chunks == 0) { sumU2.Clear(); sumP2.Clear(); return; }
        var partial = Scratch("adafactor.partial", 2L * chunks * RealBytes / 4);
        var totals = Scratch("adafactor.segment_totals", 2L * count * RealBytes / 4);
        Kernel("adafactor.cl", "adafactor_segment_pass1", AdafactorKnobs).Call()
            .Arg(partial).Arg(v).Arg(p).Arg(g).Arg(table).Arg(count).Arg(step.GradScale).Arg(step.Beta2).Arg(step.Epsilon1)
            .Launch(chunks * AdafactorGroup, AdafactorGroup, EventProfiler);
        Kernel("adafactor.cl", "adafactor_segment_totals", AdafactorKnobs).Call()
            .Arg(totals).Arg(partial).Arg(table).Arg(count).Arg(chunks)
            .Launch((long)count * AdafactorGroup, AdafactorGroup, EventProfiler);
        var both = new double[2 * count];
        ReadReals(totals, 2 * count, both);
        for (int i = 0; i < count; i++) { sumU2[i] = both[2 * i]; sumP2[i] = both[2 * i + 1]; }
    }

    protected override void AdafactorApplyCore(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer? momentum, DeviceBuffer secondMoment,
                               IReadOnlyList<Segment> segments, ReadOnlySpan<double> sumU2, ReadOnlySpan<double> sumP2,
                               ReadOnlySpan<long> tensorCounts, in AdafactorStep step)
    {
        var p = Buf(param, nameof(param));
        var g = Buf(grad, nameof(grad));
        var v = Buf(secondMoment, "second moment");
        var m = momentum is null ? null : Buf(momentum, nameof(momentum));
        long length = Math.Min(Math.Min(p.Length, g.Length), Math.Min(v.Length, m?.Length ?? long.MaxValue));
        if (step.Beta1 > 0 && m is null) throw new ArgumentException("Adafactor: β1 > 0 needs a momentum buffer");
        int count = segments.Count;
        if (count == 0) return;
        var (table, chunks) = SegmentTable("adafactor.table", segments, AdafactorChunk);
        if (chunks == 0) return;
        // Per segment clip factor and step size, from the host's whole-tensor sums: one small upload.
        var factors = new float[2 * count];
        for (int i = 0; i < count; i++) (factors[2 * i], factors[2 * i + 1]) = step.Scalars(sumU2[i], sumP2[i], tensorCounts[i]);
        var factorBuffer = Scratch("adafactor.factors", 2L * count);
        context.Queue.Write(factorBuffer, 0, MemoryMarshal.AsBytes(factors.AsSpan()));
        Kernel("adafactor.cl", "adafactor_segment_pass2", AdafactorKnobs).Call()
            .Arg(p).Arg(m ?? Scratch("adafactor.unused", 1)).Arg(g).Arg(v).Arg(table).Arg(factorBuffer).Arg(count)
            .Arg(step.GradScale).Arg(step.Beta1).Arg(step.WeightDecay).Arg(m is null ? 0 : 1)
            .Launch(chunks * AdafactorGroup, AdafactorGroup, EventProfiler);
    }

    string AdafactorKnobs => $"-D ADA_CHUNK={AdafactorChunk} -D ADA_WG={AdafactorGroup}";
    int AdafactorGroup => Tuning.ReductionGroup;   // ADA_WG: work-items per chunk

    /// <summary>adafactor_pass1 over count elements: second moment updated, per-chunk Σu², Σp² into the returned scratch (chunks, 2).</summary>
    (OpenClBuffer Partial, int Chunks) AdafactorPass1(OpenClBuffer p, OpenClBuffer g, OpenClBuffer v, OpenClBuffer vRow, OpenClBuffer vCol,
                                                      OpenClBuffer scalars, int cols, long count, bool factored, in AdafactorStep step)
    {
        int chunks = (int)DivUp(count, AdafactorChunk);
        var partial = Scratch("adafactor.partial", 2L * chunks * RealBytes / 4);
        Kernel("adafactor.cl", "adafactor_pass1", AdafactorKnobs).Call()
            .Arg(partial).Arg(v).Arg(p).Arg(g).Arg(vRow).Arg(vCol).Arg(scalars)
            .Arg(step.GradScale).Arg(step.Beta2).Arg(step.Epsilon1).Arg(cols).Arg(count).Arg(factored ? 1 : 0)
            .Launch((long)chunks * AdafactorGroup, AdafactorGroup, EventProfiler);
        return (partial, chunks);
    }

    /// <summary>adafactor_pass2 over count elements with the clip factor and step size in scalars[1], scalars[2].</summary>
    void AdafactorPass2(OpenClBuffer p, OpenClBuffer g, OpenClBuffer? momentum, OpenClBuffer v, OpenClBuffer vRow, OpenClBuffer vCol,
                        OpenClBuffer scalars, int cols, long count, bool factored, in AdafactorStep step)
    {
        Kernel("adafactor.cl", "adafactor_pass2", AdafactorKnobs).Call()
            .Arg(p).Arg(momentum ?? Scratch("adafactor.unused", 1)).Arg(g).Arg(v).Arg(vRow).Arg(vCol).Arg(scalars)
            .Arg(step.GradScale).Arg(step.Beta1).Arg(step.WeightDecay).Arg(cols).Arg(count)
            .Arg(factored ? 1 : 0).Arg(momentum is null ? 0 : 1)
            .Launch(count, Group, EventProfiler);
    }

    /// <summary>The index-th REAL (double with fp64, else float) of bytes read back from a reduction scratch.</summary>
    double RealAt(ReadOnlySpan<byte> bytes, int index) =>
        RealBytes == 8 ? BitConverter.ToDouble(bytes[(8 * index)..]) : BitConverter.ToSingle(bytes[(4 * index)..]);

    // ---- collectives ---------------------------------------------------------------------------

    /// <summary>
    /// stage (P, stride) -> dst[dstOffset, +count) = Σ (or max) over ranks p = 0..P−1 of stage[p·stride + i], ranks in
    /// order, accumulated in double where the device has fp64 (collectives.cl). Enqueued on this backend's queue;
    /// <paramref name="dst"/> and <paramref name="stage"/> may be buffers of any view of its context (the caller,
    /// <see cref="Palm.Gpu.Sharding.OpenClCollectives"/>, orders the queues).
    /// </summary>
    internal void ReduceRanks(OpenClBuffer dst, long dstOffset, OpenClBuffer stage, int ranks, long count, long stride, bool max)
    {
        if (count == 0) return;
        Kernel("collectives.cl", "reduce_ranks", $"-D RR_PER_ITEM={ReduceRanksPerItem}").Call()
            .Arg(dst).Arg(dstOffset).Arg(stage).Arg(ranks).Arg(count).Arg(stride).Arg(max ? 1 : 0)
            .Launch(DivUp(count, ReduceRanksPerItem), Group, EventProfiler);
    }

    public override void Dispose()
    {
        if (disposed) return;
        disposed = true;
        foreach (var b in scratch.Values) b.Dispose();
        scratch.Clear();
        deviceErrors.Dispose();
        programs.Clear();
        context.Dispose();
    }
}

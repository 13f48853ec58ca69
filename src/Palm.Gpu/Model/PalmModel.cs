using Palm.Gpu.Training;
using Palm.Gpu.Backends;
using Palm.Gpu.IO;
using Palm.Gpu.Sharding;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Model;

/// <summary>Mean losses of one forward pass.</summary>
public readonly record struct LossResult(double CrossEntropy, double ZLoss)
{
    /// <summary>The objective that backward differentiates: cross-entropy + z-loss.</summary>
    public double Total => CrossEntropy + ZLoss;
}

/// <summary>
/// The PaLM model as one rank of a data × model mesh runs it — written once: one device is the 1 × 1 mesh, and
/// every rank of a larger mesh runs this same code on its own thread, coupled to the others only by the
/// collectives of its <see cref="RankContext"/> (Megatron-style tensor parallelism on the model axis, the batch
/// split on the data axis). Legend: M model ranks, P data ranks; a rank holds Hl = H/M heads, Fl = F/M MLP
/// width, Vl = V/M vocabulary rows, and sees Bl = B/P sequences, Nl = Bl·T rows.
///
///   x0     = Σ_m E_m[tokens]                                (Nl,D)   vocab-parallel lookup: one model all-reduce
///   block  parallel: y = x + Σ_m (Attn_m(LN(x)) + MLP_m(LN(x)))       one model all-reduce
///          serial:   x1 = x + Σ_m Attn_m(LN1(x)); y = x1 + Σ_m MLP_m(LN2(x1))   two
///   logits_m = LN_f(x_L)·E_mᵀ/√D                            (Nl,Vl)  never gathered
///   loss   = mean(logZ − logit[target]) + z·mean(logZ²)     logZ combined over the model axis
///
/// Backward mirrors it (one model all-reduce of dh per parallel block, two per serial block, one for the head).
/// Then gradients are synchronised: the replicated K/V head over the model axis, every tensor over the data axis.
/// With <c>shardWeights</c> (FSDP/ZeRO-3) the rank keeps 1/P of each tensor between uses: a unit (a layer, the
/// embedding, the final norm) is all-gathered over the data axis just before use and its gradients are
/// reduce-scattered right after. With M = P = 1 every communication point is skipped.
/// </summary>
public sealed partial class PalmModel : IDisposable
{
    readonly IBackend _be;
    readonly RankContext _rank;
    readonly ModelActivations _a;
    readonly ParameterPiece[] _pieces;     // what this rank keeps between steps, per tensor: views of the two arenas
    readonly DeviceBuffer _values, _grads; // flat parameter and gradient memory (ArenaLayout)
    readonly Parameter?[] _live;           // tensors usable now (all, or the gathered units when fully sharded)
    readonly Dictionary<long, Stack<(DeviceBuffer Value, DeviceBuffer Grad)>> _workspace = [];
    readonly DeviceBuffer? _stage, _stageSlice;                 // fully sharded: gather / reduce-scatter staging
    readonly DeviceBuffer? _partial, _rowMax, _rowSum;         // model axis > 1: block partial (N,D), logZ max and Σexp (N)
    int _batch;                                                 // local batch of the last forward (backward must match)

    /// <summary>The model on one device (a 1 × 1 mesh), for at most <paramref name="maxBatch"/> sequences per step.</summary>
    public PalmModel(IBackend backend, ModelConfig config, int maxBatch) : this(RankContext.Single(backend), config, maxBatch) { }

    /// <summary>
    /// Rank <paramref name="rank"/>'s part of the model; <paramref name="maxBatch"/> is this rank's most sequences
    /// per step (the global batch divided by the data axis).
    /// </summary>
    public PalmModel(RankContext rank, ModelConfig config, int maxBatch, bool shardWeights = false)
    {
        config.Validate();
        if (maxBatch <= 0) throw new ConfigException($"batch must be a positive number of sequences, got {maxBatch}");
        int M = rank.ModelSize, P = rank.DataSize;
        DeviceMesh.Validate(config, 1, M, maxBatch);
        _rank = rank;
        _be = rank.Backend;
        Config = config;
        MaxBatch = maxBatch;
        ShardWeights = shardWeights && P > 1;
        Local = config with { Heads = config.Heads / M, DFf = config.DFf / M, Vocab = config.Vocab / M };
        Schema = ParameterSchema.For(config);
        LocalSchema = Schema.Shard(M);
        var max = Dims.Of(Local, maxBatch);
        var buffers = new List<DeviceBuffer>();
        try
        {
            int count = LocalSchema.Tensors.Count;
            _pieces = new ParameterPiece[count];
            _live = new Parameter?[count];
            // What each tensor keeps here: the model shard, or its 1/P slice when fully sharded (padded to equal slices).
            var lengths = LocalSchema.Tensors.Select(t => ShardWeights ? (t.Count + P - 1) / P : t.Count).ToArray();
            Layout = new ArenaLayout(lengths, _be.ViewAlignment);
            _values = _be.Allocate(ShardWeights ? "parameter slices" : "parameters", Layout.Length);
            buffers.Add(_values);
            _grads = _be.Allocate(ShardWeights ? "gradient slices" : "gradients", Layout.Length);
            buffers.Add(_grads);
            _be.Fill(_values, 0f, Layout.Length);
            _be.Fill(_grads, 0f, Layout.Length);
            for (int i = 0; i < count; i++)
            {
                var t = LocalSchema.Tensors[i];
                long n = lengths[i];
                long off = ShardWeights ? Math.Min(t.Count, rank.DataRank * n) : 0;
                var v = Layout.View(_values, i);
                var g = Layout.View(_grads, i);
                buffers.Add(v); buffers.Add(g);
                _pieces[i] = new ParameterPiece(v, g, n, off, Math.Min(n, t.Count - off));
                if (!ShardWeights) _live[i] = new Parameter(t, v, g);
            }
            if (ShardWeights)
            {
                // One gather (and one scatter) per unit: its tensors' slices are one contiguous range of the arena.
                long block = Units().Max(u => UnitRange(u).Length);
                _stage = _be.Allocate("gather_stage", block * P);
                _stageSlice = _be.Allocate("gather_stage_slice", block);
            }
            _a = new ModelActivations(_be, Local, max);
            if (M > 1)
            {
                long n = max.N;
                _partial = _be.Allocate("block_partial", n * max.D);
                _rowMax = _be.Allocate("logz_max", n);
                _rowSum = _be.Allocate("logz_sum_exp", n);
            }
        }
        catch
        {
            foreach (var b in Enumerable.Reverse(buffers)) b.Dispose();
            _stage?.Dispose();
            _stageSlice?.Dispose();
            _a?.Dispose();
            throw;
        }
    }

    public ModelConfig Config { get; }
    /// <summary>The shape this rank computes: heads, d_ff and vocab divided by the model axis.</summary>
    public ModelConfig Local { get; }
    public ParameterSchema Schema { get; }
    public ParameterSchema LocalSchema { get; }
    public RankContext Rank => _rank;
    public IBackend Backend => _be;
    /// <summary>Most sequences of one forward on this rank.</summary>
    public int MaxBatch { get; }
    /// <summary>Weights, gradients and optimizer state sliced over the data axis (gathered per unit when used).</summary>
    public bool ShardWeights { get; }

    /// <summary>Bytes held by activation and scratch buffers (weights and gradients excluded).</summary>
    public long ActivationBytes => _a.Bytes;
    /// <summary>Bytes of weights this rank keeps between steps (its slice when fully sharded).</summary>
    public long WeightBytes => _values.Bytes;

    /// <summary>What this rank keeps of every tensor between steps.</summary>
    internal IReadOnlyList<ParameterPiece> Pieces => _pieces;
    /// <summary>Where each tensor's piece sits in the flat parameter and gradient memory (and the optimizer's).</summary>
    public ArenaLayout Layout { get; }
    internal DeviceBuffer Values => _values;
    internal DeviceBuffer Gradients => _grads;

    /// <summary>Every parameter, usable by kernels (one device, or a mesh rank that is not fully sharded).</summary>
    public IReadOnlyList<Parameter> Parameters => ShardWeights
        ? throw new InvalidOperationException("a fully sharded rank keeps slices, not whole tensors; use Pieces")
        : _live.Select(p => p!).ToArray();

    public Parameter this[string name] => Parameters[LocalSchema.IndexOf(name)];

    // ---- forward / backward ---------------------------------------------------------------------

    /// <summary>
    /// Forward over this rank's batch·T tokens (inputs and targets row-major (Bl,T)). Returns the mean losses over the
    /// whole mesh's batch (every data rank passes the same Bl). Leaves what backward needs in the activation buffers.
    /// </summary>
    public LossResult Forward(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets, int batch)
    {
        if (batch < 1 || batch > MaxBatch)
            throw new ArgumentOutOfRangeException(nameof(batch), $"batch {batch} is outside 1..{MaxBatch} (the model was built for at most {MaxBatch} sequences per rank)");
        var m = Dims.Of(Local, batch);
        if (inputs.Length != m.N || targets.Length != m.N)
            throw new ArgumentException($"expected {m.N} input and target tokens (batch {batch} × seq {m.T}), got {inputs.Length} and {targets.Length}");
        CheckTokens(inputs, "input");
        CheckTokens(targets, "target");
        _batch = batch;
        _be.Upload(_a.Tokens, inputs);     // global ids: each model rank's kernels keep the rows and columns of its shard
        _be.Upload(_a.Targets, targets);

        Gather(EmbeddingUnit, grads: false);
        EmbedTokens(m);
        Release(EmbeddingUnit, grads: false);
        ModelSum(_a.Residual[0], (long)m.N * m.D);

        for (int l = 0; l < Config.Layers; l++)
        {
            Gather(LayerUnit(l), grads: false);
            BlockForward(l, m, recompute: false);
            Release(LayerUnit(l), grads: false);
        }

        Gather(FinalNormUnit, grads: false);
        Gather(EmbeddingUnit, grads: false);
        _be.LayerNormForward(_a.Hf, _a.HfMean, _a.HfRstd, _a.Residual[Config.Layers], Live(FinalNormIndex).Value, m.N, m.D);
        _be.Matmul(_a.Logits, _a.Hf, Live(ParameterSchema.EmbeddingIndex).Value, m.N, m.V, m.D, transB: true, alpha: LogitScale);
        _be.CrossEntropyForward(_a.LogZ, _a.TargetLogit, _a.Logits, _a.Targets, m.N, m.V, VocabStart);
        Release(EmbeddingUnit, grads: false);
        Release(FinalNormUnit, grads: false);
        if (_rank.ModelSize > 1) CombineShardedHead(m.N);

        Span<double> sums = stackalloc double[2];
        HeadSums(m.N, sums);
        _rank.DataGroup.SumHost(sums);
        long n = (long)m.N * _rank.DataSize;
        return new LossResult(sums[0] / n, Config.ZLoss * sums[1] / n);
    }

    /// <summary>Σ CE and Σ logZ² over this rank's rows (double), from the device's logZ and target logits.</summary>
    void HeadSums(int n, Span<double> sums)
    {
        _be.Download(_a.TargetLogit, _a.HostTargetLogit.AsSpan(0, n));
        _be.Download(_a.LogZ, _a.HostLogZ.AsSpan(0, n));
        double ce = 0, z2 = 0;
        for (int i = 0; i < n; i++)
        {
            ce += (double)_a.HostLogZ[i] - _a.HostTargetLogit[i];
            z2 += (double)_a.HostLogZ[i] * _a.HostLogZ[i];
        }
        sums[0] = ce;
        sums[1] = z2;
    }

    /// <summary>
    /// Vocab-parallel head on the device: logZ = max_m lz_m + log Σ_m exp(lz_m − max) over the model ranks' partial
    /// normalisers, and the target logit from the one rank whose columns hold the target (the others give 0).
    /// </summary>
    void CombineShardedHead(int n)
    {
        var group = _rank.ModelGroup;
        _be.Copy(_rowMax!, _a.LogZ, n);
        group.AllReduce(_rowMax!, n, ReduceOp.Max);
        _be.LogSumExpShift(_rowSum!, _a.LogZ, _rowMax!, n);
        group.AllReduce(_rowSum!, n);
        _be.LogSumExpFinish(_a.LogZ, _rowMax!, _rowSum!, n);
        group.AllReduce(_a.TargetLogit, n);
    }

    /// <summary>First vocabulary row (and logit column) of this rank's shard.</summary>
    int VocabStart => _rank.ModelRank * Local.Vocab;

    void EmbedTokens(Dims m) =>
        _be.EmbeddingForward(_a.Residual[0], _a.Tokens, Live(ParameterSchema.EmbeddingIndex).Value, m.N, m.D, VocabStart, m.V);

    /// <summary>
    /// Backward of the last Forward: parameter gradients += lossScale · d(mean CE + z-loss)/dθ, then synchronised over
    /// the mesh. lossScale ≠ 1 is used only for fault injection (a deliberate gradient spike).
    /// </summary>
    public void Backward(float lossScale = 1f)
    {
        if (_batch == 0) throw new InvalidOperationException("Backward needs a Forward first");
        var m = Dims.Of(Local, _batch);
        var s = _a.Scratch;
        long nd = (long)m.N * m.D;
        float scale = lossScale / ((float)m.N * _rank.DataSize);

        // Head: dlogits in place, then through the tied embedding and the final norm.
        Gather(EmbeddingUnit, grads: true);
        Gather(FinalNormUnit, grads: true);
        var emb = Live(ParameterSchema.EmbeddingIndex);
        var lnf = Live(FinalNormIndex);
        _be.CrossEntropyBackward(_a.Logits, _a.Logits, _a.LogZ, _a.Targets, scale, Config.ZLoss, m.N, m.V, VocabStart);
        _be.Matmul(s.DHidden, _a.Logits, emb.Value, m.N, m.D, m.V, alpha: LogitScale);
        _be.Matmul(emb.Grad, _a.Logits, _a.Hf, m.V, m.D, m.N, transA: true, alpha: LogitScale, accumulate: true);
        Release(EmbeddingUnit, grads: true);
        ModelSum(s.DHidden, nd);
        _be.LayerNormBackward(s.DResidual, lnf.Grad, s.DHidden, _a.Residual[Config.Layers], lnf.Value, _a.HfMean, _a.HfRstd, m.N, m.D, accumulate: false);
        Release(FinalNormUnit, grads: true);

        for (int l = Config.Layers - 1; l >= 0; l--)
        {
            Gather(LayerUnit(l), grads: true);
            if (Config.Rematerialize) BlockForward(l, m, recompute: true);
            BlockBackward(l, m);
            Release(LayerUnit(l), grads: true);
        }

        Gather(EmbeddingUnit, grads: true);
        EmbeddingGradient(m);
        Release(EmbeddingUnit, grads: true);
        SynchronizeGradients();
    }

    void EmbeddingGradient(Dims m) =>
        _be.EmbeddingBackward(Live(ParameterSchema.EmbeddingIndex).Grad, _a.Tokens, _a.Scratch.DResidual, m.N, m.D, VocabStart, m.V);

    /// <summary>
    /// Sums partial gradients: the replicated K/V head over the model axis, then every tensor over the data axis
    /// (replicas saw different sequences), ranks in fixed order. Fully sharded gradients were already
    /// reduce-scattered over the data axis as each unit finished.
    /// </summary>
    void SynchronizeGradients()
    {
        if (_rank.ModelSize > 1)
            for (int i = 0; i < _pieces.Length; i++)
                if (LocalSchema.Tensors[i].PartialOverModel) _rank.ModelGroup.AllReduce(_pieces[i].Grad, _pieces[i].Length);
        // One all-reduce of the whole gradient arena (padding is zero): element-wise, so the same bits as per tensor.
        if (_rank.DataSize > 1 && !ShardWeights) _rank.DataGroup.AllReduce(_grads, _grads.Length);
    }

    /// <summary>One fill over the gradient arena.</summary>
    public void ZeroGradients() => _be.Fill(_grads, 0f, _grads.Length);

    // ---- fully sharded: gather before use, reduce-scatter and free after --------------------------

    static readonly int[] EmbeddingUnit = [ParameterSchema.EmbeddingIndex];
    int[] FinalNormUnit => [FinalNormIndex];
    int[] LayerUnit(int l) => LocalSchema.LayerIndices[l];
    int FinalNormIndex => LocalSchema.FinalNormIndex;

    /// <summary>The units a fully sharded rank gathers: the embedding, each layer, the final norm (contiguous tensor indices).</summary>
    IEnumerable<int[]> Units() => [EmbeddingUnit, .. LocalSchema.LayerIndices, FinalNormUnit];

    /// <summary>The arena range [Start, Start + Length) holding a unit's slices (padding between them included).</summary>
    (long Start, long Length) UnitRange(int[] unit)
    {
        long start = Layout.Offsets[unit[0]];
        return (start, Layout.Offsets[unit[^1]] + Layout.Counts[unit[^1]] - start);
    }

    readonly Dictionary<int, (DeviceBuffer Values, DeviceBuffer Grads)> _unitViews = [];

    (DeviceBuffer Values, DeviceBuffer Grads) UnitViews(int[] unit)
    {
        if (!_unitViews.TryGetValue(unit[0], out var v))
        {
            var (start, length) = UnitRange(unit);
            _unitViews[unit[0]] = v = (_values.Slice(start, length), _grads.Slice(start, length));
        }
        return v;
    }

    /// <summary>
    /// All-gathers a unit over the data axis with one collective — every rank's slice range of the arena, rank r's at
    /// stage[r·block ..) — then copies each tensor's P slices into a workspace tensor (gradients zeroed when <paramref name="grads"/>).
    /// </summary>
    void Gather(int[] unit, bool grads)
    {
        if (!ShardWeights) return;
        var (start, block) = UnitRange(unit);
        _rank.DataGroup.AllGather(_stage!, UnitViews(unit).Values, block);
        foreach (int i in unit)
        {
            var live = Borrow(LocalSchema.Tensors[i]);
            if (grads) _be.Fill(live.Grad, 0f, live.Count);
            _live[i] = live;
            ForSlices(i, start, block, (r, n, full, staged) => _be.Copy(live.Value, _stage!, n, full, staged));
        }
    }

    /// <summary>
    /// Frees a gathered unit; with grads, first lays its tensors' gradients out as the ranks' slice ranges and
    /// reduce-scatters them over the data axis with one collective into this rank's range of the gradient arena (+=).
    /// </summary>
    void Release(int[] unit, bool grads)
    {
        if (!ShardWeights) return;
        var (start, block) = UnitRange(unit);
        if (grads)
        {
            _be.Fill(_stage!, 0f, block * _rank.DataSize);
            foreach (int i in unit)
            {
                var live = _live[i]!;
                ForSlices(i, start, block, (r, n, full, staged) => _be.Copy(_stage!, live.Grad, n, staged, full));
            }
            _rank.DataGroup.ReduceScatter(_stageSlice!, _stage!, block);
            _be.AddInPlace(UnitViews(unit).Grads, _stageSlice!, block);
        }
        foreach (int i in unit)
        {
            Return(_live[i]!);
            _live[i] = null;
        }
    }

    /// <summary>Rank r's slice of tensor i: its n valid values at <c>full</c> in the whole tensor and at <c>staged</c> in the gather stage.</summary>
    void ForSlices(int i, long start, long block, Action<int, long, long, long> body)
    {
        long piece = _pieces[i].Length, count = LocalSchema.Tensors[i].Count;
        for (int r = 0; r < _rank.DataSize; r++)
        {
            long n = Math.Min(piece, count - r * piece);
            if (n > 0) body(r, n, r * piece, r * block + Layout.Offsets[i] - start);
        }
    }

    // Gathered tensors come from a workspace of buffer pairs kept by size and handed back on release. Layers share
    // shapes, so it stays at one layer plus the embedding and final norm, without an allocation (and, on OpenCL, a
    // queue drain) per tensor per step.
    Parameter Borrow(TensorSpec spec)
    {
        if (_workspace.TryGetValue(spec.Count, out var free) && free.Count > 0)
        {
            var (v, g) = free.Pop();
            return new Parameter(spec, v, g);
        }
        return new Parameter(spec, _be.Allocate("gathered." + spec.Name, spec.Count), _be.Allocate("grad.gathered." + spec.Name, spec.Count));
    }

    void Return(Parameter p)
    {
        if (!_workspace.TryGetValue(p.Count, out var free)) _workspace[p.Count] = free = new();
        free.Push((p.Value, p.Grad));
    }

    Parameter Live(int i) => _live[i] ?? throw new InvalidOperationException($"parameter {LocalSchema.Tensors[i].Name} is not gathered");
    BlockParameters Block(int l) => BlockParameters.From(LocalSchema.LayerIndices[l], Live);

    // ---- weights ---------------------------------------------------------------------------------

    /// <summary>PaLM's init from the seed (<see cref="ParameterSchema.InitialValues"/>): this rank keeps its piece of every full tensor.</summary>
    public void Initialize(ulong seed)
    {
        for (int i = 0; i < _pieces.Length; i++) _be.Upload(_pieces[i].Value, PieceOf(Schema.InitialValues(i, seed), i));
    }

    /// <summary>Loads full (unsharded) tensors by name; this rank keeps its piece.</summary>
    public void LoadWeights(IReadOnlyDictionary<string, float[]> full)
    {
        for (int i = 0; i < _pieces.Length; i++) _be.Upload(_pieces[i].Value, PieceOf(full[Schema.Tensors[i].Name], i));
    }

    /// <summary>
    /// What this rank keeps of a tensor laid out like parameter i (its weights, or its elementwise optimizer state): the
    /// model rank's cut, and when fully sharded the data rank's slice of it, zero-padded to the piece length.
    /// </summary>
    public float[] PieceOf(float[] full, int i)
    {
        var t = LocalSchema.Tensors[i];
        var shard = ShardMath.Cut(full, t.Axis, t.Rows, t.Cols, _rank.ModelRank, _rank.ModelSize);
        if (!ShardWeights) return shard;
        var piece = _pieces[i];
        var slice = new float[piece.Length];
        Array.Copy(shard, piece.Offset, slice, 0, piece.Valid);
        return slice;
    }

    /// <summary>Host copies of this rank's weights, named as the full tensors, padding dropped.</summary>
    public List<NamedTensor> ExportWeights()
    {
        var list = new List<NamedTensor>();
        for (int i = 0; i < _pieces.Length; i++)
        {
            var t = LocalSchema.Tensors[i];
            var piece = _pieces[i];
            list.Add(new NamedTensor(t.Name, ShardWeights ? [piece.Valid] : t.Shape.Select(x => (long)x).ToArray(), _be.ToHost(piece.Value, piece.Valid)));
        }
        return list;
    }

    /// <summary>Parameter i's axis over the model ranks and one model rank's shape.</summary>
    public TensorLayout LayoutOf(int i)
    {
        var t = LocalSchema.Tensors[i];
        return new TensorLayout(ShardMath.Name(t.Axis), t.Shape.Select(x => (long)x).ToArray());
    }

    /// <summary>Logits of the last Forward for the first <paramref name="rows"/> rows, (rows, Vl) on the host.</summary>
    public float[] DownloadLogits(int rows)
    {
        var host = new float[(long)rows * Local.Vocab];
        _be.Download(_a.Logits, host);
        return host;
    }

    float LogitScale => 1f / MathF.Sqrt(Config.DModel);

    // ---- for incremental decoding (Inference/KvCacheGenerator): one device, weights in place ----------------
    internal BlockParameters DecodeBlock(int l) => Block(l);
    internal DeviceBuffer DecodeEmbedding => Live(ParameterSchema.EmbeddingIndex).Value;
    internal DeviceBuffer DecodeFinalNorm => Live(FinalNormIndex).Value;
    internal float DecodeLogitScale => LogitScale;
    /// <summary>Layer l's keys and values after RoPE from the last forward, (B,T,G,K) each.</summary>
    internal (DeviceBuffer K, DeviceBuffer V) LayerKeysValues(int l) => (_a.For(l).K, _a.For(l).V);

    void CheckTokens(ReadOnlySpan<int> ids, string what)
    {
        foreach (int t in ids)
            if ((uint)t >= (uint)Config.Vocab)
                throw new ArgumentException($"{what} token {t} is outside the vocabulary 0..{Config.Vocab - 1}; the tokenizer and the model's vocab disagree");
    }

    public void Dispose()
    {
        foreach (var p in _pieces) { p.Value.Dispose(); p.Grad.Dispose(); }
        foreach (var (v, g) in _unitViews.Values) { v.Dispose(); g.Dispose(); }
        _values.Dispose();
        _grads.Dispose();
        foreach (var (v, g) in _workspace.Values.SelectMany(x => x)) { v.Dispose(); g.Dispose(); }
        if (ShardWeights) foreach (var p in _live.OfType<Parameter>()) { p.Value.Dispose(); p.Grad.Dispose(); }
        _stage?.Dispose();
        _stageSlice?.Dispose();
        _a.Dispose();
        foreach (var b in new[] { _partial, _rowMax, _rowSum }) b?.Dispose();
    }
}

/// <summary>What one rank keeps of a tensor between steps: the whole model shard, or its slice [Offset, Offset+Valid) padded to Length.</summary>
internal readonly record struct ParameterPiece(DeviceBuffer Value, DeviceBuffer Grad, long Length, long Offset, long Valid);

using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Model;
using Palm.Gpu.IO;
using Palm.Gpu.Tensors;
using Palm.Gpu.Training;

namespace Palm.Gpu.Sharding;

/// <summary>How a parameter is laid out over the model axis.</summary>
public enum ShardAxis
{
    /// <summary>Every model rank holds the whole tensor (layer norms; the shared K/V head of multi-query attention).</summary>
    Replicated,
    /// <summary>Rank m holds rows [m·R/M, (m+1)·R/M): the embedding (by vocabulary), Wo (by heads), Wdown (by MLP width).</summary>
    Rows,
    /// <summary>Rank m holds columns [m·C/M, (m+1)·C/M): Wq (by heads), Wgate and Wup (by MLP width).</summary>
    Cols,
}

/// <summary>
/// The PaLM model over a <see cref="DeviceMesh"/> (Megatron-style tensor parallelism on the model axis,
/// the batch split on the data axis). Legend: M model ranks, P data ranks, Bl = B/P, Hl = H/M, Fl = F/M,
/// Vl = V/M, Nl = Bl·T. Every rank runs the existing sublayer code on its shard:
///
///   x0     = Σ_m E_m[tokens]                      (N,D)   vocab-parallel lookup, one all-reduce
///   block  parallel: y = x + Σ_m (Attn_m(h) + MLP_m(h))   one all-reduce of the summed output
///          serial:   x1 = x + Σ_m Attn_m(h1); y = x1 + Σ_m MLP_m(h2)   two all-reduces
///   logits_m = hf·E_mᵀ/√D                          (Nl,Vl) never gathered
///   logZ   = max_m lz_m + log Σ_m exp(lz_m − max)  vocab-parallel cross-entropy: max and sum all-reduced
///
/// Backward mirrors it: one all-reduce of dh per parallel block (two per serial block), one for the
/// head's dh. Wk/Wv gradients (replicated K/V head) are summed over the model axis, and every
/// gradient over the data axis, in rank order. Replicated tensors stay bit-identical on every rank
/// because each rank computes them from the same all-reduced values.
/// </summary>
public sealed class ShardedPalm : IDisposable
{
    readonly DeviceMesh _mesh;
    readonly Rank[] _ranks;
    readonly ShardAxis[] _axes;      // per parameter index (the ParameterSet order)
    readonly bool[] _modelPartial;   // gradient is a partial sum over the model axis (replicated K/V head)
    int _batch;

    /// <param name="shardWeights">
    /// Fully sharded over the data axis: each rank keeps 1/P of its shard's weights, gradients and optimizer
    /// state; a layer's weights are all-gathered just before use and freed after, its gradients reduce-scattered.
    /// </param>
    public ShardedPalm(DeviceMesh mesh, ModelConfig config, int maxBatch, bool concurrent = true, bool shardWeights = false)
    {
        config.Validate();
        DeviceMesh.Validate(config, mesh.Data, mesh.Model, maxBatch);
        _mesh = mesh;
        Config = config;
        MaxBatch = maxBatch;
        Concurrent = concurrent;
        ShardWeights = shardWeights;
        int M = mesh.Model;
        bool splitKv = config.KvHeads > 1; // multi-head: K/V heads follow the query heads
        Local = config with { Heads = config.Heads / M, DFf = config.DFf / M, Vocab = config.Vocab / M };
        var localMax = Dims.Of(Local, maxBatch / mesh.Data);
        _ranks = new Rank[mesh.Size];
        for (int d = 0; d < mesh.Data; d++)
            for (int m = 0; m < M; m++)
                _ranks[d * M + m] = new Rank(mesh.At(d, m), d * M + m, d, m, Local, localMax, shardWeights ? mesh.Data : 0);

        var ps = _ranks[0].Meta;
        _axes = new ShardAxis[ps.All.Count];
        _modelPartial = new bool[ps.All.Count];
        int Index(Parameter p) => IndexOf(ps, p);
        _axes[Index(ps.Embedding)] = ShardAxis.Rows;
        foreach (var b in ps.Blocks)
        {
            _axes[Index(b.Wq)] = ShardAxis.Cols;
            _axes[Index(b.Wk)] = _axes[Index(b.Wv)] = splitKv ? ShardAxis.Cols : ShardAxis.Replicated;
            _modelPartial[Index(b.Wk)] = _modelPartial[Index(b.Wv)] = !splitKv && M > 1;
            _axes[Index(b.Wo)] = ShardAxis.Rows;
            _axes[Index(b.WGate)] = _axes[Index(b.WUp)] = ShardAxis.Cols;
            _axes[Index(b.WDown)] = ShardAxis.Rows;
        }
    }

    public ModelConfig Config { get; }
    /// <summary>Weights, gradients and optimizer state sharded over the data axis (gathered per layer when used).</summary>
    public bool ShardWeights { get; }
    /// <summary>The shape each model rank computes: heads, d_ff and vocab divided by the model axis.</summary>
    public ModelConfig Local { get; }
    public int MaxBatch { get; }
    public DeviceMesh Mesh => _mesh;
    /// <summary>Run the ranks of a mesh on concurrent host threads between collectives.</summary>
    public bool Concurrent { get; set; }
    /// <summary>Names, shapes and order of one model shard's parameters (no storage when fully sharded).</summary>
    public ParameterSet ShardLayout => _ranks[0].Meta;
    public ShardAxis AxisOf(int parameterIndex) => _axes[parameterIndex];
    /// <summary>True when the gradient must be summed over the model axis (replicated K/V head).</summary>
    public bool IsModelPartial(int parameterIndex) => _modelPartial[parameterIndex];

    /// <summary>Bytes of weights one device keeps between steps (its slice when fully sharded).</summary>
    public long WeightBytesPerDevice => Enumerable.Range(0, _axes.Length).Sum(i => 4 * _ranks[0].Piece(i).Length);

    /// <summary>Bytes of gradients one device keeps between steps.</summary>
    public long GradientBytesPerDevice => WeightBytesPerDevice;

    // ---- weights ----------------------------------------------------------------------------

    /// <summary>PaLM's init of the full model from the seed (as <see cref="ParameterSet.Initialize"/>), scattered to the shards.</summary>
    public void Initialize(ulong seed)
    {
        using var host = new CpuBackend(1);
        var full = new ParameterSet(host, Config);
        full.Initialize(host, seed);
        var tensors = new Dictionary<string, float[]>();
        foreach (var p in full.All)
        {
            tensors[p.Name] = host.ToHost(p.Value);
            p.Value.Dispose(); p.Grad.Dispose();
        }
        LoadWeights(tensors);
    }

    /// <summary>Loads full (unsharded) tensors by name and gives every rank its shard.</summary>
    public void LoadWeights(IReadOnlyDictionary<string, float[]> full)
    {
        ForRanks(r =>
        {
            for (int i = 0; i < r.Meta.All.Count; i++) r.Be.Upload(r.Piece(i).Value, PieceOf(full[r.Meta.All[i].Name], i, r));
        });
    }

    /// <summary>
    /// What rank r keeps of a tensor laid out like parameter i (its weights, or its elementwise optimizer state):
    /// the model rank's cut, and with sharded weights the data rank's slice of it, zero-padded to the piece length.
    /// </summary>
    internal float[] PieceOf(float[] full, int i, Rank r)
    {
        var p = r.Meta.All[i];
        var shard = ShardMath.Cut(full, _axes[i], p.Rows, p.Cols, r.ModelRank, _mesh.Model);
        if (!ShardWeights) return shard;
        var piece = r.Piece(i);
        var slice = new float[piece.Length];
        Array.Copy(shard, piece.Offset, slice, 0, piece.Valid);
        return slice;
    }

    /// <summary>Full tensors by name, joined on the host from one copy of every piece (as a checkpoint is).</summary>
    public Dictionary<string, float[]> GatherWeights()
    {
        var pieces = DistinctShardRanks.ToDictionary(k => (_ranks[k].DataRank, _ranks[k].ModelRank),
                                                     k => ExportWeights(k).ToDictionary(t => t.Name));
        var layout = Enumerable.Range(0, _axes.Length).ToDictionary(i => _ranks[0].Meta.All[i].Name, LayoutOf);
        return ShardMath.Assemble(layout, _mesh.Model, ShardWeights ? _mesh.Data : 1, (d, m) => pieces[(d, m)], "the mesh")
                        .ToDictionary(kv => kv.Key, kv => kv.Value.Data);
    }

    /// <summary>Parameter i's axis over the model ranks and one model rank's shape.</summary>
    public TensorLayout LayoutOf(int i)
    {
        var p = _ranks[0].Meta.All[i];
        return new TensorLayout(ShardMath.Name(_axes[i]), p.Shape.Select(x => (long)x).ToArray());
    }

    /// <summary>
    /// The ranks whose pieces together hold one copy of every tensor: the model ranks of data index 0, or with
    /// sharded weights every rank (data slices). Replicas are not written twice.
    /// </summary>
    public IEnumerable<int> DistinctShardRanks => ShardWeights ? Enumerable.Range(0, _ranks.Length) : Enumerable.Range(0, _mesh.Model);

    /// <summary>Host copies of rank k's weights, named as the full tensors, padding dropped.</summary>
    public List<NamedTensor> ExportWeights(int k)
    {
        var r = _ranks[k];
        var list = new List<NamedTensor>();
        for (int i = 0; i < r.Meta.All.Count; i++)
        {
            var p = r.Meta.All[i];
            var piece = r.Piece(i);
            list.Add(new NamedTensor(p.Name, ShardWeights ? [piece.Valid] : p.Shape.Select(x => (long)x).ToArray(), r.Be.ToHost(piece.Value, piece.Valid)));
        }
        return list;
    }

    /// <summary>Values in the full tensor laid out like parameter i: its model-rank piece's, times the model ranks when split.</summary>
    internal long FullCount(int i) => (long)_ranks[0].Meta.All[i].Count * (_axes[i] == ShardAxis.Replicated ? 1 : _mesh.Model);

    // ---- forward / backward -----------------------------------------------------------------

    /// <summary>
    /// Forward over batch·T tokens (row-major (B,T)); data rank d takes sequences [d·B/P, (d+1)·B/P).
    /// Returns the mean losses over the whole batch.
    /// </summary>
    public LossResult Forward(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets, int batch)
    {
        if (batch < 1 || batch > MaxBatch) throw new ArgumentOutOfRangeException(nameof(batch), $"batch {batch} is outside 1..{MaxBatch}");
        if (batch % _mesh.Data != 0)
            throw new ConfigException($"data axis {_mesh.Data} does not divide the batch of {batch} sequences; use a batch that is a multiple of {_mesh.Data}");
        int T = Config.SeqLen;
        if (inputs.Length != batch * T || targets.Length != batch * T)
            throw new ArgumentException($"expected {batch * T} input and target tokens (batch {batch} × seq {T}), got {inputs.Length} and {targets.Length}");
        foreach (int t in inputs) if ((uint)t >= (uint)Config.Vocab) throw new ArgumentException($"input token {t} is outside the vocabulary 0..{Config.Vocab - 1}");
        foreach (int t in targets) if ((uint)t >= (uint)Config.Vocab) throw new ArgumentException($"target token {t} is outside the vocabulary 0..{Config.Vocab - 1}");
        _batch = batch;
        var m = LocalDims;
        int nl = m.N, vl = m.V, D = m.D;
        var inArr = inputs.ToArray();
        var tgArr = targets.ToArray();

        // Vocab-parallel embedding: global ids; a rank's lookup gives zero rows for tokens of other ranks.
        Materialize(EmbeddingUnit, grads: false);
        ForRanks(r =>
        {
            int off = r.DataRank * nl;
            r.Be.Upload(r.Tokens, inArr.AsSpan(off, nl));
            r.Be.Upload(r.Targets, tgArr.AsSpan(off, nl));
            r.Be.EmbeddingForward(r.Residual[0], r.Tokens, r.Embedding.Value, nl, D, r.ModelRank * vl, vl);
        });
        Release(EmbeddingUnit, grads: false);
        AllReduceModel(r => r.Residual[0], (long)nl * D);

        for (int l = 0; l < Config.Layers; l++)
        {
            Materialize(LayerUnit(l), grads: false);
            BlockForward(l, m);
            Release(LayerUnit(l), grads: false);
        }

        Materialize(FinalNormUnit, grads: false);
        Materialize(EmbeddingUnit, grads: false);
        ForRanks(r =>
        {
            r.Be.LayerNormForward(r.Hf, r.HfMean, r.HfRstd, r.Residual[Config.Layers], r.FinalNorm.Value, nl, D);
            r.Be.Matmul(r.Logits, r.Hf, r.Embedding.Value, nl, vl, D, transB: true, alpha: LogitScale);
            r.Be.CrossEntropyForward(r.LogZ, r.TargetLogit, r.Logits, r.Targets, nl, vl, r.ModelRank * vl);
        });
        Release(EmbeddingUnit, grads: false);
        Release(FinalNormUnit, grads: false);

        // Global logZ from the per-rank normalisers on the devices: M = max over the model axis, then
        // logZ = M + log Σ_m exp(lz_m − M); the target logit lives on one rank (0 elsewhere), so a sum finds it.
        if (_mesh.Model > 1)
        {
            ForRanks(r => r.Be.Copy(r.RowStat, r.LogZ, nl));
            AllReduceModel(r => r.RowStat, nl, ReduceOp.Max);
            ForRanks(r => r.Be.LogSumExpShift(r.RowStat2, r.LogZ, r.RowStat, nl));
            AllReduceModel(r => r.RowStat2, nl);
            ForRanks(r => r.Be.LogSumExpFinish(r.LogZ, r.RowStat, r.RowStat2, nl));
            AllReduceModel(r => r.TargetLogit, nl);
        }

        double ce = 0, z2 = 0;
        for (int d = 0; d < _mesh.Data; d++)
        {
            var r = _ranks[d * _mesh.Model];
            r.Be.Download(r.LogZ, r.HostLogZ.AsSpan(0, nl));
            r.Be.Download(r.TargetLogit, r.HostTargetLogit.AsSpan(0, nl));
            for (int i = 0; i < nl; i++)
            {
                ce += (double)r.HostLogZ[i] - r.HostTargetLogit[i];
                z2 += (double)r.HostLogZ[i] * r.HostLogZ[i];
            }
        }
        int n = batch * T;
        return new LossResult(ce / n, Config.ZLoss * z2 / n);
    }

    /// <summary>
    /// Layer l's forward. With <paramref name="recompute"/> (rematerialisation in backward) it only refills the
    /// shared block internals from the stored input: the block output is not needed, so a parallel block
    /// recomputes without communication, and a serial block repeats only its first all-reduce (for x1).
    /// </summary>
    void BlockForward(int l, Dims m, bool recompute = false)
    {
        long nd = (long)m.N * m.D;
        bool serial = Config.Block == BlockKind.Serial;
        ForRanks(r =>
        {
            var w = r.Block(l);
            var a = r.ActsFor(l);
            r.Be.LayerNormForward(a.Ln1Out, a.Ln1Mean, a.Ln1Rstd, r.Residual[l], w.Ln1.Value, m.N, m.D);
            r.Be.Fill(r.Partial, 0f, nd);
            AttentionSublayer.Forward(r.Be, m, w, a, a.Ln1Out, r.Partial);
            if (!serial) MlpSublayer.Forward(r.Be, m, w, a, a.Ln1Out, r.Partial);
        });
        if (!serial && recompute) return;
        AllReduceModel(r => r.Partial, nd);
        if (!serial)
        {
            ForRanks(r => r.Be.Add(r.Residual[l + 1], r.Residual[l], r.Partial, nd));
            return;
        }
        ForRanks(r =>
        {
            var w = r.Block(l);
            var a = r.ActsFor(l);
            r.Be.Add(a.X1!, r.Residual[l], r.Partial, nd);
            r.Be.LayerNormForward(a.Ln2Out!, a.Ln2Mean!, a.Ln2Rstd!, a.X1!, w.Ln2!.Value, m.N, m.D);
            r.Be.Fill(r.Partial, 0f, nd);
            MlpSublayer.Forward(r.Be, m, w, a, a.Ln2Out!, r.Partial);
        });
        if (recompute) return;
        AllReduceModel(r => r.Partial, nd);
        ForRanks(r => r.Be.Add(r.Residual[l + 1], r.ActsFor(l).X1!, r.Partial, nd));
    }

    /// <summary>Backward of the last Forward: every rank's gradients += d(mean CE + z-loss)/dθ of its shard, then synchronised.</summary>
    public void Backward(float lossScale = 1f)
    {
        if (_batch == 0) throw new InvalidOperationException("Backward needs a Forward first");
        var m = LocalDims;
        int nl = m.N, vl = m.V, D = m.D;
        long nd = (long)nl * D;
        float scale = lossScale / (_batch * Config.SeqLen);

        Materialize(EmbeddingUnit, grads: true);
        Materialize(FinalNormUnit, grads: true);
        ForRanks(r =>
        {
            var emb = r.Embedding;
            r.Be.CrossEntropyBackward(r.Logits, r.Logits, r.LogZ, r.Targets, scale, Config.ZLoss, nl, vl, r.ModelRank * vl);
            r.Be.Matmul(r.S.DHidden, r.Logits, emb.Value, nl, D, vl, alpha: LogitScale);
            r.Be.Matmul(emb.Grad, r.Logits, r.Hf, vl, D, nl, transA: true, alpha: LogitScale, accumulate: true);
        });
        Release(EmbeddingUnit, grads: true);
        AllReduceModel(r => r.S.DHidden, nd);
        ForRanks(r => r.Be.LayerNormBackward(r.S.DResidual, r.FinalNorm.Grad, r.S.DHidden, r.Residual[Config.Layers],
                                             r.FinalNorm.Value, r.HfMean, r.HfRstd, nl, D, accumulate: false));
        Release(FinalNormUnit, grads: true);

        bool serial = Config.Block == BlockKind.Serial;
        for (int l = Config.Layers - 1; l >= 0; l--)
        {
            int layer = l;
            Materialize(LayerUnit(l), grads: true);
            if (Config.Rematerialize) BlockForward(l, m, recompute: true);
            if (!serial)
            {
                ForRanks(r =>
                {
                    var w = r.Block(layer); var a = r.ActsFor(layer);
                    MlpSublayer.Backward(r.Be, m, w, a, r.S, a.Ln1Out, r.S.DResidual, r.S.DHidden, accumulateDh: false);
                    AttentionSublayer.Backward(r.Be, m, w, a, r.S, a.Ln1Out, r.S.DResidual, r.S.DHidden, accumulateDh: true);
                });
                AllReduceModel(r => r.S.DHidden, nd);
                ForRanks(r =>
                {
                    var w = r.Block(layer); var a = r.ActsFor(layer);
                    r.Be.LayerNormBackward(r.S.DResidual, w.Ln1.Grad, r.S.DHidden, r.Residual[layer], w.Ln1.Value, a.Ln1Mean, a.Ln1Rstd, nl, D, accumulate: true);
                });
            }
            else
            {
                ForRanks(r =>
                {
                    var w = r.Block(layer); var a = r.ActsFor(layer);
                    MlpSublayer.Backward(r.Be, m, w, a, r.S, a.Ln2Out!, r.S.DResidual, r.S.DHidden, accumulateDh: false);
                });
                AllReduceModel(r => r.S.DHidden, nd);
                ForRanks(r =>
                {
                    var w = r.Block(layer); var a = r.ActsFor(layer);
                    r.Be.LayerNormBackward(r.S.DResidual, w.Ln2!.Grad, r.S.DHidden, a.X1!, w.Ln2.Value, a.Ln2Mean!, a.Ln2Rstd!, nl, D, accumulate: true);
                    AttentionSublayer.Backward(r.Be, m, w, a, r.S, a.Ln1Out, r.S.DResidual, r.S.DHidden, accumulateDh: false);
                });
                AllReduceModel(r => r.S.DHidden, nd);
                ForRanks(r =>
                {
                    var w = r.Block(layer); var a = r.ActsFor(layer);
                    r.Be.LayerNormBackward(r.S.DResidual, w.Ln1.Grad, r.S.DHidden, r.Residual[layer], w.Ln1.Value, a.Ln1Mean, a.Ln1Rstd, nl, D, accumulate: true);
                });
            }
            Release(LayerUnit(l), grads: true);
        }

        Materialize(EmbeddingUnit, grads: true);
        ForRanks(r => r.Be.EmbeddingBackward(r.Embedding.Grad, r.Tokens, r.S.DResidual, nl, D, r.ModelRank * vl, vl));
        Release(EmbeddingUnit, grads: true);
        SynchronizeGradients();
    }

    /// <summary>
    /// Sums partial gradients: the replicated K/V head over the model axis, then every tensor over the
    /// data axis (replicas saw different sequences). Ranks in fixed order, so the result is deterministic.
    /// </summary>
    void SynchronizeGradients()
    {
        int M = _mesh.Model, P = _mesh.Data;
        for (int i = 0; i < _axes.Length; i++)
        {
            int idx = i;
            long count = _ranks[0].Piece(i).Length;
            if (_modelPartial[i])
                for (int d = 0; d < P; d++)
                    _mesh.ModelGroups[d].AllReduce(Enumerable.Range(0, M).Select(m => _ranks[d * M + m].Piece(idx).Grad).ToArray(), count);
            // Fully sharded gradients were already reduce-scattered over the data axis as each layer finished.
            if (P > 1 && !ShardWeights)
                for (int m = 0; m < M; m++)
                    _mesh.DataGroups[m].AllReduce(Enumerable.Range(0, P).Select(d => _ranks[d * M + m].Piece(idx).Grad).ToArray(), count);
        }
    }

    public void ZeroGradients() => ForRanks(r =>
    {
        for (int i = 0; i < _axes.Length; i++) { var p = r.Piece(i); r.Be.Fill(p.Grad, 0f, p.Length); }
    });

    // ---- fully sharded: gather before use, reduce-scatter and free after -------------------------

    int[] EmbeddingUnit => [0];
    int[] FinalNormUnit => [_axes.Length - 1];
    int[] LayerUnit(int l) => _ranks[0].LayerIndices[l];

    /// <summary>All-gathers the weights of a unit (parameter indices) over the data axis into freshly allocated full tensors.</summary>
    void Materialize(int[] unit, bool grads)
    {
        if (!ShardWeights) return;
        int M = _mesh.Model, P = _mesh.Data;
        foreach (int i in unit)
        {
            ForRanks(r =>
            {
                var live = r.Gathered(r.Meta.All[i]);
                if (grads) r.Be.Fill(live.Grad, 0f, live.Count);
                r.Live[i] = live;
            });
            long n = _ranks[0].Piece(i).Length;
            for (int m = 0; m < M; m++)
                _mesh.DataGroups[m].AllGather(Enumerable.Range(0, P).Select(d => _ranks[d * M + m].Stage!).ToArray(),
                                              Enumerable.Range(0, P).Select(d => _ranks[d * M + m].Piece(i).Value).ToArray(), n);
            ForRanks(r => r.Be.Copy(r.Live[i]!.Value, r.Stage!, r.Live[i]!.Count));
        }
    }

    /// <summary>Frees a gathered unit; with grads, first reduce-scatters its gradients over the data axis into each rank's slice (+=).</summary>
    void Release(int[] unit, bool grads)
    {
        if (!ShardWeights) return;
        int M = _mesh.Model, P = _mesh.Data;
        foreach (int i in unit)
        {
            if (grads)
            {
                long n = _ranks[0].Piece(i).Length;
                ForRanks(r =>
                {
                    r.Be.Fill(r.Stage!, 0f, n * P);
                    r.Be.Copy(r.Stage!, r.Live[i]!.Grad, r.Live[i]!.Count);
                });
                for (int m = 0; m < M; m++)
                    _mesh.DataGroups[m].ReduceScatter(Enumerable.Range(0, P).Select(d => _ranks[d * M + m].StageSlice!).ToArray(),
                                                      Enumerable.Range(0, P).Select(d => _ranks[d * M + m].Stage!).ToArray(), n);
                ForRanks(r => r.Be.AddInPlace(r.Piece(i).Grad, r.StageSlice!, n));
            }
            ForRanks(r =>
            {
                r.Return(r.Live[i]!);
                r.Live[i] = null;
            });
        }
    }

    /// <summary>Per-token cross-entropy is not gathered; the mean comes from Forward.</summary>
    Dims LocalDims => Dims.Of(Local, _batch / _mesh.Data);

    float LogitScale => 1f / MathF.Sqrt(Config.DModel);

    internal IReadOnlyList<Rank> Ranks => _ranks;

    void AllReduceModel(Func<Rank, DeviceBuffer> pick, long count, ReduceOp op = ReduceOp.Sum)
    {
        int M = _mesh.Model;
        for (int d = 0; d < _mesh.Data; d++)
            _mesh.ModelGroups[d].AllReduce(Enumerable.Range(0, M).Select(m => pick(_ranks[d * M + m])).ToArray(), count, op);
    }

    internal void ForRanks(Action<Rank> body)
    {
        if (Concurrent && _ranks.Length > 1)
            System.Threading.Tasks.Parallel.For(0, _ranks.Length, new ParallelOptions { MaxDegreeOfParallelism = _ranks.Length }, i => body(_ranks[i]));
        else
            foreach (var r in _ranks) body(r);
    }

    static int IndexOf(ParameterSet ps, Parameter p)
    {
        for (int i = 0; i < ps.All.Count; i++) if (ReferenceEquals(ps.All[i], p)) return i;
        throw new InvalidOperationException($"parameter {p.Name} is not in its set");
    }

    public void Dispose()
    {
        foreach (var r in _ranks) r.Dispose();
    }

    /// <summary>What one rank keeps of parameter i between steps: the whole model shard, or its slice [Offset, Offset+Valid) padded to Length.</summary>
    internal readonly record struct ParameterPiece(DeviceBuffer Value, DeviceBuffer Grad, long Length, long Offset, long Valid);

    /// <summary>Buffers of one device: its parameter shard (or slice), activations, scratch and head.</summary>
    internal sealed class Rank : IDisposable
    {
        /// <param name="dataShards">0 keeps whole model-shard tensors; P &gt; 0 keeps a 1/P slice of each (fully sharded).</param>
        public Rank(IBackend be, int meshIndex, int dataRank, int modelRank, ModelConfig local, Dims max, int dataShards)
        {
            Be = be;
            Index = meshIndex;
            DataRank = dataRank;
            ModelRank = modelRank;
            if (dataShards == 0)
            {
                Params = new ParameterSet(be, local);
                Meta = Params;
                Live = Params.All.ToArray();
                Pieces = Params.All.Select(p => new ParameterPiece(p.Value, p.Grad, p.Count, 0, p.Count)).ToArray();
            }
            else
            {
                Meta = new ParameterSet(ShapeOnlyBackend.Instance, local);
                Live = new Parameter?[Meta.All.Count];
                long stage = 0;
                Pieces = Meta.All.Select(p =>
                {
                    long n = (p.Count + dataShards - 1) / dataShards;
                    stage = Math.Max(stage, n * dataShards);
                    long off = Math.Min(p.Count, dataRank * n);
                    var v = be.Allocate("slice." + p.Name, n);
                    var g = be.Allocate("grad.slice." + p.Name, n);
                    be.Fill(v, 0f, n);
                    be.Fill(g, 0f, n);
                    return new ParameterPiece(v, g, n, off, Math.Min(n, p.Count - off));
                }).ToArray();
                Stage = be.Allocate("gather_stage", stage);
                StageSlice = be.Allocate("gather_stage_slice", stage / dataShards);
            }
            var index = new Dictionary<Parameter, int>(ReferenceEqualityComparer.Instance);
            for (int i = 0; i < Meta.All.Count; i++) index[Meta.All[i]] = i;
            LayerIndices = Meta.Blocks.Select(b => new[] { b.Ln1, b.Ln2, b.Wq, b.Wk, b.Wv, b.Wo, b.WGate, b.WUp, b.WDown }
                                                  .OfType<Parameter>().Select(p => index[p]).ToArray()).ToArray();

            long n = max.N;
            A = new ModelActivations(be, local, max);
            Partial = be.Allocate("block_partial", n * max.D);
            RowStat = be.Allocate("row_stat", n);
            RowStat2 = be.Allocate("row_stat2", n);
        }

        public readonly IBackend Be;
        /// <summary>Rank index d·M + m in the mesh, and its data and model coordinates.</summary>
        public readonly int Index, DataRank, ModelRank;
        /// <summary>Persistent whole model-shard parameters; null when fully sharded.</summary>
        public readonly ParameterSet? Params;
        /// <summary>Names, shapes and order (the same as Params when not fully sharded).</summary>
        public readonly ParameterSet Meta;
        /// <summary>Parameters usable right now: always all of them, or the gathered units when fully sharded.</summary>
        public readonly Parameter?[] Live;
        public readonly ParameterPiece[] Pieces;
        public readonly int[][] LayerIndices;
        public readonly DeviceBuffer? Stage, StageSlice;
        /// <summary>The same per-pass buffers as a one-device model, at the rank's local shape.</summary>
        public readonly ModelActivations A;
        public readonly DeviceBuffer Partial, RowStat, RowStat2;   // (N,D) block output before the all-reduce; (N) ×2 for the logZ combination
        public DeviceBuffer[] Residual => A.Residual;
        public BackwardScratch S => A.Scratch;
        public DeviceBuffer Tokens => A.Tokens;
        public DeviceBuffer Targets => A.Targets;
        public DeviceBuffer Hf => A.Hf;
        public DeviceBuffer HfMean => A.HfMean;
        public DeviceBuffer HfRstd => A.HfRstd;
        public DeviceBuffer Logits => A.Logits;
        public DeviceBuffer TargetLogit => A.TargetLogit;
        public DeviceBuffer LogZ => A.LogZ;
        public float[] HostLogZ => A.HostLogZ;
        public float[] HostTargetLogit => A.HostTargetLogit;

        public ParameterPiece Piece(int i) => Pieces[i];
        public BlockActivations ActsFor(int layer) => A.For(layer);
        Parameter L(int i) => Live[i] ?? throw new InvalidOperationException($"parameter {Meta.All[i].Name} is not gathered");

        // Fully sharded: gathered tensors come from a workspace of buffer pairs kept by size and handed back
        // on release. Layers share shapes, so it stays at one layer plus the embedding and final norm, without
        // an allocation (and, on OpenCL, a queue drain) per tensor per step.
        readonly Dictionary<long, Stack<(DeviceBuffer Value, DeviceBuffer Grad)>> _workspace = [];

        public Parameter Gathered(Parameter shape)
        {
            if (_workspace.TryGetValue(shape.Count, out var free) && free.Count > 0)
            {
                var (v, g) = free.Pop();
                return new Parameter(shape, v, g);
            }
            var fresh = new Parameter(Be, "gathered." + shape.Name, shape.Rows, shape.Cols, shape.InitStd, shape.IsVector);
            return new Parameter(shape, fresh.Value, fresh.Grad);
        }

        public void Return(Parameter p)
        {
            if (!_workspace.TryGetValue(p.Count, out var free)) _workspace[p.Count] = free = new();
            free.Push((p.Value, p.Grad));
        }
        public Parameter Embedding => L(0);
        public Parameter FinalNorm => L(Live.Length - 1);

        public BlockParameters Block(int l)
        {
            var ix = LayerIndices[l];
            bool serial = ix.Length == 9;
            int k = 0;
            var ln1 = L(ix[k++]);
            var ln2 = serial ? L(ix[k++]) : null;
            return new BlockParameters(ln1, ln2, L(ix[k]), L(ix[k + 1]), L(ix[k + 2]), L(ix[k + 3]), L(ix[k + 4]), L(ix[k + 5]), L(ix[k + 6]));
        }

        public void Dispose()
        {
            foreach (var p in Pieces) { p.Value.Dispose(); p.Grad.Dispose(); }
            if (Params is null) foreach (var p in Live.OfType<Parameter>()) { p.Value.Dispose(); p.Grad.Dispose(); }
            foreach (var (v, g) in _workspace.Values.SelectMany(x => x)) { v.Dispose(); g.Dispose(); }
            Stage?.Dispose();
            StageSlice?.Dispose();
            A.Dispose();
            foreach (var b in new[] { Partial, RowStat, RowStat2 }) b.Dispose();
        }
    }
}

using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.Inference;
using Palm.Gpu.IO;
using Palm.Gpu.Model;
using Palm.Gpu.Training;

namespace Palm.Gpu.Sharding;

/// <summary>
/// The training engine: a <see cref="DeviceMesh"/> of D × M ranks (one device is 1 × 1), each running the same
/// <see cref="PalmModel"/> and <see cref="AdafactorOptimizer"/> code on its own thread, SPMD. One train step —
/// zero gradients → forward → backward (gradients synchronised) → global norm → Adafactor — is written once here
/// and used by the <see cref="Trainer"/>, `palm bench` and the tests. Checkpoints, resume, resharding and the spike
/// guard work on any mesh because the Trainer drives this through <see cref="ITrainingEngine"/>.
/// </summary>
public sealed class MeshTrainer : ITrainingEngine
{
    readonly bool _ownsMesh;
    readonly PalmModel[] _models;
    readonly AdafactorOptimizer[] _optimizers;

    /// <param name="batch">the most sequences of one step over the whole mesh (a multiple of the data axis).</param>
    /// <param name="optimizer">Adafactor's settings; null for a mesh that only scores (no optimizer state).</param>
    /// <param name="seed">PaLM's init from this seed; null leaves the weights zero for a <see cref="Load"/> or <see cref="LoadWeights"/> to fill.</param>
    /// <param name="shardWeights">fully sharded over the data axis (see <see cref="PalmModel"/>).</param>
    public MeshTrainer(DeviceMesh mesh, ModelConfig config, int batch, AdafactorConfig? optimizer, ulong? seed,
                       bool shardWeights = false, bool ownsMesh = false)
    {
        config.Validate();
        DeviceMesh.Validate(config, mesh.Data, mesh.Model, batch);
        MeshDevices = mesh;
        _ownsMesh = ownsMesh;
        Config = config;
        Batch = batch;
        // This process's ranks: all of the mesh, or its share when the mesh spans processes.
        _models = new PalmModel[mesh.Ranks.Count];
        _optimizers = new AdafactorOptimizer[mesh.Ranks.Count];
        try
        {
            // Each rank allocates and initialises on its own thread (OpenCL queues are driven by one thread at a time).
            Run(r =>
            {
                _models[r] = new PalmModel(mesh.Ranks[r], config, batch / mesh.Data, shardWeights);
                if (seed is { } s) _models[r].Initialize(s);
                if (optimizer is not null) _optimizers[r] = new AdafactorOptimizer(_models[r], optimizer);
            });
        }
        catch
        {
            DisposeRanks();
            throw;
        }
    }

    /// <summary>
    /// The engine for `palm train`: one device (<paramref name="mesh"/> null: --backend, --device, --threads) or a mesh
    /// "DxM", checked against the model and every batch of the schedule (and the device count) before allocating.
    /// </summary>
    public static MeshTrainer Create(ModelConfig config, TrainOptions options, BatchSchedule schedule, string? mesh, bool shardWeights, bool initialize = true)
    {
        var (data, model) = mesh is null ? (1, 1) : DeviceMesh.Parse(mesh);
        DeviceMesh.Validate(config, data, model, schedule.Max);
        foreach (int b in schedule.Sizes)
            if (b % data != 0)
                throw new ConfigException($"data axis {data} of mesh {data}x{model} does not divide the batch of {b} sequences in the schedule '{options.BatchSchedule}'; use batches that are multiples of {data}");
        if (options.Optimizer.Factored && (model > 1 || shardWeights))
            throw new ConfigException("factored Adafactor needs whole tensors; on a model axis > 1 or with --shard-weights train unfactored (PaLM's setting)");
        var devices = data * model == 1 && ProcessGroups.World is not { Count: > 1 }
            ? new DeviceMesh(1, 1, [BackendRegistry.Create(options.Backend, options.Device, options.Threads)], ownsDevices: true, options.Collectives)
            : DeviceMesh.Create(options.Backend, data, model, options.Threads > 0 ? Math.Max(1, options.Threads / (data * model / (ProcessGroups.World?.Count ?? 1))) : 0, options.Collectives);
        try { return new MeshTrainer(devices, config, schedule.Max, options.Optimizer, initialize ? options.Seed : null, shardWeights, ownsMesh: true); }
        catch
        {
            devices.Dispose();
            throw;
        }
    }

    public DeviceMesh MeshDevices { get; }
    public ModelConfig Config { get; }
    public int Batch { get; }
    public long Step { get; private set; }
    /// <summary>Rank r's model (rank order d·M + m).</summary>
    public IReadOnlyList<PalmModel> Models => _models;
    /// <summary>Rank r's optimizer.</summary>
    public IReadOnlyList<AdafactorOptimizer> Optimizers => _optimizers;

    /// <summary>Bytes of weights one device keeps between steps (its slice when fully sharded).</summary>
    public long WeightBytesPerDevice => _models[0].WeightBytes;
    /// <summary>Bytes of optimizer state one device keeps.</summary>
    public long StateBytesPerDevice => _optimizers[0]?.StateBytes ?? 0;

    void Run(Action<int> body) => MeshDevices.Runner.Run(body);

    AdafactorOptimizer Optimizer(int r) => _optimizers[r] ?? throw new InvalidOperationException("this mesh was built to score only (no optimizer)");

    // ---- the train step ---------------------------------------------------------------------------

    /// <summary>One optimizer step on a batch of <paramref name="batch"/> ≤ <see cref="Batch"/> sequences (inputs, targets (B,T)); returns the loss before the update and the gradient norm.</summary>
    public (LossResult Loss, double GradNorm) TrainStep(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets, int batch)
    {
        var (loss, norm) = ComputeGradients(inputs, targets, batch, 1f);
        ApplyUpdate(Step + 1, norm);
        return (loss, norm);
    }

    public (LossResult Loss, double GradNorm) TrainStep(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets) => TrainStep(inputs, targets, Batch);

    public (LossResult Loss, double GradNorm) ComputeGradients(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets, int batch, float lossScale)
    {
        var (x, y, local) = Split(inputs, targets, batch);
        var loss = new LossResult[_models.Length];
        var norm = new double[_models.Length];
        Run(r =>
        {
            var model = _models[r];
            int d = model.Rank.DataRank, n = local * Config.SeqLen;
            (loss[r], norm[r]) = Training.TrainStep.ComputeGradients(model, Optimizer(r), x.AsSpan(d * n, n), y.AsSpan(d * n, n), local, lossScale);
        });
        return (loss[0], norm[0]);
    }

    public void ApplyUpdate(long step, double gradNorm)
    {
        Run(r => Optimizer(r).Step(step, gradNorm));
        Step = step;
    }

    /// <summary>Forward only over the whole mesh; mean losses of the batch (the same on every rank).</summary>
    public LossResult Forward(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets, int batch)
    {
        var (x, y, local) = Split(inputs, targets, batch);
        var loss = new LossResult[_models.Length];
        Run(r =>
        {
            int d = _models[r].Rank.DataRank, n = local * Config.SeqLen;
            loss[r] = _models[r].Forward(x.AsSpan(d * n, n), y.AsSpan(d * n, n), local);
        });
        return loss[0];
    }

    /// <summary>Backward of the last <see cref="Forward"/> on every rank (gradients += and synchronised); for tests that count communication.</summary>
    public void Backward(float lossScale = 1f) => Run(r => _models[r].Backward(lossScale));

    /// <summary>Zeroes every rank's gradients.</summary>
    public void ZeroGradients() => Run(r => _models[r].ZeroGradients());

    /// <summary>Checks a global batch and hands the ranks host copies (data rank d takes sequences [d·B/P, (d+1)·B/P)).</summary>
    (int[] X, int[] Y, int Local) Split(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets, int batch)
    {
        if (batch < 1 || batch > Batch) throw new ArgumentOutOfRangeException(nameof(batch), $"batch {batch} is outside 1..{Batch}");
        if (batch % MeshDevices.Data != 0)
            throw new ConfigException($"data axis {MeshDevices.Data} does not divide the batch of {batch} sequences; use a batch that is a multiple of {MeshDevices.Data}");
        int T = Config.SeqLen;
        if (inputs.Length != batch * T || targets.Length != batch * T)
            throw new ArgumentException($"expected {batch * T} input and target tokens (batch {batch} × seq {T}), got {inputs.Length} and {targets.Length}");
        return (inputs.ToArray(), targets.ToArray(), batch / MeshDevices.Data);
    }

    // ---- ITrainingEngine ------------------------------------------------------------------------

    bool Single => MeshDevices.Size == 1;
    public string BackendName => MeshDevices.Devices[0].Name;
    public string DeviceDescription => Single
        ? MeshDevices.Devices[0].DeviceName
        : $"mesh {Mesh}{(ShardWeights ? " (fully sharded)" : "")} of {MeshDevices.Devices[0].DeviceName}{MeshDevices.Placement}, collectives via {MeshDevices.TransportDescription}";
    public string Mesh => $"{MeshDevices.Data}x{MeshDevices.Model}";
    public bool ShardWeights => _models[0].ShardWeights;
    public int DeviceCount => MeshDevices.Size;
    public long ParameterCount => ModelMath.Parameters(Config);

    /// <summary>
    /// The run's peak: one device's measured peak; on a mesh, one machine's where its devices share one (CPU logical
    /// devices), else one device's times their number.
    /// </summary>
    public double MeasurePeakGflops()
    {
        double mine = Single ? BackendRegistry.MeasurePeakGflops(MeshDevices.Devices[0]) : BackendRegistry.MeasureMeshPeakGflops(MeshDevices.Devices);
        if (MeshDevices.Processes is not { } processes) return mine;
        // Every process measures its own devices; the job's peak is their sum (the same figure on every process).
        var all = new double[processes.Count];
        processes.AllGather<double>([mine], all);
        return all.Sum();
    }

    public void Synchronize()
    {
        foreach (var d in MeshDevices.Devices) d.Synchronize();
    }

    /// <summary>Held-out loss on the mesh itself; batches are whole multiples of the data axis.</summary>
    public double Evaluate(PackedDataset data, bool heldOut, long maxSequences) =>
        Evaluator.MeanLoss((i, t, b) => Forward(i, t, b).CrossEntropy, Config.SeqLen, Batch, MeshDevices.Data, data, heldOut, maxSequences);

    /// <summary>
    /// The ranks whose pieces together hold one copy of every tensor: the model ranks of data index 0, or with sharded
    /// weights every rank (data slices). Replicas are not written twice.
    /// </summary>
    /// <remarks>Indices are this process's ranks; when the mesh spans processes each process lists the distinct pieces it holds.</remarks>
    public IEnumerable<int> DistinctShardRanks => Enumerable.Range(0, _models.Length).Where(k => ShardWeights || _models[k].Rank.DataRank == 0);

    public IReadOnlyList<CheckpointShard> SnapshotShards() => Single
        ? [new CheckpointShard("", _models[0].ExportWeights(), Optimizer(0).ExportState(flat: true))]
        : DistinctShardRanks.Select(k =>
        {
            var r = _models[k].Rank;
            return new CheckpointShard(CheckpointStore.TagFor(r.DataRank, r.ModelRank), _models[k].ExportWeights(), Optimizer(k).ExportState());
        }).ToList();

    public IReadOnlyDictionary<string, TensorLayout>? Layout
    {
        get
        {
            if (Single) return null;
            var layout = Optimizer(0).Layouts();
            for (int i = 0; i < _models[0].LocalSchema.Tensors.Count; i++) layout[_models[0].LocalSchema.Tensors[i].Name] = _models[0].LayoutOf(i);
            return layout;
        }
    }

    public void Load(IReadOnlyDictionary<string, NamedTensor> weights, IReadOnlyDictionary<string, NamedTensor> optimizerState, string source)
    {
        var full = new Dictionary<string, float[]>();
        var schema = _models[0].Schema.Tensors;
        foreach (var t in schema) full[t.Name] = CheckpointTensors.Get(weights, t.Name, t.Count, source);
        Run(r =>
        {
            _models[r].LoadWeights(full);
            Optimizer(r).LoadState(optimizerState, source);
        });
    }

    /// <summary>Loads full (unsharded) weights by name onto every rank.</summary>
    public void LoadWeights(IReadOnlyDictionary<string, float[]> full) => Run(r => _models[r].LoadWeights(full));

    /// <summary>Full tensors by name, joined on the host from one copy of every piece (as a checkpoint is).</summary>
    public Dictionary<string, float[]> GatherWeights()
    {
        if (Single) return _models[0].ExportWeights().ToDictionary(t => t.Name, t => t.Data);
        var pieces = DistinctShardRanks.ToDictionary(k => (_models[k].Rank.DataRank, _models[k].Rank.ModelRank),
                                                     k => (IReadOnlyDictionary<string, NamedTensor>)_models[k].ExportWeights().ToDictionary(t => t.Name));
        // Across processes every process sends the pieces it holds, and every process joins the same full tensors.
        if (MeshDevices.Processes is { } processes)
            foreach (var bytes in processes.AllGatherVariable(Mpi.PieceCodec.Encode(pieces)))
                foreach (var (key, tensors) in Mpi.PieceCodec.Decode(bytes)) pieces[key] = tensors;
        var layout = Enumerable.Range(0, _models[0].LocalSchema.Tensors.Count).ToDictionary(i => _models[0].LocalSchema.Tensors[i].Name, _models[0].LayoutOf);
        return ShardMath.Assemble(layout, MeshDevices.Model, ShardWeights ? MeshDevices.Data : 1, (d, m) => pieces[(d, m)], "the mesh")
                        .ToDictionary(kv => kv.Key, kv => kv.Value.Data);
    }

    /// <summary>Deterministic token batches for tests and benchmarks: uniform ids from SplitMix64(seed, step).</summary>
    public static (int[] Inputs, int[] Targets) SyntheticBatch(ModelConfig c, int batch, ulong seed, long step)
    {
        var rng = new SplitMix64(seed * 0x9E3779B97F4A7C15UL + (ulong)step + 7);
        int n = batch * c.SeqLen;
        var seq = new int[n + 1];
        for (int i = 0; i <= n; i++) seq[i] = (int)(rng.Next() % (ulong)c.Vocab);
        return (seq[..n], seq[1..]);
    }

    void DisposeRanks()
    {
        foreach (var o in _optimizers) o?.Dispose();
        foreach (var m in _models) m?.Dispose();
    }

    public void Dispose()
    {
        DisposeRanks();
        if (_ownsMesh) MeshDevices.Dispose();
    }
}

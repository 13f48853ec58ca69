using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.Inference;
using Palm.Gpu.IO;
using Palm.Gpu.Model;
using Palm.Gpu.Training;

namespace Palm.Gpu.Sharding;

/// <summary>
/// Trains a <see cref="ShardedPalm"/> over a mesh: forward → backward (gradients synchronised over the
/// mesh) → global norm → Adafactor. As an <see cref="ITrainingEngine"/> it is what the <see cref="Trainer"/>
/// drives for `palm train --mesh`, so checkpoints, resume, resharding and the spike guard work on meshes too.
/// </summary>
public sealed class MeshTrainer : ITrainingEngine
{
    readonly bool _ownsMesh;

    public MeshTrainer(DeviceMesh mesh, ModelConfig config, int batch, AdafactorConfig optimizer, ulong seed,
                       bool shardWeights = false, bool concurrent = true, bool ownsMesh = false)
    {
        MeshDevices = mesh;
        _ownsMesh = ownsMesh;
        Model = new ShardedPalm(mesh, config, batch, concurrent, shardWeights);
        try
        {
            Model.Initialize(seed);
            Optimizer = new ShardedAdafactor(Model, optimizer);
        }
        catch
        {
            Model.Dispose();
            throw;
        }
        Batch = batch;
    }

    /// <summary>
    /// The engine for `palm train --mesh DxM`: checks the mesh against the model and every batch of the schedule
    /// (and the device count) before allocating anything, then creates the devices and the sharded model.
    /// </summary>
    public static MeshTrainer Create(ModelConfig config, TrainOptions options, BatchSchedule schedule, string mesh, bool shardWeights)
    {
        var (data, model) = DeviceMesh.Parse(mesh);
        DeviceMesh.Validate(config, data, model, schedule.Max);
        foreach (int b in schedule.Sizes)
            if (b % data != 0)
                throw new ConfigException($"data axis {data} of mesh {data}x{model} does not divide the batch of {b} sequences in the schedule '{options.BatchSchedule}'; use batches that are multiples of {data}");
        if (options.Optimizer.Factored && (model > 1 || shardWeights))
            throw new ConfigException("factored Adafactor needs whole tensors; on a model axis > 1 or with --shard-weights train unfactored (PaLM's setting)");
        var devices = DeviceMesh.Create(options.Backend, data, model, options.Threads > 0 ? Math.Max(1, options.Threads / (data * model)) : 0, options.Collectives);
        try { return new MeshTrainer(devices, config, schedule.Max, options.Optimizer, options.Seed, shardWeights, ownsMesh: true); }
        catch
        {
            devices.Dispose();
            throw;
        }
    }

    public DeviceMesh MeshDevices { get; }
    public ShardedPalm Model { get; }
    public ShardedAdafactor Optimizer { get; }
    public int Batch { get; }
    public long Step { get; private set; }

    /// <summary>One optimizer step on the batch (inputs, targets (B,T)); returns the loss before the update and the gradient norm.</summary>
    public (LossResult Loss, double GradNorm) TrainStep(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets) => TrainStep(inputs, targets, Batch);

    /// <summary>One optimizer step on a batch of <paramref name="batch"/> ≤ <see cref="Batch"/> sequences (a multiple of the data axis).</summary>
    public (LossResult Loss, double GradNorm) TrainStep(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets, int batch)
    {
        var (loss, norm) = ComputeGradients(inputs, targets, batch, 1f);
        ApplyUpdate(Step + 1, norm);
        return (loss, norm);
    }

    // ---- ITrainingEngine ------------------------------------------------------------------------

    public string BackendName => MeshDevices.Devices[0].Name;
    public string DeviceDescription => $"mesh {Mesh}{(ShardWeights ? " (fully sharded)" : "")} of {MeshDevices.Devices[0].DeviceName}, collectives via {MeshDevices.TransportDescription}";
    public string Mesh => $"{MeshDevices.Data}x{MeshDevices.Model}";
    public bool ShardWeights => Model.ShardWeights;
    public int DeviceCount => MeshDevices.Size;
    public long ParameterCount => ModelMath.Parameters(Model.Config);

    /// <summary>The mesh's peak: one machine's where its devices share one (CPU logical devices), else one device's times their number.</summary>
    public double MeasurePeakGflops() => BackendRegistry.MeasureMeshPeakGflops(MeshDevices.Devices);

    public (LossResult Loss, double GradNorm) ComputeGradients(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets, int batch, float lossScale)
    {
        Model.ZeroGradients();
        var loss = Model.Forward(inputs, targets, batch);
        Model.Backward(lossScale);
        return (loss, Optimizer.GradientNorm());
    }

    public void ApplyUpdate(long step, double gradNorm)
    {
        Optimizer.Step(step, gradNorm);
        Step = step;
    }

    public void Synchronize()
    {
        foreach (var d in MeshDevices.Devices) d.Synchronize();
    }

    /// <summary>Held-out loss on the mesh itself; batches are whole multiples of the data axis.</summary>
    public double Evaluate(PackedDataset data, bool heldOut, long maxSequences) =>
        Evaluator.MeanLoss((i, t, b) => Model.Forward(i, t, b).CrossEntropy, Model.Config.SeqLen, Model.MaxBatch, MeshDevices.Data, data, heldOut, maxSequences);

    public IReadOnlyList<CheckpointShard> SnapshotShards() =>
        Model.DistinctShardRanks.Select(k =>
        {
            var r = Model.Ranks[k];
            return new CheckpointShard(CheckpointStore.TagFor(r.DataRank, r.ModelRank), Model.ExportWeights(k), Optimizer.ExportState(k));
        }).ToList();

    public IReadOnlyDictionary<string, TensorLayout>? Layout
    {
        get
        {
            var layout = Optimizer.Layouts();
            for (int i = 0; i < Model.ShardLayout.All.Count; i++) layout[Model.ShardLayout.All[i].Name] = Model.LayoutOf(i);
            return layout;
        }
    }

    public void Load(IReadOnlyDictionary<string, NamedTensor> weights, IReadOnlyDictionary<string, NamedTensor> optimizerState, string source)
    {
        var full = new Dictionary<string, float[]>();
        var all = Model.ShardLayout.All;
        for (int i = 0; i < all.Count; i++) full[all[i].Name] = CheckpointTensors.Get(weights, all[i].Name, Model.FullCount(i), source);
        Model.LoadWeights(full);
        Optimizer.LoadState(optimizerState, source);
    }

    public Dictionary<string, float[]> GatherWeights() => Model.GatherWeights();

    /// <summary>Deterministic token batches for tests and benchmarks: uniform ids from SplitMix64(seed, step).</summary>
    public static (int[] Inputs, int[] Targets) SyntheticBatch(ModelConfig c, int batch, ulong seed, long step)
    {
        var rng = new SplitMix64(seed * 0x9E3779B97F4A7C15UL + (ulong)step + 7);
        int n = batch * c.SeqLen;
        var seq = new int[n + 1];
        for (int i = 0; i <= n; i++) seq[i] = (int)(rng.Next() % (ulong)c.Vocab);
        return (seq[..n], seq[1..]);
    }

    public void Dispose()
    {
        Optimizer.Dispose();
        Model.Dispose();
        if (_ownsMesh) MeshDevices.Dispose();
    }
}

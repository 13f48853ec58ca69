using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.Inference;
using Palm.Gpu.IO;
using Palm.Gpu.Model;

namespace Palm.Gpu.Training;

/// <summary>
/// The devices, model and optimizer a <see cref="Trainer"/> steps: one device (<see cref="SingleDeviceEngine"/>)
/// or a data × model mesh (<see cref="Sharding.MeshTrainer"/>). The Trainer owns everything else — data order,
/// spike guard, checkpoints, rollbacks — so those work the same on any mesh.
///
/// Checkpoint contract: <see cref="SnapshotShards"/> returns what each device shard holds (its pieces of the
/// weights and of the optimizer state, under the full tensors' names); <see cref="Layout"/> says how pieces form
/// full tensors; <see cref="Load"/> takes full tensors and cuts them for this engine's own layout, which is what
/// makes loading onto a different mesh (resharding) the same code path as a plain resume.
/// </summary>
public interface ITrainingEngine : IDisposable
{
    /// <summary>Backend name ("cpu", "opencl").</summary>
    string BackendName { get; }
    /// <summary>The devices, for logs and config.json.</summary>
    string DeviceDescription { get; }
    /// <summary>"DxM": data × model devices ("1x1" on one device).</summary>
    string Mesh { get; }
    /// <summary>Weights, gradients and optimizer state sharded over the data axis.</summary>
    bool ShardWeights { get; }
    int DeviceCount { get; }
    long ParameterCount { get; }

    /// <summary>fp32 peak of all devices together, in GFLOP/s (measured).</summary>
    double MeasurePeakGflops();

    /// <summary>Zeroes gradients, runs forward and backward of (inputs, targets) (batch, T) with the loss gradient scaled by lossScale; returns the loss and the global gradient norm.</summary>
    (LossResult Loss, double GradNorm) ComputeGradients(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets, int batch, float lossScale);

    /// <summary>Adafactor step k (1-based) with the gradients of the last <see cref="ComputeGradients"/>.</summary>
    void ApplyUpdate(long step, double gradNorm);

    void Synchronize();

    /// <summary>Mean cross-entropy over up to maxSequences of the train or held-out split.</summary>
    double Evaluate(PackedDataset data, bool heldOut, long maxSequences);

    /// <summary>Host copies of every device shard's weights and optimizer state (taken between steps).</summary>
    IReadOnlyList<CheckpointShard> SnapshotShards();

    /// <summary>How the pieces of <see cref="SnapshotShards"/> form full tensors; null when each shard holds whole tensors.</summary>
    IReadOnlyDictionary<string, TensorLayout>? Layout { get; }

    /// <summary>Loads full tensors (weights and optimizer state by name) into this engine's layout. <paramref name="source"/> names them in errors.</summary>
    void Load(IReadOnlyDictionary<string, NamedTensor> weights, IReadOnlyDictionary<string, NamedTensor> optimizerState, string source);

    /// <summary>Full weights by name (what model.safetensors holds).</summary>
    Dictionary<string, float[]> GatherWeights();
}

/// <summary>One device: a <see cref="PalmModel"/> and its <see cref="AdafactorOptimizer"/> on one backend.</summary>
public sealed class SingleDeviceEngine : ITrainingEngine
{
    public SingleDeviceEngine(IBackend backend, ModelConfig config, int maxBatch, AdafactorConfig optimizer, ulong seed)
    {
        Backend = backend;
        try
        {
            Model = new PalmModel(backend, config, maxBatch);
            Model.Parameters.Initialize(backend, seed);
            Optimizer = new AdafactorOptimizer(backend, Model.Parameters, optimizer);
        }
        catch
        {
            Model?.Dispose();
            backend.Dispose();
            throw;
        }
    }

    public IBackend Backend { get; }
    public PalmModel Model { get; }
    public AdafactorOptimizer Optimizer { get; }
    public string BackendName => Backend.Name;
    public string DeviceDescription => Backend.DeviceName;
    public string Mesh => "1x1";
    public bool ShardWeights => false;
    public int DeviceCount => 1;
    public long ParameterCount => Model.Parameters.Count;
    public IReadOnlyDictionary<string, TensorLayout>? Layout => null;

    public double MeasurePeakGflops() => BackendRegistry.MeasurePeakGflops(Backend);

    public (LossResult Loss, double GradNorm) ComputeGradients(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets, int batch, float lossScale)
    {
        Model.Parameters.ZeroGradients(Backend);
        var loss = Model.Forward(inputs, targets, batch);
        Model.Backward(lossScale);
        return (loss, Optimizer.GradientNorm());
    }

    public void ApplyUpdate(long step, double gradNorm) => Optimizer.Step(step, gradNorm);
    public void Synchronize() => Backend.Synchronize();
    public double Evaluate(PackedDataset data, bool heldOut, long maxSequences) => Evaluator.MeanLoss(Model, data, heldOut, maxSequences);

    public IReadOnlyList<CheckpointShard> SnapshotShards() =>
    [
        new CheckpointShard("",
            Model.Parameters.All.Select(p => new NamedTensor(p.Name, p.Shape.Select(x => (long)x).ToArray(), Backend.ToHost(p.Value))).ToList(),
            Optimizer.StateBuffers.Select(b => new NamedTensor(b.Name, [b.Length], Backend.ToHost(b))).ToList()),
    ];

    public void Load(IReadOnlyDictionary<string, NamedTensor> weights, IReadOnlyDictionary<string, NamedTensor> optimizerState, string source)
    {
        foreach (var p in Model.Parameters.All) Backend.Upload(p.Value, CheckpointTensors.Get(weights, p.Name, p.Count, source));
        foreach (var b in Optimizer.StateBuffers) Backend.Upload(b, CheckpointTensors.Get(optimizerState, b.Name, b.Length, source));
    }

    public Dictionary<string, float[]> GatherWeights() => Model.Parameters.All.ToDictionary(p => p.Name, p => Backend.ToHost(p.Value));

    public void Dispose()
    {
        Optimizer.Dispose();
        Model.Dispose();
        Backend.Dispose();
    }
}

/// <summary>Looking up checkpoint tensors with a message that says what is wrong.</summary>
public static class CheckpointTensors
{
    public static float[] Get(IReadOnlyDictionary<string, NamedTensor> tensors, string name, long count, string source)
    {
        if (!tensors.TryGetValue(name, out var t) || t.Data.LongLength != count)
            throw new InvalidDataException($"checkpoint '{source}' lacks tensor '{name}' of {count} values; it was written by an incompatible configuration (e.g. factored vs unfactored Adafactor)");
        return t.Data;
    }
}

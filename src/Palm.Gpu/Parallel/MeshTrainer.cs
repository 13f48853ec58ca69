using Palm.Gpu.Data;
using Palm.Gpu.Model;
using Palm.Gpu.Training;

namespace Palm.Gpu.Sharding;

/// <summary>
/// Trains a <see cref="ShardedPalm"/> over a mesh: forward → backward (gradients synchronised over the
/// mesh) → global norm → Adafactor. Batches come from a caller-supplied source, so a mesh run and a
/// single-device run can see exactly the same tokens.
/// </summary>
public sealed class MeshTrainer : IDisposable
{
    public MeshTrainer(DeviceMesh mesh, ModelConfig config, int batch, AdafactorConfig optimizer, ulong seed,
                       bool shardWeights = false, bool concurrent = true)
    {
        Model = new ShardedPalm(mesh, config, batch, concurrent, shardWeights);
        Model.Initialize(seed);
        Optimizer = new ShardedAdafactor(Model, optimizer);
        Batch = batch;
    }

    public ShardedPalm Model { get; }
    public ShardedAdafactor Optimizer { get; }
    public int Batch { get; }
    public long Step { get; private set; }

    /// <summary>One optimizer step on the batch (inputs, targets (B,T)); returns the loss before the update and the gradient norm.</summary>
    public (LossResult Loss, double GradNorm) TrainStep(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets) => TrainStep(inputs, targets, Batch);

    /// <summary>One optimizer step on a batch of <paramref name="batch"/> ≤ <see cref="Batch"/> sequences (a multiple of the data axis).</summary>
    public (LossResult Loss, double GradNorm) TrainStep(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets, int batch)
    {
        Model.ZeroGradients();
        var loss = Model.Forward(inputs, targets, batch);
        Model.Backward();
        double norm = Optimizer.GradientNorm();
        Optimizer.Step(Step + 1, norm);
        Step++;
        return (loss, norm);
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

    public void Dispose()
    {
        Optimizer.Dispose();
        Model.Dispose();
    }
}

using Palm.Gpu.IO;
using Palm.Gpu.Model;
using Palm.Gpu.Sharding;
using Palm.Gpu.Training;

namespace Palm.Gpu.Tests.Support;

/// <summary>A trainer's full weights and optimizer state as flat host arrays, on one device or a mesh, for exact comparisons.</summary>
public static class TrainerState
{
    /// <summary>Every parameter, full tensors in the model's parameter order.</summary>
    public static float[] Weights(Trainer t)
    {
        var gathered = t.Engine.GatherWeights();
        return ParameterSchema.For(t.Config).Tensors.SelectMany(p => gathered[p.Name]).ToArray();
    }

    /// <summary>Weights, then every optimizer-state tensor as full tensors (assembled from a snapshot's shards), by name.</summary>
    public static float[] WeightsAndOptimizer(Trainer t) => Weights(t).Concat(OptimizerState(t).OrderBy(kv => kv.Key, StringComparer.Ordinal).SelectMany(kv => kv.Value)).ToArray();

    /// <summary>Full optimizer-state tensors by name, through the checkpoint writer and reader (so any mesh compares with any other).</summary>
    public static Dictionary<string, float[]> OptimizerState(Trainer t)
    {
        string dir = Path.Combine(CliRunner.TempDir(), "snapshot");
        var store = new CheckpointStore(dir);
        store.Save(t.Snapshot());
        var loaded = CheckpointStore.Load(store.List()[0].Path);
        Directory.Delete(dir, recursive: true);
        return loaded.OptimizerState.ToDictionary(kv => kv.Key, kv => kv.Value.Data);
    }
}

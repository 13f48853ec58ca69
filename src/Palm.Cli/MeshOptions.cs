using System.CommandLine;
using Palm.Gpu.Model;
using Palm.Gpu.Sharding;

namespace Palm.Cli;

/// <summary>--mesh DxM, --shard-weights and --collectives, and the per-device report `palm plan --mesh` prints.</summary>
internal sealed class MeshOptions
{
    public readonly Option<string?> Mesh = new("--mesh") { Description = "DxM devices: D data-parallel × M model-parallel (tensor-parallel heads, MLP width and vocabulary)" };
    public readonly Option<bool> ShardWeights = new("--shard-weights") { Description = "fully shard weights, gradients and optimizer state over the data axis (gathered just before use)" };

    public readonly Option<string?> Collectives = new("--collectives")
    {
        Description = "how collectives move data: auto (device-side copies when the mesh's OpenCL devices share one context, else host), " +
                      "host (download, combine on the host, upload) or device",
    };

    public IEnumerable<Option> All => [Mesh, ShardWeights, Collectives];

    /// <summary>--collectives as a transport (Auto when not given).</summary>
    public CollectiveTransport Transport(ParseResult r) => r.GetValue(Collectives)?.ToLowerInvariant() switch
    {
        null or "auto" => CollectiveTransport.Auto,
        "host" => CollectiveTransport.Host,
        "device" => CollectiveTransport.Device,
        var other => throw new ConfigException($"--collectives takes auto, host or device; got '{other}'"),
    };

    /// <summary>(data, model) from --mesh, or null when not given; --shard-weights without --mesh is an error.</summary>
    public (int Data, int Model)? Parse(ParseResult r)
    {
        var spec = r.GetValue(Mesh);
        if (spec is null)
        {
            if (r.GetValue(ShardWeights)) throw new ConfigException("--shard-weights needs --mesh DxM (it shards over the data axis D)");
            if (r.GetValue(Collectives) is not null) throw new ConfigException("--collectives needs --mesh DxM (collectives run between the mesh's devices)");
            return null;
        }
        Transport(r);   // a bad --collectives fails here, before anything is built
        return DeviceMesh.Parse(spec);
    }

    public static void PrintPlan(ModelConfig c, int data, int model, bool shard, int batch)
    {
        var p = MeshPlan.Of(c, data, model, shard, batch, rematerialize: true);
        var full = MeshPlan.Of(c, data, model, shard, batch, rematerialize: false);
        Console.WriteLine();
        Console.WriteLine($"mesh {data}x{model} ({data * model} devices: {data} data × {model} model), {(shard ? "fully sharded weights" : "replicated over the data axis")}, {batch} sequence(s) per data rank (global batch {batch * data}):");
        int vocab = MeshPlan.PaddedVocab(c.Vocab, model);
        if (vocab != c.Vocab)
            Console.WriteLine($"  vocab {c.Vocab} padded to {vocab} rows (a multiple of {model}) so it splits over the model axis; the {vocab - c.Vocab} extra rows are never targets");
        Console.WriteLine($"  per model rank: heads {c.Heads / model} of {c.Heads}, d_ff {c.DFf / model} of {c.DFf}, vocab {vocab / model} of {vocab}, K/V head {(c.KvHeads == 1 ? "replicated" : "split")}; {p.ParametersPerModelShard:N0} parameters per model shard");
        Console.WriteLine($"memory per device (fp32):");
        string div = shard ? $" ÷ {data}" : "";
        Row("weights", p.WeightBytes, $"4 B × {p.ParametersPerModelShard:N0}{div}");
        Row("gradients", p.GradientBytes, $"4 B × {p.ParametersPerModelShard:N0}{div}");
        Row("Adafactor (unfactored)", p.OptimizerBytes, $"8 B × {p.ParametersPerModelShard:N0}{div}");
        if (shard) Row("gather workspace", p.WorkspaceBytes, "largest gathered unit (a layer or the embedding shard), values + gradients, + staging");
        Row("activations", full.ActivationBytes, "per-rank shape, all layers stored");
        Row("activations (remat)", p.ActivationBytes, "block inputs only + one layer's internals");
        Row("total", full.TotalBytes, "with stored activations");
        Row("total (remat)", p.TotalBytes, "with rematerialisation");
        Console.WriteLine($"communication per device per step (ring collectives):");
        Row("model axis, forward", p.ModelAxisForwardBytes, $"{p.AllReducesPerLayerForward} all-reduce(s) of N·D per layer + embedding + softmax max/sum/target");
        Row("model axis, backward", p.ModelAxisBackwardBytes, $"{p.AllReducesPerLayerForward} all-reduce(s) of N·D per layer + head{(c.KvHeads == 1 && model > 1 ? " + K/V-head gradients" : "")}");
        Row("data axis", p.DataAxisBytes, shard ? "all-gather weights (forward, backward) + reduce-scatter gradients" : "all-reduce of the gradients");
        Row("total", p.CommunicationBytes, "");
    }

    static void Row(string name, long bytes, string how) =>
        Console.WriteLine($"  {name,-24}{PlanCommand.Human(bytes),12}   {how}");
}

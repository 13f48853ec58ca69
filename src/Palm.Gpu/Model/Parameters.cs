using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Model;

/// <summary>How a parameter is laid out over the model axis of a mesh.</summary>
public enum ShardAxis
{
    /// <summary>Every model rank holds the whole tensor (layer norms; the shared K/V head of multi-query attention).</summary>
    Replicated,
    /// <summary>Rank m holds rows [m·R/M, (m+1)·R/M): the embedding (by vocabulary), Wo (by heads), Wdown (by MLP width).</summary>
    Rows,
    /// <summary>Rank m holds columns [m·C/M, (m+1)·C/M): Wq (by heads), Wgate and Wup (by MLP width); Wk, Wv when multi-head.</summary>
    Cols,
}

/// <summary>
/// One trainable tensor without storage: name, row-major shape (Rows, Cols) — dense kernels as (fan_in, fan_out)
/// so that y = x·W, the embedding as (V, D), layer-norm scales as (1, D) — init, and how it splits over the model axis.
/// </summary>
/// <param name="InitStd">standard deviation of the normal init; 0 means "ones" (layer-norm scales).</param>
/// <param name="IsVector">1-D tensors (layer-norm scales): shape (Cols), never factored by Adafactor.</param>
/// <param name="PartialOverModel">
/// replicated on the model axis but each model rank computes only part of its gradient (the shared K/V head of
/// multi-query attention: each rank's query heads contribute), so its gradient is summed over the model group.
/// </param>
public sealed record TensorSpec(string Name, int Rows, int Cols, float InitStd, bool IsVector, ShardAxis Axis, bool PartialOverModel)
{
    public long Count => (long)Rows * Cols;
    public int[] Shape => IsVector ? [Cols] : [Rows, Cols];

    /// <summary>The piece one of <paramref name="modelRanks"/> model ranks holds.</summary>
    public TensorSpec Shard(int modelRanks) => Axis switch
    {
        ShardAxis.Rows => this with { Rows = Rows / modelRanks },
        ShardAxis.Cols => this with { Cols = Cols / modelRanks },
        _ => this,
    };
}

/// <summary>
/// Every parameter of a model configuration, in a fixed order (the order of checkpoints, optimizer state and
/// gradient-norm reduction), without storage: what `plan`, checkpoints and sharded ranks need to know about the
/// tensors. Names are the safetensors tensor names documented in the README.
///
///   embedding (V,D) · per layer: ln (D) | ln1, ln2 (D), attn.wq (D,HK), attn.wk, attn.wv (D,GK), attn.wo (HK,D),
///   mlp.w_gate, mlp.w_up (D,F), mlp.w_down (F,D) · ln_f (D)
/// </summary>
public sealed class ParameterSchema
{
    readonly List<TensorSpec> _tensors;

    ParameterSchema(List<TensorSpec> tensors, int[][] layers)
    {
        _tensors = tensors;
        LayerIndices = layers;
    }

    /// <summary>The full (unsharded) model.</summary>
    public static ParameterSchema For(ModelConfig c)
    {
        int d = c.DModel, hk = c.Heads * c.HeadDim, gk = c.KvHeads * c.HeadDim, f = c.DFf;
        bool splitKv = c.KvHeads > 1;   // multi-head: K/V heads follow the query heads
        var all = new List<TensorSpec>();
        var layers = new List<int[]>();
        int Add(string name, int rows, int cols, float std, bool vector, ShardAxis axis, bool partial = false)
        {
            all.Add(new TensorSpec(name, rows, cols, std, vector, axis, partial));
            return all.Count - 1;
        }
        // PaLM: embeddings N(0, 1), dense kernels N(0, 1/fan_in), layer-norm scales ones.
        int Kernel(string name, int fanIn, int fanOut, ShardAxis axis, bool partial = false) =>
            Add(name, fanIn, fanOut, 1f / MathF.Sqrt(fanIn), false, axis, partial);
        int Norm(string name) => Add(name, 1, d, 0f, true, ShardAxis.Replicated);

        Add("embedding", c.Vocab, d, 1f, false, ShardAxis.Rows);
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"layers.{l}.";
            var ix = new List<int> { Norm(p + (c.Block == BlockKind.Parallel ? "ln.weight" : "ln1.weight")) };
            if (c.Block == BlockKind.Serial) ix.Add(Norm(p + "ln2.weight"));
            var kv = splitKv ? ShardAxis.Cols : ShardAxis.Replicated;
            ix.Add(Kernel(p + "attn.wq", d, hk, ShardAxis.Cols));
            ix.Add(Kernel(p + "attn.wk", d, gk, kv, partial: !splitKv));
            ix.Add(Kernel(p + "attn.wv", d, gk, kv, partial: !splitKv));
            ix.Add(Kernel(p + "attn.wo", hk, d, ShardAxis.Rows));
            ix.Add(Kernel(p + "mlp.w_gate", d, f, ShardAxis.Cols));
            ix.Add(Kernel(p + "mlp.w_up", d, f, ShardAxis.Cols));
            ix.Add(Kernel(p + "mlp.w_down", f, d, ShardAxis.Rows));
            layers.Add(ix.ToArray());
        }
        Norm("ln_f.weight");
        return new ParameterSchema(all, layers.ToArray());
    }

    /// <summary>One model rank's shard of every tensor (same names, order and layer indices).</summary>
    public ParameterSchema Shard(int modelRanks) =>
        modelRanks == 1 ? this : new ParameterSchema(_tensors.Select(t => t.Shard(modelRanks)).ToList(), LayerIndices);

    public IReadOnlyList<TensorSpec> Tensors => _tensors;
    public const int EmbeddingIndex = 0;
    public int FinalNormIndex => _tensors.Count - 1;
    /// <summary>LayerIndices[l]: tensor indices of block l, in the order ln1, [ln2], wq, wk, wv, wo, gate, up, down.</summary>
    public int[][] LayerIndices { get; }
    public long Count => _tensors.Sum(t => t.Count);

    public int IndexOf(string name)
    {
        for (int i = 0; i < _tensors.Count; i++) if (_tensors[i].Name == name) return i;
        throw new KeyNotFoundException($"no parameter named '{name}'");
    }

    /// <summary>
    /// PaLM's init of full tensor <paramref name="index"/>, reproducible from the seed: each tensor draws from its own
    /// SplitMix64 stream keyed by (seed, tensor index), so adding a tensor never changes the others, and every rank of a
    /// mesh can draw the full tensor and keep its piece.
    /// </summary>
    public float[] InitialValues(int index, ulong seed)
    {
        var p = _tensors[index];
        var host = new float[p.Count];
        if (p.InitStd == 0) { Array.Fill(host, 1f); return host; }
        var rng = new SplitMix64(seed * 0x100000001B3UL + (ulong)index * 0x9E3779B97F4A7C15UL + 1);
        for (long j = 0; j < host.Length; j += 2)
        {
            // Box–Muller: two normals per pair of uniforms.
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            double r = Math.Sqrt(-2 * Math.Log(u1));
            host[j] = (float)(r * Math.Cos(2 * Math.PI * u2) * p.InitStd);
            if (j + 1 < host.Length) host[j + 1] = (float)(r * Math.Sin(2 * Math.PI * u2) * p.InitStd);
        }
        return host;
    }
}

/// <summary>A tensor usable by kernels right now: its spec (one rank's shard shape) and its value and gradient buffers.</summary>
public sealed class Parameter(TensorSpec spec, DeviceBuffer value, DeviceBuffer grad)
{
    public TensorSpec Spec { get; } = spec;
    public string Name => Spec.Name;
    public int Rows => Spec.Rows;
    public int Cols => Spec.Cols;
    public bool IsVector => Spec.IsVector;
    public long Count => Spec.Count;
    public int[] Shape => Spec.Shape;
    public DeviceBuffer Value { get; } = value;
    public DeviceBuffer Grad { get; } = grad;
}

/// <summary>Weights of one Transformer block. Ln2 exists only for serial blocks.</summary>
public sealed record BlockParameters(
    Parameter Ln1, Parameter? Ln2,
    Parameter Wq, Parameter Wk, Parameter Wv, Parameter Wo,
    Parameter WGate, Parameter WUp, Parameter WDown)
{
    /// <summary>Block l's parameters from tensors looked up by schema index (ln1, [ln2], wq, wk, wv, wo, gate, up, down).</summary>
    public static BlockParameters From(int[] ix, Func<int, Parameter> get)
    {
        int k = 0;
        var ln1 = get(ix[k++]);
        var ln2 = ix.Length == 9 ? get(ix[k++]) : null;
        return new BlockParameters(ln1, ln2, get(ix[k]), get(ix[k + 1]), get(ix[k + 2]), get(ix[k + 3]), get(ix[k + 4]), get(ix[k + 5]), get(ix[k + 6]));
    }
}

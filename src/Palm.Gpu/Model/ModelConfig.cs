using System.Text.Json.Serialization;

namespace Palm.Gpu.Model;

/// <summary>Parallel (PaLM) or serial (GPT) formulation of a Transformer block.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<BlockKind>))]
public enum BlockKind
{
    /// <summary>y = x + Attn(LN(x)) + MLP(LN(x)) — one layer norm, one all-reduce when model-parallel.</summary>
    Parallel,
    /// <summary>x' = x + Attn(LN1(x)); y = x' + MLP(LN2(x')).</summary>
    Serial,
}

/// <summary>Multi-query (one shared K/V head, PaLM) or multi-head (one K/V head per query head).</summary>
[JsonConverter(typeof(JsonStringEnumConverter<AttentionKind>))]
public enum AttentionKind { MultiQuery, MultiHead }

/// <summary>The shape of a PaLM model. Every field is recorded in a run's config.json.</summary>
public sealed record ModelConfig
{
    public int Vocab { get; init; } = 8192;           // V: vocabulary size (rows of the shared embedding)
    public int DModel { get; init; } = 512;           // D: width of the residual stream
    public int Layers { get; init; } = 4;             // L: number of Transformer blocks
    public int Heads { get; init; } = 8;              // H: query heads
    public int HeadDim { get; init; } = 64;           // K: width of one head (H·K need not equal D: PaLM 540B has 48·256 ≠ 18432)
    public int DFf { get; init; } = 2048;             // F: SwiGLU hidden width (PaLM: 4·D)
    public int SeqLen { get; init; } = 512;           // T: training sequence length
    public BlockKind Block { get; init; } = BlockKind.Parallel;              // parallel (PaLM) or serial blocks
    public AttentionKind Attention { get; init; } = AttentionKind.MultiQuery; // multi-query (PaLM) or multi-head
    public bool Rematerialize { get; init; }           // recompute block internals in backward instead of storing them
    public float ZLoss { get; init; } = 1e-4f;         // weight of the auxiliary loss z·log²Z keeping the softmax normaliser near 1

    /// <summary>G: key/value heads (1 for multi-query).</summary>
    [JsonIgnore] public int KvHeads => Attention == AttentionKind.MultiQuery ? 1 : Heads;

    /// <summary>Throws <see cref="ConfigException"/> naming the first inconsistent field and how to fix it.</summary>
    public ModelConfig Validate()
    {
        Positive(Vocab, "vocab"); Positive(DModel, "d_model"); Positive(Layers, "layers"); Positive(Heads, "heads");
        Positive(HeadDim, "head_dim"); Positive(DFf, "d_ff"); Positive(SeqLen, "seq");
        if (HeadDim % 2 != 0)
            throw new ConfigException($"head_dim {HeadDim} is odd; RoPE rotates pairs of dimensions, so head_dim must be even");
        // Nothing ties heads to d_model: the projections are (D, H·K) and (H·K, D), so H·K need not equal D.
        if (ZLoss < 0 || !float.IsFinite(ZLoss)) throw new ConfigException($"z_loss must be a finite number ≥ 0, got {ZLoss}");
        return this;

        static void Positive(int v, string name)
        {
            if (v <= 0) throw new ConfigException($"{name} must be a positive integer, got {v}");
        }
    }

    public static readonly IReadOnlyDictionary<string, ModelConfig> Presets = new Dictionary<string, ModelConfig>
    {
        // Tests: every dimension small and distinct so transposition mistakes show up.
        ["tiny"] = new() { Vocab = 64, DModel = 32, Layers = 2, Heads = 4, HeadDim = 8, DFf = 128, SeqLen = 32 },
        ["small"] = new() { Vocab = 8192, DModel = 512, Layers = 4, Heads = 8, HeadDim = 64, DFf = 2048, SeqLen = 512 },
        // The paper's shapes (PaLM Table 1); vocabulary 256k, sequence 2048, d_ff = 4·d_model.
        ["palm-8b"] = new() { Vocab = 256_000, DModel = 4096, Layers = 32, Heads = 16, HeadDim = 256, DFf = 16384, SeqLen = 2048 },
        ["palm-62b"] = new() { Vocab = 256_000, DModel = 8192, Layers = 64, Heads = 32, HeadDim = 256, DFf = 32768, SeqLen = 2048 },
        ["palm-540b"] = new() { Vocab = 256_000, DModel = 18432, Layers = 118, Heads = 48, HeadDim = 256, DFf = 73728, SeqLen = 2048 },
    };

    public static ModelConfig Preset(string name) =>
        Presets.TryGetValue(name, out var c) ? c
        : throw new ConfigException($"unknown preset '{name}'; choose one of: {string.Join(", ", Presets.Keys)}");
}

/// <summary>An invalid model or training configuration; the message is meant for the user.</summary>
public sealed class ConfigException(string message) : Exception(message);

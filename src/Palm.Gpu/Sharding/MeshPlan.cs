using Palm.Gpu.Model;

namespace Palm.Gpu.Sharding;

/// <summary>
/// Per-device memory and per-step communication of a PaLM configuration on a P×M mesh, computed
/// analytically (no allocation) for `palm plan --mesh`. Legend: P data ranks, M model ranks, b sequences
/// per data rank, N = b·T rows per device, Pm parameters per model shard.
///
///   weights, gradients, Adafactor   Pm floats each (state 2·Pm: momentum + unfactored second moment), ÷P when fully sharded
///   gather workspace                fully sharded only: the largest gathered unit (one layer or the embedding shard), values + gradients
///   activations                     ModelMath.ActivationBytes of the per-rank shape (heads, d_ff, vocab ÷ M), batch b
///   model axis (ring all-reduce, 2·(M−1)/M of the data per rank):
///     forward   (1 parallel | 2 serial)·L + 1 (embedding) all-reduces of N·D, plus 3 of N (vocab-parallel softmax)
///     backward  (1 | 2)·L + 1 (head) all-reduces of N·D, plus 2·L of D·G·K (gradients of the replicated K/V head)
///   data axis
///     replicated     all-reduce of every gradient: 2·(P−1)/P · 4·Pm
///     fully sharded  all-gather of the weights in forward and again in backward, reduce-scatter of the gradients:
///                    3·(P−1)/P · 4·(Pm + Vl·D), the embedding shard moving twice each way (lookup and logits)
/// </summary>
public sealed record MeshPlan(
    ModelConfig Config, int Data, int Model, bool ShardWeights, int BatchPerDataRank, bool Rematerialize,
    long ParametersPerModelShard, long WeightBytes, long GradientBytes, long OptimizerBytes, long WorkspaceBytes, long ActivationBytes,
    long ModelAxisForwardBytes, long ModelAxisBackwardBytes, long DataAxisBytes, int AllReducesPerLayerForward)
{
    public long TotalBytes => WeightBytes + GradientBytes + OptimizerBytes + WorkspaceBytes + ActivationBytes;
    public long CommunicationBytes => ModelAxisForwardBytes + ModelAxisBackwardBytes + DataAxisBytes;

    /// <summary>
    /// The plan of <paramref name="c"/> on a data × model mesh. A vocabulary the model axis does not divide is
    /// planned padded up to a multiple of M (as Megatron does; the extra rows are never targets):
    /// see <see cref="PaddedVocab"/>. Heads and d_ff must divide.
    /// </summary>
    public static MeshPlan Of(ModelConfig c, int data, int model, bool shardWeights, int batchPerDataRank, bool rematerialize)
    {
        c = c with { Vocab = PaddedVocab(c.Vocab, model) };
        DeviceMesh.Validate(c, data, model, batchPerDataRank * data);
        var local = LocalShape(c, model);
        long pm = ModelShardParameters(c, model);
        long perDevice = shardWeights ? (pm + data - 1) / data : pm;
        long d = c.DModel, gk = (long)c.KvHeads * c.HeadDim;
        long perLayerShard = ModelShardParameters(c with { Layers = 1 }, model) - (long)local.Vocab * d - 2 * d - (c.Block == BlockKind.Serial ? d : 0);
        long embeddingShard = (long)local.Vocab * d;
        // Gathered values + gradients of the largest unit, plus the staging buffer of the largest tensor (and its slice).
        long largestTensor = Math.Max(embeddingShard, d * Math.Max(local.DFf, (long)local.Heads * c.HeadDim));
        long workspace = shardWeights && data > 1
            ? 2 * 4 * Math.Max(perLayerShard + d * (c.Block == BlockKind.Serial ? 2 : 1), embeddingShard) + 4 * (largestTensor + largestTensor / data)
            : 0;
        long act = ModelMath.ActivationBytes(local, batchPerDataRank, rematerialize);

        long n = (long)batchPerDataRank * c.SeqLen;
        int perLayer = c.Block == BlockKind.Serial ? 2 : 1;
        double ring = model > 1 ? 2.0 * (model - 1) / model : 0;
        bool kvPartial = c.KvHeads == 1 && model > 1;
        long fwd = (long)(ring * 4 * ((perLayer * c.Layers + 1) * n * d + 3 * n));
        long bwd = (long)(ring * 4 * ((perLayer * c.Layers + 1) * n * d + (kvPartial ? 2L * c.Layers * d * gk : 0)));
        double share = data > 1 ? (double)(data - 1) / data : 0;
        // Fully sharded: every tensor is gathered in forward and in backward and its gradient reduce-scattered; the
        // embedding is used twice (lookup and logits) each way, so it moves twice.
        long dataBytes = (long)(shardWeights ? 3 * share * 4 * (pm + embeddingShard) : 2 * share * 4 * pm);
        return new MeshPlan(c, data, model, shardWeights, batchPerDataRank, rematerialize, pm,
                            4 * perDevice, 4 * perDevice, 8 * perDevice, workspace, act, fwd, bwd, dataBytes, perLayer);
    }

    /// <summary>The vocabulary rounded up to a multiple of the model axis.</summary>
    public static int PaddedVocab(int vocab, int model) => (vocab + model - 1) / model * model;

    /// <summary>The shape one model rank computes: query heads, MLP width and vocabulary divided by M (K/V heads too when multi-head).</summary>
    public static ModelConfig LocalShape(ModelConfig c, int model) =>
        c with { Heads = c.Heads / model, DFf = c.DFf / model, Vocab = c.Vocab / model };

    /// <summary>Parameters one model rank holds: split tensors ÷ M, the replicated K/V head (multi-query) and layer norms whole.</summary>
    public static long ModelShardParameters(ModelConfig c, int model)
    {
        long d = c.DModel, hk = (long)c.Heads * c.HeadDim / model, f = c.DFf / model;
        long gk = c.KvHeads == 1 ? c.HeadDim : (long)c.KvHeads * c.HeadDim / model;
        long perLayer = d * hk + 2 * d * gk + hk * d + 3 * d * f + d * (c.Block == BlockKind.Serial ? 2 : 1);
        return (long)(c.Vocab / model) * d + c.Layers * perLayer + d;
    }
}

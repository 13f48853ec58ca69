namespace Palm.Gpu.Model;

/// <summary>
/// Parameter counts, FLOPs and memory of a configuration, computed analytically (no allocation), so
/// `palm plan` can describe PaLM 540B on a laptop.
/// </summary>
public static class ModelMath
{
    /// <summary>All parameters; the shared embedding is counted once.</summary>
    public static long Parameters(ModelConfig c)
    {
        long d = c.DModel, hk = (long)c.Heads * c.HeadDim, gk = (long)c.KvHeads * c.HeadDim, f = c.DFf;
        long perLayer = d * hk + 2 * d * gk + hk * d + 3 * d * f + d * (c.Block == BlockKind.Serial ? 2 : 1);
        return (long)c.Vocab * d + c.Layers * perLayer + d;
    }

    /// <summary>
    /// Model FLOPs per token of one training step (forward + backward), PaLM appendix B:
    /// 6·N + 12·L·T·(H·K). The embedding's 6·V·D counts its use as the output projection;
    /// rematerialisation does not change model FLOPs (that is what distinguishes MFU from HFU).
    /// </summary>
    public static double TrainingFlopsPerToken(ModelConfig c) =>
        6.0 * Parameters(c) + 12.0 * c.Layers * c.SeqLen * c.Heads * c.HeadDim;

    /// <summary>Activation floats per token that backward needs from forward, per layer.</summary>
    public static long ActivationFloatsPerTokenPerLayer(ModelConfig c)
    {
        long d = c.DModel, hk = (long)c.Heads * c.HeadDim, gk = (long)c.KvHeads * c.HeadDim, f = c.DFf;
        long v = d + 2                     // ln1 out, mean, rstd
               + hk + 2 * gk + hk + c.Heads // q, k, v, attention out, lse
               + 3 * f;                     // gate, up, swiglu
        if (c.Block == BlockKind.Serial) v += 2 * d + 2; // x1, ln2 out, mean, rstd
        return v;
    }

    /// <summary>
    /// Bytes of activations for a batch of <paramref name="batch"/> sequences: residual stream per layer,
    /// block internals per layer (or one shared set when rematerialising), backward scratch, and the head.
    /// </summary>
    public static long ActivationBytes(ModelConfig c, int batch, bool rematerialize)
    {
        long n = (long)batch * c.SeqLen;
        long d = c.DModel, hk = (long)c.Heads * c.HeadDim, gk = (long)c.KvHeads * c.HeadDim, f = c.DFf;
        long residual = (c.Layers + 1) * d;
        long internals = (rematerialize ? 1 : c.Layers) * ActivationFloatsPerTokenPerLayer(c);
        long scratch = 2 * d + 2 * hk + 2 * gk + 3 * f;
        long head = d + 2 + c.Vocab + 2 + 2; // ln_f out/mean/rstd, logits, losses, logZ, token ids
        return 4 * n * (residual + internals + scratch + head);
    }

    /// <summary>Bytes of Adafactor state: momentum (β1 > 0) plus second moments, factored for matrices or full.</summary>
    public static long OptimizerBytes(ModelConfig c, bool factored, bool momentum = true)
    {
        long total = 0;
        foreach (var (rows, cols, vector) in Shapes(c))
        {
            long count = rows * cols;
            if (momentum) total += count;
            total += factored && !vector ? rows + cols : count;
        }
        return 4 * total;
    }

    /// <summary>(rows, cols, is-vector) of every parameter tensor, in the model's order.</summary>
    public static IEnumerable<(long Rows, long Cols, bool Vector)> Shapes(ModelConfig c)
    {
        long d = c.DModel, hk = (long)c.Heads * c.HeadDim, gk = (long)c.KvHeads * c.HeadDim, f = c.DFf;
        yield return (c.Vocab, d, false);
        for (int l = 0; l < c.Layers; l++)
        {
            yield return (1, d, true);
            if (c.Block == BlockKind.Serial) yield return (1, d, true);
            yield return (d, hk, false); yield return (d, gk, false); yield return (d, gk, false); yield return (hk, d, false);
            yield return (d, f, false); yield return (d, f, false); yield return (f, d, false);
        }
        yield return (1, d, true);
    }
}

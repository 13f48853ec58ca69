using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Model;

/// <summary>Sizes of one forward/backward pass. N = B·T rows.</summary>
internal readonly record struct Dims(int B, int T, int D, int H, int G, int K, int F, int V)
{
    public int N => B * T;
    public int HK => H * K;
    public int GK => G * K;

    public static Dims Of(ModelConfig c, int batch) =>
        new(batch, c.SeqLen, c.DModel, c.Heads, c.KvHeads, c.HeadDim, c.DFf, c.Vocab);
}

/// <summary>
/// What one block keeps from forward for backward. With rematerialisation a single instance is shared
/// by every layer and refilled from the block input during backward.
/// </summary>
internal sealed class BlockActivations : IDisposable
{
    public BlockActivations(IBackend b, Dims m, bool serial, string prefix)
    {
        long n = m.N;
        Ln1Out = b.Allocate(prefix + "ln1_out", n * m.D);
        Ln1Mean = b.Allocate(prefix + "ln1_mean", n);
        Ln1Rstd = b.Allocate(prefix + "ln1_rstd", n);
        if (serial)
        {
            X1 = b.Allocate(prefix + "x1", n * m.D);
            Ln2Out = b.Allocate(prefix + "ln2_out", n * m.D);
            Ln2Mean = b.Allocate(prefix + "ln2_mean", n);
            Ln2Rstd = b.Allocate(prefix + "ln2_rstd", n);
        }
        Q = b.Allocate(prefix + "q", n * m.HK);
        K = b.Allocate(prefix + "k", n * m.GK);
        V = b.Allocate(prefix + "v", n * m.GK);
        Att = b.Allocate(prefix + "att", n * m.HK);
        Lse = b.Allocate(prefix + "lse", (long)m.B * m.H * m.T);
        Gate = b.Allocate(prefix + "gate", n * m.F);
        Up = b.Allocate(prefix + "up", n * m.F);
        Act = b.Allocate(prefix + "swiglu", n * m.F);
    }

    public DeviceBuffer Ln1Out, Ln1Mean, Ln1Rstd;            // (N,D), (N), (N)
    public DeviceBuffer? X1, Ln2Out, Ln2Mean, Ln2Rstd;       // serial blocks only
    public DeviceBuffer Q, K, V, Att, Lse;                   // (N,HK) after RoPE, (N,GK), (N,GK), (N,HK), (B,H,T)
    public DeviceBuffer Gate, Up, Act;                       // (N,F) ×3

    public IEnumerable<DeviceBuffer> Buffers => new[] { Ln1Out, Ln1Mean, Ln1Rstd, X1, Ln2Out, Ln2Mean, Ln2Rstd, Q, K, V, Att, Lse, Gate, Up, Act }.OfType<DeviceBuffer>();
    public void Dispose() { foreach (var x in Buffers) x.Dispose(); }
}

/// <summary>Gradient scratch shared by all layers in backward (activation gradients are transient).</summary>
internal sealed class BackwardScratch : IDisposable
{
    public BackwardScratch(IBackend b, Dims m)
    {
        long n = m.N;
        DResidual = b.Allocate("d_residual", n * m.D);
        DHidden = b.Allocate("d_ln_out", n * m.D);
        DQ = b.Allocate("d_q", n * m.HK);
        DK = b.Allocate("d_k", n * m.GK);
        DV = b.Allocate("d_v", n * m.GK);
        DAtt = b.Allocate("d_att", n * m.HK);
        DGate = b.Allocate("d_gate", n * m.F);
        DUp = b.Allocate("d_up", n * m.F);
        DAct = b.Allocate("d_swiglu", n * m.F);
    }

    public DeviceBuffer DResidual, DHidden, DQ, DK, DV, DAtt, DGate, DUp, DAct;
    public void Dispose()
    {
        foreach (var x in new[] { DResidual, DHidden, DQ, DK, DV, DAtt, DGate, DUp, DAct }) x.Dispose();
    }
}

/// <summary>
/// Every buffer one forward/backward pass needs besides the parameters, sized for the largest batch:
/// the residual stream x_0 .. x_L (N,D) each, the blocks' saved internals (one per layer, or one shared set
/// when rematerialising), backward scratch, token ids and the head (ln_f, logits (N,V), per-row losses, logZ).
/// </summary>
internal sealed class ModelActivations : IDisposable
{
    public ModelActivations(IBackend be, ModelConfig config, Dims max)
    {
        long n = max.N;
        Residual = new DeviceBuffer[config.Layers + 1];
        for (int l = 0; l <= config.Layers; l++) Residual[l] = be.Allocate($"x{l}", n * max.D);
        bool serial = config.Block == BlockKind.Serial;
        // With rematerialisation one set of block internals is shared by every layer and refilled in backward.
        Blocks = config.Rematerialize
            ? [new BlockActivations(be, max, serial, "shared.")]
            : Enumerable.Range(0, config.Layers).Select(l => new BlockActivations(be, max, serial, $"layers.{l}.")).ToArray();
        Scratch = new BackwardScratch(be, max);
        Tokens = be.Allocate("tokens", n, ElementType.I32);
        Targets = be.Allocate("targets", n, ElementType.I32);
        Hf = be.Allocate("ln_f_out", n * max.D);
        HfMean = be.Allocate("ln_f_mean", n);
        HfRstd = be.Allocate("ln_f_rstd", n);
        Logits = be.Allocate("logits", n * max.V);
        TargetLogit = be.Allocate("target_logit", n);
        LogZ = be.Allocate("log_z", n);
        HostLogZ = new float[n];
        HostTargetLogit = new float[n];
    }

    public readonly DeviceBuffer[] Residual;
    public readonly BlockActivations[] Blocks;
    public readonly BackwardScratch Scratch;
    public readonly DeviceBuffer Tokens, Targets, Hf, HfMean, HfRstd, Logits, TargetLogit, LogZ;
    /// <summary>Host copies of logZ and the target logits, for the loss (per-token cross-entropy = logZ − target logit).</summary>
    public readonly float[] HostLogZ, HostTargetLogit;

    public BlockActivations For(int layer) => Blocks[Blocks.Length == 1 ? 0 : layer];

    /// <summary>Bytes of the residual stream, block internals and head (the backward scratch is transient and not counted).</summary>
    public long Bytes =>
        Residual.Sum(b => b.Bytes) + Blocks.Sum(a => a.Buffers.Sum(b => b.Bytes)) +
        new[] { Hf, HfMean, HfRstd, Logits, TargetLogit, LogZ, Tokens, Targets }.Sum(b => b.Bytes);

    public void Dispose()
    {
        foreach (var b in Residual) b.Dispose();
        foreach (var a in Blocks) a.Dispose();
        Scratch.Dispose();
        foreach (var b in new[] { Tokens, Targets, Hf, HfMean, HfRstd, Logits, TargetLogit, LogZ }) b.Dispose();
    }
}

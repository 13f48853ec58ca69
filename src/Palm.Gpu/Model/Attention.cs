using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Model;

// Causal multi-query self-attention sublayer (no biases, RoPE on queries and keys).
// Legend: B batch, T time, D width, H query heads, G kv heads (1 = multi-query), K head dim, N = B·T.
//
//   [q | k | v] = h·[Wq | Wk | Wv] (N,HK+2GK)                 one GEMM (pieces along N); h (N,D) is the layer-normed input
//   q, k ← RoPE(q), RoPE(k)
//   att, lse = softmax(q·kᵀ/√K, causal)·v (N,HK), (B,H,T)
//   y += att·Wo (N,D)                                           accumulated into the block output
// The parallel block (Block.cs) fuses the projections further, with the MLP's: see ParallelBlock.
internal static class AttentionSublayer
{
    /// <summary>The input projection's pieces along its output columns: widths, outputs (q, k, v) and weights.</summary>
    public static (int[] Widths, DeviceBuffer[] Outputs, Parameter[] Weights) InputPieces(Dims m, BlockParameters w, BlockActivations a) =>
        ([m.HK, m.GK, m.GK], [a.Q, a.K, a.V], [w.Wq, w.Wk, w.Wv]);

    /// <summary>The activation gradients of the input projection's outputs, in <see cref="InputPieces"/>' order.</summary>
    public static DeviceBuffer[] InputGradients(BackwardScratch s) => [s.DQ, s.DK, s.DV];

    /// <summary>Between the projections: RoPE and attention, q, k, v -> att.</summary>
    public static void Mix(IBackend be, Dims m, BlockActivations a)
    {
        be.RopeForward(a.Q, a.Q, m.B, m.T, m.H, m.K);
        be.RopeForward(a.K, a.K, m.B, m.T, m.G, m.K);
        be.AttentionForward(a.Att, a.Lse, a.Q, a.K, a.V, m.B, m.T, m.H, m.G, m.K);
    }

    /// <summary>datt -> dq, dk, dv (through attention and RoPE).</summary>
    public static void MixBackward(IBackend be, Dims m, BlockActivations a, BackwardScratch s)
    {
        be.AttentionBackward(s.DQ, s.DK, s.DV, s.DAtt, a.Q, a.K, a.V, a.Att, a.Lse, m.B, m.T, m.H, m.G, m.K);
        be.RopeBackward(s.DQ, s.DQ, m.B, m.T, m.H, m.K);
        be.RopeBackward(s.DK, s.DK, m.B, m.T, m.G, m.K);
    }

    public static void Forward(IBackend be, Dims m, BlockParameters w, BlockActivations a, DeviceBuffer h, DeviceBuffer y)
    {
        Projections.Input(be, m, InputPieces(m, w, a), h);
        Mix(be, m, a);
        be.Matmul(y, a.Att, w.Wo.Value, m.N, m.D, m.HK, accumulate: true);
    }

    /// <summary>dy (N,D) -> dh (N,D) (= or += when accumulateDh); dWq, dWk, dWv, dWo +=.</summary>
    public static void Backward(IBackend be, Dims m, BlockParameters w, BlockActivations a, BackwardScratch s,
                                DeviceBuffer h, DeviceBuffer dy, DeviceBuffer dh, bool accumulateDh)
    {
        be.Matmul(w.Wo.Grad, a.Att, dy, m.HK, m.D, m.N, transA: true, accumulate: true);
        be.Matmul(s.DAtt, dy, w.Wo.Value, m.N, m.HK, m.D, transB: true);
        MixBackward(be, m, a, s);
        Projections.InputBackward(be, m, InputPieces(m, w, a), InputGradients(s), h, dh, accumulateDh);
    }
}

/// <summary>
/// A block's fused input projection: outputs [o_1 | o_2 | ...] = h·[W_1 | W_2 | ...] as one GEMM (pieces along N), and its
/// backward as two: [dW_1 | dW_2 | ...] += hᵀ·[do_1 | do_2 | ...] (pieces along N) and dh = [do_1 | ...]·[W_1 | ...]ᵀ
/// (pieces along K). h (N,D), W_i (D,w_i), o_i (N,w_i).
/// </summary>
internal static class Projections
{
    public static void Input(IBackend be, Dims m, (int[] Widths, DeviceBuffer[] Outputs, Parameter[] Weights) p, DeviceBuffer h) =>
        be.MatmulPieces(MatmulSplit.N, p.Widths, p.Outputs, [h], p.Weights.Select(x => x.Value).ToArray(), m.N, p.Widths.Sum(), m.D);

    public static void InputBackward(IBackend be, Dims m, (int[] Widths, DeviceBuffer[] Outputs, Parameter[] Weights) p, DeviceBuffer[] dOutputs,
                                     DeviceBuffer h, DeviceBuffer dh, bool accumulateDh)
    {
        int width = p.Widths.Sum();
        be.MatmulPieces(MatmulSplit.N, p.Widths, p.Weights.Select(x => x.Grad).ToArray(), [h], dOutputs, m.D, width, m.N, transA: true, accumulate: true);
        be.MatmulPieces(MatmulSplit.K, p.Widths, [dh], dOutputs, p.Weights.Select(x => x.Value).ToArray(), m.N, m.D, width, transB: true, accumulate: accumulateDh);
    }
}

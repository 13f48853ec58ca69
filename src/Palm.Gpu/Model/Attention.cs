using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Model;

// Causal multi-query self-attention sublayer (no biases, RoPE on queries and keys).
// Legend: B batch, T time, D width, H query heads, G kv heads (1 = multi-query), K head dim, N = B·T.
//
//   q = h·Wq (N,HK)   k = h·Wk (N,GK)   v = h·Wv (N,GK)     h (N,D) is the layer-normed input
//   q, k ← RoPE(q), RoPE(k)
//   att, lse = softmax(q·kᵀ/√K, causal)·v (N,HK), (B,H,T)
//   y += att·Wo (N,D)                                           accumulated into the block output
internal static class AttentionSublayer
{
    public static void Forward(IBackend be, Dims m, BlockParameters w, BlockActivations a, DeviceBuffer h, DeviceBuffer y)
    {
        be.Matmul(a.Q, h, w.Wq.Value, m.N, m.HK, m.D);
        be.Matmul(a.K, h, w.Wk.Value, m.N, m.GK, m.D);
        be.Matmul(a.V, h, w.Wv.Value, m.N, m.GK, m.D);
        be.RopeForward(a.Q, a.Q, m.B, m.T, m.H, m.K);
        be.RopeForward(a.K, a.K, m.B, m.T, m.G, m.K);
        be.AttentionForward(a.Att, a.Lse, a.Q, a.K, a.V, m.B, m.T, m.H, m.G, m.K);
        be.Matmul(y, a.Att, w.Wo.Value, m.N, m.D, m.HK, accumulate: true);
    }

    /// <summary>dy (N,D) -> dh (N,D) (= or += when accumulateDh); dWq, dWk, dWv, dWo +=.</summary>
    public static void Backward(IBackend be, Dims m, BlockParameters w, BlockActivations a, BackwardScratch s,
                                DeviceBuffer h, DeviceBuffer dy, DeviceBuffer dh, bool accumulateDh)
    {
        be.Matmul(w.Wo.Grad, a.Att, dy, m.HK, m.D, m.N, transA: true, accumulate: true);
        be.Matmul(s.DAtt, dy, w.Wo.Value, m.N, m.HK, m.D, transB: true);
        be.AttentionBackward(s.DQ, s.DK, s.DV, s.DAtt, a.Q, a.K, a.V, a.Att, a.Lse, m.B, m.T, m.H, m.G, m.K);
        be.RopeBackward(s.DQ, s.DQ, m.B, m.T, m.H, m.K);
        be.RopeBackward(s.DK, s.DK, m.B, m.T, m.G, m.K);
        be.Matmul(w.Wq.Grad, h, s.DQ, m.D, m.HK, m.N, transA: true, accumulate: true);
        be.Matmul(w.Wk.Grad, h, s.DK, m.D, m.GK, m.N, transA: true, accumulate: true);
        be.Matmul(w.Wv.Grad, h, s.DV, m.D, m.GK, m.N, transA: true, accumulate: true);
        be.Matmul(dh, s.DQ, w.Wq.Value, m.N, m.D, m.HK, transB: true, accumulate: accumulateDh);
        be.Matmul(dh, s.DK, w.Wk.Value, m.N, m.D, m.GK, transB: true, accumulate: true);
        be.Matmul(dh, s.DV, w.Wv.Value, m.N, m.D, m.GK, transB: true, accumulate: true);
    }
}

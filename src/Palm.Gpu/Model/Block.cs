using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Model;

// One Transformer block, parallel (PaLM) or serial.
// Legend: D width, N = B·T rows. x (N,D) -> y (N,D).
//
//   parallel:  h = LN(x);  y = x + Attn(h) + MLP(h)
//   serial:    h1 = LN1(x); x1 = x + Attn(h1); h2 = LN2(x1); y = x1 + MLP(h2)
//
// The residual add costs nothing: y starts as a copy of x and both sublayers accumulate their output
// projections into it (the GEMM's accumulate flag).
internal static class Block
{
    public static void Forward(IBackend be, Dims m, BlockParameters w, BlockActivations a, DeviceBuffer x, DeviceBuffer y)
    {
        long nd = (long)m.N * m.D;
        be.LayerNormForward(a.Ln1Out, a.Ln1Mean, a.Ln1Rstd, x, w.Ln1.Value, m.N, m.D);
        if (w.Ln2 is null)
        {
            be.Copy(y, x, nd);
            AttentionSublayer.Forward(be, m, w, a, a.Ln1Out, y);
            MlpSublayer.Forward(be, m, w, a, a.Ln1Out, y);
        }
        else
        {
            be.Copy(a.X1!, x, nd);
            AttentionSublayer.Forward(be, m, w, a, a.Ln1Out, a.X1!);
            be.LayerNormForward(a.Ln2Out!, a.Ln2Mean!, a.Ln2Rstd!, a.X1!, w.Ln2.Value, m.N, m.D);
            be.Copy(y, a.X1!, nd);
            MlpSublayer.Forward(be, m, w, a, a.Ln2Out!, y);
        }
    }

    /// <summary>dres (N,D) holds dL/dy on entry and dL/dx on exit; parameter gradients +=.</summary>
    public static void Backward(IBackend be, Dims m, BlockParameters w, BlockActivations a, BackwardScratch s,
                                DeviceBuffer x, DeviceBuffer dres)
    {
        if (w.Ln2 is null)
        {
            // Both sublayers read the same h, so their input gradients sum into one dh.
            MlpSublayer.Backward(be, m, w, a, s, a.Ln1Out, dres, s.DHidden, accumulateDh: false);
            AttentionSublayer.Backward(be, m, w, a, s, a.Ln1Out, dres, s.DHidden, accumulateDh: true);
            be.LayerNormBackward(dres, w.Ln1.Grad, s.DHidden, x, w.Ln1.Value, a.Ln1Mean, a.Ln1Rstd, m.N, m.D, accumulate: true);
        }
        else
        {
            MlpSublayer.Backward(be, m, w, a, s, a.Ln2Out!, dres, s.DHidden, accumulateDh: false);
            be.LayerNormBackward(dres, w.Ln2.Grad, s.DHidden, a.X1!, w.Ln2.Value, a.Ln2Mean!, a.Ln2Rstd!, m.N, m.D, accumulate: true);
            AttentionSublayer.Backward(be, m, w, a, s, a.Ln1Out, dres, s.DHidden, accumulateDh: false);
            be.LayerNormBackward(dres, w.Ln1.Grad, s.DHidden, x, w.Ln1.Value, a.Ln1Mean, a.Ln1Rstd, m.N, m.D, accumulate: true);
        }
    }

    /// <summary>Recomputes the block internals from its input without touching the output (rematerialisation).</summary>
    public static void Recompute(IBackend be, Dims m, BlockParameters w, BlockActivations a, DeviceBuffer x, DeviceBuffer scratchY)
        => Forward(be, m, w, a, x, scratchY);
}

using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Model;

// SwiGLU MLP sublayer (no biases).
// Legend: D width, F hidden width, N = B·T rows.
//
//   gate = h·Wgate (N,F)   up = h·Wup (N,F)
//   act  = swish(gate) ⊙ up (N,F)
//   y   += act·Wdown (N,D)                                      accumulated into the block output
internal static class MlpSublayer
{
    public static void Forward(IBackend be, Dims m, BlockParameters w, BlockActivations a, DeviceBuffer h, DeviceBuffer y)
    {
        be.Matmul(a.Gate, h, w.WGate.Value, m.N, m.F, m.D);
        be.Matmul(a.Up, h, w.WUp.Value, m.N, m.F, m.D);
        be.SwiGluForward(a.Act, a.Gate, a.Up, (long)m.N * m.F);
        be.Matmul(y, a.Act, w.WDown.Value, m.N, m.D, m.F, accumulate: true);
    }

    /// <summary>dy (N,D) -> dh (N,D) (= or += when accumulateDh); dWgate, dWup, dWdown +=.</summary>
    public static void Backward(IBackend be, Dims m, BlockParameters w, BlockActivations a, BackwardScratch s,
                                DeviceBuffer h, DeviceBuffer dy, DeviceBuffer dh, bool accumulateDh)
    {
        be.Matmul(w.WDown.Grad, a.Act, dy, m.F, m.D, m.N, transA: true, accumulate: true);
        be.Matmul(s.DAct, dy, w.WDown.Value, m.N, m.F, m.D, transB: true);
        be.SwiGluBackward(s.DGate, s.DUp, s.DAct, a.Gate, a.Up, (long)m.N * m.F);
        be.Matmul(w.WGate.Grad, h, s.DGate, m.D, m.F, m.N, transA: true, accumulate: true);
        be.Matmul(w.WUp.Grad, h, s.DUp, m.D, m.F, m.N, transA: true, accumulate: true);
        be.Matmul(dh, s.DGate, w.WGate.Value, m.N, m.D, m.F, transB: true, accumulate: accumulateDh);
        be.Matmul(dh, s.DUp, w.WUp.Value, m.N, m.D, m.F, transB: true, accumulate: true);
    }
}

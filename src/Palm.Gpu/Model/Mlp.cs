using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Model;

// SwiGLU MLP sublayer (no biases).
// Legend: D width, F hidden width, N = B·T rows.
//
//   [gate | up] = h·[Wgate | Wup] (N,2F)                       one GEMM (pieces along N)
//   act  = swish(gate) ⊙ up (N,F)
//   y   += act·Wdown (N,D)                                      accumulated into the block output
// The parallel block (Block.cs) fuses the projections further, with the attention's: see ParallelBlock.
internal static class MlpSublayer
{
    /// <summary>The input projection's pieces along its output columns: widths, outputs (gate, up) and weights.</summary>
    public static (int[] Widths, DeviceBuffer[] Outputs, Parameter[] Weights) InputPieces(Dims m, BlockParameters w, BlockActivations a) =>
        ([m.F, m.F], [a.Gate, a.Up], [w.WGate, w.WUp]);

    /// <summary>The activation gradients of the input projection's outputs, in <see cref="InputPieces"/>' order.</summary>
    public static DeviceBuffer[] InputGradients(BackwardScratch s) => [s.DGate, s.DUp];

    /// <summary>Between the projections: gate, up -> act.</summary>
    public static void Mix(IBackend be, Dims m, BlockActivations a) => be.SwiGluForward(a.Act, a.Gate, a.Up, (long)m.N * m.F);

    /// <summary>dact -> dgate, dup.</summary>
    public static void MixBackward(IBackend be, Dims m, BlockActivations a, BackwardScratch s) =>
        be.SwiGluBackward(s.DGate, s.DUp, s.DAct, a.Gate, a.Up, (long)m.N * m.F);

    public static void Forward(IBackend be, Dims m, BlockParameters w, BlockActivations a, DeviceBuffer h, DeviceBuffer y)
    {
        Projections.Input(be, m, InputPieces(m, w, a), h);
        Mix(be, m, a);
        be.Matmul(y, a.Act, w.WDown.Value, m.N, m.D, m.F, accumulate: true);
    }

    /// <summary>dy (N,D) -> dh (N,D) (= or += when accumulateDh); dWgate, dWup, dWdown +=.</summary>
    public static void Backward(IBackend be, Dims m, BlockParameters w, BlockActivations a, BackwardScratch s,
                                DeviceBuffer h, DeviceBuffer dy, DeviceBuffer dh, bool accumulateDh)
    {
        be.Matmul(w.WDown.Grad, a.Act, dy, m.F, m.D, m.N, transA: true, accumulate: true);
        be.Matmul(s.DAct, dy, w.WDown.Value, m.N, m.F, m.D, transB: true);
        MixBackward(be, m, a, s);
        Projections.InputBackward(be, m, InputPieces(m, w, a), InputGradients(s), h, dh, accumulateDh);
    }
}

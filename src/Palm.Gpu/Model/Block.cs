using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Model;

// One Transformer block of a rank, parallel (PaLM) or serial, with the model axis's communication written once.
// Legend: D width, N = B·T rows, M model ranks. x (N,D) -> y (N,D).
//
//   parallel:  h = LN(x);  y = x + AllReduce_model(Attn_m(h) + MLP_m(h))
//   serial:    h1 = LN1(x); x1 = x + AllReduce_model(Attn_m(h1)); h2 = LN2(x1); y = x1 + AllReduce_model(MLP_m(h2))
//
// With M = 1 the residual add costs nothing: y starts as a copy of x and both sublayers accumulate their output
// projections into it (the GEMM's accumulate flag).
//
// The parallel block runs PaLM's fused formulation (ParallelBlock below): its forward is two GEMMs,
//   [q | k | v | gate | up] = h·[Wq | Wk | Wv | Wgate | Wup]      (N, HK+2GK+2F)   pieces along N
//   y += [att | act]·[Wo ; Wdown]                                  (N, D)           pieces along K
// and its backward four (the dW and dX of each). The serial block fuses q|k|v and gate|up likewise; its two output
// projections stay separate GEMMs (a layer norm and, on a mesh, an all-reduce sit between them). The weights stay
// separate named tensors: the GEMM reads the pieces where they are (IBackend.MatmulPieces).
public sealed partial class PalmModel
{
    /// <summary>
    /// Layer l's forward. With <paramref name="recompute"/> (rematerialisation in backward) it only refills the block
    /// internals from the stored input: the block output is not needed, so a parallel block recomputes without
    /// communication, and a serial block repeats only its first model all-reduce (for x1).
    /// </summary>
    void BlockForward(int l, Dims m, bool recompute)
    {
        var w = Block(l);
        var a = _a.For(l);
        var x = _a.Residual[l];
        var y = recompute ? _a.Scratch.DHidden : _a.Residual[l + 1];
        _be.LayerNormForward(a.Ln1Out, a.Ln1Mean, a.Ln1Rstd, x, w.Ln1.Value, m.N, m.D);
        if (w.Ln2 is null)
        {
            var acc = BeginModelSum(x, y, m);
            ParallelBlock.Forward(_be, m, w, a, a.Ln1Out, acc);
            if (!recompute) EndModelSum(acc, x, y, m);
        }
        else
        {
            var acc = BeginModelSum(x, a.X1!, m);
            AttentionSublayer.Forward(_be, m, w, a, a.Ln1Out, acc);
            EndModelSum(acc, x, a.X1!, m);
            _be.LayerNormForward(a.Ln2Out!, a.Ln2Mean!, a.Ln2Rstd!, a.X1!, w.Ln2.Value, m.N, m.D);
            acc = BeginModelSum(a.X1!, y, m);
            MlpSublayer.Forward(_be, m, w, a, a.Ln2Out!, acc);
            if (!recompute) EndModelSum(acc, a.X1!, y, m);
        }
    }

    // The model-axis hook of a residual sublayer, y = x + Σ_m f_m(h). One model rank: y starts as a copy of x and the
    // sublayers' output projections accumulate straight into it (the GEMM's accumulate flag, no extra pass). Several:
    // they accumulate into a zeroed partial, which is all-reduced over the model group and added to x.
    DeviceBuffer BeginModelSum(DeviceBuffer x, DeviceBuffer y, Dims m)
    {
        long nd = (long)m.N * m.D;
        if (_rank.ModelSize == 1) { _be.Copy(y, x, nd); return y; }
        _be.Fill(_partial!, 0f, nd);
        return _partial!;
    }

    void EndModelSum(DeviceBuffer acc, DeviceBuffer x, DeviceBuffer y, Dims m)
    {
        if (_rank.ModelSize == 1) return;
        long nd = (long)m.N * m.D;
        _rank.ModelGroup.AllReduce(acc, nd);
        _be.Add(y, x, acc, nd);
    }

    void ModelSum(DeviceBuffer buffer, long count)
    {
        if (_rank.ModelSize > 1) _rank.ModelGroup.AllReduce(buffer, count);
    }

    /// <summary>dres (N,D) holds dL/dy on entry and dL/dx on exit; parameter gradients +=.</summary>
    void BlockBackward(int l, Dims m)
    {
        var w = Block(l);
        var a = _a.For(l);
        var s = _a.Scratch;
        var x = _a.Residual[l];
        long nd = (long)m.N * m.D;
        if (w.Ln2 is null)
        {
            // Both sublayers read the same h, so their input gradients are one GEMM into one dh, then summed over the model ranks.
            ParallelBlock.Backward(_be, m, w, a, s, a.Ln1Out, s.DResidual, s.DHidden);
            ModelSum(s.DHidden, nd);
            _be.LayerNormBackward(s.DResidual, w.Ln1.Grad, s.DHidden, x, w.Ln1.Value, a.Ln1Mean, a.Ln1Rstd, m.N, m.D, accumulate: true);
        }
        else
        {
            MlpSublayer.Backward(_be, m, w, a, s, a.Ln2Out!, s.DResidual, s.DHidden, accumulateDh: false);
            ModelSum(s.DHidden, nd);
            _be.LayerNormBackward(s.DResidual, w.Ln2.Grad, s.DHidden, a.X1!, w.Ln2.Value, a.Ln2Mean!, a.Ln2Rstd!, m.N, m.D, accumulate: true);
            AttentionSublayer.Backward(_be, m, w, a, s, a.Ln1Out, s.DResidual, s.DHidden, accumulateDh: false);
            ModelSum(s.DHidden, nd);
            _be.LayerNormBackward(s.DResidual, w.Ln1.Grad, s.DHidden, x, w.Ln1.Value, a.Ln1Mean, a.Ln1Rstd, m.N, m.D, accumulate: true);
        }
    }
}

/// <summary>
/// PaLM's parallel block with its projections fused: one GEMM in, one out (forward), two each in backward.
/// Legend as in Block.cs; P = HK + 2GK + 2F input columns, Q = HK + F output rows.
/// </summary>
internal static class ParallelBlock
{
    static (int[] Widths, DeviceBuffer[] Outputs, Parameter[] Weights) InputPieces(Dims m, BlockParameters w, BlockActivations a)
    {
        var at = AttentionSublayer.InputPieces(m, w, a);
        var mlp = MlpSublayer.InputPieces(m, w, a);
        return ([.. at.Widths, .. mlp.Widths], [.. at.Outputs, .. mlp.Outputs], [.. at.Weights, .. mlp.Weights]);
    }

    /// <summary>h (N,D) -> y (N,D) +=.</summary>
    public static void Forward(IBackend be, Dims m, BlockParameters w, BlockActivations a, DeviceBuffer h, DeviceBuffer y)
    {
        Projections.Input(be, m, InputPieces(m, w, a), h);
        AttentionSublayer.Mix(be, m, a);
        MlpSublayer.Mix(be, m, a);
        be.MatmulPieces(MatmulSplit.K, [m.HK, m.F], [y], [a.Att, a.Act], [w.Wo.Value, w.WDown.Value], m.N, m.D, m.HK + m.F, accumulate: true);
    }

    /// <summary>dy (N,D) -> dh (N,D) =; every weight gradient +=.</summary>
    public static void Backward(IBackend be, Dims m, BlockParameters w, BlockActivations a, BackwardScratch s, DeviceBuffer h, DeviceBuffer dy, DeviceBuffer dh)
    {
        int[] rows = [m.HK, m.F];
        // [dWo ; dWdown] += [att | act]ᵀ·dy  and  [datt | dact] = dy·[Wo ; Wdown]ᵀ
        be.MatmulPieces(MatmulSplit.M, rows, [w.Wo.Grad, w.WDown.Grad], [a.Att, a.Act], [dy], m.HK + m.F, m.D, m.N, transA: true, accumulate: true);
        be.MatmulPieces(MatmulSplit.N, rows, [s.DAtt, s.DAct], [dy], [w.Wo.Value, w.WDown.Value], m.N, m.HK + m.F, m.D, transB: true);
        AttentionSublayer.MixBackward(be, m, a, s);
        MlpSublayer.MixBackward(be, m, a, s);
        Projections.InputBackward(be, m, InputPieces(m, w, a), [.. AttentionSublayer.InputGradients(s), .. MlpSublayer.InputGradients(s)], h, dh, accumulateDh: false);
    }
}

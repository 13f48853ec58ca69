namespace Palm.Gpu.Backends;

// The cost of every kernel of the IBackend contract: floating-point operations and bytes moved, as
// functions of its sizes. One description per op, used by the backends' profiler hook (`palm bench`), the
// BenchmarkDotNet suites and the results board, so a GFLOP/s or GB/s figure means the same everywhere.
//
// Legend: B batch, T time, D model width, H query heads, G kv heads, K head dim, F MLP width,
//         V vocabulary, N = B·T rows, n element count, R×C a parameter viewed as rows × cols.
//
// Conventions:
//   FLOPs  — a multiply-add is 2; exp, division and square root count 1 each; comparisons count 1.
//            Attention counts its matmul work only (scores and P·V; backward recomputes the scores).
//            Causal attention covers T(T+1)/2 (query, key) pairs per head, not T².
//   Bytes  — the minimum traffic: every input read once, every output written once (read too when it
//            accumulates), 4 bytes per fp32 or int32 element. Real kernels move at least this much.
// So GFLOP/s ÷ peak FLOP/s and GB/s ÷ peak bandwidth are lower bounds on how busy each kernel keeps
// the device; the larger of the two says which limit the kernel is up against.

/// <summary>FLOPs and bytes of one kernel call.</summary>
public readonly record struct OpCost(string Kernel, double Flops, double Bytes)
{
    /// <summary>FLOPs per byte; the roofline puts the kernel under the memory limit when this is below peak FLOP/s ÷ bandwidth.</summary>
    public double Intensity => Bytes > 0 ? Flops / Bytes : double.PositiveInfinity;
}

/// <summary>What a kernel does and how its cost is counted, in words (for tables and the board's legend).</summary>
public sealed record OpDescription(string Kernel, string Contract, string Flops, string Bytes);

public static class OpCosts
{
    const double F32 = 4;

    // ---- memory ---------------------------------------------------------------------------------
    public static readonly OpDescription FillOp = new("fill", "dst (n) = value", "0", "4·n");
    public static OpCost Fill(long n) => new(FillOp.Kernel, 0, F32 * n);

    public static readonly OpDescription CopyOp = new("copy", "dst (n) = src (n)", "0", "8·n");
    public static OpCost Copy(long n) => new(CopyOp.Kernel, 0, 2 * F32 * n);

    public static readonly OpDescription UploadOp = new("upload", "device (n) ← host (n)", "0", "4·n");
    public static OpCost Upload(long n) => new(UploadOp.Kernel, 0, F32 * n);

    public static readonly OpDescription DownloadOp = new("download", "host (n) ← device (n)", "0", "4·n");
    public static OpCost Download(long n) => new(DownloadOp.Kernel, 0, F32 * n);

    // ---- matmul ---------------------------------------------------------------------------------
    public static readonly OpDescription MatmulOp = new("matmul", "C (M,N) = op(A) (M,K) · op(B) (K,N) [+ C]", "2·M·N·K", "4·(M·K + K·N + M·N) + 4·M·N when accumulating");
    public static OpCost Matmul(long m, long n, long k, bool accumulate) =>
        new(MatmulOp.Kernel, 2.0 * m * n * k, F32 * (m * k + k * n + m * n * (accumulate ? 2 : 1)));
    public static readonly OpDescription MatmulPiecesOp = new("matmul.pieces", "C (M,N) = op([A pieces]) (M,K) · op([B pieces]) (K,N) [+ C], pieces along M, N or K", "2·M·N·K", "4·(M·K + K·N + M·N) + 4·M·N when accumulating");
    public static OpCost MatmulPieces(long m, long n, long k, bool accumulate) =>
        new(MatmulPiecesOp.Kernel, 2.0 * m * n * k, F32 * (m * k + k * n + m * n * (accumulate ? 2 : 1)));

    // ---- embedding ------------------------------------------------------------------------------
    public static readonly OpDescription EmbeddingForwardOp = new("embedding.forward", "tokens (N), table (V,D) -> out (N,D)", "0", "4·N + 8·N·D");
    public static OpCost EmbeddingForward(long n, long d) => new(EmbeddingForwardOp.Kernel, 0, F32 * (n + 2 * n * d));

    // Rows of the table a batch touches: at most min(N, V), each read and written once.
    public static readonly OpDescription EmbeddingBackwardOp = new("embedding.backward", "dout (N,D), tokens (N) -> dtable (V,D) +=", "N·D", "4·N + 4·N·D + 8·min(N,V)·D");
    public static OpCost EmbeddingBackward(long n, long d, long v) =>
        new(EmbeddingBackwardOp.Kernel, (double)n * d, F32 * (n + n * d + 2 * Math.Min(n, v) * d));

    // ---- layer norm -----------------------------------------------------------------------------
    // mean 1, variance 3, (x − mean)·rstd·w 3 per element.
    public static readonly OpDescription LayerNormForwardOp = new("layernorm.forward", "inp (N,D), w (D) -> out (N,D), mean, rstd (N)", "7·N·D", "8·N·D + 4·D + 8·N");
    public static OpCost LayerNormForward(long n, long d) => new(LayerNormForwardOp.Kernel, 7.0 * n * d, F32 * (2 * n * d + d + 2 * n));

    // g = dout·w 1, x̂ 2, mean(g) 1, mean(g·x̂) 2, dinp 4, dweight 2 per element (+1 accumulating).
    public static readonly OpDescription LayerNormBackwardOp = new("layernorm.backward", "dout, inp (N,D), w (D), mean, rstd (N) -> dinp (N,D), dw (D) +=", "12·N·D (+N·D accumulating)", "12·N·D + 12·D + 8·N (+4·N·D accumulating)");
    public static OpCost LayerNormBackward(long n, long d, bool accumulate) =>
        new(LayerNormBackwardOp.Kernel, (accumulate ? 13.0 : 12.0) * n * d, F32 * ((accumulate ? 4 : 3) * n * d + 3 * d + 2 * n));

    // ---- rotary position embedding --------------------------------------------------------------
    // Two products and one sum per element; the (T, K/2) cos and sin tables are read once.
    public static readonly OpDescription RopeForwardOp = new("rope.forward", "inp (B,T,Hs,K) -> out (B,T,Hs,K)", "3·B·T·Hs·K", "8·B·T·Hs·K + 4·T·K");
    public static OpCost RopeForward(long b, long t, long heads, long headDim) => Rope(RopeForwardOp.Kernel, b, t, heads, headDim);

    public static readonly OpDescription RopeBackwardOp = new("rope.backward", "dout (B,T,Hs,K) -> dinp (B,T,Hs,K)", "3·B·T·Hs·K", "8·B·T·Hs·K + 4·T·K");
    public static OpCost RopeBackward(long b, long t, long heads, long headDim) => Rope(RopeBackwardOp.Kernel, b, t, heads, headDim);

    static OpCost Rope(string kernel, long b, long t, long heads, long headDim)
    {
        double count = (double)b * t * heads * headDim;
        return new(kernel, 3 * count, F32 * (2 * count + (double)t * headDim));
    }

    // ---- causal attention -----------------------------------------------------------------------
    /// <summary>(query, key) pairs a causal mask keeps: B·H·T(T+1)/2.</summary>
    public static double CausalPairs(long b, long t, long heads) => (double)b * heads * t * (t + 1) / 2;

    // Forward: S = q·kᵀ and out = P·v, 2·K each per pair.
    public static readonly OpDescription AttentionForwardOp = new("attention.forward", "q (B,T,H,K), k, v (B,T,G,K) -> out (B,T,H,K), lse (B,H,T)", "4·K·B·H·T(T+1)/2", "8·B·T·H·K + 8·B·T·G·K + 4·B·H·T");
    public static OpCost AttentionForward(long b, long t, long heads, long kvHeads, long headDim) =>
        new(AttentionForwardOp.Kernel, 4.0 * headDim * CausalPairs(b, t, heads),
            F32 * (2.0 * b * t * heads * headDim + 2.0 * b * t * kvHeads * headDim + (double)b * heads * t));

    // Backward: recompute S, then dv = Pᵀ·dout, dP = dout·vᵀ, dq = dS·k, dk = dSᵀ·q: five products, 2·K each per pair.
    public static readonly OpDescription AttentionBackwardOp = new("attention.backward", "dout, q, out (B,T,H,K), k, v (B,T,G,K), lse -> dq, dk, dv", "10·K·B·H·T(T+1)/2", "16·B·T·H·K + 16·B·T·G·K + 4·B·H·T");
    public static OpCost AttentionBackward(long b, long t, long heads, long kvHeads, long headDim) =>
        new(AttentionBackwardOp.Kernel, 10.0 * headDim * CausalPairs(b, t, heads),
            F32 * (4.0 * b * t * heads * headDim + 4.0 * b * t * kvHeads * headDim + (double)b * heads * t));

    // ---- decoding with a KV cache ---------------------------------------------------------------
    // One token per sequence; cos and sin are computed per (b, i), counted as reads of a table row.
    public static readonly OpDescription RopeForwardAtOp = new("rope.forward_at", "inp (B,Hs,K), positions (B) -> out (B,Hs,K)", "3·B·Hs·K", "8·B·Hs·K + 4·B·K + 4·B");
    public static OpCost RopeForwardAt(long b, long heads, long headDim)
    {
        double count = (double)b * heads * headDim;
        return new(RopeForwardAtOp.Kernel, 3 * count, F32 * (2 * count + (double)b * headDim + b));
    }

    // Counted at full caches (Tmax rows), the bound: q·k and p·v, 2·K each per (head, row); K/V read once per kv head.
    public static readonly OpDescription AttentionDecodeOp = new("attention.decode", "q (B,H,K), kCache, vCache (B,Tmax,G,K), lengths (B) -> out (B,H,K)", "4·K·B·H·Tmax", "8·B·H·K + 8·B·Tmax·G·K + 4·B");
    public static OpCost AttentionDecode(long b, long tMax, long heads, long kvHeads, long headDim) =>
        new(AttentionDecodeOp.Kernel, 4.0 * headDim * b * heads * tMax,
            F32 * (2.0 * b * heads * headDim + 2.0 * b * tMax * kvHeads * headDim + b));

    // ---- SwiGLU ---------------------------------------------------------------------------------
    // σ(g): exp, add, divide 3; g·σ 1; ·up 1.
    public static readonly OpDescription SwiGluForwardOp = new("swiglu.forward", "gate, up (N,F) -> out (N,F)", "5·n", "12·n");
    public static OpCost SwiGluForward(long count) => new(SwiGluForwardOp.Kernel, 5.0 * count, F32 * 3 * count);

    // σ 3, g·σ 1, dup 1, dgate = dout·up·σ·(1 + g·(1 − σ)) 6.
    public static readonly OpDescription SwiGluBackwardOp = new("swiglu.backward", "dout, gate, up (N,F) -> dgate, dup (N,F)", "11·n", "20·n");
    public static OpCost SwiGluBackward(long count) => new(SwiGluBackwardOp.Kernel, 11.0 * count, F32 * 5 * count);

    // ---- residual -------------------------------------------------------------------------------
    public static readonly OpDescription AddOp = new("add", "a, b (n) -> out (n)", "n", "12·n");
    public static OpCost Add(long count) => new(AddOp.Kernel, count, F32 * 3 * count);

    public static readonly OpDescription AddInPlaceOp = new("add_in_place", "acc (n) += x (n)", "n", "12·n");
    public static OpCost AddInPlace(long count) => new(AddInPlaceOp.Kernel, count, F32 * 3 * count);


    // ---- softmax cross-entropy ------------------------------------------------------------------
    // max 1, x − max 1, exp 1, sum 1 per logit.
    public static readonly OpDescription CrossEntropyForwardOp = new("cross_entropy.forward", "logits (N,V), targets (N) -> logZ, targetLogit (N)", "4·N·V", "4·N·V + 12·N");
    public static OpCost CrossEntropyForward(long n, long v) => new(CrossEntropyForwardOp.Kernel, 4.0 * n * v, F32 * (n * v + 3 * n));

    // exp(x − logZ) 2, ·(1 + 2z·logZ) 1, ·scale 1 per logit.
    public static readonly OpDescription CrossEntropyBackwardOp = new("cross_entropy.backward", "logits (N,V), logZ, targets (N) -> dlogits (N,V)", "4·N·V", "8·N·V + 8·N");
    public static OpCost CrossEntropyBackward(long n, long v) => new(CrossEntropyBackwardOp.Kernel, 4.0 * n * v, F32 * (2 * n * v + 2 * n));

    // Combining shard normalisers: exp or log and a subtraction or addition per row.
    public static readonly OpDescription LogSumExpShiftOp = new("cross_entropy.lse_shift", "logZ, max (n) -> exp(logZ − max) (n)", "2·n", "12·n");
    public static OpCost LogSumExpShift(long n) => new(LogSumExpShiftOp.Kernel, 2.0 * n, F32 * 3.0 * n);
    public static readonly OpDescription LogSumExpFinishOp = new("cross_entropy.lse_finish", "max, sumExp (n) -> logZ = max + log(sumExp) (n)", "2·n", "12·n");
    public static OpCost LogSumExpFinish(long n) => new(LogSumExpFinishOp.Kernel, 2.0 * n, F32 * 3.0 * n);

    // ---- reductions and optimizer ---------------------------------------------------------------
    public static readonly OpDescription SumOfSquaresOp = new("sum_of_squares", "x (n) -> Σ x² (host)", "2·n", "4·n");
    public static OpCost SumOfSquares(long count) => new(SumOfSquaresOp.Kernel, 2.0 * count, F32 * count);
    public static readonly OpDescription SumOfSquaresSegmentsOp = new("sum_of_squares.segments", "x (flat), segments (S) -> Σ x² per segment (host)", "2·n", "4·n");
    public static OpCost SumOfSquaresSegments(long count) => new(SumOfSquaresSegmentsOp.Kernel, 2.0 * count, F32 * count);

    // Per element: clip-scale g 1, g² + ε 2, second moment 3, u = g/√v 2, Σu² 2, update clip 1,
    // momentum 3, Σp² 2, p −= scale·m + wd·p 4 → 20; factoring adds the row and column means and the
    // rank-1 reconstruction (4). Bytes: p and the moments read and written, g read.
    public static readonly OpDescription AdafactorOp = new("adafactor", "param, grad (R,C), state -> param, state", "20·R·C (+4·R·C factored)",
        "12·R·C + 8·R·C with momentum + 8·R·C unfactored | 8·(R + C) factored");
    public static OpCost Adafactor(long rows, long cols, bool momentum, bool factored)
    {
        double rc = (double)rows * cols;
        double bytes = F32 * (3 * rc + (momentum ? 2 * rc : 0) + (factored ? 2.0 * (rows + cols) : 2 * rc));
        return new(AdafactorOp.Kernel, (factored ? 24 : 20) * rc, bytes);
    }

    // Segments of a flat arena (unfactored): pass 1 (clip-scale, second moment, u, Σu², Σp²: 10 per element; reads p,
    // g, v, writes v) and pass 2 (u again, clip, momentum, update: 10; reads g, v, p and m, writes p and m).
    public static readonly OpDescription AdafactorSumsOp = new("adafactor.sums", "param, grad, v (n), segments -> v, Σu², Σp² per segment (host)", "10·n", "16·n");
    public static OpCost AdafactorSums(long n) => new(AdafactorSumsOp.Kernel, 10.0 * n, F32 * 4.0 * n);
    public static readonly OpDescription AdafactorApplyOp = new("adafactor.apply", "grad, v (n), sums per segment -> param, momentum (n)", "10·n", "16·n + 8·n with momentum");
    public static OpCost AdafactorApply(long n, bool momentum) => new(AdafactorApplyOp.Kernel, 10.0 * n, F32 * (4.0 * n + (momentum ? 2.0 * n : 0)));

    /// <summary>Every description, in the contract's order.</summary>
    public static readonly IReadOnlyList<OpDescription> Catalog =
    [
        MatmulOp, MatmulPiecesOp, EmbeddingForwardOp, EmbeddingBackwardOp, LayerNormForwardOp, LayerNormBackwardOp,
        RopeForwardOp, RopeBackwardOp, AttentionForwardOp, AttentionBackwardOp, RopeForwardAtOp, AttentionDecodeOp, SwiGluForwardOp, SwiGluBackwardOp,
        AddOp, AddInPlaceOp, CrossEntropyForwardOp, CrossEntropyBackwardOp, LogSumExpShiftOp, LogSumExpFinishOp,
        SumOfSquaresOp, SumOfSquaresSegmentsOp, AdafactorOp, AdafactorSumsOp, AdafactorApplyOp, FillOp, CopyOp, UploadOp, DownloadOp,
    ];
}

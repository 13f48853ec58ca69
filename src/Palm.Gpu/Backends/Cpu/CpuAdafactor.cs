using System.Runtime.Intrinsics;

namespace Palm.Gpu.Backends.Cpu;

// Adafactor update for one parameter tensor viewed as (R rows, C cols).
// param (R,C), grad (R,C), momentum (R,C)?, v (R,C) unfactored | vRow (R) + vCol (C) factored -> param, state updated in place.
//
//   g   = GradScale · grad                                   global-norm clipping, done by the caller's factor
//   v   = β2·v + (1−β2)·(g² + ε1)                            or its rank-1 factorisation vRow·vColᵀ / mean(vRow)
//   u   = g / √v ;  u /= max(1, RMS(u) / d)                  update clipping
//   m   = β1·m + (1−β1)·u                                    (m = u when β1 = 0)
//   p  -= max(ε2, RMS(p)) · ρ · m  +  wd · p                 parameter scaling; decoupled weight decay
//
// Reductions (RMS(u), RMS(p), row/column means) use fixed-size chunks summed in order in double, so the
// result is the same for any thread count. A tensor split over devices runs the two passes per piece
// (PieceSums, then PieceApply with the sums of all pieces added in rank order).
internal static class CpuAdafactor
{
    const int Chunk = 16384;

    public static void Update(int threads, float[] param, float[] grad, float[]? momentum, float[]? v, float[]? vRow, float[]? vCol,
                              int rows, int cols, in AdafactorStep s)
    {
        long count = (long)rows * cols;
        float gs = s.GradScale, b2 = s.Beta2, e1 = s.Epsilon1;
        bool factored = v is null;
        if (s.Beta1 > 0 && momentum is null) throw new ArgumentException("Adafactor: β1 > 0 needs a momentum buffer");

        float[]? rowScale = null, colScale = null; // u = g · rowScale[i] · colScale[j] when factored
        if (factored)
        {
            if (vRow is null || vCol is null) throw new ArgumentException("Adafactor: factored state needs row and column moments");
            // Row means of g²+ε1: one row per work item.
            CpuParallel.For(threads, rows, i =>
            {
                double acc = 0;
                long o = (long)i * cols;
                for (int j = 0; j < cols; j++) { float g = grad[o + j] * gs; acc += g * g + e1; }
                vRow[i] = b2 * vRow[i] + (1 - b2) * (float)(acc / cols);
            });
            // Column means: each work item owns a fixed block of columns and walks all rows in order.
            const int colBlock = 64;
            CpuParallel.For(threads, (cols + colBlock - 1) / colBlock, cb =>
            {
                int j0 = cb * colBlock, j1 = Math.Min(cols, j0 + colBlock);
                Span<double> acc = stackalloc double[colBlock];
                acc.Clear();
                for (int i = 0; i < rows; i++)
                {
                    long o = (long)i * cols;
                    for (int j = j0; j < j1; j++) { float g = grad[o + j] * gs; acc[j - j0] += g * g + e1; }
                }
                for (int j = j0; j < j1; j++) vCol[j] = b2 * vCol[j] + (1 - b2) * (float)(acc[j - j0] / rows);
            });
            double rowMean = 0;
            for (int i = 0; i < rows; i++) rowMean += vRow[i];
            rowMean /= rows;
            // v̂_ij = vRow_i · vCol_j / mean(vRow)  ⇒  1/√v̂ = √mean(vRow) / √vRow_i / √vCol_j
            rowScale = new float[rows];
            colScale = new float[cols];
            float sqrtMean = (float)Math.Sqrt(rowMean);
            for (int i = 0; i < rows; i++) rowScale[i] = sqrtMean / MathF.Sqrt(vRow[i]);
            for (int j = 0; j < cols; j++) colScale[j] = 1f / MathF.Sqrt(vCol[j]);
        }

        var (totalU2, totalP2) = Sums(threads, param, grad, v, rowScale, colScale, cols, count, s);
        var (clip, stepSize) = s.Scalars(totalU2, totalP2, count);
        Apply(threads, param, grad, momentum, v, rowScale, colScale, cols, count, clip, stepSize, s);
    }

    /// <summary>Pass 1 on a piece of a split tensor (unfactored): v updated; Σu², Σp² over the piece.</summary>
    public static (double SumU2, double SumP2) PieceSums(int threads, float[] param, float[] grad, float[] v, long n, in AdafactorStep s) =>
        Sums(threads, param, grad, v, null, null, 1, n, s);

    /// <summary>Pass 2 on a piece with the whole tensor's sums.</summary>
    public static void PieceApply(int threads, float[] param, float[] grad, float[]? momentum, float[] v, long n,
                                  double sumU2, double sumP2, long tensorCount, in AdafactorStep s)
    {
        if (s.Beta1 > 0 && momentum is null) throw new ArgumentException("Adafactor: β1 > 0 needs a momentum buffer");
        var (clip, stepSize) = s.Scalars(sumU2, sumP2, tensorCount);
        Apply(threads, param, grad, momentum, v, null, null, 1, n, clip, stepSize, s);
    }

    // Pass 1: unfactored second moment (v null: factored, u from rowScale/colScale), Σu² and Σp² per fixed chunk,
    // then the chunks in order.
    static (double SumU2, double SumP2) Sums(int threads, float[] param, float[] grad, float[]? v, float[]? rowScale, float[]? colScale,
                                             int cols, long count, AdafactorStep s)
    {
        int chunks = (int)((count + Chunk - 1) / Chunk);
        var sumU2 = new double[chunks];
        var sumP2 = new double[chunks];
        float gs = s.GradScale, b2 = s.Beta2, e1 = s.Epsilon1;
        bool factored = v is null;
        CpuParallel.For(threads, chunks, c =>
        {
            long start = (long)c * Chunk, end = Math.Min(count, start + Chunk);
            double u2 = 0, p2 = 0;
            long from = start;   // the eight-lane loop takes whole blocks; the scalar loop below the rest
            if (!factored && CpuSimd.Use256) from = SumsUnfactored256(param, grad, v!, start, end, s, ref u2, ref p2);
            long row = from / cols, col = from % cols; // walked alongside idx: no division per element
            for (long idx = from; idx < end; idx++, col = col + 1 == cols ? 0 : col + 1, row += col == 0 ? 1 : 0)
            {
                float g = grad[idx] * gs;
                float u;
                if (factored) u = g * rowScale![row] * colScale![col];
                else
                {
                    float vv = b2 * v![idx] + (1 - b2) * (g * g + e1);
                    v[idx] = vv;
                    u = g / MathF.Sqrt(vv);
                }
                u2 += (double)u * u;
                p2 += (double)param[idx] * param[idx];
            }
            sumU2[c] = u2;
            sumP2[c] = p2;
        });
        double totalU2 = 0, totalP2 = 0;
        for (int c = 0; c < chunks; c++) { totalU2 += sumU2[c]; totalP2 += sumP2[c]; }
        return (totalU2, totalP2);
    }

    // Pass 2: recompute u (cheaper than storing it), momentum, parameter update.
    static void Apply(int threads, float[] param, float[] grad, float[]? momentum, float[]? v, float[]? rowScale, float[]? colScale,
                      int cols, long count, float clip, float stepSize, AdafactorStep s)
    {
        int chunks = (int)((count + Chunk - 1) / Chunk);
        float gs = s.GradScale, b1 = s.Beta1, wd = s.WeightDecay;
        bool factored = v is null;
        CpuParallel.For(threads, chunks, c =>
        {
            long start = (long)c * Chunk, end = Math.Min(count, start + Chunk);
            long from = !factored && CpuSimd.Use256 ? ApplyUnfactored256(param, grad, momentum, v!, start, end, clip, stepSize, s) : start;
            long row = from / cols, col = from % cols;
            for (long idx = from; idx < end; idx++, col = col + 1 == cols ? 0 : col + 1, row += col == 0 ? 1 : 0)
            {
                float g = grad[idx] * gs;
                float u = factored ? g * rowScale![row] * colScale![col] : g / MathF.Sqrt(v![idx]);
                u *= clip;
                float m = u;
                if (momentum is not null)
                {
                    m = b1 * momentum[idx] + (1 - b1) * u;
                    momentum[idx] = m;
                }
                float p = param[idx];
                param[idx] = p - stepSize * m - wd * p;
            }
        });
    }

    // The unfactored passes eight lanes at a time over the whole blocks of [start, end), returning where they
    // stopped (the scalar loops finish the rest). Every lane does the scalar loop's float operations in the
    // same order (no fused multiply-adds), and Σu², Σp² still add the lanes one by one in index order, so the
    // results are the scalar loop's (and the OpenCL kernel's) to the last bit; only the divide and square root
    // run eight-wide.
    static unsafe long SumsUnfactored256(float[] param, float[] grad, float[] v, long start, long end, AdafactorStep s, ref double u2, ref double p2)
    {
        float gs = s.GradScale, b2 = s.Beta2, e1 = s.Epsilon1, oneMinusB2 = 1 - b2;
        var vgs = Vector256.Create(gs);
        var vb2 = Vector256.Create(b2);
        var v1mb2 = Vector256.Create(oneMinusB2);
        var ve1 = Vector256.Create(e1);
        long idx = start;
        fixed (float* pp = param, pg = grad, pv = v)
        {
            for (; idx + 8 <= end; idx += 8)
            {
                var g = Vector256.Load(pg + idx) * vgs;
                var vv = vb2 * Vector256.Load(pv + idx) + v1mb2 * (g * g + ve1);
                vv.Store(pv + idx);
                var u = g / Vector256.Sqrt(vv);
                var p = Vector256.Load(pp + idx);
                var (ulo, uhi) = Vector256.Widen(u);
                var (plo, phi) = Vector256.Widen(p);
                var su = ulo * ulo;
                var sp = plo * plo;
                u2 += su[0]; p2 += sp[0]; u2 += su[1]; p2 += sp[1]; u2 += su[2]; p2 += sp[2]; u2 += su[3]; p2 += sp[3];
                su = uhi * uhi;
                sp = phi * phi;
                u2 += su[0]; p2 += sp[0]; u2 += su[1]; p2 += sp[1]; u2 += su[2]; p2 += sp[2]; u2 += su[3]; p2 += sp[3];
            }
        }
        return idx;
    }

    static unsafe long ApplyUnfactored256(float[] param, float[] grad, float[]? momentum, float[] v, long start, long end,
                                          float clip, float stepSize, AdafactorStep s)
    {
        float gs = s.GradScale, b1 = s.Beta1, wd = s.WeightDecay;
        var vgs = Vector256.Create(gs);
        var vclip = Vector256.Create(clip);
        var vb1 = Vector256.Create(b1);
        var v1mb1 = Vector256.Create(1 - b1);
        var vstep = Vector256.Create(stepSize);
        var vwd = Vector256.Create(wd);
        long idx = start;
        fixed (float* pp = param, pg = grad, pv = v, pm = momentum)
        {
            for (; idx + 8 <= end; idx += 8)
            {
                var u = Vector256.Load(pg + idx) * vgs / Vector256.Sqrt(Vector256.Load(pv + idx)) * vclip;
                var m = u;
                if (pm != null)
                {
                    m = vb1 * Vector256.Load(pm + idx) + v1mb1 * u;
                    m.Store(pm + idx);
                }
                var p = Vector256.Load(pp + idx);
                (p - vstep * m - vwd * p).Store(pp + idx);
            }
        }
        return idx;
    }
}

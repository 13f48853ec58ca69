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
// result is the same for any thread count. A flat arena runs the two unfactored passes over a list of
// segments (SegmentSums, then SegmentApply with each tensor's sums, its pieces' added in rank order when split).
internal static class CpuAdafactor
{
    const int Chunk = 16384;

    public static void Update(int threads, CpuView<float> param, CpuView<float> grad, CpuView<float> momentum, CpuView<float> v, CpuView<float> vRow, CpuView<float> vCol,
                              int rows, int cols, in AdafactorStep s)
    {
        long count = (long)rows * cols;
        float gs = s.GradScale, b2 = s.Beta2, e1 = s.Epsilon1;
        bool factored = v.IsNull;
        if (s.Beta1 > 0 && momentum.IsNull) throw new ArgumentException("Adafactor: β1 > 0 needs a momentum buffer");

        float[]? rowScale = null, colScale = null; // u = g · rowScale[i] · colScale[j] when factored
        if (factored)
        {
            if (vRow.IsNull || vCol.IsNull) throw new ArgumentException("Adafactor: factored state needs row and column moments");
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

    /// <summary>
    /// Pass 1 on every segment of a flat arena (unfactored): v updated; Σu², Σp² per segment. The chunks are cut from
    /// each segment's start and summed as <see cref="Sums"/> sums a tensor's, so a segment gets the fused update's bits.
    /// </summary>
    public static void SegmentSums(int threads, CpuView<float> param, CpuView<float> grad, CpuView<float> v, IReadOnlyList<Segment> segments, in AdafactorStep s,
                                   Span<double> sumU2, Span<double> sumP2)
    {
        var first = Segments.FirstTiles(segments, Chunk);
        long chunks = first[segments.Count];
        var u2 = new double[chunks];
        var p2 = new double[chunks];
        var step = s;
        CpuParallel.For(threads, (int)chunks, c =>
        {
            int seg = Segments.SegmentOf(first, c);
            var (start, end) = ChunkRange(segments[seg], c - first[seg]);
            (u2[c], p2[c]) = ChunkSums(param, grad, v, start, end, step);
        });
        for (int seg = 0; seg < segments.Count; seg++)
        {
            double tu = 0, tp = 0;
            for (long c = first[seg]; c < first[seg + 1]; c++) { tu += u2[c]; tp += p2[c]; }
            sumU2[seg] = tu;
            sumP2[seg] = tp;
        }
    }

    /// <summary>Pass 2 on every segment with each segment's whole-tensor sums and element count.</summary>
    public static void SegmentApply(int threads, CpuView<float> param, CpuView<float> grad, CpuView<float> momentum, CpuView<float> v, IReadOnlyList<Segment> segments,
                                    ReadOnlySpan<double> sumU2, ReadOnlySpan<double> sumP2, ReadOnlySpan<long> tensorCounts, in AdafactorStep s)
    {
        if (s.Beta1 > 0 && momentum.IsNull) throw new ArgumentException("Adafactor: β1 > 0 needs a momentum buffer");
        var scalars = new (float Clip, float StepSize)[segments.Count];
        for (int seg = 0; seg < segments.Count; seg++) scalars[seg] = s.Scalars(sumU2[seg], sumP2[seg], tensorCounts[seg]);
        var first = Segments.FirstTiles(segments, Chunk);
        var step = s;
        CpuParallel.For(threads, (int)first[segments.Count], c =>
        {
            int seg = Segments.SegmentOf(first, c);
            var (start, end) = ChunkRange(segments[seg], c - first[seg]);
            ChunkApply(param, grad, momentum, v, start, end, scalars[seg].Clip, scalars[seg].StepSize, step);
        });
    }

    static (long Start, long End) ChunkRange(Segment segment, long chunk)
    {
        long start = segment.Offset + chunk * Chunk;
        return (start, Math.Min(segment.Offset + segment.Count, start + Chunk));
    }

    // Pass 1: unfactored second moment (v null: factored, u from rowScale/colScale), Σu² and Σp² per fixed chunk,
    // then the chunks in order.
    static (double SumU2, double SumP2) Sums(int threads, CpuView<float> param, CpuView<float> grad, CpuView<float> v, float[]? rowScale, float[]? colScale,
                                             int cols, long count, AdafactorStep s)
    {
        int chunks = (int)((count + Chunk - 1) / Chunk);
        var sumU2 = new double[chunks];
        var sumP2 = new double[chunks];
        float gs = s.GradScale, b2 = s.Beta2, e1 = s.Epsilon1;
        bool factored = v.IsNull;
        CpuParallel.For(threads, chunks, c =>
        {
            long start = (long)c * Chunk, end = Math.Min(count, start + Chunk);
            if (!factored)
            {
                (sumU2[c], sumP2[c]) = ChunkSums(param, grad, v, start, end, s);
                return;
            }
            double u2 = 0, p2 = 0;
            long row = start / cols, col = start % cols; // walked alongside idx: no division per element
            for (long idx = start; idx < end; idx++, col = col + 1 == cols ? 0 : col + 1, row += col == 0 ? 1 : 0)
            {
                float u = grad[idx] * gs * rowScale![row] * colScale![col];
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
    static void Apply(int threads, CpuView<float> param, CpuView<float> grad, CpuView<float> momentum, CpuView<float> v, float[]? rowScale, float[]? colScale,
                      int cols, long count, float clip, float stepSize, AdafactorStep s)
    {
        int chunks = (int)((count + Chunk - 1) / Chunk);
        float gs = s.GradScale, b1 = s.Beta1, wd = s.WeightDecay;
        bool factored = v.IsNull;
        CpuParallel.For(threads, chunks, c =>
        {
            long start = (long)c * Chunk, end = Math.Min(count, start + Chunk);
            if (!factored)
            {
                ChunkApply(param, grad, momentum, v, start, end, clip, stepSize, s);
                return;
            }
            long row = start / cols, col = start % cols;
            for (long idx = start; idx < end; idx++, col = col + 1 == cols ? 0 : col + 1, row += col == 0 ? 1 : 0)
            {
                ApplyElement(param, momentum, idx, grad[idx] * gs * rowScale![row] * colScale![col], clip, stepSize, b1, wd);
            }
        });
    }

    // Unfactored pass 1 over one chunk [start, end): v updated, (Σu², Σp²) in index order.
    static (double U2, double P2) ChunkSums(CpuView<float> param, CpuView<float> grad, CpuView<float> v, long start, long end, in AdafactorStep s)
    {
        float gs = s.GradScale, b2 = s.Beta2, e1 = s.Epsilon1;
        double u2 = 0, p2 = 0;
        long idx = CpuSimd.Use256 ? SumsUnfactored256(param, grad, v, start, end, s, ref u2, ref p2) : start;
        for (; idx < end; idx++)
        {
            float g = grad[idx] * gs;
            float vv = b2 * v[idx] + (1 - b2) * (g * g + e1);
            v[idx] = vv;
            float u = g / MathF.Sqrt(vv);
            u2 += (double)u * u;
            p2 += (double)param[idx] * param[idx];
        }
        return (u2, p2);
    }

    // Unfactored pass 2 over one chunk: recompute u (cheaper than storing it), momentum, parameter update.
    static void ChunkApply(CpuView<float> param, CpuView<float> grad, CpuView<float> momentum, CpuView<float> v, long start, long end, float clip, float stepSize, in AdafactorStep s)
    {
        float gs = s.GradScale, b1 = s.Beta1, wd = s.WeightDecay;
        long idx = CpuSimd.Use256 ? ApplyUnfactored256(param, grad, momentum, v, start, end, clip, stepSize, s) : start;
        for (; idx < end; idx++)
        {
            float g = grad[idx] * gs;
            ApplyElement(param, momentum, idx, g / MathF.Sqrt(v[idx]), clip, stepSize, b1, wd);
        }
    }

    // Pass 2's update of one element from its unscaled update u: clip, momentum, the step and the decoupled decay.
    static void ApplyElement(CpuView<float> param, CpuView<float> momentum, long idx, float u, float clip, float stepSize, float b1, float wd)
    {
        u *= clip;
        float m = u;
        if (!momentum.IsNull)
        {
            m = b1 * momentum[idx] + (1 - b1) * u;
            momentum[idx] = m;
        }
        float p = param[idx];
        param[idx] = p - stepSize * m - wd * p;
    }

    // The unfactored passes eight lanes at a time over the whole blocks of [start, end), returning where they
    // stopped (the scalar loops finish the rest). Every lane does the scalar loop's float operations in the
    // same order (no fused multiply-adds), and Σu², Σp² still add the lanes one by one in index order, so the
    // results are the scalar loop's (and the OpenCL kernel's) to the last bit; only the divide and square root
    // run eight-wide.
    static unsafe long SumsUnfactored256(CpuView<float> param, CpuView<float> grad, CpuView<float> v, long start, long end, AdafactorStep s, ref double u2, ref double p2)
    {
        float gs = s.GradScale, b2 = s.Beta2, e1 = s.Epsilon1, oneMinusB2 = 1 - b2;
        var vgs = Vector256.Create(gs);
        var vb2 = Vector256.Create(b2);
        var v1mb2 = Vector256.Create(oneMinusB2);
        var ve1 = Vector256.Create(e1);
        long idx = start;
        // The squares go through memory: the in-order sums are then two chains of plain adds of loaded values,
        // instead of lane extractions on the chains' critical path.
        double* sq = stackalloc double[16];
        double su2 = u2, sp2 = p2;
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
                (ulo * ulo).Store(sq);
                (uhi * uhi).Store(sq + 4);
                (plo * plo).Store(sq + 8);
                (phi * phi).Store(sq + 12);
                su2 += sq[0]; sp2 += sq[8]; su2 += sq[1]; sp2 += sq[9]; su2 += sq[2]; sp2 += sq[10]; su2 += sq[3]; sp2 += sq[11];
                su2 += sq[4]; sp2 += sq[12]; su2 += sq[5]; sp2 += sq[13]; su2 += sq[6]; sp2 += sq[14]; su2 += sq[7]; sp2 += sq[15];
            }
        }
        u2 = su2;
        p2 = sp2;
        return idx;
    }

    static unsafe long ApplyUnfactored256(CpuView<float> param, CpuView<float> grad, CpuView<float> momentum, CpuView<float> v, long start, long end,
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

using ILGPU;
using ILGPU.Runtime.Cuda;

namespace Palm.Gpu.Kernels;

// Adafactor for one parameter tensor viewed as (R rows, C cols), and the two passes over a flat arena of tensors,
// as ILGPU kernels (the C# twin of adafactor.cl). The same float operations in the same order as the CPU backend
// (CpuAdafactor.cs), with the same double reductions in the same chunks, so the results are the CPU's bits:
//
//   g   = gs · grad                                          gs: global-norm clip factor
//   v   = β2·v + (1−β2)·(g² + ε1)                            or its rank-1 factorisation vRow·vColᵀ / mean(vRow)
//   u   = g / √v ;  u /= max(1, RMS(u) / d)                  update clipping
//   m   = β1·m + (1−β1)·u                                    (m = u without momentum)
//   p  -= max(ε2, RMS(p)) · ρ · m  +  wd · p                 parameter scaling; decoupled weight decay
//
// Orders (the documented ones): row means walk their row in index order, column means their column in row order,
// the mean of vRow runs in index order; Σu² and Σp² are summed per chunk of Chunk elements from the tensor's (or
// segment's) start in index order, then the chunks in order. A chunk is one group: its threads compute a tile of
// the chunk's elements (v, u², p²) into shared memory and thread 0 (Σu²) and thread 1 (Σp²) add the tile in index
// order, so the order, hence the bits, is the same for every group size. On CUDA every product that feeds a sum is
// an explicit mul.rn (no contraction into fma by the assembler), divides and square roots are correctly rounded.
// The fused update derives the clip factor and step size on the device (scalars), so it needs no host trip.
//
// Dimensions: R rows, C cols, count = R·C, chunks = ⌈count / Chunk⌉ (per segment when segmented), S segments.
//
// RowMoments:      grad (R,C) -> vRow (R) updated
// ColMoments:      grad (R,C) -> vCol (C) updated
// RowMean:         vRow (R) -> scalars[0] = √mean(vRow)
// FactorScales:    vRow (R), vCol (C), scalars -> rowScale (R), colScale (C): 1/√v̂ = rowScale_i·colScale_j
// Pass1:           grad, param, v (unfactored) | rowScale, colScale -> v updated, partial (chunks, 2)
// Finish:          partial (chunks, 2) -> scalars[1] clip, scalars[2] step size
// Pass2:           grad, v | rowScale, colScale, scalars -> momentum, param updated
// SegmentPass1:    grad, param, v (flat), table (S,3) -> v updated, partial (chunks, 2)
// SegmentTotals:   partial (chunks, 2), table (S,3) -> sums (S,2)
// SegmentPass2:    grad, v (flat), table (S,3), factors (S,2) clip and step size -> momentum, param updated
public static class AdafactorKernels
{
    /// <summary>Elements per reduction chunk: must equal CpuAdafactor's chunk for bit parity.</summary>
    public const int Chunk = 16384;

    /// <summary>Per-step scalars as kernel arguments (the fields of AdafactorStep the kernels read).</summary>
    public struct Step
    {
        public float GradScale, Beta1, Beta2, Epsilon1, Epsilon2, ClipThreshold, LearningRate, WeightDecay;
    }

    // ---- factored moments ----------------------------------------------------------------------------------

    /// <summary>One thread per row, grid-stride.</summary>
    public static void RowMoments(ArrayView<float> vRow, ArrayView<float> grad, Step s, int rows, int cols)
    {
        for (int i = Grid.GlobalIndex.X; i < rows; i += Grid.DimX * Group.DimX)
        {
            double acc = 0;
            long o = (long)i * cols;
            for (int j = 0; j < cols; j++) { float g = grad[o + j] * s.GradScale; acc += MulRn(g, g) + s.Epsilon1; }
            vRow[i] = MulRn(s.Beta2, vRow[i]) + MulRn(1 - s.Beta2, (float)(acc / cols));
        }
    }

    /// <summary>One thread per column, grid-stride; the column's rows in order.</summary>
    public static void ColMoments(ArrayView<float> vCol, ArrayView<float> grad, Step s, int rows, int cols)
    {
        for (int j = Grid.GlobalIndex.X; j < cols; j += Grid.DimX * Group.DimX)
        {
            double acc = 0;
            for (int i = 0; i < rows; i++) { float g = grad[(long)i * cols + j] * s.GradScale; acc += MulRn(g, g) + s.Epsilon1; }
            vCol[j] = MulRn(s.Beta2, vCol[j]) + MulRn(1 - s.Beta2, (float)(acc / rows));
        }
    }

    /// <summary>One thread (one group of one): scalars[0] = (float)√(Σ vRow / R), the sum in index order.</summary>
    public static void RowMean(ArrayView<float> scalars, ArrayView<float> vRow, int rows)
    {
        if (Grid.GlobalIndex.X != 0) return;
        double sum = 0;
        for (int i = 0; i < rows; i++) sum += vRow[i];
        scalars[0] = (float)Math.Sqrt(sum / rows);
    }

    /// <summary>One thread per entry of rowScale then colScale, grid-stride over R + C.</summary>
    public static void FactorScales(ArrayView<float> rowScale, ArrayView<float> colScale, ArrayView<float> vRow, ArrayView<float> vCol,
                                    ArrayView<float> scalars, int rows, int cols)
    {
        float sqrtMean = scalars[0];
        for (int i = Grid.GlobalIndex.X; i < rows + cols; i += Grid.DimX * Group.DimX)
        {
            if (i < rows) rowScale[i] = sqrtMean / MathF.Sqrt(vRow[i]);
            else colScale[i - rows] = 1f / MathF.Sqrt(vCol[i - rows]);
        }
    }

    // ---- pass 1: second moment, Σu², Σp² per chunk ------------------------------------------------------------

    /// <summary>
    /// One group per chunk of a tensor of count elements; dynamic shared memory of 2 · tile doubles, tile = group size ·
    /// <paramref name="perThread"/>. Unfactored when <paramref name="factored"/> is 0 (v updated), else u from the scales.
    /// </summary>
    public static void Pass1(ArrayView<double> partial, ArrayView<float> v, ArrayView<float> param, ArrayView<float> grad,
                             ArrayView<float> rowScale, ArrayView<float> colScale, Step s, int cols, long count, int factored, int perThread)
    {
        long chunk = Grid.IdxX, start = chunk * Chunk, end = XMin(count, start + Chunk);
        ChunkSums(partial, 2 * chunk, v, param, grad, rowScale, colScale, s, cols, start, end, factored, perThread);
    }

    /// <summary>One group per chunk of any segment of table (S,3): offset, count, first chunk per segment.</summary>
    public static void SegmentPass1(ArrayView<double> partial, ArrayView<float> v, ArrayView<float> param, ArrayView<float> grad,
                                    ArrayView<long> table, int segments, Step s, int perThread)
    {
        long chunk = Grid.IdxX;
        int seg = SegmentOf(table, segments, chunk);
        long start = table[3 * seg] + (chunk - table[3 * seg + 2]) * Chunk;
        long end = XMin(table[3 * seg] + table[3 * seg + 1], start + Chunk);
        ChunkSums(partial, 2 * chunk, v, param, grad, v, v, s, 1, start, end, 0, perThread);
    }

    /// <summary>partial[at] = Σu², partial[at + 1] = Σp² over [start, end) in index order, by the whole group.</summary>
    static void ChunkSums(ArrayView<double> partial, long at, ArrayView<float> v, ArrayView<float> param, ArrayView<float> grad,
                          ArrayView<float> rowScale, ArrayView<float> colScale, Step s, int cols, long start, long end, int factored, int perThread)
    {
        int lid = Group.IdxX, threads = Group.DimX, tile = threads * perThread;
        var shared = SharedMemory.GetDynamic<double>();
        var u2s = shared.SubView(0, tile);
        var p2s = shared.SubView(tile, tile);
        double u2 = 0, p2 = 0;   // thread 0: Σu²; thread 1 (thread 0 when alone): Σp²
        for (long base0 = start; base0 < end; base0 += tile)
        {
            int n = (int)XMin(tile, end - base0);
            for (int e = lid; e < n; e += threads)
            {
                long idx = base0 + e;
                float g = grad[idx] * s.GradScale;
                float u;
                if (factored != 0) u = g * rowScale[idx / cols] * colScale[idx % cols];
                else
                {
                    float vv = MulRn(s.Beta2, v[idx]) + MulRn(1 - s.Beta2, MulRn(g, g) + s.Epsilon1);
                    v[idx] = vv;
                    u = g / MathF.Sqrt(vv);
                }
                u2s[e] = MulRn((double)u, u);
                float p = param[idx];
                p2s[e] = MulRn((double)p, p);
            }
            Group.Barrier();
            if (lid == 0) for (int e = 0; e < n; e++) u2 += u2s[e];
            if (lid == (threads > 1 ? 1 : 0)) for (int e = 0; e < n; e++) p2 += p2s[e];
            Group.Barrier();
        }
        if (lid == 0) partial[at] = u2;
        if (lid == (threads > 1 ? 1 : 0)) partial[at + 1] = p2;
    }

    // ---- between the passes --------------------------------------------------------------------------------

    /// <summary>One thread: the chunks' sums in order, then clip = 1/max(1, RMS(u)/d), step = max(ε2, RMS(p))·ρ into scalars[1], [2].</summary>
    public static void Finish(ArrayView<float> scalars, ArrayView<double> partial, int chunks, long count, Step s)
    {
        if (Grid.GlobalIndex.X != 0) return;
        double u2 = 0, p2 = 0;
        for (int c = 0; c < chunks; c++) { u2 += partial[2 * c]; p2 += partial[2 * c + 1]; }
        float rmsU = (float)Math.Sqrt(u2 / count);
        float rmsP = (float)Math.Sqrt(p2 / count);
        scalars[1] = 1f / MaxNan(1f, rmsU / s.ClipThreshold);
        scalars[2] = MaxNan(s.Epsilon2, rmsP) * s.LearningRate;
    }

    /// <summary>One thread per segment, grid-stride: its chunks' sums in chunk order into sums (S,2).</summary>
    public static void SegmentTotals(ArrayView<double> sums, ArrayView<double> partial, ArrayView<long> table, int segments, long chunks)
    {
        for (int seg = Grid.GlobalIndex.X; seg < segments; seg += Grid.DimX * Group.DimX)
        {
            long first = table[3 * seg + 2], next = seg + 1 < segments ? table[3 * (seg + 1) + 2] : chunks;
            double u2 = 0, p2 = 0;
            for (long c = first; c < next; c++) { u2 += partial[2 * c]; p2 += partial[2 * c + 1]; }
            sums[2 * seg] = u2;
            sums[2 * seg + 1] = p2;
        }
    }

    // ---- pass 2: the update --------------------------------------------------------------------------------

    /// <summary>One thread per element, grid-stride over count, with scalars[1] clip and scalars[2] step size.</summary>
    public static void Pass2(ArrayView<float> param, ArrayView<float> momentum, ArrayView<float> grad, ArrayView<float> v,
                             ArrayView<float> rowScale, ArrayView<float> colScale, ArrayView<float> scalars, Step s, int cols, long count,
                             int factored, int hasMomentum)
    {
        float clip = scalars[1], stepSize = scalars[2];
        for (long idx = Grid.GlobalIndex.X; idx < count; idx += (long)Grid.DimX * Group.DimX)
        {
            float g = grad[idx] * s.GradScale;
            float u = factored != 0 ? g * rowScale[idx / cols] * colScale[idx % cols] : g / MathF.Sqrt(v[idx]);
            ApplyElement(param, momentum, idx, u, clip, stepSize, s, hasMomentum);
        }
    }

    /// <summary>One group per chunk of any segment; threads stride the chunk; factors (S,2) clip and step size per segment.</summary>
    public static void SegmentPass2(ArrayView<float> param, ArrayView<float> momentum, ArrayView<float> grad, ArrayView<float> v,
                                    ArrayView<long> table, ArrayView<float> factors, int segments, Step s, int hasMomentum)
    {
        long chunk = Grid.IdxX;
        int seg = SegmentOf(table, segments, chunk);
        long start = table[3 * seg] + (chunk - table[3 * seg + 2]) * Chunk;
        long end = XMin(table[3 * seg] + table[3 * seg + 1], start + Chunk);
        float clip = factors[2 * seg], stepSize = factors[2 * seg + 1];
        for (long idx = start + Group.IdxX; idx < end; idx += Group.DimX)
            ApplyElement(param, momentum, idx, grad[idx] * s.GradScale / MathF.Sqrt(v[idx]), clip, stepSize, s, hasMomentum);
    }

    /// <summary>Pass 2's update of one element from its unscaled update u: clip, momentum, the step and the decoupled decay.</summary>
    static void ApplyElement(ArrayView<float> param, ArrayView<float> momentum, long idx, float u, float clip, float stepSize, in Step s, int hasMomentum)
    {
        u *= clip;
        float m = u;
        if (hasMomentum != 0)
        {
            m = MulRn(s.Beta1, momentum[idx]) + MulRn(1 - s.Beta1, u);
            momentum[idx] = m;
        }
        float p = param[idx];
        param[idx] = p - MulRn(stepSize, m) - MulRn(s.WeightDecay, p);
    }

    // ---- helpers -------------------------------------------------------------------------------------------

    /// <summary>The segment that owns global chunk c: the last s with first[s] ≤ c (table column 2).</summary>
    static int SegmentOf(ArrayView<long> table, int segments, long c)
    {
        int lo = 0, hi = segments - 1;
        while (lo < hi)
        {
            int mid = (lo + hi + 1) >> 1;
            if (table[3 * mid + 2] <= c) lo = mid; else hi = mid - 1;
        }
        return lo;
    }

    /// <summary>a·b rounded on its own: on CUDA an explicit mul.rn, which the assembler never contracts with a following add.</summary>
    public static float MulRn(float a, float b)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("mul.rn.f32 %0, %1, %2;", out float r, a, b);
            return r;
        }
        return a * b;
    }

    /// <summary>The double <see cref="MulRn(float, float)"/>.</summary>
    public static double MulRn(double a, double b)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("mul.rn.f64 %0, %1, %2;", out double r, a, b);
            return r;
        }
        return a * b;
    }

    /// <summary>Math.Max semantics: NaN wins, so a NaN gradient poisons the step visibly instead of being dropped.</summary>
    static float MaxNan(float a, float b) => float.IsNaN(a) || float.IsNaN(b) ? float.NaN : a > b ? a : b;

    static long XMin(long a, long b) => a < b ? a : b;
}

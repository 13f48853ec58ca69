using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Kernels;

public class AdafactorTests
{
    /// <summary>
    /// Adafactor (Shazeer &amp; Stern 2018) for one (R,C) tensor in double, written from the paper:
    ///   g = GradScale·grad
    ///   unfactored: V = β2·V + (1−β2)·(g² + ε1),  V̂ = V
    ///   factored:   Rᵢ = β2·Rᵢ + (1−β2)·mean_j(g²+ε1),  Cⱼ = β2·Cⱼ + (1−β2)·mean_i(g²+ε1),  V̂ᵢⱼ = Rᵢ·Cⱼ / mean(R)
    ///   U = g/√V̂,  U /= max(1, RMS(U)/d),  M = β1·M + (1−β1)·U (M = U without momentum)
    ///   P = P − max(ε2, RMS(P))·ρ·M − wd·P     (RMS(P) of the parameter before the step)
    /// </summary>
    sealed class Reference
    {
        readonly int rows, cols;
        public readonly double[] Param, Momentum, V, RowMoment, ColMoment;

        public Reference(float[] param, int rows, int cols)
        {
            this.rows = rows; this.cols = cols;
            Param = TestData.ToDouble(param);
            Momentum = new double[rows * cols];
            V = new double[rows * cols];
            RowMoment = new double[rows];
            ColMoment = new double[cols];
        }

        public void Step(float[] grad, bool factored, bool momentum, in AdafactorStep s)
        {
            int count = rows * cols;
            var g = new double[count];
            for (int i = 0; i < count; i++) g[i] = (double)s.GradScale * grad[i];
            double b2 = s.Beta2, e1 = s.Epsilon1;

            var vhat = new double[count];
            if (factored)
            {
                for (int i = 0; i < rows; i++)
                {
                    double m = 0;
                    for (int j = 0; j < cols; j++) m += g[i * cols + j] * g[i * cols + j] + e1;
                    RowMoment[i] = b2 * RowMoment[i] + (1 - b2) * (m / cols);
                }
                for (int j = 0; j < cols; j++)
                {
                    double m = 0;
                    for (int i = 0; i < rows; i++) m += g[i * cols + j] * g[i * cols + j] + e1;
                    ColMoment[j] = b2 * ColMoment[j] + (1 - b2) * (m / rows);
                }
                double rowMean = RowMoment.Average();
                for (int i = 0; i < rows; i++)
                    for (int j = 0; j < cols; j++) vhat[i * cols + j] = RowMoment[i] * ColMoment[j] / rowMean;
            }
            else
            {
                for (int i = 0; i < count; i++) vhat[i] = V[i] = b2 * V[i] + (1 - b2) * (g[i] * g[i] + e1);
            }

            var u = new double[count];
            for (int i = 0; i < count; i++) u[i] = g[i] / Math.Sqrt(vhat[i]);
            double rmsU = Rms(u);
            double clip = Math.Max(1, rmsU / s.ClipThreshold);
            double stepSize = Math.Max(s.Epsilon2, Rms(Param)) * s.LearningRate;
            for (int i = 0; i < count; i++)
            {
                double ui = u[i] / clip;
                double mi = ui;
                if (momentum) mi = Momentum[i] = s.Beta1 * Momentum[i] + (1 - s.Beta1) * ui;
                Param[i] = Param[i] - stepSize * mi - s.WeightDecay * Param[i];
            }
        }

        static double Rms(double[] x) => Math.Sqrt(x.Sum(v => v * v) / x.Length);
    }

    // PaLM's schedule values for step k: ρ = 1e-2, β2 = 1 − k^−0.8, wd = ρ².
    static AdafactorStep StepAt(int k, bool momentum, float clipThreshold) => new(
        LearningRate: 1e-2f,
        Beta1: momentum ? 0.9f : 0f,
        Beta2: 1f - MathF.Pow(k, -0.8f),
        Epsilon1: 1e-30f,
        Epsilon2: 1e-3f,
        ClipThreshold: clipThreshold,
        GradScale: 0.7f,
        WeightDecay: 1e-4f);

    // Rows with very different gradient scales, so the factored row/column statistics differ from the
    // unfactored ones, and one exact zero to exercise ε1.
    static float[] Gradient(int seed, int rows, int cols)
    {
        var g = TestData.Uniform(seed, rows * cols);
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) g[i * cols + j] *= (1 + i) * (1 + 0.25f * (j % 3));
        g[rows * cols / 2] = 0f;
        return g;
    }

    sealed class KernelState
    {
        public float[] Param = null!;
        public float[]? Momentum, V, RowMoment, ColMoment;

        public KernelState(float[] param, int rows, int cols, bool factored, bool momentum)
        {
            Param = (float[])param.Clone();
            Momentum = momentum ? new float[rows * cols] : null;
            V = factored ? null : new float[rows * cols];
            RowMoment = factored ? new float[rows] : null;
            ColMoment = factored ? new float[cols] : null;
        }

        public void Step(int threads, float[] grad, int rows, int cols, in AdafactorStep s)
            => CpuAdafactor.Update(threads, Param, grad, Momentum, V, RowMoment, ColMoment, rows, cols, s);
    }

    // clipThreshold 0.5 makes update clipping bite on every step; paramScale 1e-4 puts RMS(p) below ε2.
    [Theory]
    [InlineData(false, false, 1f, 0.05f)]
    [InlineData(false, true, 1f, 0.05f)]
    [InlineData(true, false, 1f, 0.05f)]
    [InlineData(true, true, 1f, 0.05f)]
    [InlineData(false, true, 0.5f, 1e-4f)]
    [InlineData(true, true, 0.5f, 1e-4f)]
    public void Update_MatchesReference_OverThreeSteps(bool factored, bool momentum, float clipThreshold, float paramScale)
    {
        const int rows = 7, cols = 13;
        var param = TestData.Uniform(91, rows * cols, paramScale);
        var kernel = new KernelState(param, rows, cols, factored, momentum);
        var reference = new Reference(param, rows, cols);

        for (int k = 1; k <= 3; k++)
        {
            var grad = Gradient(91 + k, rows, cols);
            var s = StepAt(k, momentum, clipThreshold);
            var before = TestData.ToDouble(kernel.Param);
            var referenceBefore = (double[])reference.Param.Clone();
            kernel.Step(2, grad, rows, cols, s);
            reference.Step(grad, factored, momentum, s);

            // The change of the parameter is what the optimizer computes; compare it, not just p (which it barely moves).
            var delta = new double[rows * cols];
            var expectedDelta = new double[rows * cols];
            for (int i = 0; i < delta.Length; i++)
            {
                delta[i] = kernel.Param[i] - before[i];
                expectedDelta[i] = reference.Param[i] - referenceBefore[i];
            }
            double deltaAtol = 1e-6 * paramScale; // a few float ulps of p, far below the step itself
            Tolerance.AssertClose(expectedDelta, delta, deltaAtol, 1e-4, $"step {k}: Δparam");
            Tolerance.AssertClose(reference.Param, kernel.Param, deltaAtol, 1e-5, $"step {k}: param");
            if (factored)
            {
                Tolerance.AssertClose(reference.RowMoment, kernel.RowMoment!, 0, 1e-5, $"step {k}: row moment");
                Tolerance.AssertClose(reference.ColMoment, kernel.ColMoment!, 0, 1e-5, $"step {k}: column moment");
            }
            else Tolerance.AssertClose(reference.V, kernel.V!, 1e-36, 1e-5, $"step {k}: second moment");
            if (momentum) Tolerance.AssertClose(reference.Momentum, kernel.Momentum!, 1e-6, 1e-4, $"step {k}: momentum");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Update_SameBitsForAnyThreadCount(bool factored)
    {
        const int rows = 130, cols = 401; // 52130 elements: four reduction chunks; seven column blocks
        var param = TestData.Uniform(95, rows * cols, 0.05f);
        int[]? referenceBits = null;
        foreach (int threads in new[] { 1, 2, 3 })
        {
            var state = new KernelState(param, rows, cols, factored, momentum: true);
            for (int k = 1; k <= 2; k++) state.Step(threads, Gradient(95 + k, rows, cols), rows, cols, StepAt(k, true, 1f));
            var bits = Array.ConvertAll(state.Param, BitConverter.SingleToInt32Bits)
                .Concat(Array.ConvertAll(state.Momentum!, BitConverter.SingleToInt32Bits))
                .Concat(Array.ConvertAll(factored ? state.RowMoment!.Concat(state.ColMoment!).ToArray() : state.V!, BitConverter.SingleToInt32Bits))
                .ToArray();
            if (referenceBits is null) referenceBits = bits;
            else Assert.Equal(referenceBits, bits);
        }
    }

    // ---- a tensor split over devices: pass 1 per piece, sums added in piece order, pass 2 per piece ---------

    /// <summary>Runs one step on pieces of the flattened tensor (each piece padded past its end with sentinels).</summary>
    static void PieceStep(float[][] param, float[][] momentum, float[][] v, float[][] grad, int[] sizes, in AdafactorStep s)
    {
        double u2 = 0, p2 = 0;
        var a = new double[1];
        var b = new double[1];
        for (int j = 0; j < sizes.Length; j++)
        {
            CpuAdafactor.SegmentSums(2, param[j], grad[j], v[j], [new Segment(0, sizes[j])], s, a, b);
            u2 += a[0]; p2 += b[0];
        }
        long count = sizes.Sum();
        for (int j = 0; j < sizes.Length; j++)
            CpuAdafactor.SegmentApply(2, param[j], grad[j], momentum[j], v[j], [new Segment(0, sizes[j])], [u2], [p2], [count], s);
    }

    static float[][] Split(float[] x, int[] sizes, float pad) =>
        sizes.Select((n, j) => x.Skip(sizes.Take(j).Sum()).Take(n).Concat(Enumerable.Repeat(pad, 3)).ToArray()).ToArray();

    [Theory]
    [InlineData(1f)]
    [InlineData(0.5f)]   // update clipping bites: the clip factor must come from the whole tensor's RMS(u)
    public void PiecesOfASplitTensor_MatchTheReference(float clipThreshold)
    {
        const int rows = 7, cols = 13;
        int[] sizes = [30, 40, 21];
        var full = TestData.Uniform(71, rows * cols, 0.05f);
        var reference = new Reference(full, rows, cols);
        var param = Split(full, sizes, 9f);
        var momentum = Split(new float[rows * cols], sizes, 9f);
        var v = Split(new float[rows * cols], sizes, 9f);
        for (int k = 1; k <= 3; k++)
        {
            var grad = Gradient(71 + k, rows, cols);
            var s = StepAt(k, momentum: true, clipThreshold);
            PieceStep(param, momentum, v, Split(grad, sizes, 5f), sizes, s);
            reference.Step(grad, factored: false, momentum: true, s);
            var joined = param.Select((p, j) => p[..sizes[j]]).SelectMany(p => p).ToArray();
            Tolerance.AssertClose(reference.Param, joined, 1e-6 * 0.05, 1e-5, $"step {k}: param from pieces");
            Tolerance.AssertClose(reference.Momentum, momentum.Select((m, j) => m[..sizes[j]]).SelectMany(m => m).ToArray(), 1e-6, 1e-4, $"step {k}: momentum");
        }
        // Nothing past a piece's length is read as data or written.
        Assert.All(param.Concat(momentum).Concat(v), piece => Assert.Equal([9f, 9f, 9f], piece[^3..]));
    }

    [Fact]
    public void OnePieceIsTheFusedUpdateBitForBit()
    {
        const int rows = 130, cols = 401;   // four reduction chunks
        var param = TestData.Uniform(97, rows * cols, 0.05f);
        var fused = new KernelState(param, rows, cols, factored: false, momentum: true);
        float[] p = (float[])param.Clone(), m = new float[rows * cols], v = new float[rows * cols];
        for (int k = 1; k <= 2; k++)
        {
            var grad = Gradient(97 + k, rows, cols);
            var s = StepAt(k, true, 0.5f);
            fused.Step(2, grad, rows, cols, s);
            PieceStep([p], [m], [v], [grad], [rows * cols], s);
        }
        Assert.Equal(Array.ConvertAll(fused.Param, BitConverter.SingleToInt32Bits), Array.ConvertAll(p, BitConverter.SingleToInt32Bits));
        Assert.Equal(Array.ConvertAll(fused.V!, BitConverter.SingleToInt32Bits), Array.ConvertAll(v, BitConverter.SingleToInt32Bits));
    }

    // ---- a flat arena: every tensor a segment, two passes over all of them --------------------------------

    /// <summary>
    /// Tensors of 1, 7, 16385 (a chunk and one), 52130 (four chunks) and 5 elements laid out in one arena with gaps
    /// (and an empty segment); the gaps hold sentinels that must survive.
    /// </summary>
    internal static (Segment[] Segments, int Length) Arena(params int[] sizes)
    {
        var segments = new Segment[sizes.Length];
        long at = 3;
        for (int i = 0; i < sizes.Length; i++) { segments[i] = new Segment(at, sizes[i]); at += sizes[i] + 2 + i % 3; }
        return (segments, (int)at + 1);
    }

    internal static readonly int[] ArenaSizes = [1, 7, 0, 16385, 130 * 401, 5];

    static float[] ArenaOf(int seed, int length, Segment[] segments, float scale, float sentinel)
    {
        var x = new float[length];
        Array.Fill(x, sentinel);
        var values = TestData.Uniform(seed, length, scale);
        foreach (var sg in segments) Array.Copy(values, sg.Offset, x, sg.Offset, sg.Count);
        return x;
    }

    // Per segment the bits of the fused unfactored update of that tensor alone, for any thread count, over steps
    // with and without update clipping; nothing between segments is touched.
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Segments_MatchFusedUpdate_BitForBit(int threads)
    {
        var (segments, length) = Arena(ArenaSizes);
        var param = ArenaOf(61, length, segments, 0.05f, 7f);
        var momentum = ArenaOf(62, length, segments, 0f, 7f);
        var v = ArenaOf(63, length, segments, 0f, 7f);
        var tensors = segments.Select(sg => (P: param[(int)sg.Offset..(int)(sg.Offset + sg.Count)], M: new float[sg.Count], V: new float[sg.Count])).ToArray();
        var u2 = new double[segments.Length];
        var p2 = new double[segments.Length];
        var counts = segments.Select(sg => sg.Count).ToArray();
        for (int k = 1; k <= 3; k++)
        {
            var s = StepAt(k, momentum: true, k == 2 ? 0.05f : 1f);
            var grad = ArenaOf(70 + k, length, segments, 1f, float.NaN);   // a gap read as gradient would poison the sums
            CpuAdafactor.SegmentSums(threads, param, grad, v, segments, s, u2, p2);
            CpuAdafactor.SegmentApply(threads, param, grad, momentum, v, segments, u2, p2, counts, s);
            for (int i = 0; i < segments.Length; i++)
            {
                var sg = segments[i];
                if (sg.Count == 0) { Assert.Equal(0, u2[i]); Assert.Equal(0, p2[i]); continue; }
                var g = grad[(int)sg.Offset..(int)(sg.Offset + sg.Count)];
                CpuAdafactor.Update(1, tensors[i].P, g, tensors[i].M, tensors[i].V, null, null, 1, (int)sg.Count, s);
                string at = $"step {k}, segment {i}";
                Assert.True(Bits(tensors[i].P).SequenceEqual(Bits(param[(int)sg.Offset..(int)(sg.Offset + sg.Count)])), at + ": param");
                Assert.True(Bits(tensors[i].M).SequenceEqual(Bits(momentum[(int)sg.Offset..(int)(sg.Offset + sg.Count)])), at + ": momentum");
                Assert.True(Bits(tensors[i].V).SequenceEqual(Bits(v[(int)sg.Offset..(int)(sg.Offset + sg.Count)])), at + ": second moment");
            }
        }
        for (int i = 0; i < length; i++)
            if (!segments.Any(sg => i >= sg.Offset && i < sg.Offset + sg.Count))
                Assert.True(param[i] == 7f && momentum[i] == 7f && v[i] == 7f, $"element {i} between segments was written");
    }

    // The segment sums are the scalar double sums of u² and p² (within rounding): checks the passes against the paper's
    // arithmetic rather than against each other.
    [Fact]
    public void SegmentSums_MatchScalarReference()
    {
        var (segments, length) = Arena(ArenaSizes);
        var param = ArenaOf(64, length, segments, 0.05f, 3f);
        var grad = ArenaOf(65, length, segments, 1f, 3f);
        var v = ArenaOf(66, length, segments, 0.01f, 3f);
        for (int i = 0; i < v.Length; i++) v[i] = Math.Abs(v[i]);
        var v0 = (float[])v.Clone();
        var s = StepAt(3, momentum: false, 1f);
        var u2 = new double[segments.Length];
        var p2 = new double[segments.Length];
        CpuAdafactor.SegmentSums(2, param, grad, v, segments, s, u2, p2);
        for (int i = 0; i < segments.Length; i++)
        {
            double eu = 0, ep = 0;
            for (long j = segments[i].Offset; j < segments[i].Offset + segments[i].Count; j++)
            {
                double g = (double)s.GradScale * grad[j];
                double vv = s.Beta2 * (double)v0[j] + (1 - s.Beta2) * (g * g + s.Epsilon1);
                eu += g * g / vv;
                ep += (double)param[j] * param[j];
            }
            Tolerance.AssertClose(new[] { eu, ep }, new[] { (float)u2[i], (float)p2[i] }, 1e-12, 1e-5, $"segment {i} sums");
        }
    }

    /// <summary>
    /// Σu², Σp² of a segment in the order the fused update sums a tensor (chunks of 16384 from the segment's start, each
    /// in index order, then the chunks in order), in scalar code, updating v as pass 1 does. The clip factor and step
    /// size round the sums to float, so a reordering rarely shows in the weights; the sums themselves must match.
    /// </summary>
    internal static (double U2, double P2) OrderedSums(float[] param, float[] grad, float[] v, Segment sg, in AdafactorStep s)
    {
        double tu = 0, tp = 0;
        for (long c0 = sg.Offset; c0 < sg.Offset + sg.Count; c0 += 16384)
        {
            double u2 = 0, p2 = 0;
            for (long i = c0; i < Math.Min(sg.Offset + sg.Count, c0 + 16384); i++)
            {
                float g = grad[i] * s.GradScale;
                float vv = s.Beta2 * v[i] + (1 - s.Beta2) * (g * g + s.Epsilon1);
                v[i] = vv;
                float u = g / MathF.Sqrt(vv);
                u2 += (double)u * u;
                p2 += (double)param[i] * param[i];
            }
            tu += u2;
            tp += p2;
        }
        return (tu, tp);
    }

    [Fact]
    public void SegmentSums_FollowTheFusedOrderToTheBit()
    {
        var (segments, length) = Arena(ArenaSizes);
        var param = ArenaOf(67, length, segments, 0.05f, 3f);
        var grad = ArenaOf(68, length, segments, 1f, 3f);
        for (int i = 0; i < grad.Length; i += 101) grad[i] *= 300f;   // a wide range, so order shows in the bits
        var v = ArenaOf(69, length, segments, 0.01f, 3f);
        for (int i = 0; i < v.Length; i++) v[i] = Math.Abs(v[i]);
        var vRef = (float[])v.Clone();
        var s = StepAt(2, momentum: false, 1f);
        var u2 = new double[segments.Length];
        var p2 = new double[segments.Length];
        CpuAdafactor.SegmentSums(3, param, grad, v, segments, s, u2, p2);
        for (int i = 0; i < segments.Length; i++)
        {
            var (eu, ep) = OrderedSums(param, grad, vRef, segments[i], s);
            Assert.Equal(BitConverter.DoubleToInt64Bits(eu), BitConverter.DoubleToInt64Bits(u2[i]));
            Assert.Equal(BitConverter.DoubleToInt64Bits(ep), BitConverter.DoubleToInt64Bits(p2[i]));
        }
        Assert.Equal(Bits(vRef), Bits(v));
    }

    [Fact]
    public void Segments_EmptyList_DoesNothing()
    {
        var param = new[] { 1f, 2f };
        CpuAdafactor.SegmentSums(2, param, param, param, [], StepAt(1, false, 1f), [], []);
        CpuAdafactor.SegmentApply(2, param, param, null, param, [], [], [], [], StepAt(1, false, 1f));
        Assert.Equal([1f, 2f], param);
    }

    static int[] Bits(float[] x) => Array.ConvertAll(x, BitConverter.SingleToInt32Bits);
}

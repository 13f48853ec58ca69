using Palm.Gpu.Backends;
using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

// Adafactor on every backend, three steps: param (R,C), grad, momentum?, v (R,C) | vRow (R) + vCol (C) -> updated
// in place; and the two passes (Σu², Σp² per segment, then the update) over pieces of a split tensor and over an
// arena of tensors. The same float operations in the same order with double reductions in the same chunks: the
// CPU's bits on a device with fp64 and correctly rounded divide and sqrt (PoCL), a few ulps elsewhere; and against
// a double-precision reference written from the paper.
[Collection(ConformanceCollection.Name)]
public class AdafactorConformance(ConformanceFixture fx)
{
    // Pass-1 sums (doubles to the host) are the CPU's bits where the backend promises them or reduces in double.
    bool SumsBitExact(string backend) => fx.SameBitsAsCpu(backend) || fx.Get(backend) is OpenClBackend { Device.HasFp64: true };

    double Rtol(string backend) => fx.Get(backend) is OpenClBackend o && !(o.Device.HasFp64 && o.Device.CorrectlyRoundedDivideSqrt) ? 1e-6 : 0;

    static AdafactorStep Step(int k, bool momentum, float clip = 1f, float gradScale = 1f) =>
        new(LearningRate: 1e-2f, Beta1: momentum ? 0.9f : 0f, Beta2: 1f - MathF.Pow(k, -0.8f), Epsilon1: 1e-30f, Epsilon2: 1e-3f,
            ClipThreshold: clip, GradScale: gradScale, WeightDecay: 1e-4f);

    internal static OpCase Case(int rows, int cols)
    {
        int count = rows * cols;
        return new OpCase().F("param", TestData.Uniform(81, count, 0.5f))
            .F("g1", TestData.Uniform(82, count, 0.1f)).F("g2", TestData.Uniform(83, count, 0.1f)).F("g3", TestData.Uniform(84, count, 3f))
            .Zeros("m", count).Zeros("v", count).Zeros("vr", rows).Zeros("vc", cols);
    }

    internal static Action<IBackend, Func<string, Palm.Gpu.Tensors.DeviceBuffer>> Call(int rows, int cols, bool factored, bool momentum) => (be, t) =>
    {
        var state = new AdafactorBuffers(momentum ? t("m") : null, factored ? null : t("v"), factored ? t("vr") : null, factored ? t("vc") : null);
        for (int k = 1; k <= 3; k++) be.AdafactorUpdate(t("param"), t("g" + k), state, rows, cols, Step(k, momentum, gradScale: k == 3 ? 0.25f : 1f));
    };

    // Odd shapes; several 16384-element chunks; 16 × 64 aligned; more rows than a tile of the row mean.
    public static IEnumerable<object[]> Shapes => ConformanceBackends.Cross(
        [37, 29, false, true], [37, 29, true, false], [3, 20001, false, false], [5, 7001, true, true], [16, 64, false, true], [16, 64, true, true],
        [300, 7, true, false]);

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Three_steps_match_cpu(string backend, int rows, int cols, bool factored, bool momentum)
    {
        var (actual, cpu) = fx.RunBoth(backend, Case(rows, cols), Call(rows, cols, factored, momentum), "param", "m", "v", "vr", "vc");
        fx.AssertMatchesCpu(backend, actual, cpu, 0, Rtol(backend), $"adafactor {rows}x{cols} factored={factored}");
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Pieces_of_a_split_tensor_match_cpu(string backend)
    {
        int[] sizes = [7001, 20003];   // the second spans two chunks
        var op = new OpCase();
        for (int j = 0; j < 2; j++)
            op.F("p" + j, TestData.Uniform(61 + j, sizes[j], 0.5f)).Zeros("m" + j, sizes[j]).Zeros("v" + j, sizes[j]).F("g" + j, TestData.Uniform(71 + j, sizes[j], 0.1f));
        var (actual, cpu) = fx.RunBoth(backend, op, (be, t) =>
        {
            for (int k = 1; k <= 3; k++)
            {
                var step = Step(k, true, clip: 0.5f, gradScale: 0.8f);
                double u2 = 0, p2 = 0;
                for (int j = 0; j < 2; j++) { var (a, b) = PieceSums(be, t("p" + j), t("g" + j), t("v" + j), sizes[j], step); u2 += a; p2 += b; }
                for (int j = 0; j < 2; j++) PieceApply(be, t("p" + j), t("g" + j), t("m" + j), t("v" + j), sizes[j], u2, p2, sizes.Sum(), step);
            }
        }, "p0", "p1", "m0", "m1", "v0", "v1");
        fx.AssertMatchesCpu(backend, actual, cpu, 0, Rtol(backend), "adafactor pieces");
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Same_bits_on_every_run(string backend)
    {
        fx.AssertDeterministic(backend, Case(5, 7001), Call(5, 7001, true, true), "param", "m", "vr", "vc");
        fx.AssertDeterministic(backend, Case(3, 20001), Call(3, 20001, false, true), "param", "m", "v");
    }

    // ---- against the reference written from the paper -------------------------------------------------------

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

    /// <summary>Host copies of the tensors, uploaded to the backend for each step and read back after it.</summary>
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

        public void Step(IBackend be, float[] grad, int rows, int cols, AdafactorStep s)
        {
            var op = new OpCase().F("p", Param).F("g", grad);
            var names = new List<string> { "p" };
            void Add(string name, float[]? x) { if (x is not null) { op.F(name, x); names.Add(name); } }
            Add("m", Momentum); Add("v", V); Add("vr", RowMoment); Add("vc", ColMoment);
            var r = op.Run(be, t => be.AdafactorUpdate(t("p"), t("g"),
                new AdafactorBuffers(Momentum is null ? null : t("m"), V is null ? null : t("v"), RowMoment is null ? null : t("vr"), ColMoment is null ? null : t("vc")),
                rows, cols, s), [.. names]);
            Param = r["p"];
            if (Momentum is not null) Momentum = r["m"];
            if (V is not null) V = r["v"];
            if (RowMoment is not null) { RowMoment = r["vr"]; ColMoment = r["vc"]; }
        }
    }

    // clipThreshold 0.5 makes update clipping bite on every step; paramScale 1e-4 puts RMS(p) below ε2.
    public static IEnumerable<object[]> ReferenceCases => ConformanceBackends.Cross(
        [false, false, 1f, 0.05f], [false, true, 1f, 0.05f], [true, false, 1f, 0.05f], [true, true, 1f, 0.05f], [false, true, 0.5f, 1e-4f], [true, true, 0.5f, 1e-4f]);

    [Theory]
    [MemberData(nameof(ReferenceCases))]
    public void Update_matches_reference_over_three_steps(string backend, bool factored, bool momentum, float clipThreshold, float paramScale)
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
            kernel.Step(fx.Get(backend), grad, rows, cols, s);
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
            Tolerance.AssertClose(expectedDelta, delta, deltaAtol, 1e-4, $"{backend} step {k}: Δparam");
            Tolerance.AssertClose(reference.Param, kernel.Param, deltaAtol, 1e-5, $"{backend} step {k}: param");
            if (factored)
            {
                Tolerance.AssertClose(reference.RowMoment, kernel.RowMoment!, 0, 1e-5, $"{backend} step {k}: row moment");
                Tolerance.AssertClose(reference.ColMoment, kernel.ColMoment!, 0, 1e-5, $"{backend} step {k}: column moment");
            }
            else Tolerance.AssertClose(reference.V, kernel.V!, 1e-36, 1e-5, $"{backend} step {k}: second moment");
            if (momentum) Tolerance.AssertClose(reference.Momentum, kernel.Momentum!, 1e-6, 1e-4, $"{backend} step {k}: momentum");
        }
    }

    public static IEnumerable<object[]> Factored => ConformanceBackends.Cross([false], [true]);

    // 52130 elements: four reduction chunks, seven column blocks; two steps; the CPU's bits where promised.
    [Theory]
    [MemberData(nameof(Factored))]
    public void Update_same_bits_on_every_run(string backend, bool factored)
    {
        const int rows = 130, cols = 401;
        var param = TestData.Uniform(95, rows * cols, 0.05f);
        float[] Run(string name)
        {
            var state = new KernelState(param, rows, cols, factored, momentum: true);
            for (int k = 1; k <= 2; k++) state.Step(fx.Get(name), Gradient(95 + k, rows, cols), rows, cols, StepAt(k, true, 1f));
            return [.. state.Param, .. state.Momentum!, .. factored ? state.RowMoment!.Concat(state.ColMoment!) : state.V!];
        }
        var first = Run(backend);
        Bits.AssertIdentical(first, Run(backend), $"{backend}: second run");
        if (fx.SameBitsAsCpu(backend)) Bits.AssertIdentical(Run("cpu"), first, $"{backend} vs cpu");
    }

    // ---- a tensor split over devices: pass 1 per piece, sums added in piece order, pass 2 per piece ---------

    /// <summary>Runs one step on pieces of the flattened tensor (each piece padded past its end with sentinels).</summary>
    static void PieceStep(IBackend be, float[][] param, float[][] momentum, float[][] v, float[][] grad, int[] sizes, AdafactorStep s)
    {
        var op = new OpCase();
        for (int j = 0; j < sizes.Length; j++) op.F("p" + j, param[j]).F("m" + j, momentum[j]).F("v" + j, v[j]).F("g" + j, grad[j]);
        var names = Enumerable.Range(0, sizes.Length).SelectMany(j => new[] { "p" + j, "m" + j, "v" + j }).ToArray();
        var r = op.Run(be, t =>
        {
            double u2 = 0, p2 = 0;
            for (int j = 0; j < sizes.Length; j++)
            {
                var (a, b) = PieceSums(be, t("p" + j), t("g" + j), t("v" + j), sizes[j], s);
                u2 += a; p2 += b;
            }
            long count = sizes.Sum();
            for (int j = 0; j < sizes.Length; j++) PieceApply(be, t("p" + j), t("g" + j), t("m" + j), t("v" + j), sizes[j], u2, p2, count, s);
        }, names);
        for (int j = 0; j < sizes.Length; j++) { param[j] = r["p" + j]; momentum[j] = r["m" + j]; v[j] = r["v" + j]; }
    }

    static float[][] Split(float[] x, int[] sizes, float pad) =>
        sizes.Select((n, j) => x.Skip(sizes.Take(j).Sum()).Take(n).Concat(Enumerable.Repeat(pad, 3)).ToArray()).ToArray();

    public static IEnumerable<object[]> Clips => ConformanceBackends.Cross([1f], [0.5f]);   // 0.5: update clipping bites, from the whole tensor's RMS(u)

    [Theory]
    [MemberData(nameof(Clips))]
    public void Pieces_of_a_split_tensor_match_the_reference(string backend, float clipThreshold)
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
            PieceStep(fx.Get(backend), param, momentum, v, Split(grad, sizes, 5f), sizes, s);
            reference.Step(grad, factored: false, momentum: true, s);
            var joined = param.Select((p, j) => p[..sizes[j]]).SelectMany(p => p).ToArray();
            Tolerance.AssertClose(reference.Param, joined, 1e-6 * 0.05, 1e-5, $"{backend} step {k}: param from pieces");
            Tolerance.AssertClose(reference.Momentum, momentum.Select((m, j) => m[..sizes[j]]).SelectMany(m => m).ToArray(), 1e-6, 1e-4, $"{backend} step {k}: momentum");
        }
        // Nothing past a piece's length is read as data or written.
        Assert.All(param.Concat(momentum).Concat(v), piece => Assert.Equal([9f, 9f, 9f], piece[^3..]));
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void One_piece_is_the_fused_update_bit_for_bit(string backend)
    {
        const int rows = 130, cols = 401;   // four reduction chunks
        var param = TestData.Uniform(97, rows * cols, 0.05f);
        var fused = new KernelState(param, rows, cols, factored: false, momentum: true);
        float[] p = (float[])param.Clone(), m = new float[rows * cols], v = new float[rows * cols];
        for (int k = 1; k <= 2; k++)
        {
            var grad = Gradient(97 + k, rows, cols);
            var s = StepAt(k, true, 0.5f);
            fused.Step(fx.Get(backend), grad, rows, cols, s);
            float[][] pp = [p], mm = [m], vv = [v];
            PieceStep(fx.Get(backend), pp, mm, vv, [grad], [rows * cols], s);
            p = pp[0]; m = mm[0]; v = vv[0];
        }
        Assert.Equal(Array.ConvertAll(fused.Param, BitConverter.SingleToInt32Bits), Array.ConvertAll(p, BitConverter.SingleToInt32Bits));
        Assert.Equal(Array.ConvertAll(fused.V!, BitConverter.SingleToInt32Bits), Array.ConvertAll(v, BitConverter.SingleToInt32Bits));
    }

    // One piece of a split tensor through the segmented passes (a one-segment list).
    static (double U2, double P2) PieceSums(Palm.Gpu.Backends.IBackend be, Palm.Gpu.Tensors.DeviceBuffer p, Palm.Gpu.Tensors.DeviceBuffer g,
                                           Palm.Gpu.Tensors.DeviceBuffer v, long n, Palm.Gpu.Backends.AdafactorStep s)
    {
        var u2 = new double[1];
        var p2 = new double[1];
        be.AdafactorSums(p, g, v, [new Palm.Gpu.Backends.Segment(0, n)], s, u2, p2);
        return (u2[0], p2[0]);
    }

    static void PieceApply(Palm.Gpu.Backends.IBackend be, Palm.Gpu.Tensors.DeviceBuffer p, Palm.Gpu.Tensors.DeviceBuffer g, Palm.Gpu.Tensors.DeviceBuffer m,
                           Palm.Gpu.Tensors.DeviceBuffer v, long n, double u2, double p2, long count, Palm.Gpu.Backends.AdafactorStep s) =>
        be.AdafactorApply(p, g, m, v, [new Palm.Gpu.Backends.Segment(0, n)], [u2], [p2], [count], s);

    // ---- a flat arena: every tensor a segment, two passes over all of them --------------------------------

    /// <summary>Segments of the given sizes laid out in one arena with gaps of 2 to 4 elements before, between and after them.</summary>
    internal static (Segment[] Segments, int Length) Arena(params int[] sizes)
    {
        var segments = new Segment[sizes.Length];
        long at = 3;
        for (int i = 0; i < sizes.Length; i++) { segments[i] = new Segment(at, sizes[i]); at += sizes[i] + 2 + i % 3; }
        return (segments, (int)at + 1);
    }

    // 1, 7, an empty segment, 16385 (a chunk and one), 52130 (four chunks), 5.
    internal static readonly int[] ArenaSizes = [1, 7, 0, 16385, 130 * 401, 5];

    static float[] ArenaOf(int seed, int length, Segment[] segments, float scale, float sentinel)
    {
        var x = new float[length];
        Array.Fill(x, sentinel);
        var values = TestData.Uniform(seed, length, scale);
        foreach (var sg in segments) Array.Copy(values, sg.Offset, x, sg.Offset, sg.Count);
        return x;
    }

    static float[] Of(float[] x, Segment sg) => x[(int)sg.Offset..(int)(sg.Offset + sg.Count)];

    /// <summary>
    /// The arena (param, momentum, v hold 7 in the gaps, the gradients NaN: a gap read as data poisons the sums) and,
    /// per non-empty segment, host copies of its tensor for the fused update of that tensor alone.
    /// </summary>
    internal static OpCase SegmentsCase(out Segment[] segments, out string[] outputs)
    {
        var (sg, length) = Arena(ArenaSizes);
        segments = sg;
        var param = ArenaOf(61, length, sg, 0.05f, 7f);
        var op = new OpCase().F("p", param).F("m", ArenaOf(62, length, sg, 0f, 7f)).F("v", ArenaOf(63, length, sg, 0f, 7f));
        var grads = Enumerable.Range(1, 3).Select(k => ArenaOf(70 + k, length, sg, 1f, float.NaN)).ToArray();
        for (int k = 1; k <= 3; k++) op.F("g" + k, grads[k - 1]);
        var names = new List<string> { "p", "m", "v" };
        for (int i = 0; i < sg.Length; i++)
        {
            if (sg[i].Count == 0) continue;
            op.F("fp" + i, Of(param, sg[i])).Zeros("fm" + i, sg[i].Count).Zeros("fv" + i, sg[i].Count);
            for (int k = 1; k <= 3; k++) op.F($"fg{i}.{k}", Of(grads[k - 1], sg[i]));
            names.AddRange(["fp" + i, "fm" + i, "fv" + i]);
        }
        outputs = [.. names];
        return op;
    }

    /// <summary>Three steps (update clipping in the second) of the two passes over the arena, and of the fused update per tensor; the sums go to <paramref name="sums"/>.</summary>
    internal static void SegmentsCall(IBackend be, Func<string, Palm.Gpu.Tensors.DeviceBuffer> t, Segment[] segments, bool momentum, List<double> sums)
    {
        var u2 = new double[segments.Length];
        var p2 = new double[segments.Length];
        var counts = segments.Select(sg => sg.Count).ToArray();
        for (int k = 1; k <= 3; k++)
        {
            var s = StepAt(k, momentum, k == 2 ? 0.05f : 1f);
            be.AdafactorSums(t("p"), t("g" + k), t("v"), segments, s, u2, p2);
            sums.AddRange(u2); sums.AddRange(p2);
            be.AdafactorApply(t("p"), t("g" + k), momentum ? t("m") : null, t("v"), segments, u2, p2, counts, s);
            for (int i = 0; i < segments.Length; i++)
                if (segments[i].Count > 0)
                    be.AdafactorUpdate(t("fp" + i), t($"fg{i}.{k}"), new AdafactorBuffers(momentum ? t("fm" + i) : null, t("fv" + i), null, null),
                                       1, (int)segments[i].Count, s);
        }
    }

    /// <summary>Per segment the fused update's bits; an empty segment sums to zero; nothing between segments is written.</summary>
    internal static void AssertSegmentsAreFused(Dictionary<string, float[]> r, Segment[] segments, bool momentum, List<double> sums, string what)
    {
        for (int i = 0; i < segments.Length; i++)
        {
            var sg = segments[i];
            if (sg.Count == 0)
            {
                for (int k = 0; k < 3; k++) { Assert.Equal(0, sums[2 * k * segments.Length + i]); Assert.Equal(0, sums[(2 * k + 1) * segments.Length + i]); }
                continue;
            }
            Bits.AssertIdentical(r["fp" + i], Of(r["p"], sg), $"{what} segment {i}: param, segmented vs fused");
            Bits.AssertIdentical(r["fv" + i], Of(r["v"], sg), $"{what} segment {i}: second moment, segmented vs fused");
            if (momentum) Bits.AssertIdentical(r["fm" + i], Of(r["m"], sg), $"{what} segment {i}: momentum, segmented vs fused");
        }
        for (int i = 0; i < r["p"].Length; i++)
            if (!segments.Any(sg => i >= sg.Offset && i < sg.Offset + sg.Count))
                Assert.True(r["p"][i] == 7f && r["m"][i] == 7f && r["v"][i] == 7f, $"{what}: element {i} between segments was written");
    }

    public static IEnumerable<object[]> Momentum => ConformanceBackends.Cross([true], [false]);

    // The two passes over an arena of tensors give, per segment, the bits of the fused update of that tensor alone, and
    // the CPU's bits (sums included: the scalars' float rounding hides most reorderings) where promised.
    [Theory]
    [MemberData(nameof(Momentum))]
    public void Segments_match_the_fused_update_bit_for_bit(string backend, bool momentum)
    {
        var op = SegmentsCase(out var segments, out var outputs);
        var be = fx.Get(backend);
        List<double> sums = [], cpuSums = [];
        var actual = op.Run(be, t => SegmentsCall(be, t, segments, momentum, sums), outputs);
        var cpu = op.Run(fx.Cpu, t => SegmentsCall(fx.Cpu, t, segments, momentum, cpuSums), outputs);
        AssertSegmentsAreFused(actual, segments, momentum, sums, backend);
        fx.AssertMatchesCpu(backend, actual, cpu, 0, Rtol(backend), "adafactor segments");
        if (SumsBitExact(backend)) Assert.Equal(cpuSums.Select(BitConverter.DoubleToInt64Bits), sums.Select(BitConverter.DoubleToInt64Bits));
        else Tolerance.AssertClose(cpuSums.ToArray(), sums.ToArray(), 0, 1e-6, $"{backend}: segment sums vs cpu");
    }

    /// <summary>Runs pass 1 alone over the arena on the backend; returns the sums and the updated v.</summary>
    (double[] U2, double[] P2, float[] V) Sums(string backend, float[] param, float[] grad, float[] v, Segment[] segments, AdafactorStep s)
    {
        var be = fx.Get(backend);
        var u2 = new double[segments.Length];
        var p2 = new double[segments.Length];
        var r = new OpCase().F("p", param).F("g", grad).F("v", v).Run(be, t => be.AdafactorSums(t("p"), t("g"), t("v"), segments, s, u2, p2), "v");
        return (u2, p2, r["v"]);
    }

    // The segment sums are the double sums of u² and p² (within rounding): the passes against the paper's arithmetic
    // rather than against each other.
    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Segment_sums_match_the_scalar_reference(string backend)
    {
        var (segments, length) = Arena(ArenaSizes);
        var param = ArenaOf(64, length, segments, 0.05f, 3f);
        var grad = ArenaOf(65, length, segments, 1f, 3f);
        var v0 = ArenaOf(66, length, segments, 0.01f, 3f);
        for (int i = 0; i < v0.Length; i++) v0[i] = Math.Abs(v0[i]);
        var s = StepAt(3, momentum: false, 1f);
        var (u2, p2, _) = Sums(backend, param, grad, v0, segments, s);
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
            Tolerance.AssertClose(new[] { eu, ep }, new[] { u2[i], p2[i] }, 1e-12, 1e-5, $"{backend}: segment {i} sums");
        }
    }

    /// <summary>
    /// Σu², Σp² of a segment in the order the fused update sums a tensor (chunks of 16384 from the segment's start, each
    /// in index order, then the chunks in order), in scalar code, updating v as pass 1 does. The clip factor and step
    /// size round the sums to float, so a reordering rarely shows in the weights; the sums themselves must match.
    /// </summary>
    static (double U2, double P2) OrderedSums(float[] param, float[] grad, float[] v, Segment sg, in AdafactorStep s)
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

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Segment_sums_follow_the_fused_order_to_the_bit(string backend)
    {
        var (segments, length) = Arena(ArenaSizes);
        var param = ArenaOf(67, length, segments, 0.05f, 3f);
        var grad = ArenaOf(68, length, segments, 1f, 3f);
        for (int i = 0; i < grad.Length; i += 101) grad[i] *= 300f;   // a wide range, so order shows in the bits
        var v = ArenaOf(69, length, segments, 0.01f, 3f);
        for (int i = 0; i < v.Length; i++) v[i] = Math.Abs(v[i]);
        var vRef = (float[])v.Clone();
        var s = StepAt(2, momentum: false, 1f);
        var (u2, p2, vOut) = Sums(backend, param, grad, v, segments, s);
        bool exact = SumsBitExact(backend);
        for (int i = 0; i < segments.Length; i++)
        {
            var (eu, ep) = OrderedSums(param, grad, vRef, segments[i], s);
            if (exact)
            {
                Assert.Equal(BitConverter.DoubleToInt64Bits(eu), BitConverter.DoubleToInt64Bits(u2[i]));
                Assert.Equal(BitConverter.DoubleToInt64Bits(ep), BitConverter.DoubleToInt64Bits(p2[i]));
            }
            else Tolerance.AssertClose(new[] { eu, ep }, new[] { u2[i], p2[i] }, 0, 1e-6, $"{backend}: segment {i} sums");
        }
        if (Rtol(backend) == 0) Bits.AssertIdentical(vRef, vOut, $"{backend}: v after pass 1");
        else Tolerance.AssertClose(vRef, vOut, 0, Rtol(backend), $"{backend}: v after pass 1");
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Segments_empty_list_does_nothing(string backend)
    {
        var be = fx.Get(backend);
        var r = new OpCase().F("p", [1f, 2f]).F("g", [3f, 4f]).F("m", [5f, 6f]).F("v", [7f, 8f]).Run(be, t =>
        {
            be.AdafactorSums(t("p"), t("g"), t("v"), [], StepAt(1, false, 1f), [], []);
            be.AdafactorApply(t("p"), t("g"), t("m"), t("v"), [], [], [], [], StepAt(1, true, 1f));
        }, "p", "g", "m", "v");
        Assert.Equal([1f, 2f], r["p"]); Assert.Equal([3f, 4f], r["g"]); Assert.Equal([5f, 6f], r["m"]); Assert.Equal([7f, 8f], r["v"]);
    }
}

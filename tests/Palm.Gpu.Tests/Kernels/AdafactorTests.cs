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
        for (int j = 0; j < sizes.Length; j++)
        {
            var (a, b) = CpuAdafactor.PieceSums(2, param[j], grad[j], v[j], sizes[j], s);
            u2 += a; p2 += b;
        }
        long count = sizes.Sum();
        for (int j = 0; j < sizes.Length; j++) CpuAdafactor.PieceApply(2, param[j], grad[j], momentum[j], v[j], sizes[j], u2, p2, count, s);
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
}

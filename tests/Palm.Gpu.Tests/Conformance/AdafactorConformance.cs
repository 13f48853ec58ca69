using Palm.Gpu.Backends;
using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

// Adafactor on every backend, three steps: param (R,C), grad, momentum?, v (R,C) | vRow (R) + vCol (C) -> updated
// in place; and the two passes over pieces of a split tensor. The same float operations in the same order with
// double reductions in the same chunks: the CPU's bits on a device with fp64 and correctly rounded divide and
// sqrt (PoCL), a few ulps elsewhere. The reference algebra is checked on the CPU in Kernels/AdafactorTests.
[Collection(ConformanceCollection.Name)]
public class AdafactorConformance(ConformanceFixture fx)
{
    double Rtol(string backend) => fx.Get(backend) is OpenClBackend o && !(o.Device.HasFp64 && o.Device.CorrectlyRoundedDivideSqrt) ? 1e-6 : 0;

    static AdafactorStep Step(int k, bool momentum, float clip = 1f, float gradScale = 1f) =>
        new(LearningRate: 1e-2f, Beta1: momentum ? 0.9f : 0f, Beta2: 1f - MathF.Pow(k, -0.8f), Epsilon1: 1e-30f, Epsilon2: 1e-3f,
            ClipThreshold: clip, GradScale: gradScale, WeightDecay: 1e-4f);

    static OpCase Case(int rows, int cols)
    {
        int count = rows * cols;
        return new OpCase().F("param", TestData.Uniform(81, count, 0.5f))
            .F("g1", TestData.Uniform(82, count, 0.1f)).F("g2", TestData.Uniform(83, count, 0.1f)).F("g3", TestData.Uniform(84, count, 3f))
            .Zeros("m", count).Zeros("v", count).Zeros("vr", rows).Zeros("vc", cols);
    }

    static Action<IBackend, Func<string, Palm.Gpu.Tensors.DeviceBuffer>> Call(int rows, int cols, bool factored, bool momentum) => (be, t) =>
    {
        var state = new AdafactorBuffers(momentum ? t("m") : null, factored ? null : t("v"), factored ? t("vr") : null, factored ? t("vc") : null);
        for (int k = 1; k <= 3; k++) be.AdafactorUpdate(t("param"), t("g" + k), state, rows, cols, Step(k, momentum, gradScale: k == 3 ? 0.25f : 1f));
    };

    // Odd shapes; several 16384-element chunks; 16 × 64 aligned.
    public static IEnumerable<object[]> Shapes => ConformanceBackends.Cross(
        [37, 29, false, true], [37, 29, true, false], [3, 20001, false, false], [5, 7001, true, true], [16, 64, false, true], [16, 64, true, true]);

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
                for (int j = 0; j < 2; j++) { var (a, b) = be.AdafactorPieceSums(t("p" + j), t("g" + j), t("v" + j), sizes[j], step); u2 += a; p2 += b; }
                for (int j = 0; j < 2; j++) be.AdafactorPieceApply(t("p" + j), t("g" + j), t("m" + j), t("v" + j), sizes[j], u2, p2, sizes.Sum(), step);
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
}

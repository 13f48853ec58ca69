using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Conformance;

// SwiGLU on every backend. gate (n), up (n) -> out (n) = gate·σ(gate)·up; backward dgate, dup (both =).
// exp comes from each backend's math library: a few ulps vs the CPU.
[Collection(ConformanceCollection.Name)]
public class SwiGluConformance(ConformanceFixture fx)
{
    static double Sigmoid(double x) => x >= 0 ? 1 / (1 + Math.Exp(-x)) : Math.Exp(x) / (1 + Math.Exp(x));

    static double[] Reference(double[] gate, double[] up)
    {
        var y = new double[gate.Length];
        for (int i = 0; i < y.Length; i++) y[i] = gate[i] * Sigmoid(gate[i]) * up[i];
        return y;
    }

    // Gates in ±6, and in ±12 where σ saturates.
    public static IEnumerable<object[]> Sizes => ConformanceBackends.Cross([21, 6f], [37, 6f], [64, 6f], [1005, 6f], [4096, 6f], [1037, 12f]);

    static OpCase Case(int n, float gateScale = 6f) => new OpCase().F("gate", TestData.Uniform(31, n, gateScale)).F("up", TestData.Uniform(32, n, 2f)).F("dout", TestData.Uniform(33, n))
        .Zeros("out", n).F("dgate", TestData.Uniform(34, n)).F("dup", TestData.Uniform(35, n));

    static Action<Palm.Gpu.Backends.IBackend, Func<string, Palm.Gpu.Tensors.DeviceBuffer>> Call(int n) => (be, t) =>
    {
        be.SwiGluForward(t("out"), t("gate"), t("up"), n);
        be.SwiGluBackward(t("dgate"), t("dup"), t("dout"), t("gate"), t("up"), n);
    };

    [Theory]
    [MemberData(nameof(Sizes))]
    public void Forward_and_backward_match_reference_finite_differences_and_cpu(string backend, int n, float gateScale)
    {
        var (actual, cpu) = fx.RunBoth(backend, Case(n, gateScale), Call(n), "out", "dgate", "dup");
        var gate = TestData.ToDouble(TestData.Uniform(31, n, gateScale));
        var up = TestData.ToDouble(TestData.Uniform(32, n, 2f));
        var dout = TestData.ToDouble(TestData.Uniform(33, n));
        Tolerance.AssertClose(Reference(gate, up), actual["out"], 1e-7, 1e-5, $"{backend}: out");
        // Element-wise, so the gradient of Σ dout ⊙ out is one finite difference per element.
        var dg = new double[n]; var du = new double[n];
        const double h = 1e-6;
        for (int i = 0; i < n; i++)
        {
            double f(double g, double u) => g * Sigmoid(g) * u * dout[i];
            dg[i] = (f(gate[i] + h, up[i]) - f(gate[i] - h, up[i])) / (2 * h);
            du[i] = (f(gate[i], up[i] + h) - f(gate[i], up[i] - h)) / (2 * h);
        }
        Tolerance.AssertClose(dg, actual["dgate"], 2e-6, 1e-4, $"{backend}: dgate");
        Tolerance.AssertClose(du, actual["dup"], 2e-6, 1e-4, $"{backend}: dup");
        fx.AssertMatchesCpu(backend, actual, cpu, 1e-7, 1e-5, "swiglu");
    }

    [Theory]
    [MemberData(nameof(ConformanceBackends.Names), MemberType = typeof(ConformanceBackends))]
    public void Same_bits_on_every_run(string backend) => fx.AssertDeterministic(backend, Case(1005), Call(1005), "out", "dgate", "dup");
}

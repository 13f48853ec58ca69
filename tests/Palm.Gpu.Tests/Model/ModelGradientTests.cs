using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Model;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Model;

/// <summary>
/// The whole model's backward against finite differences of its own forward, per parameter tensor:
/// for a random unit direction u over one tensor, (L(θ+hu) − L(θ−hu)) / 2h must equal ∇L·u.
/// A directional check per tensor catches a wrong gradient in any tensor while staying above
/// float32 noise; every variant of the architecture is covered.
/// </summary>
public class ModelGradientTests
{
    public static TheoryData<BlockKind, AttentionKind, bool> Variants => new()
    {
        { BlockKind.Parallel, AttentionKind.MultiQuery, false },
        { BlockKind.Serial, AttentionKind.MultiQuery, false },
        { BlockKind.Parallel, AttentionKind.MultiHead, false },
        { BlockKind.Serial, AttentionKind.MultiHead, false },
        { BlockKind.Parallel, AttentionKind.MultiQuery, true },
        { BlockKind.Serial, AttentionKind.MultiHead, true },
    };

    [Theory]
    [MemberData(nameof(Variants))]
    public void BackwardMatchesFiniteDifferences(BlockKind block, AttentionKind attention, bool remat)
    {
        var config = ModelConfig.Preset("tiny") with { Block = block, Attention = attention, Rematerialize = remat, SeqLen = 12, ZLoss = 0.05f };
        const int batch = 2;
        using var be = new CpuBackend(2);
        using var model = new PalmModel(be, config, batch);
        model.Initialize(3);
        // Perturb the layer-norm scales away from 1 so their gradients are not special.
        foreach (var p in model.Parameters.Where(p => p.IsVector))
            be.Upload(p.Value, TestData.Uniform(p.Name.Length, (int)p.Count, 0.2f).Select(x => 1 + x).ToArray());
        var tokens = TestData.Tokens(5, batch * config.SeqLen, config.Vocab);
        var targets = TestData.Tokens(6, batch * config.SeqLen, config.Vocab);

        model.ZeroGradients();
        model.Forward(tokens, targets, batch);
        model.Backward();

        foreach (var p in model.Parameters)
        {
            var grad = new float[p.Count];
            be.Download(p.Grad, grad);
            var value = new float[p.Count];
            be.Download(p.Value, value);
            var u = TestData.Uniform(p.Name.GetHashCode() & 0xffff, (int)p.Count);
            double norm = Math.Sqrt(u.Sum(x => (double)x * x));
            double analytic = 0;
            for (int i = 0; i < u.Length; i++) { u[i] = (float)(u[i] / norm); analytic += (double)grad[i] * u[i]; }

            double Loss(double h)
            {
                var shifted = new float[value.Length];
                for (int i = 0; i < value.Length; i++) shifted[i] = (float)(value[i] + h * u[i]);
                be.Upload(p.Value, shifted);
                double l = model.Forward(tokens, targets, batch).Total;
                be.Upload(p.Value, value);
                return l;
            }
            const double h = 1e-2;
            // Richardson extrapolation of two central differences cancels the h² term.
            double d1 = (Loss(h) - Loss(-h)) / (2 * h), d2 = (Loss(h / 2) - Loss(-h / 2)) / h;
            double numeric = (4 * d2 - d1) / 3;
            Tolerance.AssertClose([numeric], [(float)analytic], atol: 2e-4, rtol: 2e-2, $"{block}/{attention}/remat={remat} ∇{p.Name}·u");
        }
    }
}

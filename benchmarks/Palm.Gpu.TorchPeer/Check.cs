using Palm.Gpu.Backends;
using Palm.Gpu.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Palm.Gpu.TorchPeer;

/// <summary>
/// `--check`: is the peer palm's model? (1) On palm's initial weights (seed 1) and one batch of text, its step-0 losses and
/// every tensor's gradient must match palm's CPU model; (2) trained with Adam on the text, its loss must fall.
/// A random-init loss near ln V is the usual sanity figure, but here it does not hold for either model: the input embedding
/// (N(0,1), shared with the output) makes the logit of the current token about √D·(its share of the final state), so both
/// start well above ln V; what must hold is that the two agree.
/// </summary>
internal static class Check
{
    public static int Run(PeerOptions o, ModelConfig c, TokenSource tokens)
    {
        bool bf16 = o.Dtype == "bf16";
        // bf16 matmuls round their inputs to 8 bits of mantissa: ~0.4% per product, partly averaging out.
        double lossTolerance = bf16 ? 5e-3 : 1e-4, gradTolerance = bf16 ? 5e-2 : 1e-3;
        var (inputs, targets) = tokens.HostBatch(new Random(11), o.Batch, c.SeqLen);
        Console.WriteLine($"check: {o.Preset} ({c.Block.ToString().ToLowerInvariant()} block), batch {o.Batch} × {c.SeqLen}, {tokens.Description}, {o.Dtype}");

        // palm's CPU model: loss and gradients of the batch at its initial weights.
        LossResult palm;
        var palmGrads = new Dictionary<string, float[]>();
        using (var be = BackendRegistry.Create("cpu", 0, o.Threads))
        using (var reference = new PalmModel(be, c, o.Batch))
        {
            reference.Initialize(1);
            palm = reference.Forward(inputs, targets, o.Batch);
            reference.Backward();
            foreach (var p in reference.Parameters) palmGrads[p.Name] = be.ToHost(p.Grad, p.Count);
        }

        using var model = new PeerModel(c, o.ComputeType, seed: 1);
        bool ok = true;
        using (torch.NewDisposeScope())
        {
            var (loss, ce, z) = model.Forward(TokenSource.ToTensor(inputs, o.Batch, c.SeqLen), TokenSource.ToTensor(targets, o.Batch, c.SeqLen));
            loss.backward();
            double torchCe = ce.item<float>(), torchZ = z.item<float>(), torchLoss = loss.item<float>();
            double lossError = Math.Abs(torchLoss - palm.Total) / Math.Abs(palm.Total);
            Console.WriteLine($"step-0 loss: palm {palm.Total:F6} (ce {palm.CrossEntropy:F6}, z {palm.ZLoss:F6}), libtorch {torchLoss:F6} (ce {torchCe:F6}, z {torchZ:F6}); " +
                              $"relative difference {lossError:E2} (tolerance {lossTolerance:E0}); ln V = {Math.Log(c.Vocab):F4}");
            ok &= lossError <= lossTolerance;

            // Relative L2 error of every tensor's gradient against palm's.
            string worst = "";
            double worstError = 0;
            foreach (var slice in model.Slices)
            {
                var grad = slice.View(slice.Tensor.grad!).contiguous().data<float>().ToArray();
                var expected = palmGrads[slice.Name];
                if (grad.Length != expected.Length) throw new InvalidOperationException($"{slice.Name}: the peer's gradient has {grad.Length} values, palm's {expected.Length}");
                double diff = 0, norm = 0;
                for (int i = 0; i < grad.Length; i++) { diff += Math.Pow(grad[i] - expected[i], 2); norm += Math.Pow(expected[i], 2); }
                double error = Math.Sqrt(diff / Math.Max(norm, 1e-300));
                if (error > worstError) (worstError, worst) = (error, slice.Name);
            }
            Console.WriteLine($"gradients: {model.Slices.Count} tensors, worst relative L2 error {worstError:E2} ({worst}; tolerance {gradTolerance:E0})");
            ok &= worstError <= gradTolerance;
        }

        // Training: the loss on fresh batches of the text must fall well below where it started.
        using var optimizer = torch.optim.Adam(model.Parameters, lr: 3e-3);
        var rng = new Random(5);
        var losses = new List<double>();
        for (int step = 0; step <= o.CheckSteps; step++)
        {
            using var scope = torch.NewDisposeScope();
            var (x, y) = tokens.Batch(rng, o.Batch, c.SeqLen);
            optimizer.zero_grad();
            var (loss, _, _) = model.Forward(x, y);
            losses.Add(loss.item<float>());
            if (step == o.CheckSteps) break;   // the last entry is measured, not trained on
            loss.backward();
            optimizer.step();
        }
        Console.WriteLine($"training ({o.CheckSteps} Adam steps, lr 3e-3): loss " + string.Join(" ", losses.Where((_, i) => i % 5 == 0 || i == losses.Count - 1).Select(l => l.ToString("F3"))));
        // Text: the bytes are far from uniform, so the loss must lose a fifth. Random targets teach nothing beyond ln V:
        // the loss must cover half of its way down to ln V.
        double target = tokens.IsText ? 0.8 * losses[0] : losses[0] - 0.5 * (losses[0] - Math.Log(c.Vocab));
        bool falls = losses[^1] < target;
        Console.WriteLine(falls ? $"loss falls: yes (below {target:F3})" : $"loss falls: NO (from {losses[0]:F3} to {losses[^1]:F3}; expected below {target:F3})");
        ok &= falls;
        Console.WriteLine(ok ? "check: PASS" : "check: FAIL");
        return ok ? 0 : 1;
    }
}

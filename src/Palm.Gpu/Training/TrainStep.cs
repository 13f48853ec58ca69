using Palm.Gpu.Model;

namespace Palm.Gpu.Training;

/// <summary>The parts of a training step, for callers that time or profile them separately.</summary>
public enum StepPart { ZeroGradients, Forward, Backward, Optimizer }

/// <summary>
/// One rank's training step, written once for the engine (every rank of a mesh, one device included), the
/// benchmarks and the tests: zero gradients → forward → backward (gradients synchronised over the mesh) →
/// global gradient norm, then the Adafactor update. Every rank of a mesh calls it with its own share of the batch.
/// </summary>
public static class TrainStep
{
    /// <summary>Gradients of (inputs, targets) (Bl,T) with the loss gradient scaled by lossScale; returns the mesh-wide loss and gradient norm.</summary>
    public static (LossResult Loss, double GradNorm) ComputeGradients(PalmModel model, AdafactorOptimizer optimizer, ReadOnlySpan<int> inputs,
                                                                      ReadOnlySpan<int> targets, int batch, float lossScale = 1f, Action<StepPart>? enter = null)
    {
        enter?.Invoke(StepPart.ZeroGradients);
        model.ZeroGradients();
        enter?.Invoke(StepPart.Forward);
        var loss = model.Forward(inputs, targets, batch);
        enter?.Invoke(StepPart.Backward);
        model.Backward(lossScale);
        enter?.Invoke(StepPart.Optimizer);
        return (loss, optimizer.GradientNorm());
    }

    /// <summary>A whole step: gradients, then Adafactor step <paramref name="step"/> (1-based).</summary>
    public static (LossResult Loss, double GradNorm) Run(PalmModel model, AdafactorOptimizer optimizer, ReadOnlySpan<int> inputs,
                                                         ReadOnlySpan<int> targets, int batch, long step, Action<StepPart>? enter = null)
    {
        var (loss, norm) = ComputeGradients(model, optimizer, inputs, targets, batch, 1f, enter);
        optimizer.Step(step, norm);
        return (loss, norm);
    }
}

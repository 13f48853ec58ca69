using Palm.Gpu.Data;
using Palm.Gpu.Model;

namespace Palm.Gpu.Inference;

/// <summary>Mean token cross-entropy of a model over packed sequences, in batches of at most the model's maximum.</summary>
public static class Evaluator
{
    /// <param name="getSequence">copies sequence i (T + 1 tokens) into the span</param>
    public static double MeanLoss(PalmModel model, long count, Action<long, Span<int>> getSequence)
    {
        if (count <= 0) return double.NaN;
        int t = model.Config.SeqLen;
        var seq = new int[t + 1];
        var inputs = new int[model.MaxBatch * t];
        var targets = new int[model.MaxBatch * t];
        double total = 0;
        for (long done = 0; done < count;)
        {
            int batch = (int)Math.Min(model.MaxBatch, count - done);
            for (int s = 0; s < batch; s++)
            {
                getSequence(done + s, seq);
                seq.AsSpan(0, t).CopyTo(inputs.AsSpan(s * t));
                seq.AsSpan(1, t).CopyTo(targets.AsSpan(s * t));
            }
            total += model.Forward(inputs.AsSpan(0, batch * t), targets.AsSpan(0, batch * t), batch).CrossEntropy * batch;
            done += batch;
        }
        return total / count;
    }

    public static double MeanLoss(PalmModel model, PackedDataset data, bool heldOut, long maxSequences = long.MaxValue)
    {
        long available = heldOut ? data.EvalSequences : data.TrainSequences;
        return MeanLoss(model, Math.Min(available, maxSequences), heldOut ? data.GetEvalSequence : data.GetTrainSequence);
    }
}

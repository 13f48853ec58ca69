using Palm.Gpu.Data;
using Palm.Gpu.Model;

namespace Palm.Gpu.Inference;

/// <summary>Mean cross-entropy of one batch: inputs and targets (batch, T).</summary>
public delegate double BatchLoss(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets, int batch);

/// <summary>Mean token cross-entropy of a model over packed sequences, in batches of at most the model's maximum.</summary>
public static class Evaluator
{
    /// <param name="getSequence">copies sequence i (T + 1 tokens) into the span</param>
    public static double MeanLoss(PalmModel model, long count, Action<long, Span<int>> getSequence) =>
        MeanLoss(Loss(model), model.Config.SeqLen, model.MaxBatch, 1, count, getSequence);

    public static double MeanLoss(PalmModel model, PackedDataset data, bool heldOut, long maxSequences = long.MaxValue) =>
        MeanLoss(Loss(model), model.Config.SeqLen, model.MaxBatch, 1, data, heldOut, maxSequences);

    static BatchLoss Loss(PalmModel model) => (i, t, b) => model.Forward(i, t, b).CrossEntropy;

    /// <summary>
    /// Any model that scores batches: batches hold at most maxBatch sequences and a multiple of batchMultiple
    /// (a mesh's data axis); a remainder smaller than batchMultiple is not scored.
    /// </summary>
    public static double MeanLoss(BatchLoss loss, int seqLen, int maxBatch, int batchMultiple, long count, Action<long, Span<int>> getSequence)
    {
        ArgumentNullException.ThrowIfNull(loss);
        ArgumentNullException.ThrowIfNull(getSequence);
        if (seqLen < 1) throw new ArgumentException($"seqLen must be ≥ 1, got {seqLen}", nameof(seqLen));
        if (batchMultiple < 1) throw new ArgumentException($"batchMultiple must be ≥ 1, got {batchMultiple}", nameof(batchMultiple));
        // A batch must hold at least one whole multiple, or no batch could ever be scored (and the loop would not end).
        if (maxBatch < batchMultiple) throw new ArgumentException($"maxBatch {maxBatch} is smaller than batchMultiple {batchMultiple}: no batch can be scored", nameof(maxBatch));
        count -= count % batchMultiple;
        if (count <= 0) return double.NaN;
        int t = seqLen;
        maxBatch -= maxBatch % batchMultiple;
        var seq = new int[t + 1];
        var inputs = new int[maxBatch * t];
        var targets = new int[maxBatch * t];
        double total = 0;
        for (long done = 0; done < count;)
        {
            int batch = (int)Math.Min(maxBatch, count - done);
            for (int s = 0; s < batch; s++)
            {
                getSequence(done + s, seq);
                seq.AsSpan(0, t).CopyTo(inputs.AsSpan(s * t));
                seq.AsSpan(1, t).CopyTo(targets.AsSpan(s * t));
            }
            total += loss(inputs.AsSpan(0, batch * t), targets.AsSpan(0, batch * t), batch) * batch;
            done += batch;
        }
        return total / count;
    }

    public static double MeanLoss(BatchLoss loss, int seqLen, int maxBatch, int batchMultiple, PackedDataset data, bool heldOut, long maxSequences = long.MaxValue)
    {
        long available = heldOut ? data.EvalSequences : data.TrainSequences;
        return MeanLoss(loss, seqLen, maxBatch, batchMultiple, Math.Min(available, maxSequences), heldOut ? data.GetEvalSequence : data.GetTrainSequence);
    }
}

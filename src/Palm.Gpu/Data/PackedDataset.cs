namespace Palm.Gpu.Data;

/// <summary>
/// A token stream cut into fixed-length training sequences. Documents are joined with [eod]
/// (no padding; documents may split across sequences). Sequence i holds tokens
/// [i·T, i·T + T] (T + 1 tokens: inputs are the first T, targets the last T).
/// The last sequences are held out for evaluation.
/// </summary>
public sealed class PackedDataset
{
    readonly int[] _tokens;

    PackedDataset(int[] tokens, int seqLen, double heldOutFraction)
    {
        _tokens = tokens;
        SequenceLength = seqLen;
        long total = (tokens.Length - 1) / seqLen;
        EvalSequences = heldOutFraction <= 0 ? 0 : Math.Max(1, (long)Math.Round(total * heldOutFraction));
        if (total - EvalSequences < 1) EvalSequences = 0;
        TrainSequences = total - EvalSequences;
    }

    public int SequenceLength { get; }
    public long TrainSequences { get; }
    public long EvalSequences { get; }
    public long TokenCount => _tokens.Length;

    public static PackedDataset FromDocuments(IReadOnlyList<string> documents, ITokenizer tokenizer, int seqLen, double heldOutFraction = 0.05)
    {
        if (seqLen < 1) throw new DataException($"sequence length must be ≥ 1, got {seqLen}");
        var stream = new List<int>();
        for (int d = 0; d < documents.Count; d++)
        {
            if (d > 0) stream.Add(tokenizer.EodId);
            stream.AddRange(tokenizer.Encode(documents[d]));
        }
        stream.Add(tokenizer.EodId);
        if (stream.Count < seqLen + 1)
            throw new DataException($"the data has {stream.Count} tokens, fewer than one sequence of --seq {seqLen} + 1; use a shorter --seq or more data");
        return new PackedDataset(stream.ToArray(), seqLen, heldOutFraction);
    }

    /// <summary>Copies training sequence i (T + 1 tokens) into dst.</summary>
    public void GetTrainSequence(long i, Span<int> dst) => Get(i, dst);

    /// <summary>Copies held-out sequence i (T + 1 tokens) into dst.</summary>
    public void GetEvalSequence(long i, Span<int> dst) => Get(TrainSequences + i, dst);

    void Get(long seq, Span<int> dst) => _tokens.AsSpan((int)(seq * SequenceLength), SequenceLength + 1).CopyTo(dst);
}

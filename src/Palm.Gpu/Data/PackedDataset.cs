namespace Palm.Gpu.Data;

/// <summary>
/// A token stream cut into fixed-length training sequences. Documents are joined with [eod]
/// (no padding; documents may split across sequences): doc₀ [eod] doc₁ [eod] … docₙ [eod].
/// Sequence i holds tokens [i·T, i·T + T] (T + 1 tokens: inputs are the first T, targets the
/// last T), so there are ⌊(tokens − 1) / T⌋ sequences. The last ones are held out for
/// evaluation: round(total · heldOutFraction), at least one when the fraction is positive,
/// none if that would leave no training sequence.
/// The tokens live in memory (<see cref="FromDocuments"/>) or in a memory-mapped token file
/// (<see cref="FromTokenFile"/>); dispose the dataset to release the map.
/// </summary>
public sealed class PackedDataset : IDisposable
{
    readonly int[]? _tokens;
    readonly TokenFileReader? _file;

    PackedDataset(int[]? tokens, TokenFileReader? file, int seqLen, double heldOutFraction)
    {
        _tokens = tokens;
        _file = file;
        SequenceLength = seqLen;
        TokenCount = tokens?.LongLength ?? file!.Count;
        long total = (TokenCount - 1) / seqLen;
        EvalSequences = heldOutFraction <= 0 ? 0 : Math.Max(1, (long)Math.Round(total * heldOutFraction));
        if (total - EvalSequences < 1) EvalSequences = 0;
        TrainSequences = total - EvalSequences;
    }

    public int SequenceLength { get; }
    public long TrainSequences { get; }
    public long EvalSequences { get; }
    public long TokenCount { get; }

    public static PackedDataset FromDocuments(IReadOnlyList<string> documents, ITokenizer tokenizer, int seqLen, double heldOutFraction = 0.05)
    {
        CheckArguments(seqLen, heldOutFraction);
        var stream = new List<int>();
        for (int d = 0; d < documents.Count; d++)
        {
            stream.AddRange(tokenizer.Encode(documents[d]));
            stream.Add(tokenizer.EodId);
        }
        return FromTokens([.. stream], seqLen, heldOutFraction);
    }

    /// <summary>A dataset over an already packed token stream.</summary>
    public static PackedDataset FromTokens(int[] tokens, int seqLen, double heldOutFraction = 0.05)
    {
        CheckArguments(seqLen, heldOutFraction);
        if (tokens.Length < seqLen + 1)
            throw new DataException($"the data has {tokens.Length} tokens, fewer than one sequence of --seq {seqLen} + 1; use a shorter --seq or more data");
        return new PackedDataset(tokens, null, seqLen, heldOutFraction);
    }

    /// <summary>
    /// A dataset over a memory-mapped token file. The tokenizer must be the one the file was made
    /// with: its vocabulary hash and size are checked against the file's header.
    /// </summary>
    public static PackedDataset FromTokenFile(string path, ITokenizer tokenizer, int seqLen, double heldOutFraction = 0.05)
    {
        CheckArguments(seqLen, heldOutFraction);
        var header = TokenFile.ReadHeader(path);
        TokenFile.CheckMatches(path, header, tokenizer);
        if (header.TokenCount < seqLen + 1)
            throw new DataException($"token file '{path}' has {header.TokenCount} tokens, fewer than one sequence of --seq {seqLen} + 1; use a shorter --seq or more data");
        var reader = new TokenFileReader(path);
        return new PackedDataset(null, reader, seqLen, heldOutFraction);
    }

    /// <summary>
    /// What training calls with --data: a token file (recognised by its magic) is mapped and checked
    /// against the tokenizer; anything else is read as a corpus and tokenized in memory.
    /// </summary>
    public static PackedDataset Load(string dataPath, ITokenizer tokenizer, int seqLen, double heldOutFraction = 0.05)
    {
        if (TokenFile.IsTokenFile(dataPath)) return FromTokenFile(dataPath, tokenizer, seqLen, heldOutFraction);
        if (tokenizer is IUtf8Tokenizer utf8)
        {
            var stream = new List<int>();
            foreach (var doc in Corpus.ReadDocumentsUtf8(dataPath))
            {
                utf8.EncodeUtf8(doc, stream);
                stream.Add(tokenizer.EodId);
            }
            return FromTokens([.. stream], seqLen, heldOutFraction);
        }
        return FromDocuments(Corpus.ReadDocuments(dataPath), tokenizer, seqLen, heldOutFraction);
    }

    static void CheckArguments(int seqLen, double heldOutFraction)
    {
        if (seqLen < 1) throw new DataException($"sequence length must be ≥ 1, got {seqLen}");
        if (!(heldOutFraction >= 0 && heldOutFraction < 1)) throw new DataException($"held-out fraction must be in [0, 1), got {heldOutFraction}");
    }

    /// <summary>Copies training sequence i (T + 1 tokens) into dst.</summary>
    public void GetTrainSequence(long i, Span<int> dst)
    {
        if ((ulong)i >= (ulong)TrainSequences) throw new ArgumentOutOfRangeException(nameof(i), $"training sequence {i} of {TrainSequences}");
        Get(i, dst);
    }

    /// <summary>Copies held-out sequence i (T + 1 tokens) into dst.</summary>
    public void GetEvalSequence(long i, Span<int> dst)
    {
        if ((ulong)i >= (ulong)EvalSequences) throw new ArgumentOutOfRangeException(nameof(i), $"held-out sequence {i} of {EvalSequences}");
        Get(TrainSequences + i, dst);
    }

    void Get(long seq, Span<int> dst)
    {
        long start = seq * SequenceLength;
        var d = dst[..(SequenceLength + 1)];
        if (_tokens != null) _tokens.AsSpan().Slice(checked((int)start), SequenceLength + 1).CopyTo(d);
        else _file!.Copy(start, d);
    }

    string? _fingerprint;

    /// <summary>
    /// sha256 of the whole token stream (as little-endian int32, whatever the storage) and the sequence length:
    /// what fixes every batch, so a resumed run can tell whether its data is the data it started on. Computed
    /// once, in one pass over the tokens.
    /// </summary>
    public string Fingerprint()
    {
        if (_fingerprint is not null) return _fingerprint;
        using var h = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        Span<byte> head = stackalloc byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(head, SequenceLength);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(head[4..], 0);
        h.AppendData(head);
        var chunk = new int[1 << 16];
        for (long at = 0; at < TokenCount; at += chunk.Length)
        {
            int n = (int)Math.Min(chunk.Length, TokenCount - at);
            var span = chunk.AsSpan(0, n);
            if (_tokens != null) _tokens.AsSpan(checked((int)at), n).CopyTo(span);
            else _file!.Copy(at, span);
            if (!BitConverter.IsLittleEndian) for (int i = 0; i < n; i++) span[i] = System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(span[i]);
            h.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(span));
        }
        return _fingerprint = Convert.ToHexStringLower(h.GetHashAndReset());
    }

    public void Dispose() => _file?.Dispose();
}

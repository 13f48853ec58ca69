namespace Palm.Gpu.Data;

/// <summary>
/// A lossless tokenizer: Decode(Encode(s)) == s for every string. Ids are dense in [0, VocabSize).
/// </summary>
public interface ITokenizer
{
    /// <summary>"bytes", "bpe", "sentencepiece-bpe", ... — recorded in configs and token files.</summary>
    string Kind { get; }
    int VocabSize { get; }
    /// <summary>The end-of-document token placed between packed documents.</summary>
    int EodId { get; }
    int PadId { get; }
    /// <summary>A stable hash of the vocabulary (hex); token files record it so a mismatch is caught.</summary>
    string VocabularyHash { get; }
    int[] Encode(string text);
    string Decode(ReadOnlySpan<int> ids);
}

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

/// <summary>
/// A tokenizer that works on UTF-8 bytes directly: the form corpus tokenization, the CLI and the
/// SentencePiece interop use. Encoding raw bytes that are not valid UTF-8 is allowed.
/// </summary>
public interface IUtf8Tokenizer : ITokenizer
{
    /// <summary>
    /// Appends the ids of text. atDocumentStart is false when text continues a document that was
    /// cut at a <see cref="FindCut"/> position (SentencePiece adds its dummy prefix only at a start).
    /// </summary>
    void EncodeUtf8(ReadOnlySpan<byte> text, List<int> ids, bool atDocumentStart = true);

    /// <summary>The bytes the ids stand for; control tokens yield their names ("[eod]").</summary>
    byte[] DecodeBytes(ReadOnlySpan<int> ids);

    /// <summary>
    /// The smallest p in [from, text.Length) where text may be cut: encoding text[..p] and then
    /// text[p..] (atDocumentStart: false) yields exactly the ids of encoding text whole.
    /// -1 when there is no such place (the text is then encoded in one piece).
    /// </summary>
    int FindCut(ReadOnlySpan<byte> text, int from);
}

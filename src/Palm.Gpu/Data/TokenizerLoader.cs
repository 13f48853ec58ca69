namespace Palm.Gpu.Data;

/// <summary>
/// Opens a tokenizer from what a user passes to --tokenizer: "bytes" (or nothing) for the byte
/// tokenizer, a palm-bpe JSON file, or a SentencePiece .model file. The file's content decides
/// (JSON starts with '{'; anything else is read as a SentencePiece protobuf), not only its name.
/// </summary>
public static class TokenizerLoader
{
    public static IUtf8Tokenizer Load(string? path)
    {
        if (string.IsNullOrWhiteSpace(path) || path == "bytes") return new ByteTokenizer();
        if (Directory.Exists(path)) throw new DataException($"tokenizer '{path}' is a directory; pass a .json or .model file, or \"bytes\"");
        if (!File.Exists(path)) throw new DataException($"tokenizer file '{path}' does not exist; pass a .json (palm tokenizer train) or SentencePiece .model file, or \"bytes\"");
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length == 0) throw new DataException($"tokenizer file '{path}' is empty");
        int first = 0;
        while (first < bytes.Length && bytes[first] is (byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n' or 0xEF or 0xBB or 0xBF) first++;
        bool json = first < bytes.Length && bytes[first] == (byte)'{';
        try
        {
            if (json) return BpeTokenizer.FromJson(bytes);
            return new SentencePieceTokenizer(SentencePieceModel.Parse(bytes));
        }
        catch (DataException e)
        {
            throw new DataException($"tokenizer file '{path}': {e.Message}");
        }
    }

    /// <summary>Wraps any tokenizer as a UTF-8 one (through strings), so every tokenizer can feed a token file.</summary>
    public static IUtf8Tokenizer AsUtf8(ITokenizer tokenizer) => tokenizer as IUtf8Tokenizer ?? new StringTokenizerAdapter(tokenizer);

    sealed class StringTokenizerAdapter(ITokenizer inner) : IUtf8Tokenizer
    {
        public string Kind => inner.Kind;
        public int VocabSize => inner.VocabSize;
        public int EodId => inner.EodId;
        public int PadId => inner.PadId;
        public string VocabularyHash => inner.VocabularyHash;
        public int[] Encode(string text) => inner.Encode(text);
        public string Decode(ReadOnlySpan<int> ids) => inner.Decode(ids);
        public void EncodeUtf8(ReadOnlySpan<byte> text, List<int> ids, bool atDocumentStart = true) => ids.AddRange(inner.Encode(Utf8Text.GetString(text)));
        public byte[] DecodeBytes(ReadOnlySpan<int> ids) => Utf8Text.GetBytes(inner.Decode(ids));
        public int FindCut(ReadOnlySpan<byte> text, int from) => -1;
    }
}

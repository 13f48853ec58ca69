using Google.Protobuf;

namespace Palm.Gpu.Data;

/// <summary>
/// The parts of a SentencePiece .model file (a serialised sentencepiece.ModelProto, proto2) that
/// encoding needs, read field by field with Google.Protobuf's CodedInputStream. Field numbers, from
/// sentencepiece_model.proto:
///   ModelProto      pieces = 1 (repeated SentencePiece), trainer_spec = 2, normalizer_spec = 3
///   SentencePiece   piece = 1 (string), score = 2 (float, default 0), type = 3 (enum, default NORMAL)
///   TrainerSpec     model_type = 3 (UNIGRAM 1, BPE 2, WORD 3, CHAR 4; default UNIGRAM),
///                   vocab_size = 4, treat_whitespace_as_suffix = 24, split_digits = 25,
///                   allow_whitespace_only_pieces = 26, byte_fallback = 35,
///                   unk_id = 40 (0), bos_id = 41 (1), eos_id = 42 (2), pad_id = 43 (-1), unk_surface = 44
///   NormalizerSpec  name = 1, precompiled_charsmap = 2 (bytes), add_dummy_prefix = 3 (true),
///                   remove_extra_whitespaces = 4 (true), escape_whitespaces = 5 (true)
/// Unknown fields are skipped, as protobuf requires.
/// </summary>
public sealed class SentencePieceModel
{
    public enum PieceType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 }
    public enum ModelType { Unigram = 1, Bpe = 2, Word = 3, Char = 4 }

    public readonly record struct Piece(string Text, float Score, PieceType Type);

    public List<Piece> Pieces { get; } = [];
    public ModelType Type { get; private set; } = ModelType.Unigram;
    public int TrainerVocabSize { get; private set; }
    public bool ByteFallback { get; private set; }
    public bool SplitDigits { get; private set; }
    public bool TreatWhitespaceAsSuffix { get; private set; }
    public bool AllowWhitespaceOnlyPieces { get; private set; }
    public int UnkId { get; private set; }
    public int BosId { get; private set; } = 1;
    public int EosId { get; private set; } = 2;
    public int PadId { get; private set; } = -1;
    public string UnkSurface { get; private set; } = " \u2047 ";
    public string NormalizerName { get; private set; } = "";
    public byte[] PrecompiledCharsmap { get; private set; } = [];
    public bool AddDummyPrefix { get; private set; } = true;
    public bool RemoveExtraWhitespaces { get; private set; } = true;
    public bool EscapeWhitespaces { get; private set; } = true;

    public static SentencePieceModel Load(string path)
    {
        if (!File.Exists(path)) throw new DataException($"SentencePiece model '{path}' does not exist");
        try
        {
            return Parse(File.ReadAllBytes(path));
        }
        catch (DataException e)
        {
            throw new DataException($"SentencePiece model '{path}': {e.Message}");
        }
    }

    public static SentencePieceModel Parse(byte[] bytes)
    {
        var model = new SentencePieceModel();
        try
        {
            var input = new CodedInputStream(bytes);
            uint tag;
            while ((tag = input.ReadTag()) != 0)
            {
                switch (WireFormat.GetTagFieldNumber(tag))
                {
                    case 1 when IsBytes(tag): model.Pieces.Add(ReadPiece(input.ReadBytes())); break;
                    case 2 when IsBytes(tag): model.ReadTrainerSpec(input.ReadBytes()); break;
                    case 3 when IsBytes(tag): model.ReadNormalizerSpec(input.ReadBytes()); break;
                    default: input.SkipLastField(); break;
                }
            }
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new DataException($"not a valid SentencePiece model: the protobuf is corrupt or truncated ({e.Message})");
        }
        model.Validate();
        return model;
    }

    static bool IsBytes(uint tag) => WireFormat.GetTagWireType(tag) == WireFormat.WireType.LengthDelimited;

    static Piece ReadPiece(ByteString data)
    {
        string text = "";
        float score = 0;
        var type = PieceType.Normal;
        var input = data.CreateCodedInput();
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            switch (WireFormat.GetTagFieldNumber(tag))
            {
                case 1 when IsBytes(tag): text = input.ReadString(); break;
                case 2 when WireFormat.GetTagWireType(tag) == WireFormat.WireType.Fixed32: score = input.ReadFloat(); break;
                case 3 when WireFormat.GetTagWireType(tag) == WireFormat.WireType.Varint: type = (PieceType)input.ReadEnum(); break;
                default: input.SkipLastField(); break;
            }
        }
        return new Piece(text, score, type);
    }

    void ReadTrainerSpec(ByteString data)
    {
        var input = data.CreateCodedInput();
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            bool varint = WireFormat.GetTagWireType(tag) == WireFormat.WireType.Varint;
            switch (WireFormat.GetTagFieldNumber(tag))
            {
                case 3 when varint: Type = (ModelType)input.ReadEnum(); break;
                case 4 when varint: TrainerVocabSize = input.ReadInt32(); break;
                case 24 when varint: TreatWhitespaceAsSuffix = input.ReadBool(); break;
                case 25 when varint: SplitDigits = input.ReadBool(); break;
                case 26 when varint: AllowWhitespaceOnlyPieces = input.ReadBool(); break;
                case 35 when varint: ByteFallback = input.ReadBool(); break;
                case 40 when varint: UnkId = input.ReadInt32(); break;
                case 41 when varint: BosId = input.ReadInt32(); break;
                case 42 when varint: EosId = input.ReadInt32(); break;
                case 43 when varint: PadId = input.ReadInt32(); break;
                case 44 when IsBytes(tag): UnkSurface = input.ReadString(); break;
                default: input.SkipLastField(); break;
            }
        }
    }

    void ReadNormalizerSpec(ByteString data)
    {
        var input = data.CreateCodedInput();
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            bool varint = WireFormat.GetTagWireType(tag) == WireFormat.WireType.Varint;
            switch (WireFormat.GetTagFieldNumber(tag))
            {
                case 1 when IsBytes(tag): NormalizerName = input.ReadString(); break;
                case 2 when IsBytes(tag): PrecompiledCharsmap = input.ReadBytes().ToByteArray(); break;
                case 3 when varint: AddDummyPrefix = input.ReadBool(); break;
                case 4 when varint: RemoveExtraWhitespaces = input.ReadBool(); break;
                case 5 when varint: EscapeWhitespaces = input.ReadBool(); break;
                default: input.SkipLastField(); break;
            }
        }
    }

    /// <summary>The checks SentencePiece makes when it loads a model, with messages that say what is wrong.</summary>
    void Validate()
    {
        if (Pieces.Count == 0) throw new DataException("the model has no pieces (is this a SentencePiece .model file?)");
        if (Type is not (ModelType.Unigram or ModelType.Bpe))
            throw new DataException($"model type {Type} is not supported; train with --model_type=bpe or --model_type=unigram");
        int unk = -1;
        var bytesFound = new bool[256];
        var normal = new HashSet<string>(StringComparer.Ordinal);
        var reserved = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < Pieces.Count; i++)
        {
            var p = Pieces[i];
            if (p.Text.Length == 0) throw new DataException($"piece {i} is empty");
            if (!Enum.IsDefined(p.Type)) throw new DataException($"piece {i} has unknown type {(int)p.Type}");
            bool isNormal = p.Type is PieceType.Normal or PieceType.UserDefined or PieceType.Unused;
            if (!(isNormal ? normal : reserved).Add(p.Text)) throw new DataException($"piece {i} \"{p.Text}\" is defined twice");
            if (p.Type == PieceType.Unknown)
            {
                if (unk >= 0) throw new DataException($"pieces {unk} and {i} are both <unk>");
                unk = i;
            }
            if (p.Type == PieceType.Byte)
            {
                if (!ByteFallback) throw new DataException($"byte piece {i} \"{p.Text}\" is present although byte_fallback is false");
                int b = PieceToByte(p.Text);
                if (b < 0) throw new DataException($"byte piece {i} \"{p.Text}\" is not of the form <0xHH>");
                bytesFound[b] = true;
            }
        }
        if (unk < 0) throw new DataException("the model defines no <unk> piece");
        UnkId = unk;
        if (ByteFallback && bytesFound.Contains(false)) throw new DataException("byte_fallback is on but not all 256 byte pieces <0x00>..<0xFF> are present");
    }

    /// <summary>"&lt;0x41&gt;" → 0x41; -1 when the text is not a byte piece.</summary>
    public static int PieceToByte(string piece)
    {
        if (piece.Length != 6 || !piece.StartsWith("<0x") || piece[5] != '>') return -1;
        return int.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out int b) ? b : -1;
    }

    /// <summary>SentencePiece's spelling of byte piece b: "&lt;0x%02X&gt;".</summary>
    public static string ByteToPiece(int b) => $"<0x{b:X2}>";
}

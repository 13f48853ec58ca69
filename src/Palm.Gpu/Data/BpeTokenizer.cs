using System.Security.Cryptography;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Palm.Gpu.Data;

/// <summary>
/// PaLM-style lossless BPE: character-level merges with UTF-8 byte fallback, digits always alone,
/// whitespace kept exactly, no normalisation. Decode(Encode(s)) == s for every string, and
/// DecodeBytes(EncodeUtf8(b)) == b for every byte string.
///
/// Id layout (V = VocabSize):
///   [0, S)                 control specials ("[pad]", "[eod]", ...): never produced from text;
///   [S, S+U)               user-defined symbols: matched literally in text (longest first) and
///                          never merged, like SentencePiece's user_defined_symbols;
///   [S+U, S+U+256)         the 256 bytes; ASCII characters (digits included) are their byte,
///                          other characters outside the vocabulary fall back to their UTF-8 bytes;
///   [S+U+256, +C)          non-ASCII characters kept whole;
///   [S+U+256+C, V)         merges: merge k joins two earlier ids into id S+U+256+C+k.
///
/// Encoding: text is cut by <see cref="Pretokenizer"/> into segments (digits and invalid bytes
/// alone); within a segment the lowest-numbered applicable merge is applied first, leftmost on ties.
///
/// JSON format (UTF-8), "palm-bpe" version 1:
/// <code>
/// {
///   "format": "palm-bpe",
///   "version": 1,
///   "vocab_size": 32000,                // S + U + 256 + C + M, checked on load
///   "specials": ["[pad]", "[eod]"],     // must contain "[pad]" and "[eod]"
///   "user_defined": ["&lt;|code|&gt;"],
///   "chars": ["é", "—", "の"],          // one Unicode scalar (non-ASCII) each
///   "merges": [[104, 101], [372, 108]]  // [left id, right id], in merge order
/// }
/// </code>
/// </summary>
public sealed class BpeTokenizer : IUtf8Tokenizer
{
    public const string FormatName = "palm-bpe";
    public const int FormatVersion = 1;
    public const string EodPiece = "[eod]";
    public const string PadPiece = "[pad]";

    readonly string[] _specials;
    readonly string[] _userDefined;
    readonly int[] _chars;
    readonly (int Left, int Right)[] _merges;
    readonly byte[][] _pieces;
    readonly PairTable _pairs;
    readonly Dictionary<int, int> _charIds;
    readonly byte[][] _userBytes;         // user symbols, longest first
    readonly int[] _userIds;
    readonly bool[] _userFirstByte = new bool[256];
    readonly ThreadLocal<SegmentCache> _cache = new(() => new SegmentCache());

    public BpeTokenizer(IReadOnlyList<string> specials, IReadOnlyList<string> userDefined, IReadOnlyList<int> chars, IReadOnlyList<(int Left, int Right)> merges)
    {
        _specials = [.. specials];
        _userDefined = [.. userDefined];
        _chars = [.. chars];
        _merges = [.. merges];
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var s in _specials.Concat(_userDefined))
        {
            if (string.IsNullOrEmpty(s)) throw new DataException("special and user-defined symbols must not be empty");
            if (!IsValidUnicode(s)) throw new DataException($"symbol '{s}' is not valid Unicode (lone surrogate)");
            if (!seen.Add(s)) throw new DataException($"symbol '{s}' is defined twice");
        }
        EodId = Array.IndexOf(_specials, EodPiece);
        PadId = Array.IndexOf(_specials, PadPiece);
        if (EodId < 0 || PadId < 0) throw new DataException($"the specials must include \"{EodPiece}\" and \"{PadPiece}\"");

        ByteBase = _specials.Length + _userDefined.Length;
        CharBase = ByteBase + 256;
        MergeBase = CharBase + _chars.Length;
        VocabSize = MergeBase + _merges.Length;

        _pieces = new byte[VocabSize][];
        for (int i = 0; i < _specials.Length; i++) _pieces[i] = Encoding.UTF8.GetBytes(_specials[i]);
        for (int i = 0; i < _userDefined.Length; i++) _pieces[_specials.Length + i] = Encoding.UTF8.GetBytes(_userDefined[i]);
        for (int b = 0; b < 256; b++) _pieces[ByteBase + b] = [(byte)b];
        _charIds = new Dictionary<int, int>(_chars.Length);
        for (int i = 0; i < _chars.Length; i++)
        {
            int cp = _chars[i];
            if (cp < 0x80 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                throw new DataException($"chars[{i}] = U+{cp:X4} is not a non-ASCII Unicode scalar; ASCII characters are byte tokens");
            if (!_charIds.TryAdd(cp, CharBase + i)) throw new DataException($"chars[{i}] = U+{cp:X4} appears twice");
            _pieces[CharBase + i] = Encoding.UTF8.GetBytes(char.ConvertFromUtf32(cp));
        }
        _pairs = new PairTable(_merges.Length);
        for (int k = 0; k < _merges.Length; k++)
        {
            var (a, b) = _merges[k];
            int id = MergeBase + k;
            if (a < ByteBase || b < ByteBase || a >= id || b >= id)
                throw new DataException($"merge {k} = [{a}, {b}] must join two earlier byte, character or merge ids (in [{ByteBase}, {id}))");
            if (!_pairs.Add(a, b, id, -k)) throw new DataException($"merge {k} = [{a}, {b}] repeats an earlier merge");
            _pieces[id] = [.. _pieces[a], .. _pieces[b]];
        }

        var order = Enumerable.Range(0, _userDefined.Length).OrderByDescending(i => _pieces[_specials.Length + i].Length).ThenBy(i => i).ToArray();
        _userBytes = order.Select(i => _pieces[_specials.Length + i]).ToArray();
        _userIds = order.Select(i => _specials.Length + i).ToArray();
        foreach (var u in _userBytes) _userFirstByte[u[0]] = true;
        VocabularyHash = ComputeHash();
    }

    public string Kind => "bpe";
    public int VocabSize { get; }
    public int EodId { get; }
    public int PadId { get; }
    public string VocabularyHash { get; }
    public int ByteBase { get; }
    public int CharBase { get; }
    public int MergeBase { get; }
    public IReadOnlyList<string> Specials => _specials;
    public IReadOnlyList<string> UserDefined => _userDefined;
    public IReadOnlyList<int> Chars => _chars;
    public IReadOnlyList<(int Left, int Right)> Merges => _merges;

    /// <summary>The bytes token id stands for.</summary>
    public ReadOnlySpan<byte> PieceBytes(int id) => _pieces[id];

    /// <summary>The id of a single byte.</summary>
    public int ByteId(byte b) => ByteBase + b;

    public int[] Encode(string text)
    {
        var ids = new List<int>(text.Length / 3 + 4);
        EncodeUtf8(Utf8Text.GetBytes(text), ids);
        return [.. ids];
    }

    public string Decode(ReadOnlySpan<int> ids) => Utf8Text.GetString(DecodeBytes(ids));

    public byte[] DecodeBytes(ReadOnlySpan<int> ids)
    {
        int total = 0;
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)VocabSize) throw new DataException($"token id {id} is outside the vocabulary [0, {VocabSize})");
            total += _pieces[id].Length;
        }
        var bytes = new byte[total];
        int n = 0;
        foreach (int id in ids)
        {
            _pieces[id].CopyTo(bytes, n);
            n += _pieces[id].Length;
        }
        return bytes;
    }

    public int FindCut(ReadOnlySpan<byte> text, int from)
    {
        // A user symbol holding a newline could straddle the cut.
        foreach (var u in _userBytes) if (u.AsSpan().Contains((byte)'\n')) return -1;
        return Pretokenizer.FindCut(text, from);
    }

    public void EncodeUtf8(ReadOnlySpan<byte> text, List<int> ids, bool atDocumentStart = true)
    {
        if (_userBytes.Length == 0) { EncodeStretch(text, ids); return; }
        // User symbols are matched first, anywhere, longest first; the text between them is
        // encoded as usual. A symbol starts with a lead byte, so byte steps find every match.
        int stretch = 0, i = 0;
        while (i < text.Length)
        {
            if (_userFirstByte[text[i]])
            {
                int match = MatchUser(text[i..]);
                if (match >= 0)
                {
                    EncodeStretch(text[stretch..i], ids);
                    ids.Add(_userIds[match]);
                    i += _userBytes[match].Length;
                    stretch = i;
                    continue;
                }
            }
            i++;
        }
        EncodeStretch(text[stretch..], ids);
    }

    internal delegate void SegmentVisitor(ReadOnlySpan<byte> segment);

    /// <summary>Visits the segments merges work on (user symbols are left out), in text order.</summary>
    internal void VisitSegments(ReadOnlySpan<byte> text, SegmentVisitor visit)
    {
        int stretch = 0, i = 0;
        while (_userBytes.Length > 0 && i < text.Length)
        {
            int match = _userFirstByte[text[i]] ? MatchUser(text[i..]) : -1;
            if (match < 0) { i++; continue; }
            VisitStretch(text[stretch..i], visit);
            i += _userBytes[match].Length;
            stretch = i;
        }
        VisitStretch(text[stretch..], visit);

        static void VisitStretch(ReadOnlySpan<byte> text, SegmentVisitor visit)
        {
            for (int pos = 0; pos < text.Length;)
            {
                int end = Pretokenizer.SegmentEnd(text, pos);
                visit(text[pos..end]);
                pos = end;
            }
        }
    }

    int MatchUser(ReadOnlySpan<byte> text)
    {
        for (int u = 0; u < _userBytes.Length; u++)
            if (text.StartsWith(_userBytes[u])) return u;
        return -1;
    }

    void EncodeStretch(ReadOnlySpan<byte> text, List<int> ids)
    {
        var cache = _cache.Value!;
        int pos = 0;
        while (pos < text.Length)
        {
            int end = Pretokenizer.SegmentEnd(text, pos);
            EncodeSegment(text[pos..end], ids, cache);
            pos = end;
        }
    }

    void EncodeSegment(ReadOnlySpan<byte> segment, List<int> ids, SegmentCache cache)
    {
        if (segment.Length == 1) { ids.Add(ByteBase + segment[0]); return; }
        bool cacheable = segment.Length <= SegmentCache.MaxSegmentBytes;
        if (cacheable && cache.TryGet(segment, out var hit)) { ids.AddRange(hit); return; }

        int[]? rented = null;
        Span<int> symbols = segment.Length <= 256 ? stackalloc int[segment.Length] : (rented = new int[segment.Length]);
        int count = 0;
        for (int i = 0; i < segment.Length;)
        {
            byte b = segment[i];
            if (b < 0x80) { symbols[count++] = ByteBase + b; i++; continue; }
            int len = Utf8Text.ValidCharLength(segment[i..], out int cp);
            if (len > 0 && _charIds.TryGetValue(cp, out int id)) { symbols[count++] = id; i += len; continue; }
            // Outside the vocabulary: its UTF-8 bytes (they never merge).
            len = Math.Max(len, 1);
            for (int k = 0; k < len; k++) symbols[count++] = ByteBase + segment[i + k];
            i += len;
        }
        count = PairMerger.Merge(_pairs, symbols[..count]);
        var result = symbols[..count];
        if (cacheable) cache.Add(segment, result);
        ids.AddRange(result);
    }

    // ---- persistence ----

    public void Save(string path)
    {
        var tmp = path + ".tmp";
        using (var stream = File.Create(tmp))
        using (var w = new StreamWriter(stream, new UTF8Encoding(false)))
        {
            w.NewLine = "\n";
            w.WriteLine("{");
            w.WriteLine($"  \"format\": \"{FormatName}\",");
            w.WriteLine($"  \"version\": {FormatVersion},");
            w.WriteLine($"  \"vocab_size\": {VocabSize},");
            w.WriteLine($"  \"specials\": [{string.Join(", ", _specials.Select(Quote))}],");
            w.WriteLine($"  \"user_defined\": [{string.Join(", ", _userDefined.Select(Quote))}],");
            w.WriteLine($"  \"chars\": [{string.Join(", ", _chars.Select(c => Quote(char.ConvertFromUtf32(c))))}],");
            w.Write("  \"merges\": [");
            for (int k = 0; k < _merges.Length; k++)
            {
                w.Write(k == 0 ? "\n    " : ",\n    ");
                w.Write($"[{_merges[k].Left}, {_merges[k].Right}]");
            }
            w.WriteLine(_merges.Length == 0 ? "]" : "\n  ]");
            w.WriteLine("}");
        }
        File.Move(tmp, path, overwrite: true);

        static string Quote(string s) => "\"" + JsonEncodedText.Encode(s, JavaScriptEncoder.UnsafeRelaxedJsonEscaping).ToString() + "\"";
    }

    public static BpeTokenizer Load(string path)
    {
        if (!File.Exists(path)) throw new DataException($"tokenizer file '{path}' does not exist");
        try
        {
            return FromJson(File.ReadAllBytes(path));
        }
        catch (DataException e)
        {
            throw new DataException($"tokenizer file '{path}': {e.Message}");
        }
    }

    public static BpeTokenizer FromJson(ReadOnlySpan<byte> json)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json.ToArray());
        }
        catch (JsonException e)
        {
            throw new DataException($"not valid JSON ({e.Message})");
        }
        using (doc)
        {
            try
            {
                var root = doc.RootElement;
                if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("format", out var format) || format.GetString() != FormatName)
                    throw new DataException($"not a \"{FormatName}\" tokenizer (the \"format\" field is missing or different)");
                int version = root.GetProperty("version").GetInt32();
                if (version != FormatVersion) throw new DataException($"format version {version} is not supported (expected {FormatVersion})");
                var specials = root.GetProperty("specials").EnumerateArray().Select(e => e.GetString()!).ToList();
                var user = root.TryGetProperty("user_defined", out var u) ? u.EnumerateArray().Select(e => e.GetString()!).ToList() : [];
                var chars = new List<int>();
                foreach (var e in root.GetProperty("chars").EnumerateArray())
                {
                    var s = e.GetString()!;
                    if (Rune.DecodeFromUtf16(s, out var rune, out int used) != System.Buffers.OperationStatus.Done || used != s.Length)
                        throw new DataException($"chars entry \"{s}\" is not exactly one Unicode character");
                    chars.Add(rune.Value);
                }
                var merges = new List<(int, int)>();
                foreach (var e in root.GetProperty("merges").EnumerateArray())
                {
                    if (e.GetArrayLength() != 2) throw new DataException("every merge must be [left id, right id]");
                    merges.Add((e[0].GetInt32(), e[1].GetInt32()));
                }
                var tok = new BpeTokenizer(specials, user, chars, merges);
                if (root.TryGetProperty("vocab_size", out var vs) && vs.GetInt32() != tok.VocabSize)
                    throw new DataException($"vocab_size says {vs.GetInt32()} but the file defines {tok.VocabSize} tokens");
                return tok;
            }
            catch (Exception e) when (e is KeyNotFoundException or InvalidOperationException or FormatException or IndexOutOfRangeException)
            {
                throw new DataException($"malformed tokenizer JSON ({e.Message})");
            }
        }
    }

    string ComputeHash()
    {
        using var ms = new MemoryStream();
        using (var w = new BinaryWriter(ms, Encoding.UTF8, leaveOpen: true))
        {
            w.Write($"{FormatName}/{FormatVersion}");
            w.Write(_specials.Length); foreach (var s in _specials) w.Write(s);
            w.Write(_userDefined.Length); foreach (var s in _userDefined) w.Write(s);
            w.Write(_chars.Length); foreach (var c in _chars) w.Write(c);
            w.Write(_merges.Length); foreach (var (a, b) in _merges) { w.Write(a); w.Write(b); }
        }
        return Convert.ToHexStringLower(SHA256.HashData(ms.ToArray()));
    }

    static bool IsValidUnicode(string s)
    {
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { i++; continue; }
            if (char.IsSurrogate(s[i])) return false;
        }
        return true;
    }
}

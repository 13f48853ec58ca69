using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Palm.Gpu.Data;

/// <summary>
/// Encodes with a SentencePiece .model (BPE or unigram) exactly as SentencePiece 0.1.x does:
///   1. normalise: the precompiled character map (empty for --normalization_rule_name=identity),
///      optional removal of extra whitespace, the dummy "▁" prefix, ' ' → '▁' (U+2581); a byte
///      that is not valid UTF-8 becomes U+FFFD;
///   2. segment: BPE merges the adjacent pair whose concatenation is a piece with the highest
///      score, leftmost first; unigram runs SentencePiece's optimised Viterbi over piece scores
///      (float arithmetic as in C++), unknown characters scoring min_score − 10;
///   3. unknown pieces become one byte piece per UTF-8 byte when byte_fallback is on, else runs
///      of them collapse into one &lt;unk&gt;.
/// With PaLM's settings (byte_fallback, split_digits, identity, no whitespace removal) the only
/// lossy inputs are a literal '▁' (decodes to ' ') and invalid UTF-8 (decodes to U+FFFD),
/// both as in SentencePiece itself.
/// BPE speed-up: when every piece keeps its '▁'s in a leading run (true of every model trained
/// with split_by_whitespace), no merge crosses the start of a '▁' run, so text is encoded
/// segment by segment through a cache; otherwise whole texts go through the same merge loop.
/// </summary>
public sealed class SentencePieceTokenizer : IUtf8Tokenizer
{
    static readonly byte[] SpaceSymbol = "\u2581"u8.ToArray();   // E2 96 81
    static readonly byte[] Replacement = "\uFFFD"u8.ToArray();

    readonly SentencePieceModel _model;
    readonly byte[][] _pieceBytes;
    readonly Dictionary<string, int> _normalPieces = new(StringComparer.Ordinal);    // NORMAL, USER_DEFINED, UNUSED
    readonly Dictionary<string, int> _reservedPieces = new(StringComparer.Ordinal);  // CONTROL, UNKNOWN, BYTE
    readonly int[] _byteIds = new int[256];
    readonly float _minScore, _maxScore;

    // User-defined symbols (longest first), matched before normalisation and before segmentation.
    readonly byte[][] _userBytes;
    readonly int[] _userIds;
    readonly bool[] _userFirstByte = new bool[256];

    // Normaliser: Darts double array + replacement strings from precompiled_charsmap.
    readonly uint[]? _charsmapTrie;
    readonly byte[] _charsmapNormalized = [];

    // BPE: symbol ids are piece ids for pieces, or V + k for characters that occur inside some
    // piece without being one ("virtual" symbols); each character that is neither goes straight
    // to its output ids.
    readonly PairTable? _pairs;
    readonly Dictionary<int, int> _charSymbol = new();
    readonly int[] _asciiSymbol = new int[128];
    readonly List<int[]> _virtualOutput = [];
    readonly bool _splitAtSpaceRuns;
    readonly ThreadLocal<SegmentCache> _cache = new(() => new SegmentCache());
    readonly ThreadLocal<byte[]> _normBuffer = new(() => new byte[1024]);

    // Unigram: trie over NORMAL/USER_DEFINED/UNUSED pieces.
    readonly ByteTrie? _trie;
    readonly float[] _scores;
    readonly SentencePieceModel.PieceType[] _pieceTypes;
    readonly ThreadLocal<BestPath[]> _bestPath = new(() => new BestPath[1024]);

    public SentencePieceTokenizer(SentencePieceModel model) : this(model, segmentCache: true) { }

    /// <summary>segmentCache: false forces whole texts through the merge loop (tests compare both paths).</summary>
    internal SentencePieceTokenizer(SentencePieceModel model, bool segmentCache)
    {
        _model = model;
        var pieces = model.Pieces;
        int v = pieces.Count;
        _pieceBytes = new byte[v][];
        _scores = pieces.Select(p => p.Score).ToArray();
        _pieceTypes = pieces.Select(p => p.Type).ToArray();
        var users = new List<(byte[] Bytes, int Id)>();
        _minScore = float.MaxValue;
        _maxScore = BitConverter.Int32BitsToSingle(0x00800000);   // SentencePiece starts from FLT_MIN, the smallest normal float
        for (int i = 0; i < v; i++)
        {
            var p = pieces[i];
            _pieceBytes[i] = Encoding.UTF8.GetBytes(p.Text);
            bool normal = p.Type is SentencePieceModel.PieceType.Normal or SentencePieceModel.PieceType.UserDefined or SentencePieceModel.PieceType.Unused;
            (normal ? _normalPieces : _reservedPieces)[p.Text] = i;
            if (p.Type == SentencePieceModel.PieceType.UserDefined) users.Add((_pieceBytes[i], i));
            if (p.Type == SentencePieceModel.PieceType.Byte) _byteIds[SentencePieceModel.PieceToByte(p.Text)] = i;
            if (p.Type == SentencePieceModel.PieceType.Normal)
            {
                _minScore = Math.Min(_minScore, p.Score);
                _maxScore = Math.Max(_maxScore, p.Score);
            }
        }
        users.Sort((x, y) => x.Bytes.Length != y.Bytes.Length ? y.Bytes.Length - x.Bytes.Length : x.Id - y.Id);
        _userBytes = users.Select(u => u.Bytes).ToArray();
        _userIds = users.Select(u => u.Id).ToArray();
        foreach (var u in _userBytes) _userFirstByte[u[0]] = true;

        if (model.PrecompiledCharsmap.Length > 0) (_charsmapTrie, _charsmapNormalized) = DecodeCharsmap(model.PrecompiledCharsmap);

        if (model.EosId < 0 || model.EosId >= v || pieces[model.EosId].Type != SentencePieceModel.PieceType.Control)
            throw new DataException("the model has no </s> (eos) control piece to separate documents; train it with the default --eos_id=2");
        EodId = model.EosId;
        PadId = model.PadId >= 0 && model.PadId < v ? model.PadId : model.EosId;

        if (model.Type == SentencePieceModel.ModelType.Bpe)
        {
            if (pieces.Any(p => p.Type == SentencePieceModel.PieceType.Unused))
                throw new DataException("BPE models with UNUSED pieces are not supported");
            _pairs = BuildPairTable(out _splitAtSpaceRuns);
            _splitAtSpaceRuns &= segmentCache;
        }
        else
        {
            _trie = new ByteTrie(Enumerable.Range(0, v).Where(i => _normalPieces.TryGetValue(pieces[i].Text, out int id) && id == i)
                .Select(i => (_pieceBytes[i], i)).ToList());
        }
        VocabularyHash = ComputeHash(model);
    }

    public static SentencePieceTokenizer Load(string path) => new(SentencePieceModel.Load(path));

    public SentencePieceModel Model => _model;
    public string Kind => _model.Type == SentencePieceModel.ModelType.Bpe ? "sentencepiece-bpe" : "sentencepiece-unigram";
    public int VocabSize => _pieceBytes.Length;
    public int EodId { get; }
    public int PadId { get; }
    public string VocabularyHash { get; }

    /// <summary>SentencePiece's PieceToId: reserved pieces first, then the others, else &lt;unk&gt;.</summary>
    public int PieceToId(string piece) =>
        _reservedPieces.TryGetValue(piece, out int id) ? id : _normalPieces.TryGetValue(piece, out id) ? id : _model.UnkId;

    public int[] Encode(string text)
    {
        var ids = new List<int>(text.Length / 3 + 4);
        EncodeUtf8(Utf8Text.GetBytes(text), ids);
        return [.. ids];
    }

    public void EncodeUtf8(ReadOnlySpan<byte> text, List<int> ids, bool atDocumentStart = true)
    {
        var normalized = Normalize(text, atDocumentStart);
        int start = ids.Count;
        if (_pairs != null) EncodeBpe(normalized, ids);
        else EncodeUnigram(normalized, ids);
        if (!_model.ByteFallback)
        {
            // Runs of <unk> collapse into one, as SentencePiece merges consecutive unknown pieces.
            int unk = _model.UnkId, w = start;
            for (int r = start; r < ids.Count; r++)
                if (!(ids[r] == unk && w > start && ids[w - 1] == unk)) ids[w++] = ids[r];
            ids.RemoveRange(w, ids.Count - w);
        }
    }

    public string Decode(ReadOnlySpan<int> ids) => Utf8Text.GetString(DecodeBytes(ids));

    /// <summary>Like SentencePiece's decoder: byte pieces to bytes, control pieces to nothing, '▁' to ' ', the dummy prefix dropped.</summary>
    public byte[] DecodeBytes(ReadOnlySpan<int> ids)
    {
        var output = new List<byte>(ids.Length * 4);
        bool atStart = true;
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)VocabSize) throw new DataException($"token id {id} is outside the vocabulary [0, {VocabSize})");
            var p = _model.Pieces[id];
            switch (p.Type)
            {
                case SentencePieceModel.PieceType.Control: continue;
                case SentencePieceModel.PieceType.Byte: output.Add((byte)SentencePieceModel.PieceToByte(p.Text)); break;
                case SentencePieceModel.PieceType.Unknown: output.AddRange(Encoding.UTF8.GetBytes(_model.UnkSurface)); break;
                default:
                    ReadOnlySpan<byte> piece = _pieceBytes[id];
                    if (atStart && _model.AddDummyPrefix && piece.StartsWith(SpaceSymbol)) piece = piece[SpaceSymbol.Length..];
                    while (!piece.IsEmpty)
                    {
                        if (_model.EscapeWhitespaces && piece.StartsWith(SpaceSymbol)) { output.Add((byte)' '); piece = piece[SpaceSymbol.Length..]; }
                        else { output.Add(piece[0]); piece = piece[1..]; }
                    }
                    break;
            }
            atStart = false;
        }
        return [.. output];
    }

    public int FindCut(ReadOnlySpan<byte> text, int from)
    {
        // Exact only for BPE segment mode with a plain normaliser: then a ' ' that starts a run of
        // spaces starts a segment, and the continuation simply gets no dummy prefix.
        if (_pairs == null || !_splitAtSpaceRuns || _charsmapTrie != null || _model.RemoveExtraWhitespaces
            || !_model.EscapeWhitespaces || _model.TreatWhitespaceAsSuffix || !_model.ByteFallback) return -1;
        foreach (var u in _userBytes)
            if (u.AsSpan().IndexOf(SpaceSymbol) >= 0 || u.AsSpan().Contains((byte)' ')) return -1;
        for (int p = Math.Max(from, 1); p < text.Length; p++)
        {
            int next = text[p..].IndexOf((byte)' ');
            if (next < 0) return -1;
            p += next;
            if (text[p - 1] != ' ') return p;
        }
        return -1;
    }

    // ---------------- normaliser ----------------

    /// <summary>SentencePiece's Normalizer::Normalize, on bytes. The result lives in a per-thread buffer.</summary>
    ReadOnlySpan<byte> Normalize(ReadOnlySpan<byte> input, bool atDocumentStart)
    {
        var buffer = _normBuffer.Value!;
        int need = input.Length * 3 + 8;
        if (buffer.Length < need) _normBuffer.Value = buffer = new byte[Math.Max(need, buffer.Length * 2)];
        int n = 0;
        var m = _model;
        ReadOnlySpan<byte> space = m.EscapeWhitespaces ? SpaceSymbol.AsSpan() : " "u8;

        if (m.RemoveExtraWhitespaces)
        {
            while (!input.IsEmpty)
            {
                var sp = NormalizePrefix(input, out int consumed);
                if (!(sp.Length == 1 && sp[0] == ' ')) break;
                input = input[consumed..];
            }
        }
        if (input.IsEmpty) return default;
        if (!m.TreatWhitespaceAsSuffix && m.AddDummyPrefix && atDocumentStart) { space.CopyTo(buffer.AsSpan(n)); n += space.Length; }
        bool isPrevSpace = m.RemoveExtraWhitespaces;
        while (!input.IsEmpty)
        {
            var sp = NormalizePrefix(input, out int consumed);
            if (isPrevSpace) while (!sp.IsEmpty && sp[0] == ' ') sp = sp[1..];
            if (!sp.IsEmpty)
            {
                if (n + sp.Length * 3 > buffer.Length)
                {
                    Array.Resize(ref buffer, Math.Max(buffer.Length * 2, n + sp.Length * 3 + input.Length * 3));
                    _normBuffer.Value = buffer;
                }
                foreach (byte b in sp)
                {
                    if (b == ' ' && m.EscapeWhitespaces) { SpaceSymbol.CopyTo(buffer, n); n += 3; }
                    else buffer[n++] = b;
                }
                isPrevSpace = sp[^1] == ' ';
            }
            input = input[consumed..];
            if (!m.RemoveExtraWhitespaces) isPrevSpace = false;
        }
        if (m.RemoveExtraWhitespaces)
            while (n >= space.Length && buffer.AsSpan(n - space.Length, space.Length).SequenceEqual(space)) n -= space.Length;
        if (m.TreatWhitespaceAsSuffix && m.AddDummyPrefix)
        {
            if (n + space.Length > buffer.Length) { Array.Resize(ref buffer, n + space.Length); _normBuffer.Value = buffer; }
            space.CopyTo(buffer.AsSpan(n)); n += space.Length;
        }
        return buffer.AsSpan(0, n);
    }

    /// <summary>SentencePiece's normalize_prefix: the normalised form of the longest rule at the start of input.</summary>
    ReadOnlySpan<byte> NormalizePrefix(ReadOnlySpan<byte> input, out int consumed)
    {
        if (_userBytes.Length > 0 && _userFirstByte[input[0]])
        {
            int u = MatchUser(input);
            if (u >= 0) { consumed = _userBytes[u].Length; return input[..consumed]; }
        }
        if (_charsmapTrie != null)
        {
            int length = 0, value = 0;
            CharsmapLongestMatch(input, ref length, ref value);
            if (length > 0)
            {
                consumed = length;
                var rest = _charsmapNormalized.AsSpan(value);
                int end = rest.IndexOf((byte)0);
                return end < 0 ? rest : rest[..end];
            }
        }
        int len = input[0] < 0x80 ? 1 : Utf8Text.ValidCharLength(input, out _);
        if (len == 0) { consumed = 1; return Replacement; }
        consumed = len;
        return input[..len];
    }

    int MatchUser(ReadOnlySpan<byte> text)
    {
        for (int u = 0; u < _userBytes.Length; u++)
            if (text.StartsWith(_userBytes[u])) return u;
        return -1;
    }

    static (uint[] Trie, byte[] Normalized) DecodeCharsmap(byte[] blob)
    {
        if (blob.Length <= 4) throw new DataException("the normalisation rule blob (precompiled_charsmap) is broken");
        uint trieSize = BinaryPrimitives.ReadUInt32LittleEndian(blob);
        if (trieSize >= blob.Length - 4 + 1 || trieSize % 4 != 0) throw new DataException("the normalisation rule blob (precompiled_charsmap) is broken");
        var trie = new uint[trieSize / 4];
        for (int i = 0; i < trie.Length; i++) trie[i] = BinaryPrimitives.ReadUInt32LittleEndian(blob.AsSpan(4 + 4 * i));
        return (trie, blob[(4 + (int)trieSize)..]);
    }

    /// <summary>Darts-clone commonPrefixSearch, keeping the longest match (as SentencePiece does).</summary>
    void CharsmapLongestMatch(ReadOnlySpan<byte> key, ref int longestLength, ref int longestValue)
    {
        var array = _charsmapTrie!;
        uint id = 0;
        uint unit = array[0];
        id ^= Offset(unit);
        for (int i = 0; i < key.Length; i++)
        {
            id ^= key[i];
            if (id >= array.Length) return;
            unit = array[id];
            if ((unit & ((1u << 31) | 0xFF)) != key[i]) return;
            id ^= Offset(unit);
            if (((unit >> 8) & 1) == 1)
            {
                if (id >= array.Length) return;
                int value = (int)(array[id] & ((1u << 31) - 1));
                if (longestLength == 0 || i + 1 > longestLength) { longestLength = i + 1; longestValue = value; }
            }
        }

        static uint Offset(uint unit) => (unit >> 10) << (int)((unit & (1u << 9)) >> 6);
    }

    // ---------------- BPE ----------------

    PairTable BuildPairTable(out bool splitAtSpaceRuns)
    {
        var pieces = _model.Pieces;
        int v = pieces.Count;
        // Characters of pieces that are not pieces themselves get virtual symbol ids.
        int SymbolOf(string s)
        {
            if (_normalPieces.TryGetValue(s, out int id)) return id;
            if (!IsSingleChar(s)) return -1;
            int cp = char.ConvertToUtf32(s, 0);
            if (_charSymbol.TryGetValue(cp, out id)) return id;
            id = v + _virtualOutput.Count;
            _charSymbol[cp] = id;
            _virtualOutput.Add(DirectOutput(s));
            return id;
        }
        var table = new PairTable(v * 4);
        splitAtSpaceRuns = true;
        for (int i = 0; i < v; i++)
        {
            var p = pieces[i];
            if (p.Type is not (SentencePieceModel.PieceType.Normal or SentencePieceModel.PieceType.UserDefined)) continue;
            var text = p.Text;
            // Does '▁' occur after a character that is not '▁'? Then merges may cross run starts.
            bool inLeadingRun = true;
            foreach (char c in text)
            {
                if (c != '\u2581') inLeadingRun = false;
                else if (!inLeadingRun) splitAtSpaceRuns = false;
            }
            for (int k = 1; k < text.Length; k++)
            {
                if (char.IsLowSurrogate(text[k])) continue;
                int left = SymbolOf(text[..k]), right = SymbolOf(text[k..]);
                if (left >= 0 && right >= 0) table.Add(left, right, i, p.Score);
            }
        }
        // Every single-character piece is its own symbol.
        foreach (var (text, id) in _normalPieces)
            if (IsSingleChar(text)) _charSymbol[char.ConvertToUtf32(text, 0)] = id;
        for (int c = 0; c < 128; c++) _asciiSymbol[c] = CharSymbolOrDirect(c);
        return table;
    }

    static bool IsSingleChar(string s) => s.Length == 1 ? !char.IsSurrogate(s[0]) : s.Length == 2 && char.IsSurrogatePair(s[0], s[1]);

    /// <summary>What a character that never merges outputs: its reserved id, its bytes (byte fallback) or &lt;unk&gt;.</summary>
    int[] DirectOutput(string ch)
    {
        if (_reservedPieces.TryGetValue(ch, out int id)) return [id];
        if (_normalPieces.TryGetValue(ch, out id)) return [id];
        if (!_model.ByteFallback) return [_model.UnkId];
        return Encoding.UTF8.GetBytes(ch).Select(b => _byteIds[b]).ToArray();
    }

    /// <summary>Symbol id of a character (a piece or a virtual symbol), or -1 when it never merges.</summary>
    int CharSymbolOrDirect(int cp) => _charSymbol.TryGetValue(cp, out int id) ? id : -1;

    void EncodeBpe(ReadOnlySpan<byte> text, List<int> ids)
    {
        var cache = _cache.Value!;
        // Frozen user symbols first (SentencePiece's PrefixMatcher), at every character start.
        int stretch = 0, i = 0;
        while (_userBytes.Length > 0 && i < text.Length)
        {
            int u = _userFirstByte[text[i]] ? MatchUser(text[i..]) : -1;
            if (u < 0) { i += Math.Min(Utf8Text.LeadByteLength(text[i]), text.Length - i); continue; }
            EncodeBpeStretch(text[stretch..i], ids, cache);
            ids.Add(PieceToId(_model.Pieces[_userIds[u]].Text));
            i += _userBytes[u].Length;
            stretch = i;
        }
        EncodeBpeStretch(text[stretch..], ids, cache);
    }

    void EncodeBpeStretch(ReadOnlySpan<byte> text, List<int> ids, SegmentCache cache)
    {
        if (!_splitAtSpaceRuns) { EncodeBpeSegment(text, ids, cache, cacheable: false); return; }
        int pos = 0;
        while (pos < text.Length)
        {
            // The segment runs to the start of the next '▁' run.
            int end = pos;
            while (end < text.Length && text[end..].StartsWith(SpaceSymbol)) end += 3;
            int next = end < text.Length ? text[end..].IndexOf(SpaceSymbol) : -1;
            end = next < 0 ? text.Length : end + next;
            EncodeBpeSegment(text[pos..end], ids, cache, cacheable: true);
            pos = end;
        }
    }

    void EncodeBpeSegment(ReadOnlySpan<byte> segment, List<int> ids, SegmentCache cache, bool cacheable)
    {
        if (segment.IsEmpty) return;
        cacheable &= segment.Length <= SegmentCache.MaxSegmentBytes;
        if (cacheable && cache.TryGet(segment, out var hit)) { ids.AddRange(hit); return; }
        int[]? big = null;
        Span<int> symbols = segment.Length <= 256 ? stackalloc int[segment.Length] : (big = new int[segment.Length]);
        int count = 0, v = VocabSize;
        int start = ids.Count;
        for (int i = 0; i < segment.Length;)
        {
            // Characters by SentencePiece's OneCharLen (the text is valid UTF-8 after normalising).
            int len = Math.Min(Utf8Text.LeadByteLength(segment[i]), segment.Length - i);
            int sym;
            if (len == 1 && segment[i] < 0x80) sym = _asciiSymbol[segment[i]];
            else
            {
                Utf8Text.ValidCharLength(segment[i..], out int cp);
                sym = cp >= 0 ? CharSymbolOrDirect(cp) : -1;
            }
            if (sym >= 0) symbols[count++] = sym;
            else
            {
                // Never merges: everything before it is independent of everything after it.
                count = FlushBpe(symbols[..count], ids, v);
                var ch = Encoding.UTF8.GetString(segment.Slice(i, len));
                foreach (int id in DirectOutput(ch)) ids.Add(id);
            }
            i += len;
        }
        FlushBpe(symbols[..count], ids, v);
        if (cacheable) cache.Add(segment, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(ids)[start..]);
    }

    int FlushBpe(Span<int> symbols, List<int> ids, int v)
    {
        int n = PairMerger.Merge(_pairs!, symbols);
        for (int k = 0; k < n; k++)
        {
            int s = symbols[k];
            if (s < v) ids.Add(PieceToIdFast(s));
            else ids.AddRange(_virtualOutput[s - v]);
        }
        return 0;
    }

    int PieceToIdFast(int pieceId) => _pieceTypes[pieceId] == SentencePieceModel.PieceType.Unused ? _model.UnkId : pieceId;

    // ---------------- unigram ----------------

    struct BestPath
    {
        public int Id;
        public float Score;
        public int StartsAt;
    }

    /// <summary>SentencePiece's Model::EncodeOptimized (unigram Viterbi), float for float.</summary>
    void EncodeUnigram(ReadOnlySpan<byte> text, List<int> ids)
    {
        int size = text.Length;
        if (size == 0) return;
        var trie = _trie!;
        float unkScore = _minScore - 10.0f;
        var best = _bestPath.Value!;
        if (best.Length < size + 1) _bestPath.Value = best = new BestPath[Math.Max(size + 1, best.Length * 2)];
        for (int i = 0; i <= size; i++) best[i] = new BestPath { Id = -1, StartsAt = -1 };
        int startsAt = 0;
        while (startsAt < size)
        {
            float scoreTillHere = best[startsAt].Score;
            bool hasSingleNode = false;
            int mblen = Math.Min(Utf8Text.LeadByteLength(text[startsAt]), size - startsAt);
            int node = ByteTrie.Root;
            for (int keyPos = startsAt; keyPos < size;)
            {
                node = trie.Child(node, text[keyPos]);
                keyPos++;
                if (node < 0) break;
                int id = trie.Value(node);
                if (id < 0) continue;
                var type = _pieceTypes[id];
                if (type == SentencePieceModel.PieceType.Unused) continue;
                int length = keyPos - startsAt;
                ref var target = ref best[keyPos];
                if (type == SentencePieceModel.PieceType.UserDefined)
                {
                    // C++: (length * max_score_ - 0.1) is a double; the sum is compared in double, stored as float.
                    double score = (double)((float)length * _maxScore) - 0.1;
                    double candidate = score + scoreTillHere;
                    if (target.StartsAt == -1 || candidate > target.Score)
                    {
                        target.Score = (float)candidate;
                        target.StartsAt = startsAt;
                        target.Id = id;
                    }
                }
                else
                {
                    float candidate = _scores[id] + scoreTillHere;
                    if (target.StartsAt == -1 || candidate > target.Score)
                    {
                        target.Score = candidate;
                        target.StartsAt = startsAt;
                        target.Id = id;
                    }
                }
                if (!hasSingleNode && length == mblen) hasSingleNode = true;
            }
            if (!hasSingleNode)
            {
                ref var target = ref best[startsAt + mblen];
                float candidate = unkScore + scoreTillHere;
                if (target.StartsAt == -1 || candidate > target.Score)
                {
                    target.Score = candidate;
                    target.StartsAt = startsAt;
                    target.Id = _model.UnkId;
                }
            }
            startsAt += mblen;
        }
        // Backtrack, appending the path in reverse, then flip it in place.
        int first = ids.Count;
        for (int end = size; end > 0; end = best[end].StartsAt)
        {
            int id = best[end].Id, s = best[end].StartsAt;
            if (id == _model.UnkId && _model.ByteFallback)
            {
                for (int b = end - 1; b >= s; b--) ids.Add(_byteIds[text[b]]);
            }
            else ids.Add(PieceToIdFast(id));
        }
        System.Runtime.InteropServices.CollectionsMarshal.AsSpan(ids)[first..].Reverse();
    }

    static string ComputeHash(SentencePieceModel m)
    {
        using var ms = new MemoryStream();
        using (var w = new BinaryWriter(ms, Encoding.UTF8, leaveOpen: true))
        {
            w.Write("sentencepiece/1");
            w.Write((int)m.Type);
            w.Write(m.Pieces.Count);
            foreach (var p in m.Pieces) { w.Write(p.Text); w.Write(BitConverter.SingleToInt32Bits(p.Score)); w.Write((int)p.Type); }
            w.Write(m.ByteFallback); w.Write(m.TreatWhitespaceAsSuffix);
            w.Write(m.AddDummyPrefix); w.Write(m.RemoveExtraWhitespaces); w.Write(m.EscapeWhitespaces);
            w.Write(m.PrecompiledCharsmap.Length); w.Write(m.PrecompiledCharsmap);
        }
        return Convert.ToHexStringLower(SHA256.HashData(ms.ToArray()));
    }
}

using System.Text;
using FsCheck;
using FsCheck.Xunit;
using Palm.Gpu.Data;
using Xunit;

namespace Palm.Gpu.Tests.Data;

/// <summary>Our BPE: losslessness (properties), digits, byte fallback, user symbols, training, JSON.</summary>
public class BpeTokenizerTests
{
    static BpeTokenizer Tok => TokenizerFixtures.Bpe;

    static bool IsAsciiDigit(byte b) => b is >= (byte)'0' and <= (byte)'9';

    // ---- properties ----

    [Property(Arbitrary = [typeof(TokenizerArbitraries)], MaxTest = 400)]
    public bool DecodeOfEncodeIsIdentityOnAnyString(string s)
    {
        var ids = Tok.Encode(s);
        return ids.All(id => id >= 0 && id < Tok.VocabSize) && Tok.Decode(ids) == s;
    }

    [Property(Arbitrary = [typeof(TokenizerArbitraries)], MaxTest = 400)]
    public bool RawBytesRoundTrip(byte[] bytes)
    {
        var ids = new List<int>();
        Tok.EncodeUtf8(bytes, ids);
        return Tok.DecodeBytes(ids.ToArray()).AsSpan().SequenceEqual(bytes);
    }

    [Property(Arbitrary = [typeof(TokenizerArbitraries)], MaxTest = 200)]
    public bool ByteTokenizerRoundTripsToo(string s)
    {
        var bytes = new ByteTokenizer();
        return bytes.Decode(bytes.Encode(s)) == s;
    }

    [Property(Arbitrary = [typeof(TokenizerArbitraries)], MaxTest = 300)]
    public bool DigitsAreAlwaysSingleTokens(string s)
    {
        foreach (int id in Tok.Encode(s))
        {
            var piece = Tok.PieceBytes(id);
            if (piece.IndexOfAnyInRange((byte)'0', (byte)'9') >= 0 && !(piece.Length == 1 && IsAsciiDigit(piece[0]))) return false;
        }
        return true;
    }

    [Property(Arbitrary = [typeof(TokenizerArbitraries)], MaxTest = 200)]
    public bool CuttingAtFindCutChangesNothing(string s)
    {
        // Newline-rich text cut at every allowed place encodes exactly as a whole.
        var bytes = Utf8Text.GetBytes(s.Replace(" ", "\n") + "\nend\n" + s);
        var whole = new List<int>();
        Tok.EncodeUtf8(bytes, whole);
        var parts = new List<int>();
        int start = 0;
        while (true)
        {
            int cut = Tok.FindCut(bytes, start + 1);
            int end = cut < 0 ? bytes.Length : cut;
            Tok.EncodeUtf8(bytes.AsSpan(start, end - start), parts, start == 0);
            if (cut < 0) break;
            start = cut;
        }
        return whole.SequenceEqual(parts);
    }

    // ---- examples ----

    [Theory]
    [InlineData("")]
    [InlineData("    indented\n\tif (x) {\r\n\t\treturn  y;\r\n}\r\n")]
    [InlineData("                                                              many spaces")]
    [InlineData("trailing   \t \n\n\n")]
    [InlineData("كتاب שלום 你好世界 😀👩‍💻 e\u0301\u0301 \u202Eevil\u202C")]
    [InlineData("\u0000\u0001\u001B[0m\u007F\u0085\u2028")]
    public void ExamplesRoundTrip(string s) => Assert.Equal(s, Tok.Decode(Tok.Encode(s)));

    [Fact]
    public void NumbersSplitIntoDigitsAndWordsMerge()
    {
        var ids = Tok.Encode("In 2023 the king said 1234567.");
        var pieces = ids.Select(id => Encoding.UTF8.GetString(Tok.PieceBytes(id))).ToList();
        foreach (var d in "20231234567") Assert.Contains(d.ToString(), pieces);
        Assert.Equal(11, pieces.Count(p => p.Length == 1 && char.IsAsciiDigit(p[0])));
        Assert.Contains(" the", pieces);    // common words are single tokens
        Assert.True(ids.Length < 22, $"expected merges, got {ids.Length} tokens");
    }

    [Fact]
    public void UnknownCharactersFallBackToTheirUtf8Bytes()
    {
        const string rare = "\U0002FA1D\U000E01EF";   // outside every generated range: 4 bytes each
        var ids = Tok.Encode(rare);
        Assert.Equal(Utf8Text.GetBytes(rare).Select(b => Tok.ByteId(b)), ids);
    }

    [Fact]
    public void FrequentNonAsciiCharactersAreSingleTokens()
    {
        // 'ο' (Greek omicron) is frequent in the generated text and is kept as a character.
        var ids = Tok.Encode("ο");
        Assert.Single(ids);
        Assert.InRange(ids[0], Tok.CharBase, Tok.MergeBase - 1);
    }

    [Fact]
    public void UserSymbolsAreSingleTokensEvenInsideWords()
    {
        int tab = Tok.Specials.Count, mask = tab + 1;
        var ids = Tok.Encode("a<tab>b[MASK][MASK]x<ta");
        Assert.Equal(2, ids.Count(id => id == mask));
        Assert.Single(ids, id => id == tab);
        Assert.Equal("a<tab>b[MASK][MASK]x<ta", Tok.Decode(ids));
    }

    [Fact]
    public void ControlTokensNeverComeFromText()
    {
        var ids = Tok.Encode("[eod] [pad] [eod]");
        Assert.DoesNotContain(Tok.EodId, ids);
        Assert.DoesNotContain(Tok.PadId, ids);
        Assert.Equal("[eod]", Tok.Decode([Tok.EodId]));
    }

    [Fact]
    public void IdLayoutIsAsDocumented()
    {
        Assert.Equal(0, Tok.PadId);
        Assert.Equal(1, Tok.EodId);
        Assert.Equal(4, Tok.ByteBase);              // 2 specials + 2 user symbols
        Assert.Equal(1000, Tok.VocabSize);
        Assert.Equal(Tok.MergeBase + Tok.Merges.Count, Tok.VocabSize);
        for (int b = 0; b < 256; b++) Assert.Equal([(byte)b], Tok.PieceBytes(Tok.ByteId((byte)b)).ToArray());
    }

    // ---- training ----

    [Fact]
    public void TrainerMergesTheMostFrequentPairFirst()
    {
        // " ab" ×5 and " cd" ×3: pairs (' ',a) (a,b) ×5 beat (' ',c) (c,d) ×3; ties go to the smaller ids.
        var text = string.Concat(Enumerable.Repeat(" ab", 5)) + string.Concat(Enumerable.Repeat(" cd", 3));
        var tok = BpeTrainer.Train([text], new BpeTrainerOptions { VocabSize = 258 + 3 });
        int B(char c) => tok.ByteId((byte)c);
        Assert.Equal([(B(' '), B('a')), (258, B('b')), (B(' '), B('c'))], tok.Merges);
        Assert.Equal([tok.MergeBase + 1, tok.MergeBase + 1], tok.Encode(" ab ab"));
    }

    [Fact]
    public void TrainerNeverMergesDigitsAndStopsWhenPairsRunOut()
    {
        var text = string.Concat(Enumerable.Range(0, 2000).Select(i => $" item{i * 7919 % 100000}x"));
        var tok = BpeTrainer.Train([text], new BpeTrainerOptions { VocabSize = 5000 });
        Assert.True(tok.VocabSize < 5000);           // " item", "x" and single digits: little to merge
        Assert.NotEmpty(tok.Merges);
        foreach (var (a, b) in tok.Merges)
            Assert.False(IsAsciiDigit(tok.PieceBytes(a)[^1]) || IsAsciiDigit(tok.PieceBytes(b)[0]));
    }

    [Fact]
    public void TrainingIsIdenticalForAnyThreadCount()
    {
        // Three documents, one above the 1 MiB chunk size so it is cut and counted in parallel.
        var big = string.Concat(Enumerable.Repeat(Encoding.UTF8.GetString(TokenizerFixtures.MixedText), 4));
        string[] docs = [big, "second document\nwith lines", "третий документ"];
        var hashes = new[] { 1, 2, 3 }.Select(t => BpeTrainer.Train(docs, new BpeTrainerOptions { VocabSize = 600, Threads = t }).VocabularyHash).ToList();
        Assert.All(hashes, h => Assert.Equal(hashes[0], h));
    }

    [Fact]
    public void VocabularyOutOfRangeIsAClearError()
    {
        var e = Assert.Throws<DataException>(() => BpeTrainer.Train(["abc"], new BpeTrainerOptions { VocabSize = 100 }));
        Assert.Contains("--vocab 100", e.Message);
        Assert.Throws<DataException>(() => BpeTrainer.Train([""], new BpeTrainerOptions { VocabSize = 300 }));
    }

    // ---- persistence ----

    [Fact]
    public void JsonSaveLoadKeepsEverything()
    {
        var path = Path.Combine(Path.GetTempPath(), $"bpe-{Guid.NewGuid():N}.json");
        try
        {
            Tok.Save(path);
            var loaded = BpeTokenizer.Load(path);
            Assert.Equal(Tok.VocabularyHash, loaded.VocabularyHash);
            Assert.Equal(Tok.VocabSize, loaded.VocabSize);
            var sample = Encoding.UTF8.GetString(TokenizerFixtures.MixedText[..20000]);
            Assert.Equal(Tok.Encode(sample), loaded.Encode(sample));
            var json = File.ReadAllText(path);
            Assert.Contains("\"format\": \"palm-bpe\"", json);
            Assert.Contains("\"specials\": [\"[pad]\", \"[eod]\"]", json);
            Assert.Same(typeof(BpeTokenizer), TokenizerLoader.Load(path).GetType());
        }
        finally { File.Delete(path); }
    }

    [Theory]
    [InlineData("{\"format\": \"other\"}", "format")]
    [InlineData("{\"format\": \"palm-bpe\", \"version\": 9}", "version 9")]
    [InlineData("{\"format\": \"palm-bpe\", \"version\": 1, \"specials\": [\"[eod]\"], \"chars\": [], \"merges\": []}", "[pad]")]
    [InlineData("{\"format\": \"palm-bpe\", \"version\": 1, \"specials\": [\"[pad]\", \"[eod]\"], \"chars\": [], \"merges\": [[2, 5000]]}", "merge 0")]
    [InlineData("{\"format\": \"palm-bpe\", \"version\": 1, \"specials\": [\"[pad]\", \"[eod]\"], \"chars\": [\"ab\"], \"merges\": []}", "exactly one")]
    [InlineData("{\"format\": \"palm-bpe\", \"vers", "JSON")]
    public void CorruptJsonIsAClearError(string json, string expected)
    {
        var e = Assert.Throws<DataException>(() => BpeTokenizer.FromJson(Encoding.UTF8.GetBytes(json)));
        Assert.Contains(expected, e.Message);
    }

    // ---- the merge loop ----

    [Fact]
    public void ScanAndHeapMergeLoopsAgree()
    {
        // Random tables over a small alphabet with many score ties: both loops must pick the same merges.
        var rng = new Random(5);
        for (int trial = 0; trial < 300; trial++)
        {
            var table = new PairTable(64);
            int next = 10;
            for (int k = 0; k < 40; k++)
                table.Add(rng.Next(next), rng.Next(next), next++, rng.Next(4));
            var symbols = Enumerable.Range(0, rng.Next(2, 48)).Select(_ => rng.Next(-1, 10)).ToArray();
            var a = (int[])symbols.Clone();
            var b = (int[])symbols.Clone();
            int na = PairMerger.MergeByScan(table, a);
            int nb = PairMerger.MergeByHeap(table, b);
            Assert.Equal(a[..na], b[..nb]);
        }
    }
}

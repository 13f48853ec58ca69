using System.IO.Compression;
using System.Text;
using Palm.Gpu.Data;
using Xunit;

namespace Palm.Gpu.Tests.Data;

/// <summary>
/// Ids identical to Debian's SentencePiece (spm_encode) on a generated held-out text of 130 KB:
/// Shakespeare, code, eight scripts, emoji, rare characters (byte fallback), runs of spaces, tabs,
/// CR, control characters and invalid UTF-8. Reference files: Reference/sentencepiece/generate.py.
/// </summary>
public class SentencePieceTests
{
    static readonly string Dir = Path.Combine(AppContext.BaseDirectory, "Reference", "sentencepiece");

    internal static byte[] Gunzip(string path)
    {
        using var gz = new GZipStream(File.OpenRead(path), CompressionMode.Decompress);
        using var ms = new MemoryStream();
        gz.CopyTo(ms);
        return ms.ToArray();
    }

    /// <summary>Lines as spm_encode reads them: split on '\n' only, a final newline ends the last line.</summary>
    internal static List<byte[]> Lines(byte[] text)
    {
        var lines = new List<byte[]>();
        int start = 0;
        while (start < text.Length)
        {
            int nl = Array.IndexOf(text, (byte)'\n', start);
            int end = nl < 0 ? text.Length : nl;
            lines.Add(text[start..end]);
            start = end + 1;
        }
        return lines;
    }

    public static TheoryData<string> Models => new() { "bpe", "unigram", "bpe_ws_user", "unigram_user", "bpe_nfkc" };

    [Theory]
    [MemberData(nameof(Models))]
    public void IdsMatchSpmEncodeOnHeldOutText(string name) =>
        AssertMatchesReference(name, SentencePieceTokenizer.Load(Path.Combine(Dir, name + ".model")));

    [Theory]
    [InlineData("bpe")]
    [InlineData("bpe_ws_user")]
    public void WholeTextMergeLoopMatchesToo(string name) =>
        AssertMatchesReference(name, new SentencePieceTokenizer(SentencePieceModel.Load(Path.Combine(Dir, name + ".model")), segmentCache: false));

    static void AssertMatchesReference(string name, SentencePieceTokenizer tok)
    {
        var text = Gunzip(Path.Combine(Dir, "heldout.txt.gz"));
        Assert.True(text.Length >= 100_000, "the held-out text must be at least 100 KB");
        var expected = Encoding.ASCII.GetString(Gunzip(Path.Combine(Dir, name + ".ids.gz"))).Split('\n');
        var lines = Lines(text);
        Assert.Equal(lines.Count, expected.Length - 1);
        int mismatches = 0;
        var report = new StringBuilder();
        long ids = 0;
        for (int i = 0; i < lines.Count; i++)
        {
            var got = new List<int>();
            tok.EncodeUtf8(lines[i], got);
            ids += got.Count;
            var gotText = string.Join(' ', got);
            if (gotText != expected[i] && mismatches++ < 5)
                report.AppendLine($"line {i}: {Encoding.UTF8.GetString(lines[i])}\n  spm:  {expected[i]}\n  ours: {gotText}");
        }
        Assert.True(mismatches == 0, $"{name}: {mismatches} of {lines.Count} lines differ\n{report}");
        Assert.True(ids > 40_000);
    }

    [Fact]
    public void ModelSettingsAreReadFromTheProtobuf()
    {
        var bpe = SentencePieceTokenizer.Load(Path.Combine(Dir, "bpe.model"));
        var m = bpe.Model;
        Assert.Equal(SentencePieceModel.ModelType.Bpe, m.Type);
        Assert.Equal(2000, m.TrainerVocabSize);
        Assert.Equal(2000, bpe.VocabSize);
        Assert.True(m.ByteFallback && m.SplitDigits);
        Assert.Equal("identity", m.NormalizerName);
        Assert.False(m.RemoveExtraWhitespaces);
        Assert.True(m.AddDummyPrefix && m.EscapeWhitespaces);
        Assert.Equal((0, 1, 2, -1), (m.UnkId, m.BosId, m.EosId, m.PadId));
        Assert.Equal("sentencepiece-bpe", bpe.Kind);
        Assert.Equal(2, bpe.EodId);
        Assert.Equal(2, bpe.PadId);                          // no <pad> piece: the eos id stands in
        Assert.Equal(SentencePieceModel.PieceType.Byte, m.Pieces[3].Type);
        Assert.Equal("<0x00>", m.Pieces[3].Text);
        var nfkc = SentencePieceModel.Load(Path.Combine(Dir, "bpe_nfkc.model"));
        Assert.Equal("nmt_nfkc", nfkc.NormalizerName);
        Assert.True(nfkc.RemoveExtraWhitespaces && nfkc.PrecompiledCharsmap.Length > 1000);
        Assert.Equal(SentencePieceModel.ModelType.Unigram, SentencePieceModel.Load(Path.Combine(Dir, "unigram.model")).Type);
    }

    [Theory]
    [InlineData("bpe")]
    [InlineData("unigram")]
    public void DecodeInvertsEncodeOnValidText(string name)
    {
        var tok = SentencePieceTokenizer.Load(Path.Combine(Dir, name + ".model"));
        int checkedLines = 0;
        foreach (var line in Lines(Gunzip(Path.Combine(Dir, "heldout.txt.gz"))))
        {
            if (!Utf8Text.IsValid(line) || line.AsSpan().IndexOf("\u2581"u8) >= 0) continue;   // SentencePiece's two lossy cases
            var ids = new List<int>();
            tok.EncodeUtf8(line, ids);
            Assert.Equal(line, tok.DecodeBytes(ids.ToArray()));
            checkedLines++;
        }
        Assert.True(checkedLines > 1000);
    }

    [Fact]
    public void CuttingABpeDocumentAtFindCutChangesNothing()
    {
        var tok = SentencePieceTokenizer.Load(Path.Combine(Dir, "bpe.model"));
        var text = Gunzip(Path.Combine(Dir, "heldout.txt.gz"));
        var whole = new List<int>();
        tok.EncodeUtf8(text, whole);
        var parts = new List<int>();
        int start = 0, cuts = 0;
        while (true)
        {
            int cut = tok.FindCut(text, start + 997);
            int end = cut < 0 ? text.Length : cut;
            tok.EncodeUtf8(text.AsSpan(start, end - start), parts, atDocumentStart: start == 0);
            if (cut < 0) break;
            start = cut;
            cuts++;
        }
        Assert.True(cuts > 50);
        Assert.Equal(whole, parts);
        Assert.Equal(-1, SentencePieceTokenizer.Load(Path.Combine(Dir, "unigram.model")).FindCut(text, 1000));
    }

    [Fact]
    public void CorruptModelsAreClearErrors()
    {
        var good = File.ReadAllBytes(Path.Combine(Dir, "bpe.model"));
        foreach (int length in new[] { 0, 1, 7, 100, good.Length / 3, good.Length / 2, good.Length - 3 })
        {
            var e = Assert.Throws<DataException>(() => new SentencePieceTokenizer(SentencePieceModel.Parse(good[..length])));
            Assert.False(string.IsNullOrWhiteSpace(e.Message));
        }
        var garbage = new byte[5000];
        new Random(3).NextBytes(garbage);
        Assert.Throws<DataException>(() => SentencePieceModel.Parse(garbage));

        var path = Path.Combine(Path.GetTempPath(), $"corrupt-{Guid.NewGuid():N}.model");
        try
        {
            File.WriteAllBytes(path, good[..(good.Length / 2)]);
            var e = Assert.Throws<DataException>(() => TokenizerLoader.Load(path));
            Assert.Contains(path, e.Message);
        }
        finally { File.Delete(path); }
    }
}

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
    public void IdsMatchSpmEncodeOnHeldOutText(string name)
    {
        var text = Gunzip(Path.Combine(Dir, "heldout.txt.gz"));
        Assert.True(text.Length >= 100_000, "the held-out text must be at least 100 KB");
        var expected = Encoding.ASCII.GetString(Gunzip(Path.Combine(Dir, name + ".ids.gz"))).Split('\n');
        var tok = SentencePieceTokenizer.Load(Path.Combine(Dir, name + ".model"));
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
            if (gotText != expected[i])
            {
                if (mismatches++ < 5)
                    report.AppendLine($"line {i}: {Encoding.UTF8.GetString(lines[i])}\n  spm:  {expected[i]}\n  ours: {gotText}");
            }
        }
        Assert.True(mismatches == 0, $"{name}: {mismatches} of {lines.Count} lines differ\n{report}");
        Assert.True(ids > 40_000);
    }
}

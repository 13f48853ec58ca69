using System.Text;
using FsCheck;
using FsCheck.Fluent;
using Palm.Gpu.Data;

namespace Palm.Gpu.Tests.Data;

/// <summary>Shared inputs: a small BPE trained once on mixed text, and random-text generators.</summary>
public static class TokenizerFixtures
{
    public static readonly string ReferenceDir = Path.Combine(AppContext.BaseDirectory, "Reference", "sentencepiece");

    /// <summary>~330 KB of mixed text: a Shakespeare slice plus the generated multilingual/code reference text.</summary>
    public static byte[] MixedText => LazyMixed.Value;
    static readonly Lazy<byte[]> LazyMixed = new(() =>
    {
        var shakespeare = File.ReadAllBytes(ShakespearePath)[..200_000];
        var heldout = SentencePieceTests.Gunzip(Path.Combine(ReferenceDir, "heldout.txt.gz"));
        return [.. shakespeare, .. heldout];
    });

    public static string ShakespearePath
    {
        get
        {
            // ../shared/data next to the repository; walk up from the test output directory.
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            {
                var candidate = Path.Combine(dir.FullName, "shared", "data", "tinyshakespeare.txt");
                if (File.Exists(candidate)) return candidate;
            }
            return "/work/shared/data/tinyshakespeare.txt";
        }
    }

    /// <summary>A 1000-token BPE with two user symbols, trained on <see cref="MixedText"/>.</summary>
    public static BpeTokenizer Bpe => LazyBpe.Value;
    static readonly Lazy<BpeTokenizer> LazyBpe = new(() =>
        BpeTrainer.TrainUtf8([MixedText], new BpeTrainerOptions { VocabSize = 1000, UserDefined = ["<tab>", "[MASK]"], CharacterCoverage = 0.999 }));

    // ---- generators ----

    static Gen<string> Scalar(int lo, int hi) => Gen.Choose(lo, hi).Select(cp => cp is >= 0xD800 and <= 0xDFFF ? "\uFFFD" : char.ConvertFromUtf32(cp));

    static Gen<string> Repeat(string s, int max) => Gen.Choose(1, max).Select(n => string.Concat(Enumerable.Repeat(s, n)));

    /// <summary>Pieces of text from every corner of Unicode, weighted towards the tricky ones.</summary>
    public static Gen<string> Piece => Gen.Frequency(
        (6, Gen.Elements("the", " cat", "Hello", " world", "return", "x", "é", "naïve", "ÆØÅ", "_id")),
        (4, Gen.Choose(0, 99999).Select(n => n.ToString())),
        (4, Repeat(" ", 40)),
        (2, Repeat("\t", 8)),
        (2, Gen.Elements("\r\n", "\n", "\r", "\n\n", "\r\n\r\n")),
        (2, Scalar(0x00, 0x1F)),
        (1, Scalar(0x7F, 0x9F)),
        (3, Scalar(0x0300, 0x036F)),                       // combining marks, also with nothing to combine with
        (3, Scalar(0x4E00, 0x9FFF)),                       // CJK
        (2, Scalar(0x3040, 0x30FF)),                       // kana
        (2, Scalar(0x0590, 0x06FF)),                       // Hebrew, Arabic (RTL)
        (1, Gen.Elements("\u200F", "\u202E", "\u200E", "\u2066", "\u061C")),   // bidi controls
        (2, Scalar(0x0370, 0x04FF)),                       // Greek, Cyrillic
        (3, Scalar(0x1F300, 0x1FAFF)),                     // emoji
        (1, Gen.Elements("👩‍💻", "👍🏽", "🇯🇵", "❤️", "\u200D", "\uFE0F")),
        (2, Scalar(0x10000, 0x10FFFF)),                    // every supplementary plane
        (2, Scalar(0x80, 0xFFFF)),                         // anywhere in the BMP
        (1, Gen.Elements("\u2581", "\u00A0", "\u3000", "\uFEFF", "\u2028", "\uFFFD", "\uFFFF", "\u0000")),
        (1, Gen.Elements("\uD800", "\uDBFF", "\uDC00", "\uDFFF", "a\uDC00b", "\uD83D")),  // lone surrogates
        (1, Gen.Elements("<tab>", "[MASK]", "<ta", "[MAS")));

    public static Gen<string> Text => Gen.Sized(size => Gen.ListOf(Piece, Math.Max(1, size)).Select(p => string.Concat(p)));

    /// <summary>Byte strings: random bytes mixed with UTF-8 fragments and broken sequences.</summary>
    public static Gen<byte[]> Bytes => Gen.Sized(size => Gen.ListOf(Gen.Frequency(
            (3, Gen.Choose(0, 255).Select(b => new[] { (byte)b })),
            (3, Piece.Select(s => Utf8Text.GetBytes(s))),
            (1, Gen.Elements(new byte[] { 0xC3 }, [0xE2, 0x96], [0xF0, 0x9F, 0x98], [0xED, 0xA0, 0x80], [0xC0, 0xAF], [0xF4, 0x90, 0x80, 0x80], [0xFF]))),
            Math.Max(1, size))
        .Select(parts => parts.SelectMany(p => p).ToArray()));
}

public static class TokenizerArbitraries
{
    public static Arbitrary<string> Strings() => TokenizerFixtures.Text.ToArbitrary();
    public static Arbitrary<byte[]> ByteArrays() => TokenizerFixtures.Bytes.ToArbitrary();
}

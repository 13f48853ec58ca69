using System.Globalization;
using System.Text;

namespace Palm.Gpu.Data;

/// <summary>
/// Cuts UTF-8 text into segments that BPE merges never cross, losslessly (the segments tile the
/// text exactly). Rules, on code points:
///   • a run of letters (L*, combining marks M*, '_'), or a run of other visible characters
///     (punctuation, symbols, controls), optionally led by ONE space: " word", " (){", "word";
///   • every decimal digit (Nd) alone, so numbers always split into single digits;
///   • a run of whitespace (spaces, tabs, CR, LF, U+3000, ...), except that a final space before a
///     letter or symbol run is left to lead that run: "\n    return" → "\n   ", " return";
///   • every byte that is not valid UTF-8 alone.
/// A newline followed by a non-space character always ends a segment, which makes such positions
/// safe places to cut a document for parallel encoding.
/// </summary>
internal static class Pretokenizer
{
    public const byte Whitespace = 0, Letter = 1, Digit = 2, Other = 3, Invalid = 4;

    static readonly byte[] AsciiClass = BuildAscii();

    static byte[] BuildAscii()
    {
        var t = new byte[128];
        for (int c = 0; c < 128; c++)
            t[c] = c is ' ' or '\t' or '\n' or '\r' or '\v' or '\f' ? Whitespace
                : c is (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') or '_' ? Letter
                : c is >= '0' and <= '9' ? Digit
                : Other;
        return t;
    }

    /// <summary>Class and byte length of the character at text[i].</summary>
    public static byte Classify(ReadOnlySpan<byte> text, int i, out int length)
    {
        byte b = text[i];
        if (b < 0x80) { length = 1; return AsciiClass[b]; }
        length = Utf8Text.ValidCharLength(text[i..], out int cp);
        if (length == 0) { length = 1; return Invalid; }
        return ClassOf(cp);
    }

    public static byte ClassOf(int codePoint)
    {
        if (codePoint < 0x80) return AsciiClass[codePoint];
        if (Rune.IsWhiteSpace(new Rune(codePoint))) return Whitespace;
        switch (CharUnicodeInfo.GetUnicodeCategory(codePoint))
        {
            case UnicodeCategory.UppercaseLetter:
            case UnicodeCategory.LowercaseLetter:
            case UnicodeCategory.TitlecaseLetter:
            case UnicodeCategory.ModifierLetter:
            case UnicodeCategory.OtherLetter:
            case UnicodeCategory.NonSpacingMark:
            case UnicodeCategory.SpacingCombiningMark:
            case UnicodeCategory.EnclosingMark:
                return Letter;
            case UnicodeCategory.DecimalDigitNumber:
                return Digit;
            default:
                return Other;
        }
    }

    /// <summary>End (exclusive) of the segment that starts at start.</summary>
    public static int SegmentEnd(ReadOnlySpan<byte> text, int start)
    {
        int n = text.Length;
        byte c = Classify(text, start, out int len);
        if (c == Digit || c == Invalid) return start + len;
        if (c == Whitespace)
        {
            if (text[start] == ' ' && start + 1 < n)
            {
                byte nextClass = Classify(text, start + 1, out _);
                if (nextClass is Letter or Other) return RunEnd(text, start + 1, nextClass);
            }
            int j = RunEnd(text, start, Whitespace);
            if (j < n && j - 1 > start && text[j - 1] == ' ')
            {
                byte nextClass = Classify(text, j, out _);
                if (nextClass is Letter or Other) return j - 1;
            }
            return j;
        }
        return RunEnd(text, start, c);
    }

    static int RunEnd(ReadOnlySpan<byte> text, int i, byte cls)
    {
        int n = text.Length;
        while (i < n)
        {
            byte b = text[i];
            if (b < 0x80)
            {
                if (AsciiClass[b] != cls) break;
                i++;
                continue;
            }
            if (Classify(text, i, out int len) != cls) break;
            i += len;
        }
        return i;
    }

    /// <summary>
    /// Smallest p ≥ from (0 &lt; p &lt; text.Length) just after a '\n' and at a non-whitespace
    /// character: no segment spans p. -1 when there is none.
    /// </summary>
    public static int FindCut(ReadOnlySpan<byte> text, int from)
    {
        int p = Math.Max(from, 1);
        while (p < text.Length)
        {
            int nl = text[(p - 1)..].IndexOf((byte)'\n');
            if (nl < 0) return -1;
            p = p - 1 + nl + 1;
            if (p >= text.Length) return -1;
            if (Classify(text, p, out _) != Whitespace) return p;
            p++;
        }
        return -1;
    }
}

using System.Buffers;
using System.Globalization;
using System.Text;
using System.Text.Unicode;

namespace Palm.Gpu.Data;

/// <summary>
/// UTF-8 conversions that lose nothing. .NET strings may hold lone surrogates, which strict UTF-8
/// cannot carry; here they travel as their generalised three-byte form (ED A0..BF xx, "WTF-8"),
/// which is invalid UTF-8, so tokenizers send them through byte fallback and decoding restores
/// them. Every string therefore round-trips string → bytes → string exactly.
/// </summary>
public static class Utf8Text
{
    /// <summary>The bytes of s: UTF-8, with lone surrogates in their three-byte form.</summary>
    public static byte[] GetBytes(ReadOnlySpan<char> s)
    {
        var buffer = new byte[checked(s.Length * 3)];
        var status = Utf8.FromUtf16(s, buffer, out _, out int written, replaceInvalidSequences: false);
        if (status == OperationStatus.Done) return buffer.AsSpan(0, written).ToArray();
        return GetBytesSlow(s, buffer);
    }

    static byte[] GetBytesSlow(ReadOnlySpan<char> s, byte[] buffer)
    {
        int n = 0;
        for (int i = 0; i < s.Length; i++)
        {
            int c = s[i];
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                int cp = char.ConvertToUtf32(s[i], s[i + 1]);
                buffer[n++] = (byte)(0xF0 | (cp >> 18));
                buffer[n++] = (byte)(0x80 | ((cp >> 12) & 0x3F));
                buffer[n++] = (byte)(0x80 | ((cp >> 6) & 0x3F));
                buffer[n++] = (byte)(0x80 | (cp & 0x3F));
                i++;
            }
            else if (c < 0x80) buffer[n++] = (byte)c;
            else if (c < 0x800)
            {
                buffer[n++] = (byte)(0xC0 | (c >> 6));
                buffer[n++] = (byte)(0x80 | (c & 0x3F));
            }
            else
            {
                // Includes lone surrogates (D800..DFFF), written in the same three-byte shape.
                buffer[n++] = (byte)(0xE0 | (c >> 12));
                buffer[n++] = (byte)(0x80 | ((c >> 6) & 0x3F));
                buffer[n++] = (byte)(0x80 | (c & 0x3F));
            }
        }
        return buffer.AsSpan(0, n).ToArray();
    }

    /// <summary>
    /// Decodes bytes to a string: valid UTF-8 as usual, three-byte surrogate forms back to lone
    /// surrogates, and every other maximal invalid subsequence to one U+FFFD (as .NET's decoder).
    /// </summary>
    public static string GetString(ReadOnlySpan<byte> bytes)
    {
        var chars = new char[bytes.Length];
        int n = 0;
        while (true)
        {
            var status = Utf8.ToUtf16(bytes, chars.AsSpan(n), out int read, out int written, replaceInvalidSequences: false);
            n += written;
            bytes = bytes[read..];
            if (status == OperationStatus.Done || bytes.IsEmpty) break;
            if (bytes.Length >= 3 && bytes[0] == 0xED && bytes[1] >= 0xA0 && bytes[1] <= 0xBF && (bytes[2] & 0xC0) == 0x80)
            {
                chars[n++] = (char)(0xD000 | ((bytes[1] & 0x3F) << 6) | (bytes[2] & 0x3F));
                bytes = bytes[3..];
            }
            else
            {
                Rune.DecodeFromUtf8(bytes, out _, out int consumed);
                chars[n++] = '\uFFFD';
                bytes = bytes[Math.Max(1, consumed)..];
            }
        }
        return new string(chars, 0, n);
    }

    /// <summary>
    /// Length of the character starting at bytes[0] when it is valid UTF-8 (1..4), else 0.
    /// Surrogate code points, overlong forms and values above U+10FFFF are invalid.
    /// </summary>
    public static int ValidCharLength(ReadOnlySpan<byte> bytes, out int codePoint)
    {
        byte b = bytes[0];
        if (b < 0x80) { codePoint = b; return 1; }
        if (Rune.DecodeFromUtf8(bytes, out var rune, out int consumed) == OperationStatus.Done)
        {
            codePoint = rune.Value;
            return consumed;
        }
        codePoint = -1;
        return 0;
    }

    /// <summary>SentencePiece's OneCharLen: the length a UTF-8 lead byte announces (1 for stray trail bytes).</summary>
    public static int LeadByteLength(byte b) => b < 0xC0 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;

    /// <summary>True when the bytes are valid UTF-8 throughout.</summary>
    public static bool IsValid(ReadOnlySpan<byte> bytes) => Utf8.IsValid(bytes);

    internal static UnicodeCategory Category(int codePoint) => CharUnicodeInfo.GetUnicodeCategory(codePoint);
}

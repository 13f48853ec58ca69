using System.Text;

namespace Palm.Gpu.Data;

/// <summary>
/// The no-setup tokenizer: one token per UTF-8 byte (ids 0..255), then [eod] = 256 and [pad] = 257.
/// Lossless by construction (lone surrogates travel in their three-byte form, see <see cref="Utf8Text"/>).
/// </summary>
public sealed class ByteTokenizer : IUtf8Tokenizer
{
    public const int Eod = 256;
    public const int Pad = 257;

    public string Kind => "bytes";
    public int VocabSize => 258;
    public int EodId => Eod;
    public int PadId => Pad;
    public string VocabularyHash => "bytes-v1";

    public int[] Encode(string text)
    {
        var bytes = Utf8Text.GetBytes(text);
        var ids = new int[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) ids[i] = bytes[i];
        return ids;
    }

    public string Decode(ReadOnlySpan<int> ids) => Utf8Text.GetString(DecodeBytes(ids));

    public void EncodeUtf8(ReadOnlySpan<byte> text, List<int> ids, bool atDocumentStart = true)
    {
        ids.EnsureCapacity(ids.Count + text.Length);
        foreach (byte b in text) ids.Add(b);
    }

    public byte[] DecodeBytes(ReadOnlySpan<int> ids)
    {
        var bytes = new List<byte>(ids.Length);
        foreach (int id in ids)
        {
            if ((uint)id < 256) bytes.Add((byte)id);
            else bytes.AddRange(Encoding.UTF8.GetBytes(id == Eod ? "[eod]" : id == Pad ? "[pad]" : $"[{id}]"));
        }
        return bytes.ToArray();
    }

    public int FindCut(ReadOnlySpan<byte> text, int from)
    {
        int p = Math.Max(from, 1);
        return p < text.Length ? p : -1;
    }
}

using System.Text;

namespace Palm.Gpu.Data;

/// <summary>
/// The no-setup tokenizer: one token per UTF-8 byte (ids 0..255), then [eod] = 256 and [pad] = 257.
/// Lossless by construction; decoding invalid UTF-8 byte runs yields U+FFFD as .NET's decoder does.
/// </summary>
public sealed class ByteTokenizer : ITokenizer
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
        var bytes = Encoding.UTF8.GetBytes(text);
        var ids = new int[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) ids[i] = bytes[i];
        return ids;
    }

    public string Decode(ReadOnlySpan<int> ids)
    {
        var sb = new StringBuilder();
        var run = new List<byte>();
        foreach (int id in ids)
        {
            if (id < 256) { run.Add((byte)id); continue; }
            Flush();
            sb.Append(id == Eod ? "[eod]" : id == Pad ? "[pad]" : $"[{id}]");
        }
        Flush();
        return sb.ToString();

        void Flush()
        {
            if (run.Count == 0) return;
            sb.Append(Encoding.UTF8.GetString(run.ToArray()));
            run.Clear();
        }
    }
}

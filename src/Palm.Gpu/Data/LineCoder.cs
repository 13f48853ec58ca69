using System.Buffers.Text;

namespace Palm.Gpu.Data;

/// <summary>
/// Text in, ids out, one line at a time: the layout of `spm_encode --output_format=id` (one line of
/// space-separated ids per input line), so outputs of the two can be diffed; and back.
/// </summary>
public static class LineCoder
{
    /// <summary>
    /// Encodes a stream line by line ('\n' ends a line; '\r' stays part of it, as with spm_encode).
    /// Blocks of lines are encoded in parallel and written in input order.
    /// </summary>
    public static void EncodeLines(IUtf8Tokenizer tok, Stream input, Stream output, int threads)
    {
        const int BlockBytes = 4 << 20;
        var carry = new MemoryStream();
        var buffer = new byte[BlockBytes];
        while (true)
        {
            int read = input.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
            bool end = read < buffer.Length;
            int lastNewline = end ? read - 1 : Array.LastIndexOf(buffer, (byte)'\n', read - 1);
            if (lastNewline < 0 && !end) { carry.Write(buffer, 0, read); continue; }
            carry.Write(buffer, 0, lastNewline + 1);
            EncodeBlock(tok, carry.GetBuffer().AsSpan(0, (int)carry.Length).ToArray(), output, threads, final: end);
            carry.SetLength(0);
            if (end) break;
            carry.Write(buffer, lastNewline + 1, read - lastNewline - 1);
        }
        output.Flush();
    }

    static void EncodeBlock(IUtf8Tokenizer tok, byte[] text, Stream output, int threads, bool final)
    {
        var lines = new List<(int Start, int End)>();
        for (int start = 0; start < text.Length;)
        {
            int nl = Array.IndexOf(text, (byte)'\n', start);
            int end = nl < 0 ? text.Length : nl;
            lines.Add((start, end));
            start = end + 1;
        }
        const int LinesPerPart = 256;
        int parts = (lines.Count + LinesPerPart - 1) / LinesPerPart;
        var results = new byte[parts][];
        Parallel.For(0, parts, new ParallelOptions { MaxDegreeOfParallelism = threads }, p =>
        {
            var ids = new List<int>();
            var outBytes = new List<byte>(LinesPerPart * 64);
            Span<byte> number = stackalloc byte[16];
            for (int l = p * LinesPerPart; l < Math.Min(lines.Count, (p + 1) * LinesPerPart); l++)
            {
                ids.Clear();
                tok.EncodeUtf8(text.AsSpan(lines[l].Start, lines[l].End - lines[l].Start), ids);
                for (int k = 0; k < ids.Count; k++)
                {
                    if (k > 0) outBytes.Add((byte)' ');
                    Utf8Formatter.TryFormat(ids[k], number, out int written);
                    outBytes.AddRange(number[..written]);
                }
                outBytes.Add((byte)'\n');
            }
            results[p] = [.. outBytes];
        });
        foreach (var r in results) output.Write(r);
    }

    public static void DecodeLines(IUtf8Tokenizer tok, Stream input, Stream output)
    {
        using var reader = new StreamReader(input);
        using var writer = new BufferedStream(output, 1 << 16);
        var ids = new List<int>();
        string? line;
        int lineNumber = 0;
        while ((line = reader.ReadLine()) != null)
        {
            lineNumber++;
            ids.Clear();
            foreach (var field in line.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            {
                if (!int.TryParse(field, out int id) || id < 0 || id >= tok.VocabSize)
                    throw new DataException($"line {lineNumber}: \"{field}\" is not a token id in [0, {tok.VocabSize})");
                ids.Add(id);
            }
            writer.Write(tok.DecodeBytes(ids.ToArray()));
            writer.WriteByte((byte)'\n');
        }
    }

}

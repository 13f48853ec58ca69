using System.Text;

namespace Palm.Gpu.Data;

/// <summary>
/// Reads training text: a UTF-8 file (one document) or a directory (every text file below it,
/// recursively, in ordinal-sorted path order, one document each). Bad input throws
/// <see cref="DataException"/> with a message that says what is wrong and how to fix it.
/// </summary>
public static class Corpus
{
    public static readonly string[] TextExtensions = [".txt", ".md", ".text", ".jsonl", ".cs", ".py", ".c", ".h", ".json", ".html", ".xml", ".csv", ".tex", ".rst"];

    public static List<string> ReadDocuments(string path)
    {
        if (File.Exists(path)) return [ReadText(path)];
        if (!Directory.Exists(path))
            throw new DataException($"data path '{path}' does not exist; pass --data with a UTF-8 text file or a directory of text files");
        var files = Directory.EnumerateFiles(path, "*", SearchOption.AllDirectories)
            .Where(f => TextExtensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
            .OrderBy(f => f, StringComparer.Ordinal)
            .ToList();
        if (files.Count == 0)
            throw new DataException($"directory '{path}' holds no text files ({string.Join(" ", TextExtensions)}); point --data at a text file or a directory containing some");
        var docs = files.Select(ReadText).Where(d => d.Length > 0).ToList();
        if (docs.Count == 0)
            throw new DataException($"every text file under '{path}' is empty; nothing to train on");
        return docs;
    }

    static string ReadText(string file)
    {
        var bytes = File.ReadAllBytes(file);
        if (bytes.Length == 0) throw new DataException($"data file '{file}' is empty; give a file with some UTF-8 text");
        if (Array.IndexOf(bytes, (byte)0) >= 0)
            throw new DataException($"data file '{file}' contains NUL bytes and looks binary; give UTF-8 text");
        try
        {
            return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes);
        }
        catch (DecoderFallbackException e)
        {
            throw new DataException($"data file '{file}' is not valid UTF-8 (bad byte at offset {e.Index}); convert it to UTF-8 first");
        }
    }
}

/// <summary>Bad training data or tokenizer input; the message is meant for the user.</summary>
public sealed class DataException(string message) : Exception(message);

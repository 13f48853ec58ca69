using System.Text;
using System.Text.Json;

namespace Palm.Gpu.Data;

/// <summary>
/// Reads training text. A path may be:
///   • a UTF-8 text file: one document;
///   • a .jsonl file: one document per line, the line's "text" string (blank lines are skipped);
///   • a directory: every text or .jsonl file below it, recursively, in ordinal-sorted path order.
/// Bad input throws <see cref="DataException"/> with a message that says what is wrong and how to fix it.
/// </summary>
public static class Corpus
{
    public static readonly string[] TextExtensions = [".txt", ".md", ".text", ".jsonl", ".cs", ".py", ".c", ".h", ".json", ".html", ".xml", ".csv", ".tex", ".rst"];

    /// <summary>All documents as strings (for small corpora; large ones stream via <see cref="ReadDocumentsUtf8"/>).</summary>
    public static List<string> ReadDocuments(string path) => [.. ReadDocumentsUtf8(path).Select(d => Encoding.UTF8.GetString(d))];

    /// <summary>The files a corpus path stands for, in reading order.</summary>
    public static List<string> ListFiles(string path)
    {
        if (File.Exists(path)) return [path];
        if (!Directory.Exists(path))
            throw new DataException($"data path '{path}' does not exist; pass --data with a UTF-8 text file, a .jsonl file or a directory of text files");
        // Sorted first, then the first name of each real file kept: the order never depends on the file system's.
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var files = TextFilesUnder(path).OrderBy(f => f.Path, StringComparer.Ordinal).Where(f => seen.Add(f.Real)).Select(f => f.Path).ToList();
        if (files.Count == 0)
            throw new DataException($"directory '{path}' holds no text files ({string.Join(" ", TextExtensions)}); point --data at a text file or a directory containing some");
        return files;
    }

    /// <summary>
    /// Text files under a directory. Symbolic links to directories are not followed — a link to an ancestor would
    /// loop, and a link to ".." would read outside the corpus; a linked file is read, once, however many links
    /// (or the file itself) name it.
    /// </summary>
    static IEnumerable<(string Path, string Real)> TextFilesUnder(string root)
    {
        var pending = new Stack<string>();
        pending.Push(root);
        var flat = new EnumerationOptions { RecurseSubdirectories = false, IgnoreInaccessible = false, AttributesToSkip = 0 };
        while (pending.Count > 0)
        {
            string dir = pending.Pop();
            foreach (var sub in Directory.EnumerateDirectories(dir, "*", flat))
                if (new DirectoryInfo(sub).LinkTarget is null) pending.Push(sub);
            foreach (var f in Directory.EnumerateFiles(dir, "*", flat))
            {
                if (!TextExtensions.Contains(Path.GetExtension(f).ToLowerInvariant())) continue;
                var info = new FileInfo(f);
                string real = info.LinkTarget is null ? Path.GetFullPath(f) : info.ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? Path.GetFullPath(f);
                if (!File.Exists(real)) continue;   // a dangling link
                yield return (f, real);
            }
        }
    }

    public static bool IsJsonLines(string file) => Path.GetExtension(file).Equals(".jsonl", StringComparison.OrdinalIgnoreCase);

    /// <summary>Every non-empty document, as UTF-8 bytes, in corpus order. Throws when there is none.</summary>
    public static IEnumerable<byte[]> ReadDocumentsUtf8(string path)
    {
        var files = ListFiles(path);
        bool single = files.Count == 1 && File.Exists(path);
        int produced = 0;
        foreach (var file in files)
        {
            var bytes = ReadFile(file);
            if (bytes.Length == 0)
            {
                if (single) throw new DataException($"data file '{file}' is empty; give a file with some UTF-8 text");
                continue;
            }
            foreach (var doc in Documents(file, bytes))
            {
                produced++;
                yield return doc;
            }
        }
        if (produced == 0)
            throw new DataException(single ? $"data file '{path}' holds no documents; nothing to train on" : $"every text file under '{path}' is empty; nothing to train on");
    }

    /// <summary>The documents of one file whose bytes were read already.</summary>
    public static IEnumerable<byte[]> Documents(string file, byte[] bytes)
    {
        if (!IsJsonLines(file))
        {
            Validate(file, bytes);
            yield return bytes;
            yield break;
        }
        int line = 0;
        for (int start = 0; start < bytes.Length;)
        {
            line++;
            int nl = bytes.AsSpan(start).IndexOf((byte)'\n');
            int end = nl < 0 ? bytes.Length : start + nl;
            var text = JsonLineText(file, line, bytes.AsSpan(start, end - start));
            start = end + 1;
            if (text != null && text.Length > 0) yield return text;
        }
    }

    /// <summary>Reads a whole file (a DataException, not an IOException, when that fails).</summary>
    public static byte[] ReadFile(string file)
    {
        try
        {
            return File.ReadAllBytes(file);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DataException($"cannot read data file '{file}': {e.Message}");
        }
    }

    static byte[]? JsonLineText(string file, int line, ReadOnlySpan<byte> json)
    {
        if (json.Trim(" \t\r"u8).IsEmpty) return null;
        try
        {
            var reader = new Utf8JsonReader(json);
            using var doc = JsonDocument.ParseValue(ref reader);
            if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("text", out var text) || text.ValueKind != JsonValueKind.String)
                throw new DataException($"{file}:{line}: a JSONL line must be an object with a string \"text\" field");
            var s = text.GetString()!;
            if (s.Contains('\0')) throw new DataException($"{file}:{line}: the text contains NUL characters; give UTF-8 text");
            return Utf8Text.GetBytes(s);
        }
        catch (JsonException e)
        {
            throw new DataException($"{file}:{line}: not valid JSON ({e.Message})");
        }
    }

    static void Validate(string file, byte[] bytes)
    {
        if (bytes.AsSpan().IndexOf((byte)0) >= 0)
            throw new DataException($"data file '{file}' contains NUL bytes and looks binary; give UTF-8 text");
        if (!Utf8Text.IsValid(bytes))
        {
            try { new UTF8Encoding(false, true).GetCharCount(bytes); }
            catch (DecoderFallbackException e) { throw new DataException($"data file '{file}' is not valid UTF-8 (bad byte at offset {e.Index}); convert it to UTF-8 first"); }
            throw new DataException($"data file '{file}' is not valid UTF-8; convert it to UTF-8 first");
        }
    }
}

/// <summary>Bad training data or tokenizer input; the message is meant for the user.</summary>
public sealed class DataException(string message) : Exception(message);

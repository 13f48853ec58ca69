using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Palm.Gpu.IO;

/// <summary>One named fp32 tensor for a safetensors file.</summary>
public sealed record NamedTensor(string Name, long[] Shape, float[] Data);

/// <summary>
/// The safetensors format (8-byte little-endian header length, a JSON header mapping each name to
/// dtype/shape/data_offsets, then the raw little-endian data), fp32 only. Files are written to a
/// temporary name, flushed, then renamed, so a crash never leaves a half file under the real name.
/// Readers validate everything and say what is wrong.
/// </summary>
public static class SafeTensors
{
    public static void Write(string path, IEnumerable<NamedTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
        {
            var meta = new JsonObject();
            foreach (var (k, v) in metadata) meta[k] = v;
            header["__metadata__"] = meta;
        }
        long offset = 0;
        foreach (var t in list)
        {
            long count = t.Shape.Aggregate(1L, (a, b) => a * b);
            if (count != t.Data.LongLength)
                throw new ArgumentException($"tensor '{t.Name}': shape [{string.Join(",", t.Shape)}] holds {count} values but {t.Data.LongLength} were given");
            header[t.Name] = new JsonObject
            {
                ["dtype"] = "F32",
                ["shape"] = new JsonArray(t.Shape.Select(s => (JsonNode)s).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + 4 * count),
            };
            offset += 4 * count;
        }
        var headerBytes = Encoding.UTF8.GetBytes(header.ToJsonString());
        int pad = (8 - headerBytes.Length % 8) % 8; // keep the data 8-byte aligned, padded with spaces as the spec allows
        var padded = new byte[headerBytes.Length + pad];
        headerBytes.CopyTo(padded, 0);
        padded.AsSpan(headerBytes.Length).Fill((byte)' ');

        AtomicFile.Write(path, stream =>
        {
            Span<byte> len = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)padded.Length);
            stream.Write(len);
            stream.Write(padded);
            foreach (var t in list) stream.Write(MemoryMarshal.AsBytes(t.Data.AsSpan()));
        });
    }

    /// <summary>One tensor's header entry, checked: dtype F32, a shape of non-negative whole numbers, offsets that match it and the file.</summary>
    readonly record struct Entry(string Name, long[] Shape, long Begin, long Count);

    public static Dictionary<string, NamedTensor> Read(string path)
    {
        using var fs = OpenChecked(path);
        var (header, dataStart) = ReadHeader(fs, path);
        var result = new Dictionary<string, NamedTensor>();
        foreach (var e in Entries(header, dataStart, fs.Length, path))
        {
            var data = new float[e.Count];
            fs.Seek(dataStart + e.Begin, SeekOrigin.Begin);
            fs.ReadExactly(MemoryMarshal.AsBytes(data.AsSpan()));
            result[e.Name] = new NamedTensor(e.Name, e.Shape, data);
        }
        return result;
    }

    /// <summary>The header's __metadata__ (string values only, as the format requires); every tensor entry is checked too.</summary>
    public static Dictionary<string, string> ReadMetadata(string path)
    {
        using var fs = OpenChecked(path);
        var (header, dataStart) = ReadHeader(fs, path);
        _ = Entries(header, dataStart, fs.Length, path);
        if (header["__metadata__"] is not { } node) return [];
        if (node is not JsonObject meta) throw new InvalidDataException($"'{path}': __metadata__ is not a JSON object of strings; the file is corrupt or not safetensors");
        var result = new Dictionary<string, string>();
        foreach (var (k, v) in meta)
        {
            if (v is not JsonValue jv || !jv.TryGetValue(out string? text))
                throw new InvalidDataException($"'{path}': __metadata__ entry '{k}' is not a string; the file is corrupt or not safetensors");
            result[k] = text;
        }
        return result;
    }

    static FileStream OpenChecked(string path)
    {
        if (!File.Exists(path)) throw new InvalidDataException($"'{path}' does not exist");
        var fs = File.OpenRead(path);
        if (fs.Length < 8)
        {
            fs.Dispose();
            throw new InvalidDataException($"'{path}' is {fs.Length} bytes, too short to be a safetensors file");
        }
        return fs;
    }

    static (JsonObject Header, long DataStart) ReadHeader(FileStream fs, string path)
    {
        long fileLength = fs.Length;
        Span<byte> len = stackalloc byte[8];
        fs.ReadExactly(len);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(len);
        if (headerLength > (ulong)(fileLength - 8) || headerLength > 100_000_000)
            throw new InvalidDataException($"'{path}': header length {headerLength} exceeds the file size {fileLength}; the file is truncated or not safetensors");
        var headerBytes = new byte[headerLength];
        fs.ReadExactly(headerBytes);
        JsonNode? node;
        try { node = JsonNode.Parse(headerBytes, documentOptions: new JsonDocumentOptions { MaxDepth = 16 }); }
        catch (JsonException e) { throw new InvalidDataException($"'{path}': the header is not valid JSON ({e.Message})"); }
        catch (ArgumentException e) { throw new InvalidDataException($"'{path}': the header is not valid UTF-8 JSON ({e.Message})"); }
        if (node is not JsonObject header) throw new InvalidDataException($"'{path}': the header is {Kind(node)}, not a JSON object of tensors; the file is corrupt or not safetensors");
        return (header, 8 + (long)headerLength);
    }

    static string Kind(JsonNode? n) => n switch { null => "null", JsonArray => "an array", JsonValue => "a single value", _ => "an object" };

    static List<Entry> Entries(JsonObject header, long dataStart, long fileLength, string path)
    {
        var list = new List<Entry>();
        long dataBytes = fileLength - dataStart;
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__") continue;
            string Bad(string what) => $"'{path}': tensor '{name}' {what}; the file is corrupt or not safetensors";
            if (node is not JsonObject o) throw new InvalidDataException(Bad($"is {Kind(node)}, not an object with dtype, shape and data_offsets"));
            if (o["dtype"] is not JsonValue dv || !dv.TryGetValue(out string? dtype)) throw new InvalidDataException(Bad("has no dtype string"));
            if (dtype != "F32") throw new InvalidDataException($"'{path}': tensor '{name}' has dtype {dtype}; only F32 is supported");
            var shape = WholeNumbers(o["shape"], "shape", Bad);
            var offs = WholeNumbers(o["data_offsets"], "data_offsets", Bad);
            if (shape.Length > 8) throw new InvalidDataException(Bad($"has {shape.Length} dimensions"));
            long count = 1;
            foreach (long d in shape)
            {
                // The values must fit in the data that is there (and in one .NET array): this also bounds what is allocated.
                if (d != 0 && count > dataBytes / 4 / d) throw new InvalidDataException(Bad($"has shape [{string.Join(",", shape)}], more values than the file holds ({fileLength} bytes)"));
                count *= d;
            }
            if (count > Array.MaxLength) throw new InvalidDataException(Bad($"has {count} values, more than one array can hold"));
            if (offs.Length != 2 || offs[0] > offs[1] || offs[1] - offs[0] != 4 * count || offs[1] > dataBytes)
                throw new InvalidDataException($"'{path}': tensor '{name}' has offsets [{string.Join(",", offs)}] that do not fit its shape or the file ({fileLength} bytes); the file is truncated or corrupt");
            list.Add(new Entry(name, shape, offs[0], count));
        }
        return list;
    }

    static long[] WholeNumbers(JsonNode? node, string field, Func<string, string> bad)
    {
        if (node is not JsonArray a) throw new InvalidDataException(bad($"has no {field} array"));
        if (a.Count > 64) throw new InvalidDataException(bad($"has a {field} of {a.Count} entries"));
        var r = new long[a.Count];
        for (int i = 0; i < a.Count; i++)
        {
            if (a[i] is not JsonValue v || !v.TryGetValue(out long x) || x < 0)
                throw new InvalidDataException(bad($"has {field} [{string.Join(",", a.Select(e => e?.ToJsonString() ?? "null"))}]: entries must be whole numbers ≥ 0"));
            r[i] = x;
        }
        return r;
    }
}

/// <summary>Write-to-temporary, flush to disk, rename: readers see the old file or the whole new one.</summary>
public static class AtomicFile
{
    public static void Write(string path, Action<FileStream> write)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        string tmp = Path.Combine(dir, $".{Path.GetFileName(path)}.{Environment.ProcessId}.tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                write(fs);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }

    public static void WriteText(string path, string text) => Write(path, fs => fs.Write(Encoding.UTF8.GetBytes(text)));
}

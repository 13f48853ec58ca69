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

    public static Dictionary<string, NamedTensor> Read(string path)
    {
        if (!File.Exists(path)) throw new InvalidDataException($"'{path}' does not exist");
        using var fs = File.OpenRead(path);
        long fileLength = fs.Length;
        if (fileLength < 8) throw new InvalidDataException($"'{path}' is {fileLength} bytes, too short to be a safetensors file");
        Span<byte> len = stackalloc byte[8];
        fs.ReadExactly(len);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(len);
        if (headerLength > (ulong)(fileLength - 8) || headerLength > 100_000_000)
            throw new InvalidDataException($"'{path}': header length {headerLength} exceeds the file size {fileLength}; the file is truncated or not safetensors");
        var headerBytes = new byte[headerLength];
        fs.ReadExactly(headerBytes);
        JsonObject header;
        try { header = JsonNode.Parse(headerBytes)!.AsObject(); }
        catch (JsonException e) { throw new InvalidDataException($"'{path}': the header is not valid JSON ({e.Message})"); }

        long dataStart = 8 + (long)headerLength;
        var result = new Dictionary<string, NamedTensor>();
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__") continue;
            var o = node!.AsObject();
            string dtype = (string)o["dtype"]!;
            if (dtype != "F32") throw new InvalidDataException($"'{path}': tensor '{name}' has dtype {dtype}; only F32 is supported");
            var shape = o["shape"]!.AsArray().Select(x => (long)x!).ToArray();
            var offs = o["data_offsets"]!.AsArray().Select(x => (long)x!).ToArray();
            long count = shape.Aggregate(1L, (a, b) => a * b);
            if (offs.Length != 2 || offs[1] - offs[0] != 4 * count || dataStart + offs[1] > fileLength)
                throw new InvalidDataException($"'{path}': tensor '{name}' has offsets [{string.Join(",", offs)}] that do not fit its shape or the file ({fileLength} bytes); the file is truncated or corrupt");
            var data = new float[count];
            fs.Seek(dataStart + offs[0], SeekOrigin.Begin);
            fs.ReadExactly(MemoryMarshal.AsBytes(data.AsSpan()));
            result[name] = new NamedTensor(name, shape, data);
        }
        return result;
    }

    public static Dictionary<string, string> ReadMetadata(string path)
    {
        using var fs = File.OpenRead(path);
        Span<byte> len = stackalloc byte[8];
        fs.ReadExactly(len);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(len);
        if (headerLength > (ulong)fs.Length) throw new InvalidDataException($"'{path}' is truncated or not safetensors");
        var headerBytes = new byte[headerLength];
        fs.ReadExactly(headerBytes);
        var meta = JsonNode.Parse(headerBytes)!.AsObject()["__metadata__"]?.AsObject();
        return meta?.ToDictionary(kv => kv.Key, kv => (string)kv.Value!) ?? [];
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

using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using System.Text;

namespace Palm.Gpu.Data;

/// <summary>
/// A pre-tokenized corpus: one header, then every document's tokens followed by [eod], little-endian
/// uint16 when the vocabulary fits in 16 bits, else uint32. Read through a memory map.
///
/// Header (256 bytes, little-endian):
///   0    8  magic "PALMTOK\0"
///   8    4  format version (1)
///   12   4  bytes per token (2 or 4)
///   16   8  token count (eod tokens included)
///   24   8  document count
///   32   4  vocabulary size
///   36   4  eod id
///   40  24  zero
///   64  64  vocabulary hash (ASCII hex, zero-padded)
///   128 32  tokenizer kind (ASCII, zero-padded)
///   160 88  zero
///   248  8  FNV-1a 64 checksum of bytes [0, 248)
/// The file is exactly 256 + count · width bytes; anything else is reported as truncated or padded.
/// </summary>
public static class TokenFile
{
    public const int HeaderBytes = 256;
    public const int Version = 1;
    public static ReadOnlySpan<byte> Magic => "PALMTOK\0"u8;

    public sealed record Header(int TokenBytes, long TokenCount, long DocumentCount, int VocabSize, int EodId, string VocabularyHash, string TokenizerKind);

    public static int TokenBytesFor(int vocabSize) => vocabSize <= 65536 ? 2 : 4;

    /// <summary>True when the file starts with the token-file magic.</summary>
    public static bool IsTokenFile(string path)
    {
        if (!File.Exists(path)) return false;
        using var f = File.OpenRead(path);
        Span<byte> head = stackalloc byte[8];
        return f.ReadAtLeast(head, 8, throwOnEndOfStream: false) == 8 && head.SequenceEqual(Magic);
    }

    internal static byte[] EncodeHeader(Header h)
    {
        var b = new byte[HeaderBytes];
        Magic.CopyTo(b);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(8), Version);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(12), h.TokenBytes);
        BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(16), h.TokenCount);
        BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(24), h.DocumentCount);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(32), h.VocabSize);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(36), h.EodId);
        WriteAscii(b.AsSpan(64, 64), h.VocabularyHash);
        WriteAscii(b.AsSpan(128, 32), h.TokenizerKind);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(248), Fnv1a(b.AsSpan(0, 248)));
        return b;

        static void WriteAscii(Span<byte> dst, string s)
        {
            var bytes = Encoding.ASCII.GetBytes(s);
            if (bytes.Length > dst.Length) throw new ArgumentException($"'{s}' is longer than {dst.Length} bytes");
            bytes.CopyTo(dst);
        }
    }

    /// <summary>Reads and checks the header, and that the file length matches it.</summary>
    public static Header ReadHeader(string path)
    {
        if (!File.Exists(path)) throw new DataException($"token file '{path}' does not exist; create it with palm tokenize");
        using var f = File.OpenRead(path);
        var b = new byte[HeaderBytes];
        int got = f.ReadAtLeast(b, HeaderBytes, throwOnEndOfStream: false);
        if (got >= 8 && !b.AsSpan(0, 8).SequenceEqual(Magic))
            throw new DataException($"'{path}' is not a token file (wrong magic); create one with palm tokenize");
        if (got < HeaderBytes) throw new DataException($"token file '{path}' is truncated: {got} bytes, shorter than its {HeaderBytes}-byte header");
        if (BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(248)) != Fnv1a(b.AsSpan(0, 248)))
            throw new DataException($"token file '{path}' has a corrupt header (checksum mismatch)");
        int version = BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(8));
        if (version != Version) throw new DataException($"token file '{path}' has format version {version}; this build reads version {Version}");
        var h = new Header(
            BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(12)),
            BinaryPrimitives.ReadInt64LittleEndian(b.AsSpan(16)),
            BinaryPrimitives.ReadInt64LittleEndian(b.AsSpan(24)),
            BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(32)),
            BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(36)),
            ReadAscii(b.AsSpan(64, 64)),
            ReadAscii(b.AsSpan(128, 32)));
        if (h.TokenBytes is not (2 or 4) || h.TokenCount < 0 || h.VocabSize <= 0)
            throw new DataException($"token file '{path}' has an invalid header");
        long expected = HeaderBytes + h.TokenCount * h.TokenBytes;
        if (f.Length < expected)
            throw new DataException($"token file '{path}' is truncated: {f.Length:N0} bytes, its header promises {expected:N0}; re-run palm tokenize");
        if (f.Length > expected)
            throw new DataException($"token file '{path}' has {f.Length - expected:N0} unexpected trailing bytes; re-run palm tokenize");
        return h;

        static string ReadAscii(ReadOnlySpan<byte> s)
        {
            int end = s.IndexOf((byte)0);
            return Encoding.ASCII.GetString(end < 0 ? s : s[..end]);
        }
    }

    /// <summary>Throws when the token file was made with a different vocabulary than tokenizer.</summary>
    public static void CheckMatches(string path, Header h, ITokenizer tokenizer)
    {
        if (h.VocabularyHash != tokenizer.VocabularyHash || h.VocabSize != tokenizer.VocabSize)
            throw new DataException($"token file '{path}' was made with a different vocabulary ({h.TokenizerKind}, {h.VocabSize} tokens, hash {Short(h.VocabularyHash)}) than the tokenizer given ({tokenizer.Kind}, {tokenizer.VocabSize} tokens, hash {Short(tokenizer.VocabularyHash)}); re-run palm tokenize with this tokenizer");
        static string Short(string s) => s.Length > 16 ? s[..16] : s;
    }

    static ulong Fnv1a(ReadOnlySpan<byte> data)
    {
        ulong h = 0xCBF29CE484222325UL;
        foreach (byte x in data) { h ^= x; h *= 0x100000001B3UL; }
        return h;
    }
}

/// <summary>Writes a token file: to path + ".tmp", renamed into place by <see cref="Complete"/>.</summary>
public sealed class TokenFileWriter : IDisposable
{
    readonly string _path, _tmp;
    readonly FileStream _stream;
    readonly ITokenizer _tokenizer;
    readonly int _width;
    byte[] _buffer = new byte[1 << 16];
    bool _done;

    public TokenFileWriter(string path, ITokenizer tokenizer)
    {
        _path = path;
        _tmp = path + ".tmp";
        _tokenizer = tokenizer;
        _width = TokenFile.TokenBytesFor(tokenizer.VocabSize);
        var dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir != null) Directory.CreateDirectory(dir);
        _stream = new FileStream(_tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        _stream.Write(new byte[TokenFile.HeaderBytes]);
    }

    public long TokenCount { get; private set; }
    public long DocumentCount { get; private set; }

    /// <summary>Appends one whole document's tokens and its [eod].</summary>
    public void WriteDocument(ReadOnlySpan<int> tokens)
    {
        Write(tokens);
        Span<int> eod = [_tokenizer.EodId];
        Write(eod);
        DocumentCount++;
    }

    /// <summary>Appends tokens of the current document (call <see cref="EndDocument"/> after its last part).</summary>
    public void Write(ReadOnlySpan<int> tokens)
    {
        int v = _tokenizer.VocabSize;
        int bytes = tokens.Length * _width;
        if (_buffer.Length < bytes) _buffer = new byte[bytes];
        if (_width == 2)
        {
            var dst = MemoryMarshal.Cast<byte, ushort>(_buffer.AsSpan(0, bytes));
            for (int i = 0; i < tokens.Length; i++)
            {
                if ((uint)tokens[i] >= (uint)v) throw new DataException($"token id {tokens[i]} is outside the vocabulary [0, {v})");
                dst[i] = (ushort)tokens[i];
            }
        }
        else
        {
            var dst = MemoryMarshal.Cast<byte, int>(_buffer.AsSpan(0, bytes));
            for (int i = 0; i < tokens.Length; i++)
            {
                if ((uint)tokens[i] >= (uint)v) throw new DataException($"token id {tokens[i]} is outside the vocabulary [0, {v})");
                dst[i] = tokens[i];
            }
        }
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("token files are little-endian");
        _stream.Write(_buffer, 0, bytes);
        TokenCount += tokens.Length;
    }

    public void EndDocument()
    {
        Span<int> eod = [_tokenizer.EodId];
        Write(eod);
        DocumentCount++;
    }

    /// <summary>Writes the header, flushes, and moves the file into place.</summary>
    public TokenFile.Header Complete()
    {
        var header = new TokenFile.Header(_width, TokenCount, DocumentCount, _tokenizer.VocabSize, _tokenizer.EodId, _tokenizer.VocabularyHash, _tokenizer.Kind);
        _stream.Position = 0;
        _stream.Write(TokenFile.EncodeHeader(header));
        _stream.Flush(flushToDisk: true);
        _stream.Dispose();
        File.Move(_tmp, _path, overwrite: true);
        _done = true;
        return header;
    }

    /// <summary>Without <see cref="Complete"/> (an error, a full disk) the temporary file is removed: nothing half-written stays behind.</summary>
    public void Dispose()
    {
        if (_done) return;
        _done = true;
        // Closing flushes the buffer, which fails again on a full disk: the file goes regardless.
        try { _stream.Dispose(); }
        catch (IOException) { }
        finally
        {
            try { File.Delete(_tmp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }
}

/// <summary>Read-only memory-mapped view of a token file's tokens.</summary>
public sealed unsafe class TokenFileReader : IDisposable
{
    readonly MemoryMappedFile _map;
    readonly MemoryMappedViewAccessor _view;
    readonly byte* _base;

    public TokenFileReader(string path)
    {
        Header = TokenFile.ReadHeader(path);
        Path = path;
        _map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        byte* p = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _base = p + _view.PointerOffset + TokenFile.HeaderBytes;
    }

    public string Path { get; }
    public TokenFile.Header Header { get; }
    public long Count => Header.TokenCount;

    /// <summary>Copies tokens [start, start + dst.Length) into dst, checking each is inside the vocabulary.</summary>
    public void Copy(long start, Span<int> dst)
    {
        if (start < 0 || start + dst.Length > Count) throw new ArgumentOutOfRangeException(nameof(start));
        uint v = (uint)Header.VocabSize;
        bool bad = false;
        if (Header.TokenBytes == 2)
        {
            var src = new ReadOnlySpan<ushort>(_base + start * 2, dst.Length);
            for (int i = 0; i < dst.Length; i++) { dst[i] = src[i]; bad |= src[i] >= v; }
        }
        else
        {
            var src = new ReadOnlySpan<int>(_base + start * 4, dst.Length);
            for (int i = 0; i < dst.Length; i++) { dst[i] = src[i]; bad |= (uint)src[i] >= v; }
        }
        if (bad) throw new DataException($"token file '{Path}' is corrupt: a token near position {start:N0} is outside the vocabulary [0, {v})");
    }

    public void Dispose()
    {
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }
}

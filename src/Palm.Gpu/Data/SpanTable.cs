using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Palm.Gpu.Data;

/// <summary>
/// An open-addressing hash set of byte strings with dense entry numbers 0..Count-1, so callers keep
/// per-entry values in plain arrays beside it. Keys live in one byte arena (no object per key):
/// it backs the encoders' segment caches and the trainer's word counts, both hot paths.
/// Not thread-safe; use one per thread.
/// </summary>
internal sealed class SpanTable
{
    byte[] _arena = new byte[1 << 16];
    long _arenaUsed;
    int[] _slots;            // entry + 1, 0 = empty
    ulong[] _hashes = new ulong[256];
    long[] _offsets = new long[256];
    int[] _lengths = new int[256];

    public SpanTable(int initialSlots = 1024)
    {
        _slots = new int[BitOperations.RoundUpToPowerOf2((uint)Math.Max(16, initialSlots))];
    }

    public int Count { get; private set; }
    public long ArenaBytes => _arenaUsed;

    public ReadOnlySpan<byte> Key(int entry) => _arena.AsSpan((int)_offsets[entry], _lengths[entry]);

    public void Clear()
    {
        Array.Clear(_slots);
        Count = 0;
        _arenaUsed = 0;
    }

    /// <summary>The entry holding key, or -1.</summary>
    public int Find(ReadOnlySpan<byte> key) => Find(key, Hash(key));

    public int Find(ReadOnlySpan<byte> key, ulong hash)
    {
        int mask = _slots.Length - 1;
        int slot = (int)hash & mask;
        while (true)
        {
            int e = _slots[slot] - 1;
            if (e < 0) return -1;
            if (_hashes[e] == hash && key.SequenceEqual(_arena.AsSpan((int)_offsets[e], _lengths[e]))) return e;
            slot = (slot + 1) & mask;
        }
    }

    /// <summary>The entry holding key, adding it when absent (added tells which).</summary>
    public int GetOrAdd(ReadOnlySpan<byte> key, out bool added)
    {
        ulong hash = Hash(key);
        int e = Find(key, hash);
        if (e >= 0) { added = false; return e; }
        added = true;
        return Add(key, hash);
    }

    int Add(ReadOnlySpan<byte> key, ulong hash)
    {
        if ((Count + 1) * 2 > _slots.Length) Grow();
        if (Count == _hashes.Length)
        {
            int n = _hashes.Length * 2;
            Array.Resize(ref _hashes, n);
            Array.Resize(ref _offsets, n);
            Array.Resize(ref _lengths, n);
        }
        if (_arenaUsed + key.Length > _arena.Length)
        {
            long size = Math.Max(_arena.Length * 2L, _arenaUsed + key.Length);
            if (size > Array.MaxLength) throw new InvalidOperationException("segment table arena exceeds 2 GiB");
            Array.Resize(ref _arena, (int)size);
        }
        int entry = Count++;
        key.CopyTo(_arena.AsSpan((int)_arenaUsed));
        _hashes[entry] = hash;
        _offsets[entry] = _arenaUsed;
        _lengths[entry] = key.Length;
        _arenaUsed += key.Length;
        Insert(entry, hash);
        return entry;
    }

    void Insert(int entry, ulong hash)
    {
        int mask = _slots.Length - 1;
        int slot = (int)hash & mask;
        while (_slots[slot] != 0) slot = (slot + 1) & mask;
        _slots[slot] = entry + 1;
    }

    void Grow()
    {
        _slots = new int[_slots.Length * 2];
        for (int e = 0; e < Count; e++) Insert(e, _hashes[e]);
    }

    /// <summary>A fast 64-bit hash of a byte string (eight bytes at a time, then a final mix).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Hash(ReadOnlySpan<byte> key)
    {
        const ulong K = 0x9E3779B97F4A7C15UL;
        ulong h = (ulong)key.Length * K;
        ref byte p = ref MemoryMarshal.GetReference(key);
        int i = 0;
        for (; i + 8 <= key.Length; i += 8)
            h = BitOperations.RotateLeft((h ^ Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, i))) * K, 29);
        ulong tail = 0;
        for (int s = 0; i < key.Length; i++, s += 8) tail |= (ulong)Unsafe.Add(ref p, i) << s;
        h = (h ^ tail) * 0xBF58476D1CE4E5B9UL;
        h ^= h >> 31;
        h *= 0x94D049BB133111EBUL;
        return h ^ (h >> 29);
    }
}

/// <summary>
/// Memoises segment → token ids for an encoder. Encoding is a pure function of the segment, so
/// the cache changes speed only, never output. Bounded: cleared when it grows past its budget.
/// </summary>
internal sealed class SegmentCache
{
    public const int MaxSegmentBytes = 64;
    const int MaxEntries = 1 << 18;
    readonly SpanTable _table = new(1 << 14);
    int[] _valueOffset = new int[1 << 14];
    int[] _valueLength = new int[1 << 14];
    int[] _values = new int[1 << 16];
    int _valuesUsed;

    public bool TryGet(ReadOnlySpan<byte> segment, out ReadOnlySpan<int> ids)
    {
        int e = _table.Find(segment);
        if (e < 0) { ids = default; return false; }
        ids = _values.AsSpan(_valueOffset[e], _valueLength[e]);
        return true;
    }

    public void Add(ReadOnlySpan<byte> segment, ReadOnlySpan<int> ids)
    {
        if (_table.Count >= MaxEntries) { _table.Clear(); _valuesUsed = 0; }
        int e = _table.GetOrAdd(segment, out bool added);
        if (!added) return;
        if (e >= _valueOffset.Length)
        {
            Array.Resize(ref _valueOffset, _valueOffset.Length * 2);
            Array.Resize(ref _valueLength, _valueLength.Length * 2);
        }
        if (_valuesUsed + ids.Length > _values.Length) Array.Resize(ref _values, Math.Max(_values.Length * 2, _valuesUsed + ids.Length));
        ids.CopyTo(_values.AsSpan(_valuesUsed));
        _valueOffset[e] = _valuesUsed;
        _valueLength[e] = ids.Length;
        _valuesUsed += ids.Length;
    }
}

using System.Numerics;
using System.Runtime.CompilerServices;

namespace Palm.Gpu.Data;

/// <summary>
/// (left id, right id) → (merged id, score): every adjacent pair that may merge. Open addressing
/// over a long key; built once when a vocabulary loads, read-only afterwards (so thread-safe).
/// </summary>
internal sealed class PairTable
{
    long[] _keys;
    int[] _merged;
    float[] _scores;
    int _mask;

    public PairTable(int expected)
    {
        int size = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(16, expected * 2));
        _keys = new long[size];
        Array.Fill(_keys, -1L);
        _merged = new int[size];
        _scores = new float[size];
        _mask = size - 1;
    }

    public int Count { get; private set; }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static long Key(int a, int b) => ((long)a << 32) | (uint)b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static int Slot(long key, int mask) => (int)((ulong)key * 0x9E3779B97F4A7C15UL >> 40) & mask;

    /// <summary>Adds a pair; an existing pair keeps its first entry (returns false).</summary>
    public bool Add(int a, int b, int merged, float score)
    {
        if ((Count + 1) * 2 > _keys.Length) Grow();
        long key = Key(a, b);
        int slot = Slot(key, _mask);
        while (_keys[slot] != -1)
        {
            if (_keys[slot] == key) return false;
            slot = (slot + 1) & _mask;
        }
        _keys[slot] = key;
        _merged[slot] = merged;
        _scores[slot] = score;
        Count++;
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryGet(int a, int b, out int merged, out float score)
    {
        if ((a | b) < 0) { merged = -1; score = 0; return false; }
        long key = Key(a, b);
        int slot = Slot(key, _mask);
        while (true)
        {
            long k = _keys[slot];
            if (k == key) { merged = _merged[slot]; score = _scores[slot]; return true; }
            if (k == -1) { merged = -1; score = 0; return false; }
            slot = (slot + 1) & _mask;
        }
    }

    void Grow()
    {
        var keys = _keys; var merged = _merged; var scores = _scores;
        int size = keys.Length * 2;
        _keys = new long[size];
        Array.Fill(_keys, -1L);
        _merged = new int[size];
        _scores = new float[size];
        _mask = size - 1;
        Count = 0;
        for (int i = 0; i < keys.Length; i++)
            if (keys[i] != -1) Add((int)(keys[i] >> 32), (int)keys[i], merged[i], scores[i]);
    }
}

/// <summary>
/// The BPE merge loop shared by our tokenizer and SentencePiece's BPE models: repeatedly merge
/// the adjacent pair with the highest score, the leftmost one among equal scores, until no
/// adjacent pair is in the table. This is exactly SentencePiece's agenda order (score, then left
/// position); our tokenizer scores merge k as −k, which makes it classic rank-ordered BPE.
/// Symbols below zero never merge (characters outside the vocabulary).
/// </summary>
internal static class PairMerger
{
    const int ScanLimit = 48;

    /// <summary>Merges symbols in place; returns how many remain at the front.</summary>
    public static int Merge(PairTable table, Span<int> symbols)
    {
        if (symbols.Length < 2) return symbols.Length;
        return symbols.Length <= ScanLimit ? MergeByScan(table, symbols) : MergeByHeap(table, symbols);
    }

    /// <summary>Short segments: rescan the pair scores each round; no allocation.</summary>
    internal static int MergeByScan(PairTable table, Span<int> sym)
    {
        int n = sym.Length;
        Span<float> score = stackalloc float[n];
        Span<int> merged = stackalloc int[n];
        for (int i = 0; i + 1 < n; i++) table.TryGet(sym[i], sym[i + 1], out merged[i], out score[i]);
        while (true)
        {
            int best = -1;
            float bestScore = 0;
            for (int i = 0; i + 1 < n; i++)
                if (merged[i] >= 0 && (best < 0 || score[i] > bestScore)) { best = i; bestScore = score[i]; }
            if (best < 0) return n;
            sym[best] = merged[best];
            // Close the gap left by the right symbol.
            for (int i = best + 1; i + 1 < n; i++)
            {
                sym[i] = sym[i + 1];
                merged[i] = merged[i + 1];
                score[i] = score[i + 1];
            }
            n--;
            if (best > 0) table.TryGet(sym[best - 1], sym[best], out merged[best - 1], out score[best - 1]);
            if (best + 1 < n) table.TryGet(sym[best], sym[best + 1], out merged[best], out score[best]);
            else merged[best] = -1;
        }
    }

    struct Candidate
    {
        public float Score;
        public int Left, Right, LeftId, RightId, Merged;
    }

    /// <summary>Long segments: a heap of candidate pairs with lazy invalidation, O(n log n).</summary>
    internal static int MergeByHeap(PairTable table, Span<int> sym)
    {
        int n = sym.Length;
        var next = new int[n];
        var prev = new int[n];
        var ids = sym.ToArray();
        for (int i = 0; i < n; i++) { next[i] = i + 1 < n ? i + 1 : -1; prev[i] = i - 1; }
        var heap = new Candidate[Math.Max(16, n)];
        int heapSize = 0;

        for (int i = 0; i + 1 < n; i++) Push(i, i + 1);
        while (heapSize > 0)
        {
            var top = heap[0];
            heap[0] = heap[--heapSize];
            SiftDown(heap, heapSize, 0);
            // Stale: a side was merged away, or changed id since the candidate was made.
            if (ids[top.Left] != top.LeftId || ids[top.Right] != top.RightId || next[top.Left] != top.Right) continue;
            ids[top.Left] = top.Merged;
            ids[top.Right] = -2;
            int after = next[top.Right];
            next[top.Left] = after;
            if (after >= 0) prev[after] = top.Left;
            next[top.Right] = -1;
            if (prev[top.Left] >= 0) Push(prev[top.Left], top.Left);
            if (after >= 0) Push(top.Left, after);
        }
        int count = 0;
        for (int i = 0; i >= 0; i = next[i]) sym[count++] = ids[i];
        return count;

        void Push(int left, int right)
        {
            if (!table.TryGet(ids[left], ids[right], out int m, out float s)) return;
            if (heapSize == heap.Length) Array.Resize(ref heap, heap.Length * 2);
            heap[heapSize] = new Candidate { Score = s, Left = left, Right = right, LeftId = ids[left], RightId = ids[right], Merged = m };
            SiftUp(heap, heapSize++);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static bool Before(in Candidate x, in Candidate y) => x.Score > y.Score || (x.Score == y.Score && x.Left < y.Left);

    static void SiftUp(Candidate[] heap, int i)
    {
        var item = heap[i];
        while (i > 0)
        {
            int parent = (i - 1) >> 1;
            if (!Before(item, heap[parent])) break;
            heap[i] = heap[parent];
            i = parent;
        }
        heap[i] = item;
    }

    static void SiftDown(Candidate[] heap, int size, int i)
    {
        if (size == 0) return;
        var item = heap[i];
        while (true)
        {
            int child = 2 * i + 1;
            if (child >= size) break;
            if (child + 1 < size && Before(heap[child + 1], heap[child])) child++;
            if (!Before(heap[child], item)) break;
            heap[i] = heap[child];
            i = child;
        }
        heap[i] = item;
    }
}

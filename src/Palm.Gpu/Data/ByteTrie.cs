namespace Palm.Gpu.Data;

/// <summary>
/// A read-only trie over byte strings, each carrying an int value: the root has a direct 256-way
/// table, deeper nodes keep their children as sorted label arrays (compact for 256k vocabularies).
/// Walk it one byte at a time with <see cref="Child"/>. Thread-safe once built.
/// </summary>
internal sealed class ByteTrie
{
    readonly int[] _root = new int[256];
    readonly int[] _edgeStart;   // per node: first edge; edges of node are [start, start+count)
    readonly int[] _edgeCount;
    readonly byte[] _edgeLabel;
    readonly int[] _edgeTarget;
    readonly int[] _value;

    /// <summary>Builds the trie; keys must be distinct.</summary>
    public ByteTrie(IReadOnlyList<(byte[] Key, int Value)> entries)
    {
        var sorted = entries.Where(e => e.Key.Length > 0).OrderBy(e => e.Key, ByteComparer.Instance).ToArray();
        // Pass 1: first-child / next-sibling lists. With sorted keys a shared prefix always runs
        // through the most recently added child, so each key costs one step per byte.
        var label = new List<byte> { 0 };
        var lastChild = new List<int> { -1 };
        var firstChild = new List<int> { -1 };
        var nextSibling = new List<int> { -1 };
        var value = new List<int> { -1 };
        foreach (var (key, v) in sorted)
        {
            int node = 0;
            foreach (byte b in key)
            {
                int child = lastChild[node];
                if (child >= 0 && label[child] == b) { node = child; continue; }
                int created = label.Count;
                label.Add(b); lastChild.Add(-1); firstChild.Add(-1); nextSibling.Add(-1); value.Add(-1);
                if (child >= 0) nextSibling[child] = created; else firstChild[node] = created;
                lastChild[node] = created;
                node = created;
            }
            value[node] = v;
        }
        // Pass 2: contiguous sorted edge arrays.
        int n = label.Count;
        _edgeStart = new int[n];
        _edgeCount = new int[n];
        _edgeLabel = new byte[n];
        _edgeTarget = new int[n];
        _value = [.. value];
        int edges = 0;
        for (int node = 0; node < n; node++)
        {
            _edgeStart[node] = edges;
            for (int c = firstChild[node]; c >= 0; c = nextSibling[c])
            {
                _edgeLabel[edges] = label[c];
                _edgeTarget[edges] = c;
                edges++;
            }
            _edgeCount[node] = edges - _edgeStart[node];
        }
        Array.Fill(_root, -1);
        for (int e = _edgeStart[0]; e < _edgeStart[0] + _edgeCount[0]; e++) _root[_edgeLabel[e]] = _edgeTarget[e];
    }

    public const int Root = 0;

    /// <summary>The value stored at node, or -1.</summary>
    public int Value(int node) => _value[node];

    /// <summary>The child of node along byte b, or -1.</summary>
    public int Child(int node, byte b)
    {
        if (node == 0) return _root[b];
        int lo = _edgeStart[node], hi = lo + _edgeCount[node] - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >> 1;
            byte l = _edgeLabel[mid];
            if (l == b) return _edgeTarget[mid];
            if (l < b) lo = mid + 1; else hi = mid - 1;
        }
        return -1;
    }

    sealed class ByteComparer : IComparer<byte[]>
    {
        public static readonly ByteComparer Instance = new();
        public int Compare(byte[]? x, byte[]? y) => x.AsSpan().SequenceCompareTo(y);
    }
}

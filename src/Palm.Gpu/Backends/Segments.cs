using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends;

/// <summary>
/// Checks and tiling of a segment list (tensors inside one flat buffer), shared by the backends. A segment is cut
/// into tiles of a fixed size from its own start, so a tensor's reduction order does not depend on where it lies in
/// the arena or on its neighbours.
/// </summary>
public static class Segments
{
    /// <summary>
    /// Throws unless every segment lies inside a buffer of <paramref name="bufferLength"/> elements and every
    /// per-segment span has one entry per segment.
    /// </summary>
    public static void Validate(string op, IReadOnlyList<Segment> segments, long bufferLength, params int[] spanLengths)
    {
        ArgumentNullException.ThrowIfNull(segments);
        for (int i = 0; i < segments.Count; i++)
        {
            var s = segments[i];
            if (s.Offset < 0 || s.Count < 0 || s.Offset > bufferLength - s.Count)
                throw new ArgumentOutOfRangeException(nameof(segments),
                    $"{op}: segment {i} [{s.Offset}, {s.Offset + s.Count}) is outside the buffer of {bufferLength} elements");
        }
        foreach (int n in spanLengths)
            if (n != segments.Count)
                throw new ArgumentException($"{op}: {segments.Count} segments but a per-segment span of {n} entries; give one entry per segment");
    }

    /// <summary>Throws unless every segment's tensor count covers the segment (a piece of a tensor is at most the tensor).</summary>
    public static void ValidateCounts(string op, IReadOnlyList<Segment> segments, ReadOnlySpan<long> tensorCounts)
    {
        for (int i = 0; i < segments.Count; i++)
            if (tensorCounts[i] < segments[i].Count || tensorCounts[i] <= 0 && segments[i].Count > 0)
                throw new ArgumentOutOfRangeException(nameof(tensorCounts),
                    $"{op}: segment {i} has {segments[i].Count} elements but its tensor count is {tensorCounts[i]}; give the whole tensor's element count");
    }

    /// <summary>first (S+1): first[s] = index of segment s's first tile, first[S] = total tiles (⌈count/tile⌉ per segment).</summary>
    public static long[] FirstTiles(IReadOnlyList<Segment> segments, long tile)
    {
        var first = new long[segments.Count + 1];
        for (int i = 0; i < segments.Count; i++) first[i + 1] = first[i] + (segments[i].Count + tile - 1) / tile;
        return first;
    }

    /// <summary>The segment that holds global tile <paramref name="t"/> (first from <see cref="FirstTiles"/>; empty segments own no tile).</summary>
    public static int SegmentOf(long[] first, long t)
    {
        int lo = 0, hi = first.Length - 2;   // the last s with first[s] ≤ t
        while (lo < hi)
        {
            int mid = (lo + hi + 1) >> 1;
            if (first[mid] <= t) lo = mid; else hi = mid - 1;
        }
        return lo;
    }

    /// <summary>Elements in all segments together.</summary>
    public static long Total(IReadOnlyList<Segment> segments)
    {
        long n = 0;
        foreach (var s in segments) n += s.Count;
        return n;
    }

    /// <summary>One past the last element any segment covers (0 for none).</summary>
    public static long End(IReadOnlyList<Segment> segments)
    {
        long end = 0;
        foreach (var s in segments) end = Math.Max(end, s.Offset + s.Count);
        return end;
    }
}

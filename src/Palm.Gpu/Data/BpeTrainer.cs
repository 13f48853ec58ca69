using System.Text;

namespace Palm.Gpu.Data;

/// <summary>Settings for <see cref="BpeTrainer"/>.</summary>
public sealed record BpeTrainerOptions
{
    /// <summary>Total vocabulary: specials + user symbols + 256 bytes + characters + merges.</summary>
    public int VocabSize { get; init; } = 32000;
    /// <summary>Control tokens; must include "[pad]" and "[eod]".</summary>
    public IReadOnlyList<string> Specials { get; init; } = [BpeTokenizer.PadPiece, BpeTokenizer.EodPiece];
    /// <summary>Symbols matched literally in text and kept whole.</summary>
    public IReadOnlyList<string> UserDefined { get; init; } = [];
    /// <summary>Fraction of character occurrences the kept characters must cover; the rest use byte fallback.</summary>
    public double CharacterCoverage { get; init; } = 0.9999;
    /// <summary>A pair seen fewer times than this is never merged (training may then stop short of VocabSize).</summary>
    public long MinPairCount { get; init; } = 1;
    public int Threads { get; init; } = Environment.ProcessorCount;
}

/// <summary>
/// Trains a <see cref="BpeTokenizer"/>: count the segments of the corpus (in parallel, merged into
/// exact totals), keep the most frequent non-ASCII characters up to the coverage, then merge the
/// most frequent adjacent pair (ties: smaller left id, then smaller right id) until the vocabulary
/// is full. The result depends only on the corpus and options, never on the thread count.
/// </summary>
public static class BpeTrainer
{
    const int ChunkBytes = 1 << 20;
    public const int MaxVocabSize = 1 << 20;

    public static BpeTokenizer Train(IEnumerable<string> documents, BpeTrainerOptions options, Action<string>? log = null) =>
        TrainUtf8(documents.Select(d => Utf8Text.GetBytes(d)), options, log);

    public static BpeTokenizer TrainUtf8(IEnumerable<byte[]> documents, BpeTrainerOptions options, Action<string>? log = null)
    {
        var skeleton = new BpeTokenizer(options.Specials, options.UserDefined, [], []);
        int baseSize = skeleton.VocabSize;
        if (options.VocabSize < baseSize || options.VocabSize > MaxVocabSize)
            throw new DataException($"--vocab {options.VocabSize} is out of range: it must be between {baseSize} (specials + user symbols + 256 bytes) and {MaxVocabSize}");
        if (options.CharacterCoverage is <= 0 or > 1) throw new DataException($"character coverage must be in (0, 1], got {options.CharacterCoverage}");

        var words = CountSegments(skeleton, documents, Math.Max(1, options.Threads), out long totalBytes);
        if (words.Count == 0) throw new DataException("the corpus is empty: nothing to train a tokenizer on");
        log?.Invoke($"counted {totalBytes:N0} bytes, {words.Count:N0} distinct segments");

        // ---- characters ----
        var charCounts = new Dictionary<int, long>();
        long asciiCount = 0, allChars = 0;
        for (int w = 0; w < words.Count; w++)
        {
            var key = words.Key(w);
            long count = words.Counts[w];
            for (int i = 0; i < key.Length;)
            {
                int len = Utf8Text.ValidCharLength(key[i..], out int cp);
                if (len == 0) { i++; continue; }
                allChars += count;
                if (cp < 0x80) asciiCount += count;
                else charCounts[cp] = charCounts.GetValueOrDefault(cp) + count;
                i += len;
            }
        }
        int budget = options.VocabSize - baseSize;
        var chars = new List<int>();
        long covered = asciiCount;
        foreach (var (cp, count) in charCounts.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key))
        {
            if (chars.Count >= budget || (double)covered / allChars >= options.CharacterCoverage) break;
            chars.Add(cp);
            covered += count;
        }
        log?.Invoke($"kept {chars.Count:N0} of {charCounts.Count:N0} non-ASCII characters (coverage {(allChars == 0 ? 1 : (double)covered / allChars):F6})");

        // ---- words as symbol arrays ----
        int byteBase = skeleton.ByteBase, charBase = byteBase + 256;
        var charIds = new Dictionary<int, int>();
        for (int i = 0; i < chars.Count; i++) charIds[chars[i]] = charBase + i;
        var symbols = new int[words.Count][];
        var wordCount = words.Counts;
        var tmp = new List<int>();
        for (int w = 0; w < words.Count; w++)
        {
            var key = words.Key(w);
            tmp.Clear();
            for (int i = 0; i < key.Length;)
            {
                int len = Utf8Text.ValidCharLength(key[i..], out int cp);
                // -1 marks a character outside the vocabulary: it never takes part in a merge.
                if (len == 0) { tmp.Add(-1); i++; continue; }
                tmp.Add(cp < 0x80 ? byteBase + cp : charIds.TryGetValue(cp, out int id) ? id : -1);
                i += len;
            }
            symbols[w] = [.. tmp];
        }

        var merges = MergeLoop(symbols, wordCount, charBase + chars.Count, options.VocabSize, options.MinPairCount, log);
        var tok = new BpeTokenizer(options.Specials, options.UserDefined, chars, merges);
        if (tok.VocabSize < options.VocabSize)
            log?.Invoke($"stopped at {tok.VocabSize:N0} tokens: no pair occurs {options.MinPairCount}+ times any more (asked for {options.VocabSize:N0})");
        return tok;
    }

    static List<(int, int)> MergeLoop(int[][] symbols, long[] wordCount, int firstMergeId, int vocabSize, long minCount, Action<string>? log)
    {
        var pairCount = new Dictionary<long, long>();
        var pairWords = new Dictionary<long, List<int>>();
        for (int w = 0; w < symbols.Length; w++)
        {
            var s = symbols[w];
            for (int i = 0; i + 1 < s.Length; i++)
            {
                if ((s[i] | s[i + 1]) < 0) continue;
                long key = Key(s[i], s[i + 1]);
                pairCount[key] = pairCount.GetValueOrDefault(key) + wordCount[w];
                if (!pairWords.TryGetValue(key, out var list)) pairWords[key] = list = [];
                if (list.Count == 0 || list[^1] != w) list.Add(w);
            }
        }
        // Most frequent first; ties to the smaller (left, right): a total order, so the pops are deterministic.
        var heap = new PriorityQueue<long, (long NegCount, long Key)>();
        foreach (var (key, count) in pairCount) heap.Enqueue(key, (-count, key));

        var merges = new List<(int, int)>();
        var stamp = new int[symbols.Length];
        var changed = new HashSet<long>();
        int next = firstMergeId;
        while (next < vocabSize)
        {
            long best = -1;
            while (heap.TryDequeue(out long key, out var prio))
            {
                if (pairCount.TryGetValue(key, out long c) && c == -prio.NegCount) { best = key; break; }
            }
            if (best < 0 || pairCount[best] < minCount) break;
            int a = (int)(best >> 32), b = (int)best, merged = next++;
            merges.Add((a, b));
            changed.Clear();
            foreach (int w in pairWords[best])
            {
                if (stamp[w] == merged) continue;
                stamp[w] = merged;
                var s = symbols[w];
                long count = wordCount[w];
                bool found = false;
                for (int i = 0; i + 1 < s.Length; i++) if (s[i] == a && s[i + 1] == b) { found = true; break; }
                if (!found) continue;
                AddPairs(s, -count);
                var t = new List<int>(s.Length);
                for (int i = 0; i < s.Length; i++)
                {
                    if (i + 1 < s.Length && s[i] == a && s[i + 1] == b) { t.Add(merged); i++; }
                    else t.Add(s[i]);
                }
                s = symbols[w] = [.. t];
                AddPairs(s, count);
                for (int i = 0; i + 1 < s.Length; i++)
                {
                    if ((s[i] != merged && s[i + 1] != merged) || (s[i] | s[i + 1]) < 0) continue;
                    long key = Key(s[i], s[i + 1]);
                    if (!pairWords.TryGetValue(key, out var list)) pairWords[key] = list = [];
                    if (list.Count == 0 || list[^1] != w) list.Add(w);
                }
            }
            pairCount.Remove(best);
            pairWords.Remove(best);
            foreach (long key in changed)
            {
                if (key == best) continue;
                long c = pairCount[key];
                if (c <= 0) { pairCount.Remove(key); pairWords.Remove(key); }
                else heap.Enqueue(key, (-c, key));
            }
            if (log != null && merges.Count % 5000 == 0) log($"{merges.Count:N0} merges");
        }
        return merges;

        void AddPairs(int[] s, long delta)
        {
            for (int i = 0; i + 1 < s.Length; i++)
            {
                if ((s[i] | s[i + 1]) < 0) continue;
                long key = Key(s[i], s[i + 1]);
                pairCount[key] = pairCount.GetValueOrDefault(key) + delta;
                changed.Add(key);
            }
        }
    }

    static long Key(int a, int b) => ((long)a << 32) | (uint)b;

    /// <summary>Distinct segments with their corpus counts, in ordinal byte order.</summary>
    internal sealed class SegmentCounts
    {
        public required SpanTable Table;
        public required long[] Counts;
        public required int[] Order;
        public int Count => Order.Length;
        public ReadOnlySpan<byte> Key(int w) => Table.Key(Order[w]);
    }

    internal static SegmentCounts CountSegments(BpeTokenizer skeleton, IEnumerable<byte[]> documents, int threads, out long totalBytes)
    {
        var total = new SpanTable(1 << 16);
        var totalCounts = new long[1 << 16];
        totalBytes = 0;
        // Documents are taken in batches; each batch is cut into chunks counted in parallel, and the
        // per-chunk tables are folded into the total in chunk order (sums do not depend on it anyway).
        var batch = new List<byte[]>();
        long batchBytes = 0;
        foreach (var doc in documents)
        {
            batch.Add(doc);
            batchBytes += doc.Length;
            totalBytes += doc.Length;
            if (batchBytes >= 64L * ChunkBytes) { CountBatch(); batch.Clear(); batchBytes = 0; }
        }
        CountBatch();

        var raw = new long[total.Count];
        Array.Copy(totalCounts, raw, total.Count);
        var order = Enumerable.Range(0, total.Count).ToArray();
        Array.Sort(order, (x, y) => total.Key(x).SequenceCompareTo(total.Key(y)));
        var counts = new long[order.Length];
        for (int i = 0; i < order.Length; i++) counts[i] = raw[order[i]];
        return new SegmentCounts { Table = total, Counts = counts, Order = order };

        void CountBatch()
        {
            var chunks = new List<(int Doc, int Start, int End)>();
            for (int d = 0; d < batch.Count; d++)
            {
                var text = batch[d];
                int start = 0;
                while (start < text.Length)
                {
                    int cut = text.Length - start > ChunkBytes ? skeleton.FindCut(text, start + ChunkBytes) : -1;
                    int end = cut < 0 ? text.Length : cut;
                    chunks.Add((d, start, end));
                    start = end;
                }
            }
            var partial = new (SpanTable Table, long[] Counts)[chunks.Count];
            Parallel.For(0, chunks.Count, new ParallelOptions { MaxDegreeOfParallelism = threads }, c =>
            {
                var (d, start, end) = chunks[c];
                var table = new SpanTable(1 << 12);
                var counts = new long[1 << 12];
                skeleton.VisitSegments(batch[d].AsSpan(start, end - start), seg =>
                {
                    int e = table.GetOrAdd(seg, out _);
                    if (e >= counts.Length) Array.Resize(ref counts, counts.Length * 2);
                    counts[e]++;
                });
                partial[c] = (table, counts);
            });
            foreach (var (table, counts) in partial)
            {
                for (int e = 0; e < table.Count; e++)
                {
                    int t = total.GetOrAdd(table.Key(e), out _);
                    if (t >= totalCounts.Length) Array.Resize(ref totalCounts, totalCounts.Length * 2);
                    totalCounts[t] += counts[e];
                }
            }
        }
    }
}

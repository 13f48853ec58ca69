using System.Text.Json;
using System.Text.Json.Serialization;

namespace Palm.Gpu.Data;

/// <summary>An inclusive range of batch indices.</summary>
public readonly record struct BatchRange(long First, long Last)
{
    public bool Contains(long batch) => batch >= First && batch <= Last;
}

/// <summary>
/// Where training is in the data, saved in checkpoints so a resumed run draws exactly the same batches.
///   Batch    — the index of the next batch to draw (batch indices count skipped batches too, so
///              they are positions in the data, not optimizer steps);
///   Sequence — how many sequences of the permuted stream are consumed (drawn or skipped);
///   Skips    — inclusive ranges of batch indices never to be returned (the loss-spike guard adds them).
/// Batch b consumes the sequences [s_b, s_b + size_b) of the stream, where size_b is the batch size
/// the caller passes when the sampler reaches b; a skipped batch consumes its sequences the same way
/// without returning them, so skipping [a, c] makes batch c + 1 exactly the batch it would have been.
/// </summary>
public sealed class DataCursor
{
    readonly List<BatchRange> _skips = [];

    public long Batch { get; set; }
    public long Sequence { get; set; }
    public IReadOnlyList<BatchRange> Skips => _skips;

    public DataCursor Clone()
    {
        var c = new DataCursor { Batch = Batch, Sequence = Sequence };
        c._skips.AddRange(_skips);
        return c;
    }

    /// <summary>Marks batches firstBatch..lastBatch (inclusive) to be skipped when the sampler reaches them.</summary>
    public void AddSkip(long firstBatch, long lastBatch)
    {
        if (firstBatch < 0 || lastBatch < firstBatch)
            throw new ArgumentException($"skip range [{firstBatch}, {lastBatch}] must have 0 ≤ first ≤ last");
        _skips.Add(new BatchRange(firstBatch, lastBatch));
    }

    public bool IsSkipped(long batch)
    {
        foreach (var r in _skips) if (r.Contains(batch)) return true;
        return false;
    }

    sealed class Dto
    {
        [JsonPropertyName("batch")] public long Batch { get; set; }
        [JsonPropertyName("sequence")] public long Sequence { get; set; }
        [JsonPropertyName("skips")] public long[][] Skips { get; set; } = [];
    }

    /// <summary>{"batch": 12, "sequence": 768, "skips": [[5, 9]]}</summary>
    public string ToJson() => JsonSerializer.Serialize(new Dto { Batch = Batch, Sequence = Sequence, Skips = [.. _skips.Select(r => new[] { r.First, r.Last })] });

    public static DataCursor FromJson(string json)
    {
        Dto? dto;
        try { dto = JsonSerializer.Deserialize<Dto>(json); }
        catch (JsonException e) { throw new DataException($"data cursor JSON is malformed ({e.Message})"); }
        if (dto == null || dto.Batch < 0 || dto.Sequence < 0) throw new DataException("data cursor JSON is malformed (negative or missing batch/sequence)");
        var c = new DataCursor { Batch = dto.Batch, Sequence = dto.Sequence };
        foreach (var r in dto.Skips)
        {
            if (r is not { Length: 2 }) throw new DataException("data cursor JSON is malformed (a skip range must be [first, last])");
            try { c.AddSkip(r[0], r[1]); }
            catch (ArgumentException e) { throw new DataException($"data cursor JSON is malformed ({e.Message})"); }
        }
        return c;
    }
}

/// <summary>
/// Deterministic batches: the batch for a step is a pure function of (seed, cursor). Sequences are
/// visited in a seeded pseudo-random permutation of the training split — one epoch visits each
/// sequence exactly once; the next epoch uses a fresh permutation keyed by (seed, epoch). The
/// permutation is a keyed Feistel network with cycle walking: O(1) memory and O(1) per lookup,
/// whatever the dataset size, and no state, so the sampler is thread-safe.
/// </summary>
public sealed class BatchSampler
{
    readonly PackedDataset _data;
    readonly ulong _seed;

    public BatchSampler(PackedDataset data, ulong seed)
    {
        _data = data;
        _seed = seed;
    }

    /// <summary>
    /// Fills inputs and targets (batch·T each) with the next batch that is not skipped, advances
    /// the cursor past it, and returns its batch index. Skipped batches on the way are taken to
    /// have this same size; use the overload with batchSizeAt when sizes follow a schedule.
    /// </summary>
    public long NextBatch(DataCursor cursor, int batch, Span<int> inputs, Span<int> targets) =>
        NextBatch(cursor, _ => batch, inputs, targets);

    /// <summary>As above, with the size of batch b given by batchSizeAt(b) (skipped ones included).</summary>
    public long NextBatch(DataCursor cursor, Func<long, int> batchSizeAt, Span<int> inputs, Span<int> targets)
    {
        while (cursor.IsSkipped(cursor.Batch))
        {
            cursor.Sequence += CheckedSize(batchSizeAt(cursor.Batch));
            cursor.Batch++;
        }
        int batch = CheckedSize(batchSizeAt(cursor.Batch));
        int t = _data.SequenceLength;
        if (inputs.Length < batch * t || targets.Length < batch * t)
            throw new ArgumentException($"inputs and targets need batch·T = {batch}·{t} elements");
        Span<int> seq = t + 1 <= 4096 ? stackalloc int[t + 1] : new int[t + 1];
        for (int s = 0; s < batch; s++)
        {
            long index = SequenceAt(cursor.Sequence + s);
            _data.GetTrainSequence(index, seq);
            seq[..t].CopyTo(inputs.Slice(s * t, t));
            seq[1..].CopyTo(targets.Slice(s * t, t));
        }
        cursor.Sequence += batch;
        return cursor.Batch++;
    }

    static int CheckedSize(int size) => size >= 1 ? size : throw new ArgumentException($"batch size must be ≥ 1, got {size}");

    /// <summary>The training-sequence index at global position p of the (epoch-wise) permuted stream.</summary>
    public long SequenceAt(long position)
    {
        long n = _data.TrainSequences;
        if (n <= 0) throw new DataException("the dataset has no training sequences");
        long epoch = position / n;
        return Permute(position % n, n, _seed ^ (0x9E3779B97F4A7C15UL * (ulong)(epoch + 1)));
    }

    /// <summary>
    /// A bijection of [0, n) keyed by key: a 6-round Feistel network on the smallest even number
    /// of bits covering n, re-applied while the result falls outside [0, n) (cycle walking stays
    /// inside the permutation's cycle, so it ends, on average after fewer than 4 rounds).
    /// </summary>
    public static long Permute(long x, long n, ulong key)
    {
        if ((ulong)x >= (ulong)n) throw new ArgumentOutOfRangeException(nameof(x));
        if (n == 1) return 0;
        int bits = 64 - System.Numerics.BitOperations.LeadingZeroCount((ulong)(n - 1));
        if ((bits & 1) == 1) bits++;
        int half = bits / 2;
        ulong mask = (1UL << half) - 1;
        ulong v = (ulong)x;
        do
        {
            ulong left = v >> half, right = v & mask;
            for (int round = 0; round < 6; round++)
            {
                var rng = new SplitMix64(key ^ ((ulong)round << 56) ^ (right * 0xD6E8FEB86659FD93UL));
                (left, right) = (right, (left ^ rng.Next()) & mask);
            }
            v = (left << half) | right;
        } while (v >= (ulong)n);
        return (long)v;
    }
}

/// <summary>SplitMix64: a tiny, fully specified generator, so permutations never depend on the runtime's Random.</summary>
public struct SplitMix64(ulong state)
{
    ulong _state = state;

    public ulong Next()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform double in [0, 1).</summary>
    public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));
}

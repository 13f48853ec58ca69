namespace Palm.Gpu.Data;

/// <summary>
/// Where training is in the data: the number of batches drawn and the number of sequences consumed
/// from the seeded permutation. Saved in checkpoints so a resumed run draws exactly the same batches.
/// </summary>
public sealed class DataCursor
{
    public long Batch { get; set; }
    public long Sequence { get; set; }
    public DataCursor Clone() => new() { Batch = Batch, Sequence = Sequence };
}

/// <summary>
/// Deterministic batches: the batch for a step is a pure function of (seed, cursor). Sequences are
/// visited in a seeded permutation of the training split; after one epoch a fresh permutation
/// (seed, epoch) starts, so no sequence repeats within an epoch.
/// </summary>
public sealed class BatchSampler
{
    readonly PackedDataset _data;
    readonly ulong _seed;
    long _epoch = -1;
    long[] _perm = [];

    public BatchSampler(PackedDataset data, ulong seed)
    {
        _data = data;
        _seed = seed;
    }

    /// <summary>Fills inputs and targets (batch·T each) for the next batch and advances the cursor.</summary>
    public void NextBatch(DataCursor cursor, int batch, Span<int> inputs, Span<int> targets)
    {
        int t = _data.SequenceLength;
        Span<int> seq = new int[t + 1];
        for (int s = 0; s < batch; s++)
        {
            long index = SequenceAt(cursor.Sequence + s);
            _data.GetTrainSequence(index, seq);
            seq[..t].CopyTo(inputs.Slice(s * t, t));
            seq[1..].CopyTo(targets.Slice(s * t, t));
        }
        cursor.Sequence += batch;
        cursor.Batch++;
    }

    /// <summary>The training-sequence index at global position p of the (epoch-wise) permuted stream.</summary>
    public long SequenceAt(long position)
    {
        long n = _data.TrainSequences;
        long epoch = position / n;
        if (epoch != _epoch) { _perm = Permutation(n, _seed, epoch); _epoch = epoch; }
        return _perm[position % n];
    }

    static long[] Permutation(long n, ulong seed, long epoch)
    {
        var p = new long[n];
        for (long i = 0; i < n; i++) p[i] = i;
        var rng = new SplitMix64(seed ^ (0x9E3779B97F4A7C15UL * (ulong)(epoch + 1)));
        for (long i = n - 1; i > 0; i--)
        {
            long j = (long)(rng.Next() % (ulong)(i + 1));
            (p[i], p[j]) = (p[j], p[i]);
        }
        return p;
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

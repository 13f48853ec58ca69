using Palm.Gpu.Data;
using Xunit;

namespace Palm.Gpu.Tests.Data;

/// <summary>Batches as a pure function of (seed, cursor): permutation, epochs, resume, skip ranges.</summary>
public class BatchSamplerTests
{
    const int T = 8;

    /// <summary>Token i = i, so every sequence is recognisable by its first token (i·T).</summary>
    static PackedDataset Dataset(int sequences, double heldOut = 0) =>
        PackedDataset.FromTokens(Enumerable.Range(0, sequences * T + 1).ToArray(), T, heldOut);

    static List<int[]> Draw(BatchSampler sampler, DataCursor cursor, int count, Func<long, int> size)
    {
        var batches = new List<int[]>();
        for (int k = 0; k < count; k++)
        {
            var inputs = new int[64 * T];
            var targets = new int[64 * T];
            long index = sampler.NextBatch(cursor, size, inputs, targets);
            int actual = size(index);
            for (int i = 0; i < actual * T; i++) Assert.Equal(inputs[i] + 1, targets[i]);   // targets are inputs shifted by one
            batches.Add(inputs[..(actual * T)]);
        }
        return batches;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(17)]
    [InlineData(255)]
    [InlineData(256)]
    [InlineData(1000)]
    [InlineData(4099)]
    public void PermutationIsABijection(long n)
    {
        foreach (ulong key in new ulong[] { 0, 1, 0xDEADBEEF })
        {
            var seen = new bool[n];
            for (long i = 0; i < n; i++)
            {
                long p = BatchSampler.Permute(i, n, key);
                Assert.InRange(p, 0, n - 1);
                Assert.False(seen[p]);
                seen[p] = true;
            }
        }
    }

    [Fact]
    public void PermutationLooksShuffledAndDependsOnTheKey()
    {
        const int n = 1000;
        var a = Enumerable.Range(0, n).Select(i => BatchSampler.Permute(i, n, 1)).ToArray();
        var b = Enumerable.Range(0, n).Select(i => BatchSampler.Permute(i, n, 2)).ToArray();
        Assert.True(a.Where((p, i) => p == i).Count() < 10, "too many fixed points");
        Assert.True(a.Where((p, i) => p == b[i]).Count() < 10, "keys 1 and 2 give nearly the same order");
        // Adjacent positions should not map to adjacent sequences.
        Assert.True(Enumerable.Range(1, n - 1).Count(i => Math.Abs(a[i] - a[i - 1]) == 1) < 20);
    }

    [Fact]
    public void OneEpochVisitsEverySequenceOnceThenANewOrderStarts()
    {
        using var data = Dataset(100);
        var sampler = new BatchSampler(data, seed: 7);
        var firstEpoch = Enumerable.Range(0, 100).Select(p => sampler.SequenceAt(p)).ToList();
        var secondEpoch = Enumerable.Range(100, 100).Select(p => sampler.SequenceAt(p)).ToList();
        Assert.Equal(Enumerable.Range(0, 100).Select(i => (long)i), firstEpoch.Order());
        Assert.Equal(Enumerable.Range(0, 100).Select(i => (long)i), secondEpoch.Order());
        Assert.NotEqual(firstEpoch, secondEpoch);
    }

    [Fact]
    public void BatchesArePureFunctionsOfSeedAndCursor()
    {
        using var data = Dataset(500, heldOut: 0.1);
        var run1 = Draw(new BatchSampler(data, 42), new DataCursor(), 40, _ => 16);
        var run2 = Draw(new BatchSampler(data, 42), new DataCursor(), 40, _ => 16);
        var other = Draw(new BatchSampler(data, 43), new DataCursor(), 40, _ => 16);
        Assert.Equal(run1, run2);
        Assert.NotEqual(run1, other);
        // Held-out sequences (the last 50) never appear in training batches.
        Assert.All(run1.SelectMany(b => b), tok => Assert.True(tok < 450 * T));
    }

    [Fact]
    public void ConcurrentSamplingFromManyThreadsGivesTheSameBatches()
    {
        using var data = Dataset(300);
        var sampler = new BatchSampler(data, 9);
        var sequential = Draw(sampler, new DataCursor(), 30, _ => 8);
        var parallel = new int[30][];
        Parallel.For(0, 30, new ParallelOptions { MaxDegreeOfParallelism = 3 }, k =>
        {
            var cursor = new DataCursor { Batch = k, Sequence = 8L * k };
            parallel[k] = Draw(sampler, cursor, 1, _ => 8)[0];
        });
        Assert.Equal(sequential, parallel);
    }

    [Fact]
    public void SavingAndRestoringTheCursorMidwayChangesNothing()
    {
        using var data = Dataset(200);
        Func<long, int> schedule = b => b < 10 ? 4 : b < 20 ? 8 : 16;   // a batch-size schedule, PaLM style
        var straight = Draw(new BatchSampler(data, 5), new DataCursor(), 35, schedule);

        var cursor = new DataCursor();
        cursor.AddSkip(100, 120);                                        // state beyond the plain counters
        var first = Draw(new BatchSampler(data, 5), cursor, 13, schedule);
        var json = cursor.ToJson();
        var restored = DataCursor.FromJson(json);
        Assert.Equal(json, restored.ToJson());
        var rest = Draw(new BatchSampler(data, 5), restored, 22, schedule);
        Assert.Equal(straight, first.Concat(rest));
    }

    [Fact]
    public void SkippingARangeYieldsExactlyTheBatchesAfterIt()
    {
        using var data = Dataset(400);
        var plain = Draw(new BatchSampler(data, 11), new DataCursor(), 30, _ => 8);
        var cursor = new DataCursor();
        cursor.AddSkip(5, 9);
        cursor.AddSkip(12, 12);
        var skipped = Draw(new BatchSampler(data, 11), cursor, 30 - 6, _ => 8);
        var expected = plain.Where((_, b) => !(b is >= 5 and <= 9 or 12)).ToList();
        Assert.Equal(expected, skipped);
        Assert.Equal(30, cursor.Batch);
        Assert.Equal(30 * 8, cursor.Sequence);
    }

    [Fact]
    public void SkippedBatchesConsumeTheirScheduledSizes()
    {
        using var data = Dataset(400);
        Func<long, int> schedule = b => b < 6 ? 2 : 6;
        var plain = Draw(new BatchSampler(data, 3), new DataCursor(), 12, schedule);
        var cursor = new DataCursor();
        cursor.AddSkip(4, 7);                                            // straddles the size change
        var skipped = Draw(new BatchSampler(data, 3), cursor, 8, schedule);
        Assert.Equal(plain.Take(4).Concat(plain.Skip(8)), skipped);
        Assert.Equal(4 * 2 + 2 * 2 + 6 * 6, cursor.Sequence);
    }

    [Fact]
    public void CursorJsonRejectsGarbage()
    {
        var c = DataCursor.FromJson("{\"batch\": 3, \"sequence\": 24, \"skips\": [[5, 9]]}");
        Assert.Equal((3, 24), (c.Batch, c.Sequence));
        Assert.True(c.IsSkipped(7) && !c.IsSkipped(10));
        Assert.Throws<DataException>(() => DataCursor.FromJson("{\"batch\": -1}"));
        Assert.Throws<DataException>(() => DataCursor.FromJson("{\"batch\": 1, \"skips\": [[9, 5]]}"));
        Assert.Throws<DataException>(() => DataCursor.FromJson("not json"));
        var clone = c.Clone();
        clone.AddSkip(20, 30);
        Assert.Single(c.Skips);
    }
}

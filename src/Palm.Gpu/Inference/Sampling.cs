using Palm.Gpu.Data;
using Palm.Gpu.Model;

namespace Palm.Gpu.Inference;

/// <summary>How the next token is drawn: temperature 0 is greedy; TopK 0 keeps every token; TopP 1 keeps all the mass.</summary>
public readonly record struct SamplingOptions(float Temperature, int TopK = 0, float TopP = 1f)
{
    /// <summary>Checks the options against a vocabulary of <paramref name="vocab"/> tokens (one clear message per mistake).</summary>
    public void Validate(int vocab)
    {
        if (Temperature < 0 || !float.IsFinite(Temperature)) throw new ConfigException($"--temperature must be a finite number ≥ 0, got {Temperature}");
        if (TopK < 0 || TopK > vocab) throw new ConfigException($"--top-k must be 0 (all) to {vocab} (the vocabulary), got {TopK}");
        if (!(TopP > 0 && TopP <= 1)) throw new ConfigException($"--top-p must be in (0, 1], got {TopP}");
    }
}

/// <summary>
/// Host-side sampling from one row of logits with a partial selection: greedy is an arg-max; top-k keeps a k-element
/// min-heap (O(V log k)) and sorts only those; only top-p without top-k orders the whole vocabulary. Deterministic
/// for a seed: candidates are ordered by logit, ties by lower id, and one uniform draw picks among them.
/// </summary>
public static class Sampler
{
    public static int Sample(ReadOnlySpan<float> logits, in SamplingOptions options, ref SplitMix64 rng)
    {
        int v = logits.Length;
        if (v == 0) throw new ArgumentException("sampling needs at least one logit", nameof(logits));
        if (options.Temperature == 0) return ArgMax(logits);
        int k = options.TopK <= 0 ? v : Math.Min(options.TopK, v);
        int[] order;
        if (k < v) order = TopK(logits, k);
        else if (options.TopP < 1f)
        {
            order = new int[v];
            for (int i = 0; i < v; i++) order[i] = i;
            var keys = logits.ToArray();
            Array.Sort(order, (a, b) => Before(keys, a, b));
        }
        else
        {
            order = new int[v];   // every token, in id order: no ordering is needed
            for (int i = 0; i < v; i++) order[i] = i;
        }
        float max = logits[ArgMax(logits)];
        var p = new double[order.Length];
        double sum = 0;
        for (int i = 0; i < order.Length; i++) { p[i] = Math.Exp((logits[order[i]] - max) / (double)options.Temperature); sum += p[i]; }
        int n = order.Length;
        if (options.TopP < 1f)
        {
            // The smallest prefix of the ordered candidates whose mass reaches top-p (at least one token).
            double keep = options.TopP * sum, acc = 0;
            for (n = 0; n < order.Length;) { acc += p[n++]; if (acc >= keep) break; }
            sum = 0;
            for (int i = 0; i < n; i++) sum += p[i];
        }
        double r = rng.NextDouble() * sum;
        for (int i = 0; i < n; i++) { r -= p[i]; if (r < 0) return order[i]; }
        return order[n - 1];
    }

    /// <summary>The highest logit's id, the lowest id among equals.</summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    static int Before(float[] keys, int a, int b) => keys[a] != keys[b] ? keys[b].CompareTo(keys[a]) : a.CompareTo(b);

    /// <summary>The k best ids, best first: a min-heap of the k best seen so far (the worst at the root).</summary>
    static int[] TopK(ReadOnlySpan<float> logits, int k)
    {
        var keys = logits.ToArray();
        var heap = new PriorityQueue<int, int>(k, Comparer<int>.Create((a, b) => -Before(keys, a, b)));
        for (int i = 0; i < keys.Length; i++)
        {
            if (heap.Count < k) heap.Enqueue(i, i);
            else if (Before(keys, i, heap.Peek()) < 0) heap.EnqueueDequeue(i, i);
        }
        var order = new int[heap.Count];
        for (int i = order.Length - 1; i >= 0; i--) order[i] = heap.Dequeue();
        return order;
    }
}

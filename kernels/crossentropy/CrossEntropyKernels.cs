using ILGPU;

namespace Palm.Gpu.Kernels;

// Softmax cross-entropy with PaLM's z-loss as ILGPU kernels (the C# twin of crossentropy.cl), vocabulary-sharded:
// logits are columns [v0, v0 + V) of the vocabulary and targets are global ids.
// Forward: logZ = max + log Σ_j exp(logit_j − max) over this shard's columns; targetLogit = logit[target − v0]
// when the target is in the shard, else 0 (one device: loss = logZ − targetLogit). Every exponent is ≤ 0, so
// nothing overflows. One group per row: thread t takes columns t, t + threads, ...; its exps are summed in float
// over runs of FlushEvery terms, then in double; the row max and the double sum combine across threads in a
// fixed shared-memory tree, so the bits are the same on every run. log Σ is taken in float on the rounded sum
// and corrected by the first-order term (Σ − rounded)/rounded, which keeps double accuracy without a double log.
// A negative target is recorded in errors (1 + row, target), its targetLogit is NaN; the host raises it.
// Backward: dlogits = scale · (p·(1 + 2·zLoss·logZ) − onehot), p = exp(logit − logZ) with the global logZ, the
// one-hot term only in the target's shard. Element-wise, so dlogits may alias logits.
//
// Dimensions: N = B·T rows, V columns of this shard.
//
// Forward:  logits (N,V), targets (N) -> logZ (N), targetLogit (N), errors (2) on a negative target
// Backward: logits (N,V), logZ (N), targets (N) -> dlogits (N,V) (may alias logits)
public static class CrossEntropyKernels
{
    /// <summary>Terms a thread sums in float before moving its partial sum to double.</summary>
    public const int FlushEvery = 16;

    /// <summary>One group per row, a power-of-two group size; dynamic shared memory of one double per thread.</summary>
    public static void Forward(ArrayView<float> logZ, ArrayView<float> targetLogit, ArrayView<float> logits, ArrayView<int> targets,
                               ArrayView<int> errors, int v, int v0)
    {
        int lid = Group.IdxX, threads = Group.DimX, row = Grid.IdxX;
        var red = SharedMemory.GetDynamic<double>();
        long o = (long)row * v;

        float m = float.NegativeInfinity;
        for (int j = lid; j < v; j += threads) { float x = logits[o + j]; m = x > m ? x : m; }
        red[lid] = m;
        Group.Barrier();
        for (int w = threads / 2; w > 0; w /= 2)
        {
            if (lid < w) red[lid] = red[lid] > red[lid + w] ? red[lid] : red[lid + w];
            Group.Barrier();
        }
        m = (float)red[0];
        Group.Barrier();

        double s = 0;
        int jn = lid;
        while (jn < v)
        {
            float run = 0f;
            for (int c = 0; c < FlushEvery && jn < v; c++, jn += threads) run += KernelMath.Exp(logits[o + jn] - m);
            s += run;
        }
        red[lid] = s;
        Group.Barrier();
        for (int w = threads / 2; w > 0; w /= 2)
        {
            if (lid < w) red[lid] = red[lid] + red[lid + w];
            Group.Barrier();
        }

        if (lid == 0)
        {
            double sum = red[0];
            float rounded = (float)sum;
            logZ[row] = (float)(m + (KernelMath.Log(rounded) + (sum - rounded) / rounded));
            int target = targets[row];
            if (target < 0)
            {
                errors[0] = row + 1;
                errors[1] = target;
                targetLogit[row] = float.NaN;
            }
            else
            {
                int j = target - v0;   // no overflow: target ≥ 0, v0 ≥ 0
                targetLogit[row] = j >= 0 && j < v ? logits[o + j] : 0f;
            }
        }
    }

    /// <summary>One thread per element, grid-stride over N·V (any grouping).</summary>
    public static void Backward(ArrayView<float> dlogits, ArrayView<float> logits, ArrayView<float> logZ, ArrayView<int> targets,
                                float scale, float zLoss, int n, int v, int v0)
    {
        long count = (long)n * v;
        for (long idx = Grid.GlobalIndex.X; idx < count; idx += (long)Grid.DimX * Group.DimX)
        {
            int row = (int)(idx / v), j = (int)(idx - (long)row * v);
            float lz = logZ[row];
            float factor = scale * (1f + 2f * zLoss * lz);   // the z-loss only rescales the softmax part
            float d = KernelMath.Exp(logits[idx] - lz) * factor;
            int target = targets[row];
            if (target >= 0 && target - v0 == j) d -= scale;
            dlogits[idx] = d;
        }
    }
}

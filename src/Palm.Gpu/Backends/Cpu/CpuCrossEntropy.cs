using System.Runtime.Intrinsics;

namespace Palm.Gpu.Backends.Cpu;

// Softmax cross-entropy with PaLM's z-loss, on the CPU, vocabulary-sharded.
// Dimension legend: B batch, T time, N = B·T rows, Vl columns of this shard [v0, v0 + Vl) of the vocabulary.
//
//   Forward   logits (N,Vl), targets (N) global ids -> logZ (N) = log Σ_shard exp(logits),
//             targetLogit (N) = logits[target − v0] when the target is in the shard, else 0
//   Backward  logits (N,Vl), logZ (N) global, targets (N) -> dlogits (N,Vl) = scale · (softmax·(1 + 2·zLoss·logZ) − onehot)
//   LogSumExpShift   logZ (n), max (n) -> out (n) = exp(logZ − max)
//   LogSumExpFinish  max (n), sumExp (n) -> logZ (n) = max + log(sumExp)
//
// The loss this differentiates is scale · Σ_rows (CE + zLoss·logZ²); d logZ / d logits = softmax gives the
// z-loss term. logZ = max + log Σ exp(logits − max): every exponent is ≤ 0, so nothing overflows, and the
// sum is accumulated in double. One device: CE = logZ − targetLogit. Shards: logZ = M + log Σ_m exp(logZ_m − M)
// with M = max_m logZ_m (the two helpers around a max and a sum all-reduce), targetLogit summed.
// The backward is element-wise within a row (softmax comes from the saved logZ), so dlogits may alias logits:
// the model overwrites its (N,V) logits buffer in place.
// One row per work item: rows are independent, so any thread count gives the same bits.
internal static unsafe class CpuCrossEntropy
{
    const int FlushEvery = 256;

    public static void Forward(int threads, CpuView<float> logZ, CpuView<float> targetLogit, CpuView<float> logits, CpuView<int> targets, int n, int v, int v0)
    {
        CheckTargets(targets, n);
        CpuParallel.For(threads, n, row =>
        {
            fixed (float* pl = logits)
            {
                float* x = pl + (long)row * v;
                float max = Max(x, v);
                logZ[row] = (float)(max + Math.Log(SumExp(x, max, v)));
                long local = (long)targets[row] - v0;
                targetLogit[row] = (ulong)local < (ulong)v ? x[local] : 0f;
            }
        });
    }

    public static void Backward(int threads, CpuView<float> dlogits, CpuView<float> logits, CpuView<float> logZ, CpuView<int> targets, float scale, float zLoss, int n, int v, int v0)
    {
        CheckTargets(targets, n);
        CpuParallel.For(threads, n, row =>
        {
            long o = (long)row * v;
            float lz = logZ[row];
            // softmax·scale·(1 + 2·zLoss·logZ): the z-loss only rescales the softmax part of the gradient.
            float factor = scale * (1f + 2f * zLoss * lz);
            fixed (float* pd = dlogits, pl = logits)
            {
                ScaledSoftmax(pd + o, pl + o, lz, factor, v);
                long local = (long)targets[row] - v0;
                if ((ulong)local < (ulong)v) pd[o + local] -= scale;
            }
        });
    }

    public static void LogSumExpShift(int threads, CpuView<float> output, CpuView<float> logZ, CpuView<float> max, long n) =>
        CpuParallel.ForChunks(threads, n, 1 << 14, (start, end) =>
        {
            for (long i = start; i < end; i++) output[i] = MathF.Exp(logZ[i] - max[i]);
        });

    public static void LogSumExpFinish(int threads, CpuView<float> logZ, CpuView<float> max, CpuView<float> sumExp, long n) =>
        CpuParallel.ForChunks(threads, n, 1 << 14, (start, end) =>
        {
            for (long i = start; i < end; i++) logZ[i] = (float)(max[i] + Math.Log(sumExp[i]));
        });

    static void CheckTargets(CpuView<int> targets, int n)
    {
        for (int i = 0; i < n; i++)
            if (targets[i] < 0)
                throw new IndexOutOfRangeException(
                    $"cross-entropy: target {targets[i]} at row {i} is negative; targets are vocabulary ids from 0.");
    }

    static float Max(float* x, int v)
    {
        int j = 0;
        float m = float.NegativeInfinity;
        if (CpuSimd.Use512 && v >= Vector512<float>.Count)
        {
            var acc = Vector512.Create(float.NegativeInfinity);
            for (; j <= v - Vector512<float>.Count; j += Vector512<float>.Count) acc = Vector512.Max(acc, Vector512.Load(x + j));
            for (int k = 0; k < Vector512<float>.Count; k++) m = MathF.Max(m, acc[k]);
        }
        else if (CpuSimd.Use256 && v >= Vector256<float>.Count)
        {
            var acc = Vector256.Create(float.NegativeInfinity);
            for (; j <= v - Vector256<float>.Count; j += Vector256<float>.Count) acc = Vector256.Max(acc, Vector256.Load(x + j));
            for (int k = 0; k < Vector256<float>.Count; k++) m = MathF.Max(m, acc[k]);
        }
        for (; j < v; j++) m = MathF.Max(m, x[j]);
        return m;
    }

    // Σ exp(x − max): the exponentials are float (each in (0, 1]) and are summed in float over short
    // blocks of FlushEvery elements, then in double, which costs far less than widening every vector.
    // The order is fixed on CpuSimd's 16 lanes for every width: within a block, 32-element steps add their
    // two 16-blocks to two chains (a last lone 16-block to the first), the block's chains are added and
    // widened into 8 double lanes (lane l gets float lanes l and l + 8), and the tail past the last whole
    // 16-block is added in order after the fold.
    static double SumExp(float* x, float max, int v)
    {
        int j = 0;
        double s;
        if (CpuSimd.Use512)
        {
            var vmax = Vector512.Create(max);
            var total = Vector512<double>.Zero;
            while (j <= v - 16)
            {
                // Each float lane adds at most FlushEvery/16 terms in (0,1] before the block is widened into double.
                int blockEnd = Math.Min(v, j + FlushEvery);
                var acc0 = Vector512<float>.Zero; var acc1 = Vector512<float>.Zero; // two chains keep two exps in flight
                for (; j <= blockEnd - 32; j += 32)
                {
                    acc0 += CpuSimd.Exp(Vector512.Load(x + j) - vmax);
                    acc1 += CpuSimd.Exp(Vector512.Load(x + j + 16) - vmax);
                }
                for (; j <= blockEnd - 16; j += 16) acc0 += CpuSimd.Exp(Vector512.Load(x + j) - vmax);
                var (lo, hi) = Vector512.Widen(acc0 + acc1);
                total += lo + hi;
            }
            s = CpuSimd.Fold(total);
        }
        else if (CpuSimd.Use256)
        {
            var vmax = Vector256.Create(max);
            Vector256<double> total0 = default, total1 = default;   // double lanes 0-3, 4-7
            while (j <= v - 16)
            {
                int blockEnd = Math.Min(v, j + FlushEvery);
                Vector256<float> a0 = default, a1 = default, b0 = default, b1 = default;   // chain 0 lanes 0-7, 8-15; chain 1 likewise
                for (; j <= blockEnd - 32; j += 32)
                {
                    a0 += CpuSimd.Exp(Vector256.Load(x + j) - vmax);
                    a1 += CpuSimd.Exp(Vector256.Load(x + j + 8) - vmax);
                    b0 += CpuSimd.Exp(Vector256.Load(x + j + 16) - vmax);
                    b1 += CpuSimd.Exp(Vector256.Load(x + j + 24) - vmax);
                }
                for (; j <= blockEnd - 16; j += 16)
                {
                    a0 += CpuSimd.Exp(Vector256.Load(x + j) - vmax);
                    a1 += CpuSimd.Exp(Vector256.Load(x + j + 8) - vmax);
                }
                var (l0, l1) = Vector256.Widen(a0 + b0);   // float lanes 0-3, 4-7
                var (h0, h1) = Vector256.Widen(a1 + b1);   // float lanes 8-11, 12-15
                total0 += l0 + h0;
                total1 += l1 + h1;
            }
            s = CpuSimd.Fold(total0 + total1);
        }
        else
        {
            var total = new CpuSimd.Lanes16D();   // 8 used
            CpuSimd.Lanes16 a = default, b = default;
            while (j <= v - 16)
            {
                int blockEnd = Math.Min(v, j + FlushEvery);
                for (int l = 0; l < 16; l++) { a[l] = 0; b[l] = 0; }
                for (; j <= blockEnd - 32; j += 32)
                    for (int l = 0; l < 16; l++)
                    {
                        a[l] += CpuSimd.Exp(x[j + l] - max);
                        b[l] += CpuSimd.Exp(x[j + 16 + l] - max);
                    }
                for (; j <= blockEnd - 16; j += 16)
                    for (int l = 0; l < 16; l++) a[l] += CpuSimd.Exp(x[j + l] - max);
                for (int l = 0; l < 8; l++) total[l] += (double)(a[l] + b[l]) + (a[l + 8] + b[l + 8]);
            }
            s = CpuSimd.Fold(total, 8);
        }
        for (; j < v; j++) s += CpuSimd.Exp(x[j] - max);
        return s;
    }

    // d[j] = factor · exp(x[j] − logZ); loads precede stores per vector, so d may alias x.
    static void ScaledSoftmax(float* d, float* x, float lz, float factor, int v)
    {
        int j = 0;
        if (CpuSimd.Use512)
        {
            var vlz = Vector512.Create(lz); var vf = Vector512.Create(factor);
            for (; j <= v - Vector512<float>.Count; j += Vector512<float>.Count)
                Vector512.Store(CpuSimd.Exp(Vector512.Load(x + j) - vlz) * vf, d + j);
        }
        else if (CpuSimd.Use256)
        {
            var vlz = Vector256.Create(lz); var vf = Vector256.Create(factor);
            for (; j <= v - Vector256<float>.Count; j += Vector256<float>.Count)
                Vector256.Store(CpuSimd.Exp(Vector256.Load(x + j) - vlz) * vf, d + j);
        }
        for (; j < v; j++) d[j] = CpuSimd.Exp(x[j] - lz) * factor;
    }
}

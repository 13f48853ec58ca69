using System.Runtime.Intrinsics;

namespace Palm.Gpu.Backends.Cpu;

// Attention of one new query row per sequence against its KV cache (incremental decoding).
// B batch, Tmax cache rows, H query heads, G kv heads (1 multi-query), K head dim, L_b = lengths[b].
// q (B,H,K), kCache (B,Tmax,G,K), vCache (B,Tmax,G,K), lengths (B) -> out (B,H,K)
//
//   s_j = q·k_j/√K for j < L_b     (dot on CpuSimd's 16 logical lanes, then folded)
//   p_j = exp(s_j − max s),  out = Σ_j p_j·v_j / Σ_j p_j   (both sums over j in index order)
//
// One work item per (b, h); each output element is written by one item, every sum has a fixed order, so the
// bits do not depend on the thread count or the vector width.
internal static unsafe class CpuDecode
{
    [ThreadStatic] static float[]? t_scores;

    public static void Attention(int threads, CpuView<float> output, CpuView<float> q, CpuView<float> kCache, CpuView<float> vCache,
                                 CpuView<int> lengths, int b, int tMax, int heads, int kvHeads, int headDim)
    {
        for (int s = 0; s < b; s++)
            if (lengths[s] < 1 || lengths[s] > tMax)
                throw new ArgumentOutOfRangeException(nameof(lengths), $"attention decode: length {lengths[s]} of sequence {s} is outside 1..{tMax}");
        if (b == 0 || heads == 0) return;
        int group = heads / kvHeads;
        float scale = (float)(1.0 / Math.Sqrt(headDim));
        CpuParallel.For(threads, b * heads, item =>
        {
            int s = item / heads, h = item % heads, g = h / group, len = lengths[s];
            var scores = t_scores is { } sc && sc.Length >= len ? sc : t_scores = new float[Math.Max(len, 64)];
            long qo = ((long)s * heads + h) * headDim;
            fixed (float* po = output, pq = q, pk = kCache, pv = vCache, ps = scores)
            {
                float* qr = pq + qo, outRow = po + qo;
                float max = float.NegativeInfinity;
                for (int j = 0; j < len; j++)
                {
                    float* kr = pk + (((long)s * tMax + j) * kvHeads + g) * headDim;
                    float x = Dot(qr, kr, headDim) * scale;
                    ps[j] = x;
                    if (x > max) max = x;
                }
                float sum = 0f;
                for (int j = 0; j < len; j++) { ps[j] = CpuSimd.Exp(ps[j] - max); sum += ps[j]; }
                for (int d = 0; d < headDim; d++) outRow[d] = 0f;
                // Each element of out is its own sum over j in index order: vectorising over d keeps the bits.
                for (int j = 0; j < len; j++)
                {
                    float* vr = pv + (((long)s * tMax + j) * kvHeads + g) * headDim;
                    float p = ps[j];
                    for (int d = 0; d < headDim; d++) outRow[d] += p * vr[d];
                }
                float inv = 1f / sum;
                for (int d = 0; d < headDim; d++) outRow[d] *= inv;
            }
        });
    }

    /// <summary>a·b over n floats: element i to lane i mod 16 for whole 16-blocks, lanes folded by halving, tail in order.</summary>
    static float Dot(float* a, float* b, int n)
    {
        int i = 0;
        float sum;
        if (CpuSimd.Use512)
        {
            var acc = Vector512<float>.Zero;
            for (; i + 16 <= n; i += 16) acc += Vector512.Load(a + i) * Vector512.Load(b + i);
            sum = CpuSimd.Fold(acc);
        }
        else if (CpuSimd.Use256)
        {
            Vector256<float> lo = Vector256<float>.Zero, hi = Vector256<float>.Zero;
            for (; i + 16 <= n; i += 16)
            {
                lo += Vector256.Load(a + i) * Vector256.Load(b + i);
                hi += Vector256.Load(a + i + 8) * Vector256.Load(b + i + 8);
            }
            sum = CpuSimd.Fold(lo, hi);
        }
        else
        {
            var lanes = new CpuSimd.Lanes16();
            for (; i + 16 <= n; i += 16)
                for (int l = 0; l < 16; l++) lanes[l] += a[i + l] * b[i + l];
            sum = CpuSimd.Fold16(lanes);
        }
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }
}

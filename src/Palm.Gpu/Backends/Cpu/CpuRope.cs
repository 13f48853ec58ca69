using System.Collections.Concurrent;
using System.Runtime.Intrinsics;

namespace Palm.Gpu.Backends.Cpu;

// Rotary position embedding, rotate-half (GPT-NeoX) convention over all K dims, base 10000, position = t.
// B batch, T time, Hs heads of the tensor (H for queries, G for keys), K head dim (even).
// forward:  inp (B,T,Hs,K) -> out (B,T,Hs,K); out may alias inp
// backward: dout (B,T,Hs,K) -> dinp (B,T,Hs,K); dinp may alias dout
//
//   for i < K/2:  θ_i = 10000^(−2i/K),  a = t·θ_i
//   out[i]     = x[i]·cos a − x[i+K/2]·sin a
//   out[i+K/2] = x[i+K/2]·cos a + x[i]·sin a
// Each (i, i+K/2) pair is rotated by a; the rotation is orthogonal, so backward rotates by −a.
internal static class CpuRope
{
    /// <summary>cos and sin of t·θ_i, laid out (T, K/2); angles are computed in double.</summary>
    sealed class Table
    {
        public readonly float[] Cos, Sin;

        public Table(int t, int headDim)
        {
            int half = headDim / 2;
            Cos = new float[t * half];
            Sin = new float[t * half];
            for (int i = 0; i < half; i++)
            {
                double theta = Math.Pow(10000.0, -2.0 * i / headDim);
                for (int pos = 0; pos < t; pos++)
                {
                    double a = pos * theta;
                    Cos[pos * half + i] = (float)Math.Cos(a);
                    Sin[pos * half + i] = (float)Math.Sin(a);
                }
            }
        }
    }

    // A run uses one or two (T, K) pairs (queries and keys share K), so the tables are built once and kept.
    static readonly ConcurrentDictionary<(int T, int K), Table> s_tables = new();

    public static void Forward(int threads, CpuView<float> output, CpuView<float> input, int b, int t, int heads, int headDim)
        => Rotate(threads, output, input, b, t, heads, headDim, inverse: false);

    public static void Backward(int threads, CpuView<float> dinput, CpuView<float> dout, int b, int t, int heads, int headDim)
        => Rotate(threads, dinput, dout, b, t, heads, headDim, inverse: true);

    static unsafe void Rotate(int threads, CpuView<float> dst, CpuView<float> src, int b, int t, int heads, int headDim, bool inverse)
    {
        if (headDim <= 0 || headDim % 2 != 0) throw new ArgumentException($"rope: head dim {headDim} must be even and positive");
        long rows = (long)b * t;
        int rowFloats = heads * headDim, half = headDim / 2;
        long need = rows * rowFloats;
        if (src.Length < need || dst.Length < need) throw new ArgumentException($"rope: buffers of {src.Length}/{dst.Length} floats, need {need}");
        if (rows == 0 || heads == 0) return;
        var table = s_tables.GetOrAdd((t, headDim), key => new Table(key.T, key.K));

        // Pure elementwise work: any partition gives the same bits; ~16K floats per chunk amortises dispatch.
        CpuParallel.ForChunks(threads, rows, Math.Max(1, 16384 / rowFloats), (start, end) =>
        {
            fixed (float* pd = dst, ps = src, pc = table.Cos, pn = table.Sin)
                for (long row = start; row < end; row++)
                {
                    int pos = (int)(row % t);
                    float* cos = pc + (long)pos * half, sin = pn + (long)pos * half;
                    for (int h = 0; h < heads; h++)
                    {
                        long o = row * rowFloats + (long)h * headDim;
                        RotateHead(pd + o, ps + o, cos, sin, half, inverse);
                    }
                }
        });
    }

    /// <summary>
    /// inp (B,Hs,K), positions (B) -> out (B,Hs,K): one token per sequence at its own position. cos and sin are
    /// computed as the table computes them (double angle, rounded once), so the bits equal <see cref="Forward"/> at t.
    /// </summary>
    public static unsafe void ForwardAt(CpuView<float> output, CpuView<float> input, CpuView<int> positions, int b, int heads, int headDim)
    {
        int half = headDim / 2, rowFloats = heads * headDim;
        var cos = new float[half];
        var sin = new float[half];
        for (int s = 0; s < b; s++)
        {
            int pos = positions[s];
            if (pos < 0) throw new ArgumentOutOfRangeException(nameof(positions), $"rope forward at: position {pos} of sequence {s} is negative");
            for (int i = 0; i < half; i++)
            {
                double a = pos * Math.Pow(10000.0, -2.0 * i / headDim);
                cos[i] = (float)Math.Cos(a);
                sin[i] = (float)Math.Sin(a);
            }
            fixed (float* pd = output, ps = input, pc = cos, pn = sin)
                for (int h = 0; h < heads; h++)
                {
                    long o = (long)s * rowFloats + (long)h * headDim;
                    RotateHead(pd + o, ps + o, pc, pn, half, inverse: false);
                }
        }
    }

    /// <summary>One head: both halves are loaded before either is stored, so dst may equal src.</summary>
    static unsafe void RotateHead(float* dst, float* src, float* cos, float* sin, int half, bool inverse)
    {
        int i = 0;
        if (CpuSimd.Use512)
            for (; i + 16 <= half; i += 16)
            {
                var x1 = Vector512.Load(src + i); var x2 = Vector512.Load(src + half + i);
                var c = Vector512.Load(cos + i); var s = Vector512.Load(sin + i);
                if (inverse) s = -s;
                (x1 * c - x2 * s).Store(dst + i);
                (x2 * c + x1 * s).Store(dst + half + i);
            }
        if (CpuSimd.Use256)
            for (; i + 8 <= half; i += 8)
            {
                var x1 = Vector256.Load(src + i); var x2 = Vector256.Load(src + half + i);
                var c = Vector256.Load(cos + i); var s = Vector256.Load(sin + i);
                if (inverse) s = -s;
                (x1 * c - x2 * s).Store(dst + i);
                (x2 * c + x1 * s).Store(dst + half + i);
            }
        for (; i < half; i++)
        {
            float x1 = src[i], x2 = src[half + i], c = cos[i], s = inverse ? -sin[i] : sin[i];
            dst[i] = x1 * c - x2 * s;
            dst[half + i] = x2 * c + x1 * s;
        }
    }
}

using System.Runtime.Intrinsics;

namespace Palm.Gpu.Backends.Cpu;

// Reductions on the CPU.
// Dimension legend: n = any element count (a whole parameter or gradient tensor).
//
//   SumOfSquares  x (n) -> Σ x² (double, returned to the host)   used for the global gradient norm
//
// Deterministic: the range is cut into fixed-size chunks (independent of the thread count), each chunk is
// summed in double with a fixed lane order (the same at every vector width), and the chunk sums are added in index order.
internal static unsafe class CpuReduce
{
    const long Chunk = 1 << 16;

    public static double SumOfSquares(int threads, float[] x, long count)
    {
        if (count <= 0) return 0;
        int chunks = (int)((count + Chunk - 1) / Chunk);
        var partial = new double[chunks];
        CpuParallel.ForChunks(threads, count, Chunk, (start, end) =>
        {
            fixed (float* px = x) partial[start / Chunk] = SumOfSquaresRange(px + start, end - start);
        });
        double total = 0;
        for (int c = 0; c < chunks; c++) total += partial[c];
        return total;
    }

    // Squares are formed in double (exact for a float input), so only the additions round. Sixteen double lanes
    // (element i of a whole 16-block in lane i mod 16) folded by halving, then the tail in order: the same
    // additions at every vector width (CpuSimd).
    static double SumOfSquaresRange(float* x, long n)
    {
        long i = 0;
        double sum;
        if (CpuSimd.Use512)
        {
            var acc0 = Vector512<double>.Zero;
            var acc1 = Vector512<double>.Zero;
            for (; i <= n - 16; i += 16)
            {
                var (lo, hi) = Vector512.Widen(Vector512.Load(x + i));
                acc0 += lo * lo;
                acc1 += hi * hi;
            }
            sum = CpuSimd.Fold(acc0 + acc1);
        }
        else if (CpuSimd.Use256)
        {
            Vector256<double> acc0 = default, acc1 = default, acc2 = default, acc3 = default;   // lanes 0-3, 4-7, 8-11, 12-15
            for (; i <= n - 16; i += 16)
            {
                var (a, b) = Vector256.Widen(Vector256.Load(x + i));
                var (c, d) = Vector256.Widen(Vector256.Load(x + i + 8));
                acc0 += a * a;
                acc1 += b * b;
                acc2 += c * c;
                acc3 += d * d;
            }
            sum = CpuSimd.Fold((acc0 + acc2) + (acc1 + acc3));
        }
        else
        {
            var acc = new CpuSimd.Lanes16D();
            for (; i <= n - 16; i += 16)
                for (int l = 0; l < 16; l++) { double v = x[i + l]; acc[l] += v * v; }
            for (int l = 0; l < 8; l++) acc[l] += acc[l + 8];
            sum = CpuSimd.Fold(acc, 8);
        }
        for (; i < n; i++) { double v = x[i]; sum += v * v; }
        return sum;
    }
}

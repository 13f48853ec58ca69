using System.Runtime.Intrinsics;

namespace Palm.Gpu.Backends.Cpu;

// Reductions on the CPU.
// Dimension legend: n = any element count (a whole parameter or gradient tensor).
//
//   SumOfSquares  x (n) -> Σ x² (double, returned to the host)   used for the global gradient norm
//
// Deterministic: the range is cut into fixed-size chunks (independent of the thread count), each chunk is
// summed in double with a fixed lane order, and the chunk sums are added in index order.
internal static unsafe class CpuReduce
{
    const long Chunk = 1 << 16;

    public static double SumOfSquares(int threads, CpuView<float> x, long count)
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

    // Squares are formed in double (exact for a float input), so only the additions round.
    static double SumOfSquaresRange(float* x, long n)
    {
        long i = 0;
        double sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var acc0 = Vector512<double>.Zero;
            var acc1 = Vector512<double>.Zero;
            for (; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
            {
                var (lo, hi) = Vector512.Widen(Vector512.Load(x + i));
                acc0 += lo * lo;
                acc1 += hi * hi;
            }
            sum = Vector512.Sum(acc0 + acc1);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var acc0 = Vector256<double>.Zero;
            var acc1 = Vector256<double>.Zero;
            for (; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Load(x + i));
                acc0 += lo * lo;
                acc1 += hi * hi;
            }
            sum = Vector256.Sum(acc0 + acc1);
        }
        for (; i < n; i++) { double v = x[i]; sum += v * v; }
        return sum;
    }
}

using System.Runtime.Intrinsics;

namespace Palm.Gpu.Backends.Cpu;

// Reductions on the CPU.
// Dimension legend: n = any element count (a whole parameter or gradient tensor).
//
//   SumOfSquares          x (n) -> Σ x² (double, returned to the host)   used for the global gradient norm
//   SumOfSquaresSegments  x (flat), segments (S) -> Σ x² per segment (S)
//
// Deterministic: the range is cut into fixed-size chunks (independent of the thread count), each chunk is
// summed in double with a fixed lane order (the same at every vector width), and the chunk sums are added in index order.
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

    // ---- segmented: the order of reduce.cl (sum_squares_segments_*), so CPU and OpenCL agree to the bit ----
    // Each segment is cut into runs of Run elements from its own start. A run is summed as 16 lanes in double
    // (lane k takes elements k, k+16, ... of the whole 16-blocks), the lanes folded pairwise (k + k+8, then +4,
    // +2, +1), then the run's tail element by element. A segment's runs go into Partials strided accumulators
    // (run r into r mod Partials, in order), folded by a fixed tree. Nothing depends on the vector width: the
    // lanes are four Vector256<double>, whose lane-wise adds are the scalar adds.
    internal const int Run = 1024, Partials = 64;   // SUMSQ_RUN, SUMSQ_WG in reduce.cl
    const int RunsPerItem = 16;

    public static void SumOfSquaresSegments(int threads, CpuView<float> x, IReadOnlyList<Segment> segments, Span<double> sums)
    {
        int count = segments.Count;
        if (count == 0) return;
        var first = Segments.FirstTiles(segments, Run);
        long runs = first[count];
        var partial = new double[runs];
        int items = (int)((runs + RunsPerItem - 1) / RunsPerItem);
        CpuParallel.For(threads, items, item =>
        {
            long r0 = (long)item * RunsPerItem, r1 = Math.Min(runs, r0 + RunsPerItem);
            int seg = Segments.SegmentOf(first, r0);
            fixed (float* px = x)
                for (long r = r0; r < r1; r++)
                {
                    while (r >= first[seg + 1]) seg++;
                    var sg = segments[seg];
                    long start = sg.Offset + (r - first[seg]) * Run;
                    partial[r] = SumOfSquaresRun(px + start, Math.Min(Run, sg.Offset + sg.Count - start));
                }
        });
        Span<double> acc = stackalloc double[Partials];
        for (int s = 0; s < count; s++)
        {
            acc.Clear();
            long n = first[s + 1] - first[s];
            for (long r = 0; r < n; r++) acc[(int)(r % Partials)] += partial[first[s] + r];
            for (int stride = Partials / 2; stride > 0; stride >>= 1)
                for (int l = 0; l < stride; l++) acc[l] = acc[l] + acc[l + stride];
            sums[s] = acc[0];
        }
    }

    static double SumOfSquaresRun(float* x, long n)
    {
        long blocks = n / 16 * 16, i = 0;
        Vector256<double> l0 = default, l1 = default, h0 = default, h1 = default;   // lanes 0-3, 4-7, 8-11, 12-15
        for (; i < blocks; i += 16)
        {
            var (a0, a1) = Vector256.Widen(Vector256.Load(x + i));
            var (b0, b1) = Vector256.Widen(Vector256.Load(x + i + 8));
            l0 += a0 * a0; l1 += a1 * a1;
            h0 += b0 * b0; h1 += b1 * b1;
        }
        var s4 = (l0 + h0) + (l1 + h1);   // s8 = lo + hi; s4[k] = s8[k] + s8[k+4]
        double s = (s4.GetElement(0) + s4.GetElement(2)) + (s4.GetElement(1) + s4.GetElement(3));
        for (; i < n; i++) { double v = x[i]; s += v * v; }
        return s;
    }
}

// Sums of squares for the global gradient norm (the ILGPU twin of reduce.cl), in double with the fixed order the
// backend contract writes out, so every backend with fp64 gives the same bits. Each segment of a flat buffer is cut
// into runs of 1024 from its own start; a run is 16 lanes (lane l takes elements l, l+16, ... of the whole
// 16-blocks), folded l + l+8, then +4, +2, +1, then the run's tail element by element. A segment's runs go into 64
// strided partials (run r into r mod 64, in order), folded by a fixed tree (stride 32, 16, ..., 1). Squares are
// formed in double (exact), so only the additions round. The whole-buffer sum is one segment.
// table (S,3) longs: offset, count, first run of each segment (empty segments own no run).
//
// Dimensions: S segments, runs = Σ ⌈count_s / 1024⌉.
//
// SegmentRuns:   x (flat), table (S,3) -> partial (runs)          grid-strided, one run per thread
// SegmentTotals: partial (runs), table (S,3) -> sums (S)          one group per segment (1 or 64 threads)

using ILGPU;

namespace Palm.Gpu.Kernels;

public static class ReduceKernels
{
    public const int Run = 1024, Partials = 64;

    static int SegmentOf(ArrayView<long> table, int segments, long run)
    {
        int lo = 0, hi = segments - 1;   // the last s with first[s] ≤ run
        while (lo < hi)
        {
            int mid = (lo + hi + 1) >> 1;
            if (table[3 * mid + 2] <= run) lo = mid; else hi = mid - 1;
        }
        return lo;
    }

    /// <summary>Lane l plus lane l + 8 of a run's whole 16-blocks [i0, blocksEnd): each lane summed in order first.</summary>
    static double Lanes(ArrayView<float> x, long i0, long blocksEnd, int l)
    {
        double lo = 0, hi = 0;
        for (long i = i0; i < blocksEnd; i += 16)
        {
            double a = x[i + l], b = x[i + 8 + l];
            lo += a * a;
            hi += b * b;
        }
        return lo + hi;
    }

    public static void SegmentRuns(ArrayView<double> partial, ArrayView<float> x, ArrayView<long> table, int segments, long runs)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long run = Grid.GlobalIndex.X; run < runs; run += stride)
        {
            int seg = SegmentOf(table, segments, run);
            long offset = table[3 * seg], end = offset + table[3 * seg + 1];
            long i0 = offset + (run - table[3 * seg + 2]) * Run;
            long i1 = i0 + Run < end ? i0 + Run : end;
            long blocksEnd = i0 + (i1 - i0) / 16 * 16;
            double s4a = Lanes(x, i0, blocksEnd, 0) + Lanes(x, i0, blocksEnd, 4), s4b = Lanes(x, i0, blocksEnd, 1) + Lanes(x, i0, blocksEnd, 5);
            double s4c = Lanes(x, i0, blocksEnd, 2) + Lanes(x, i0, blocksEnd, 6), s4d = Lanes(x, i0, blocksEnd, 3) + Lanes(x, i0, blocksEnd, 7);
            double s = (s4a + s4c) + (s4b + s4d);
            for (long i = blocksEnd; i < i1; i++)
            {
                double v = x[i];
                s += v * v;
            }
            partial[run] = s;
        }
    }

    public static void SegmentTotals(ArrayView<double> sums, ArrayView<double> partial, ArrayView<long> table, int segments, long runs)
    {
        var lanes = SharedMemory.Allocate<double>(Partials);
        int seg = Grid.IdxX, lid = Group.IdxX, group = Group.DimX;
        long first = table[3 * seg + 2], next = seg + 1 < segments ? table[3 * (seg + 1) + 2] : runs;
        for (int l = lid; l < Partials; l += group)
        {
            double acc = 0;
            for (long r = first + l; r < next; r += Partials) acc += partial[r];
            lanes[l] = acc;
        }
        Group.Barrier();
        if (lid == 0)
        {
            for (int width = Partials / 2; width > 0; width >>= 1)
                for (int l = 0; l < width; l++) lanes[l] = lanes[l] + lanes[l + width];
            sums[seg] = lanes[0];
        }
    }
}

using System.Runtime.Intrinsics;

namespace Palm.Gpu.Backends.Cpu;

// Residual adds on the CPU.
// Dimension legend: B batch, T time, D model width, N = B·T rows; n = any element count (typically N·D).
//
//   Add        a (n), b (n) -> out (n) = a + b        out may alias a or b
//   AddInPlace acc (n) += x (n)                       the backward of a residual add: dout is routed to both branches
//
// Element-wise, so every partition gives the same bits; fixed-size chunks keep each worker on one
// contiguous range and let small tensors run on the calling thread.
internal static unsafe class CpuResidual
{
    const long Chunk = 1 << 16;

    public static void Add(int threads, CpuView<float> output, CpuView<float> a, CpuView<float> b, long count)
        => CpuParallel.ForChunks(threads, count, Chunk, (start, end) =>
        {
            fixed (float* po = output, pa = a, pb = b) AddRange(po + start, pa + start, pb + start, end - start);
        });

    public static void AddInPlace(int threads, CpuView<float> acc, CpuView<float> x, long count)
        => CpuParallel.ForChunks(threads, count, Chunk, (start, end) =>
        {
            fixed (float* pacc = acc, px = x) AddRange(pacc + start, pacc + start, px + start, end - start);
        });

    // o[i] = a[i] + b[i]; each vector is loaded before it is stored, so o may alias a or b. Also the
    // row accumulation of the embedding and layer-norm backward kernels.
    internal static void AddRange(float* o, float* a, float* b, long n)
    {
        long i = 0;
        if (CpuSimd.Use512)
            for (; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
                Vector512.Store(Vector512.Load(a + i) + Vector512.Load(b + i), o + i);
        else if (CpuSimd.Use256)
            for (; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
                Vector256.Store(Vector256.Load(a + i) + Vector256.Load(b + i), o + i);
        for (; i < n; i++) o[i] = a[i] + b[i];
    }
}

namespace Palm.Gpu.Backends.Cpu;

// Matmul on the CPU.
// C (M,N) = alpha · op(A) (M,K) · op(B) (K,N) [+ C]; A stored (M,K) or (K,M) when transA, B stored (K,N) or (N,K) when transB.
internal static class CpuMatmul
{
    public static void Run(int threads, float[] c, float[] a, float[] b, int m, int n, int k,
                           bool transA, bool transB, float alpha, bool accumulate)
    {
        // Placeholder: plain triple loop, one row of C per work item (deterministic for any thread count).
        CpuParallel.For(threads, m, i =>
        {
            for (int j = 0; j < n; j++)
            {
                float s = 0;
                for (int p = 0; p < k; p++)
                {
                    float av = transA ? a[(long)p * m + i] : a[(long)i * k + p];
                    float bv = transB ? b[(long)j * k + p] : b[(long)p * n + j];
                    s += av * bv;
                }
                long idx = (long)i * n + j;
                c[idx] = accumulate ? c[idx] + alpha * s : alpha * s;
            }
        });
    }
}

// Matrix multiply (the ILGPU twin of matmul.cl): C = alpha · op(A) · op(B) [+ C], row-major, fp32 with fp32
// accumulation. Shared-memory tiling plus register blocking: a group of TX × TY threads owns a BM × BN tile of C
// (BM = TY·RM, BN = TX·RN); per step of BK along K it stages a BK × BM tile of op(A) and a BK × BN tile of op(B)
// in shared memory (loaded cooperatively, consecutive threads on consecutive elements, zero past the edges), then
// every thread updates its RM × RN accumulators with explicit FMAs (KernelMath.Fma: PTX fma.rn.f32). A thread's
// rows are ty + r·TY and its columns tx + c·TX, so a warp's B reads are consecutive and its A reads broadcast.
// Transposes are strides of the tile loads, so one kernel serves all four cases. Each element of C sums
// p = 0..K-1 in order (padding is never added), so its bits do not depend on the tile sizes or the group shape.
// RM, RN and BK are specialisation constants (ILGPU compiles one kernel per value; the register block is a local
// array of at most 4 × 4 that the unrolled loops keep in registers).
//
// Dimensions: M rows of C, N columns of C, K the contraction length; grid (⌈N/BN⌉, ⌈M/BM⌉), group (TX, TY).
//
// Matmul: op(A) (M,K), op(B) (K,N) -> c (M,N) = alpha·op(A)·op(B) [+ c when accumulate]

using ILGPU;
using ILGPU.Runtime;

namespace Palm.Gpu.Kernels;

/// <summary>The sizes and flags of one matmul call (kernel argument).</summary>
public struct MatmulShape
{
    public int M, N, K;
    public int TransA, TransB, Accumulate;
    public float Alpha;
}

public static class MatmulKernels
{
    /// <summary>Largest register block per thread: 4 × 4 accumulators.</summary>
    public const int MaxBlock = 4;

    /// <summary>Shared memory a launch needs, in floats: a BK × BM tile of op(A) and a BK × BN tile of op(B).</summary>
    public static int SharedFloats(int threadsX, int threadsY, int rowsPerThread, int columnsPerThread, int tileK) =>
        tileK * (threadsY * rowsPerThread + threadsX * columnsPerThread);

    public static void Matmul(ArrayView<float> c, ArrayView<float> a, ArrayView<float> b, MatmulShape s,
                              SpecializedValue<int> rowsPerThread, SpecializedValue<int> columnsPerThread, SpecializedValue<int> tileK)
    {
        int rm = rowsPerThread, rn = columnsPerThread, bk = tileK;
        int tx = Group.IdxX, ty = Group.IdxY, threadsX = Group.DimX, threadsY = Group.DimY;
        int bm = threadsY * rm, bn = threadsX * rn;
        int row0 = Grid.IdxY * bm, col0 = Grid.IdxX * bn;
        int tid = ty * threadsX + tx, threads = threadsX * threadsY;

        var shared = SharedMemory.GetDynamic<float>();
        var tileA = shared.SubView(0, bk * bm);          // [p][i]
        var tileB = shared.SubView(bk * bm, bk * bn);    // [p][j]
        var acc = LocalMemory.Allocate<float>(MaxBlock * MaxBlock);
        for (int q = 0; q < rm * rn; q++) acc[q] = 0f;

        for (int p0 = 0; p0 < s.K; p0 += bk)
        {
            for (int e = tid; e < bk * bm; e += threads)
            {
                int p = e / bm, i = e - p * bm;
                int gi = row0 + i, gp = p0 + p;
                float v = 0f;
                if (gi < s.M && gp < s.K) v = s.TransA != 0 ? a[(long)gp * s.M + gi] : a[(long)gi * s.K + gp];
                tileA[e] = v;
            }
            for (int e = tid; e < bk * bn; e += threads)
            {
                int p = e / bn, j = e - p * bn;
                int gj = col0 + j, gp = p0 + p;
                float v = 0f;
                if (gj < s.N && gp < s.K) v = s.TransB != 0 ? b[(long)gj * s.K + gp] : b[(long)gp * s.N + gj];
                tileB[e] = v;
            }
            Group.Barrier();
            int depth = s.K - p0 < bk ? s.K - p0 : bk;
            for (int p = 0; p < depth; p++)
                for (int r = 0; r < rm; r++)
                {
                    float av = tileA[p * bm + ty + r * threadsY];
                    for (int q = 0; q < rn; q++)
                        acc[r * rn + q] = KernelMath.Fma(av, tileB[p * bn + tx + q * threadsX], acc[r * rn + q]);
                }
            Group.Barrier();
        }

        for (int r = 0; r < rm; r++)
        {
            int i = row0 + ty + r * threadsY;
            if (i >= s.M) continue;
            for (int q = 0; q < rn; q++)
            {
                int j = col0 + tx + q * threadsX;
                if (j >= s.N) continue;
                long at = (long)i * s.N + j;
                float value = s.Alpha * acc[r * rn + q];
                if (s.Accumulate != 0) value = c[at] + value;
                c[at] = value;
            }
        }
    }
}

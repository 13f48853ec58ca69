// Matrix multiply (the ILGPU twin of matmul.cl): C = alpha · op(A) · op(B) [+ C], row-major, fp32 with fp32
// accumulation. Shared-memory tiling plus register blocking: a group of TX × TY threads owns a BM × BN tile of C
// (BM = TY·RM, BN = TX·RN); per step of BK along K it stages a BK × BM tile of op(A) and a BK × BN tile of op(B)
// in shared memory (loaded cooperatively, consecutive threads on consecutive elements, zero past the edges), then
// every thread updates its RM × RN accumulators with explicit FMAs (KernelMath.Fma: PTX fma.rn.f32). A thread's
// rows are ty + r·TY and its columns tx + c·TX, so a warp's B reads are consecutive and its A reads broadcast.
// Transposes are strides of the tile loads, so one kernel serves all four cases. Each element of C sums
// p = 0..K-1 in order (padding is never added), so its bits do not depend on the tile sizes or the group shape.
// The register block is 4 × 4 (RM = RN = 4, written out as scalars: ILGPU unrolls no loops, and an array would
// live in local memory); BK is a specialisation constant (ILGPU compiles one kernel per value).
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
    /// <summary>The register block: rows and columns of C per thread (ILGPU does not unroll loops, so the 4 × 4
    /// accumulators are written out as scalars to stay in registers).</summary>
    public const int BlockRows = 4, BlockColumns = 4;

    /// <summary>Shared memory a launch needs, in floats: a BK × BM tile of op(A) and a BK × BN tile of op(B).</summary>
    public static int SharedFloats(int threadsX, int threadsY, int tileK) => tileK * (threadsY * BlockRows + threadsX * BlockColumns);

    public static void Matmul(ArrayView<float> c, ArrayView<float> a, ArrayView<float> b, MatmulShape s, SpecializedValue<int> tileK)
    {
        int bk = tileK;
        int tx = Group.IdxX, ty = Group.IdxY, threadsX = Group.DimX, threadsY = Group.DimY;
        int bm = threadsY * BlockRows, bn = threadsX * BlockColumns;
        int row0 = Grid.IdxY * bm, col0 = Grid.IdxX * bn;
        int tid = ty * threadsX + tx, threads = threadsX * threadsY;

        var shared = SharedMemory.GetDynamic<float>();
        var tileA = shared.SubView(0, bk * bm);          // [p][i]
        var tileB = shared.SubView(bk * bm, bk * bn);    // [p][j]
        float c00 = 0, c01 = 0, c02 = 0, c03 = 0, c10 = 0, c11 = 0, c12 = 0, c13 = 0;
        float c20 = 0, c21 = 0, c22 = 0, c23 = 0, c30 = 0, c31 = 0, c32 = 0, c33 = 0;

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
            {
                int ia = p * bm + ty, ib = p * bn + tx;
                float a0 = tileA[ia], a1 = tileA[ia + threadsY], a2 = tileA[ia + 2 * threadsY], a3 = tileA[ia + 3 * threadsY];
                float b0 = tileB[ib], b1 = tileB[ib + threadsX], b2 = tileB[ib + 2 * threadsX], b3 = tileB[ib + 3 * threadsX];
                c00 = KernelMath.Fma(a0, b0, c00); c01 = KernelMath.Fma(a0, b1, c01); c02 = KernelMath.Fma(a0, b2, c02); c03 = KernelMath.Fma(a0, b3, c03);
                c10 = KernelMath.Fma(a1, b0, c10); c11 = KernelMath.Fma(a1, b1, c11); c12 = KernelMath.Fma(a1, b2, c12); c13 = KernelMath.Fma(a1, b3, c13);
                c20 = KernelMath.Fma(a2, b0, c20); c21 = KernelMath.Fma(a2, b1, c21); c22 = KernelMath.Fma(a2, b2, c22); c23 = KernelMath.Fma(a2, b3, c23);
                c30 = KernelMath.Fma(a3, b0, c30); c31 = KernelMath.Fma(a3, b1, c31); c32 = KernelMath.Fma(a3, b2, c32); c33 = KernelMath.Fma(a3, b3, c33);
            }
            Group.Barrier();
        }

        int i0 = row0 + ty, j0 = col0 + tx;
        StoreRow(c, s, i0, j0, threadsX, c00, c01, c02, c03);
        StoreRow(c, s, i0 + threadsY, j0, threadsX, c10, c11, c12, c13);
        StoreRow(c, s, i0 + 2 * threadsY, j0, threadsX, c20, c21, c22, c23);
        StoreRow(c, s, i0 + 3 * threadsY, j0, threadsX, c30, c31, c32, c33);
    }

    /// <summary>Row i of the block: columns j0, j0 + stride, ... that exist, scaled by alpha and added to C when accumulating.</summary>
    static void StoreRow(ArrayView<float> c, MatmulShape s, int i, int j0, int stride, float v0, float v1, float v2, float v3)
    {
        if (i >= s.M) return;
        long row = (long)i * s.N;
        Store(c, s, row, j0, v0);
        Store(c, s, row, j0 + stride, v1);
        Store(c, s, row, j0 + 2 * stride, v2);
        Store(c, s, row, j0 + 3 * stride, v3);
    }

    static void Store(ArrayView<float> c, MatmulShape s, long row, int j, float value)
    {
        if (j >= s.N) return;
        float result = s.Alpha * value;
        if (s.Accumulate != 0) result = c[row + j] + result;
        c[row + j] = result;
    }
}

using ILGPU;
using ILGPU.Runtime.Cuda;

namespace Palm.Gpu.Kernels;

// Matrix multiply on NVIDIA tensor cores: C = alpha · op(A) · op(B) [+ C], row-major, tf32 inputs with fp32
// accumulation, through inline PTX `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32` (CudaAsm; sm_80 and later).
// A group of 4 warps (2 × 2) owns a 64 × 64 block of C and walks K in tiles of 16: the group stages the tile of
// op(A) (64 × 16) and op(B) (16 × 64) in shared memory, rounded to tf32 (cvt.rna: 10 mantissa bits, ties away), then
// each warp multiplies its 32 × 32 quarter as 2 × 4 mma tiles of 16 × 8, two k-steps of 8 per tile, with the 32
// accumulators in registers. Fragment layouts (PTX ISA, m16n8k8 tf32), g = lane / 4, t = lane % 4:
//   a0 = A[g][t], a1 = A[g + 8][t], a2 = A[g][t + 4], a3 = A[g + 8][t + 4];  b0 = B[t][g], b1 = B[t + 4][g];
//   c0, c1 = C[g][2t + {0,1}], c2, c3 = C[g + 8][2t + {0,1}].
// Where CudaAsm is not supported (ILGPU's CPU accelerator, OpenCL) the same kernel takes the fallback: the same
// tiles and tf32 rounding, the block's products summed in k order into a shared 64 × 64 accumulator, so the staging,
// rounding, edges, transposes and epilogue are checked off the GPU; only the mma fragments need one.
// Shared padding (A rows 16 + 4, B rows 64 + 8) makes the fragment reads free of bank conflicts.
//
// Dimensions: M rows of C, N columns, K the contraction; op(A) (M,K) element (i,p) at a[i·ars + p·acs],
//             op(B) (K,N) element (p,j) at b[p·brs + j·bcs]; blocks ⌈M/64⌉ × ⌈N/64⌉.
//
// Matmul: a, b -> c (M,N) = alpha·op(A)·op(B) [+ c when accumulate], one group (128 threads on CUDA) per 64 × 64 block
public static class MatmulTensorCoreKernels
{
    public const int BlockM = 64, BlockN = 64, TileK = 16;
    /// <summary>Threads of a group on CUDA: 2 × 2 warps of 32.</summary>
    public const int CudaThreads = 128;
    const int APitch = TileK + 4, BPitch = BlockN + 8;

    /// <summary>Shared floats a group uses: the A and B tiles, plus the fallback's accumulator.</summary>
    public const int SharedFloats = BlockM * APitch + TileK * BPitch + BlockM * BlockN;

    /// <summary>Sizes and strides of one launch (by value).</summary>
    public struct Shape
    {
        public int M, N, K;
        public long ARowStride, AColStride, BRowStride, BColStride;
        public float Alpha;
        public int Accumulate;
        public readonly int BlocksN => (N + BlockN - 1) / BlockN;
        public readonly int Blocks => (M + BlockM - 1) / BlockM * BlocksN;
    }

    /// <summary>4 accumulators of one 16 × 8 mma tile held by one thread.</summary>
    public struct Fragment
    {
        public float C0, C1, C2, C3;
    }

    /// <summary>One group per 64 × 64 block of C (row-major block order); dynamic shared memory of <see cref="SharedFloats"/> floats.</summary>
    public static void Matmul(ArrayView<float> c, ArrayView<float> a, ArrayView<float> b, Shape s)
    {
        int lid = Group.IdxX, threads = Group.DimX;
        int block = Grid.IdxX, bm = block / s.BlocksN * BlockM, bn = block % s.BlocksN * BlockN;
        var shared = SharedMemory.GetDynamic<float>();
        var at = shared.SubView(0, BlockM * APitch);
        var bt = shared.SubView(BlockM * APitch, TileK * BPitch);
        var acc = shared.SubView(BlockM * APitch + TileK * BPitch, BlockM * BlockN);

        int warp = lid / 32, lane = lid % 32, g = lane / 4, t = lane % 4;
        int wm = warp / 2 * 32, wn = warp % 2 * 32;
        Fragment f00 = default, f01 = default, f02 = default, f03 = default, f10 = default, f11 = default, f12 = default, f13 = default;

        if (!CudaAsm.IsSupported)
            for (int e = lid; e < BlockM * BlockN; e += threads) acc[e] = 0f;

        for (int k0 = 0; k0 < s.K; k0 += TileK)
        {
            Group.Barrier();   // the previous tile is consumed
            for (int e = lid; e < BlockM * TileK; e += threads)
            {
                int i = e / TileK, p = e % TileK, gi = bm + i, gp = k0 + p;
                at[i * APitch + p] = gi < s.M && gp < s.K ? RoundTf32(a[gi * s.ARowStride + gp * s.AColStride]) : 0f;
            }
            for (int e = lid; e < TileK * BlockN; e += threads)
            {
                int p = e / BlockN, j = e % BlockN, gp = k0 + p, gj = bn + j;
                bt[p * BPitch + j] = gp < s.K && gj < s.N ? RoundTf32(b[gp * s.BRowStride + gj * s.BColStride]) : 0f;
            }
            Group.Barrier();
            if (CudaAsm.IsSupported)
            {
                for (int kk = 0; kk < TileK; kk += 8)
                {
                    int r0 = (wm + g) * APitch + kk + t, r1 = r0 + 16 * APitch;
                    uint a00 = Bits(at[r0]), a01 = Bits(at[r0 + 8 * APitch]), a02 = Bits(at[r0 + 4]), a03 = Bits(at[r0 + 8 * APitch + 4]);
                    uint a10 = Bits(at[r1]), a11 = Bits(at[r1 + 8 * APitch]), a12 = Bits(at[r1 + 4]), a13 = Bits(at[r1 + 8 * APitch + 4]);
                    int q0 = (kk + t) * BPitch + wn + g, q1 = q0 + 4 * BPitch;
                    uint b00 = Bits(bt[q0]), b01 = Bits(bt[q1]), b10 = Bits(bt[q0 + 8]), b11 = Bits(bt[q1 + 8]);
                    uint b20 = Bits(bt[q0 + 16]), b21 = Bits(bt[q1 + 16]), b30 = Bits(bt[q0 + 24]), b31 = Bits(bt[q1 + 24]);
                    Mma(ref f00, a00, a01, a02, a03, b00, b01); Mma(ref f01, a00, a01, a02, a03, b10, b11);
                    Mma(ref f02, a00, a01, a02, a03, b20, b21); Mma(ref f03, a00, a01, a02, a03, b30, b31);
                    Mma(ref f10, a10, a11, a12, a13, b00, b01); Mma(ref f11, a10, a11, a12, a13, b10, b11);
                    Mma(ref f12, a10, a11, a12, a13, b20, b21); Mma(ref f13, a10, a11, a12, a13, b30, b31);
                }
            }
            else
            {
                for (int e = lid; e < BlockM * BlockN; e += threads)
                {
                    int i = e / BlockN, j = e % BlockN;
                    float x = acc[e];
                    for (int p = 0; p < TileK; p++) x = KernelMath.Fma(at[i * APitch + p], bt[p * BPitch + j], x);
                    acc[e] = x;
                }
            }
        }

        if (CudaAsm.IsSupported)
        {
            Store(c, s, bm + wm + g, bn + wn + 2 * t, f00); Store(c, s, bm + wm + g, bn + wn + 8 + 2 * t, f01);
            Store(c, s, bm + wm + g, bn + wn + 16 + 2 * t, f02); Store(c, s, bm + wm + g, bn + wn + 24 + 2 * t, f03);
            Store(c, s, bm + wm + 16 + g, bn + wn + 2 * t, f10); Store(c, s, bm + wm + 16 + g, bn + wn + 8 + 2 * t, f11);
            Store(c, s, bm + wm + 16 + g, bn + wn + 16 + 2 * t, f12); Store(c, s, bm + wm + 16 + g, bn + wn + 24 + 2 * t, f13);
        }
        else
        {
            Group.Barrier();
            for (int e = lid; e < BlockM * BlockN; e += threads)
            {
                int i = bm + e / BlockN, j = bn + e % BlockN;
                if (i < s.M && j < s.N) StoreOne(c, s, i, j, acc[e]);
            }
        }
    }

    /// <summary>f += A(16×8) · B(8×8) for this thread's fragment: one warp-wide mma.sync (tf32 in, fp32 accumulate).</summary>
    static void Mma(ref Fragment f, uint a0, uint a1, uint a2, uint a3, uint b0, uint b1)
    {
        Ref<float> c0 = f.C0, c1 = f.C1, c2 = f.C2, c3 = f.C3;
        Input<uint> x0 = a0, x1 = a1, x2 = a2, x3 = a3, y0 = b0, y1 = b1;
        CudaAsm.EmitRef("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};",
                        ref c0, ref c1, ref c2, ref c3, ref x0, ref x1, ref x2, ref x3, ref y0, ref y1);
        f.C0 = c0.Value; f.C1 = c1.Value; f.C2 = c2.Value; f.C3 = c3.Value;
    }

    /// <summary>The fragment's c0, c1 at (row, col..col+1) and c2, c3 eight rows below, inside C only.</summary>
    static void Store(ArrayView<float> c, in Shape s, int row, int col, in Fragment f)
    {
        if (row < s.M)
        {
            if (col < s.N) StoreOne(c, s, row, col, f.C0);
            if (col + 1 < s.N) StoreOne(c, s, row, col + 1, f.C1);
        }
        if (row + 8 < s.M)
        {
            if (col < s.N) StoreOne(c, s, row + 8, col, f.C2);
            if (col + 1 < s.N) StoreOne(c, s, row + 8, col + 1, f.C3);
        }
    }

    static void StoreOne(ArrayView<float> c, in Shape s, int row, int col, float x)
    {
        long o = (long)row * s.N + col;
        c[o] = s.Accumulate != 0 ? KernelMath.Fma(s.Alpha, x, c[o]) : s.Alpha * x;
    }

    /// <summary>x rounded to tf32 (10 mantissa bits, to nearest, ties away from zero), kept as a float: cvt.rna.tf32.f32 on CUDA.</summary>
    public static float RoundTf32(float x)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("cvt.rna.tf32.f32 %0, %1;", out uint r, x);
            return Interop.IntAsFloat(r);
        }
        uint bits = Interop.FloatAsInt(x);
        if ((bits & 0x7f800000) == 0x7f800000) return x;   // inf and NaN stay
        return Interop.IntAsFloat((bits + 0x1000u) & 0xffffe000u);
    }

    static uint Bits(float x) => Interop.FloatAsInt(x);
}

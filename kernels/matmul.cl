// Matrix multiply: C = alpha · op(A) · op(B) [+ C], row-major, fp32 with fp32 accumulation.
// Register blocking: each work-item owns an MWI × NWI block of C (NWI = VWN·NVEC) held in MWI·NVEC
// vector registers. Per step p of the K loop it loads NVEC vectors of row p of B and broadcasts MWI
// values of column p of A, so every value loaded feeds several fused multiply-adds.
// op(A) is first packed into row panels (pack_a): panel t holds rows t·MWI.. as (K, MWI), zero-padded
// past M, so the inner loop reads A contiguously whatever its layout and needs no row guard.
// op(B) must be (K,N) row-major for the vector loads; the host transposes B into scratch when transB.
// The K sum runs p = 0..K-1 in order with fma in both the full-tile path and the guarded scalar
// path of the right edge, so an element of C has the same bits whichever path computes it.
//
// Dimensions: M rows of C, N columns of C, K the contraction length; tiles_m = ⌈M / MWI⌉.
//
// pack_a:    a (M,K), or (K,M) read through strides -> packed (tiles_m, K, MWI)
// matmul:    packed A (tiles_m, K, MWI), b (K,N) -> c (M,N) = alpha·A·B [+ c when accumulate]
// transpose: in (R,C) -> out (C,R)

// ---- tuning knobs (override with -D) -----------------------------------------------------------
#ifndef MWI
#define MWI 8          // rows of C per work-item
#endif
#ifndef VWN
#define VWN 16         // vector width along N: 1, 2, 4, 8 or 16
#endif
#ifndef NVEC
#define NVEC 2         // vectors along N per work-item; a work-item covers VWN·NVEC columns
#endif
#ifndef TRANSPOSE_TILE
#define TRANSPOSE_TILE 16
#endif

#define NWI (VWN * NVEC)

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#if VWN == 1
  #define floatN float
  #define LOADN(off, p) (p)[off]
  #define STOREN(v, off, p) ((p)[off] = (v))
#else
  #define floatN CAT(float, VWN)
  #define LOADN(off, p) CAT(vload, VWN)(0, (p) + (off))
  #define STOREN(v, off, p) CAT(vstore, VWN)((v), 0, (p) + (off))
#endif

__kernel void pack_a(__global float* packed, __global const float* a, const int M, const int K,
                     const int a_row_stride, const int a_col_stride)
{
    const int p = get_global_id(0), tile = get_global_id(1);
    if (p >= K) return;
    __global float* out = packed + ((long)tile * K + p) * MWI;
    #pragma unroll
    for (int r = 0; r < MWI; r++) {
        const int i = tile * MWI + r;
        out[r] = i < M ? a[(long)i * a_row_stride + (long)p * a_col_stride] : 0.0f;
    }
}

__kernel void matmul(__global float* c, __global const float* packed_a, __global const float* b,
                     const int M, const int N, const int K, const float alpha, const int accumulate)
{
    const int tile_m = get_global_id(0), j0 = get_global_id(1) * NWI;
    const int i0 = tile_m * MWI;
    if (i0 >= M || j0 >= N) return;
    const __global float* ap = packed_a + (long)tile_m * K * MWI;

    if (j0 + NWI <= N) {
        floatN acc[MWI][NVEC];
        #pragma unroll
        for (int r = 0; r < MWI; r++)
            #pragma unroll
            for (int v = 0; v < NVEC; v++) acc[r][v] = (floatN)(0.0f);

        const __global float* bp = b + j0;
        for (int p = 0; p < K; p++) {
            floatN bv[NVEC];
            #pragma unroll
            for (int v = 0; v < NVEC; v++) bv[v] = LOADN(v * VWN, bp);
            #pragma unroll
            for (int r = 0; r < MWI; r++) {
                const floatN av = (floatN)(ap[r]);
                #pragma unroll
                for (int v = 0; v < NVEC; v++) acc[r][v] = fma(av, bv[v], acc[r][v]);
            }
            ap += MWI;
            bp += N;
        }

        #pragma unroll
        for (int r = 0; r < MWI; r++) {
            if (i0 + r < M) {
                __global float* crow = c + (long)(i0 + r) * N + j0;
                #pragma unroll
                for (int v = 0; v < NVEC; v++) {
                    floatN out = alpha * acc[r][v];
                    if (accumulate) out = LOADN(v * VWN, crow) + out;
                    STOREN(out, v * VWN, crow);
                }
            }
        }
    } else {
        // Right edge: fewer than NWI columns remain. Same per-element arithmetic, scalar and guarded.
        const int cols = N - j0;
        for (int r = 0; r < MWI; r++) {
            if (i0 + r >= M) break;
            __global float* crow = c + (long)(i0 + r) * N + j0;
            for (int jj = 0; jj < cols; jj++) {
                float acc = 0.0f;
                for (int p = 0; p < K; p++) acc = fma(ap[(long)p * MWI + r], b[(long)p * N + j0 + jj], acc);
                float out = alpha * acc;
                if (accumulate) out = crow[jj] + out;
                crow[jj] = out;
            }
        }
    }
}

// Tiled through local memory so both the reads and the writes walk rows.
__kernel void transpose(__global float* out, __global const float* in, const int R, const int C)
{
    __local float tile[TRANSPOSE_TILE][TRANSPOSE_TILE + 1];
    const int lx = get_local_id(0), ly = get_local_id(1);
    const int c0 = get_group_id(0) * TRANSPOSE_TILE, r0 = get_group_id(1) * TRANSPOSE_TILE;
    if (r0 + ly < R && c0 + lx < C) tile[ly][lx] = in[(long)(r0 + ly) * C + c0 + lx];
    barrier(CLK_LOCAL_MEM_FENCE);
    if (c0 + ly < C && r0 + lx < R) out[(long)(c0 + ly) * R + r0 + lx] = tile[lx][ly];
}

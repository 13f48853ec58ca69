// Matrix multiply: C = alpha · op(A) · op(B) [+ C], row-major, fp32 with fp32 accumulation.
// Register blocking: each work-item owns an MWI × NWI block of C (NWI = VWN·NVEC) held in MWI·NVEC
// vector registers. Per step p of the K loop it loads NVEC vectors of op(B) and broadcasts MWI
// values of op(A), so every value loaded feeds several fused multiply-adds.
// Both operands are first packed into panels, whatever their layout (plain or transposed, read
// through strides): A into row panels (tiles_m, K, MWI) and B into column panels (tiles_n, K, NWI),
// zero-padded past M and N. The inner loop then streams two contiguous panels (no power-of-two
// strides that alias in the caches, no edge cases); only the final store checks the edges.
// The K sum runs p = 0..K-1 in order with fma, so every element of C is computed the same way.
//
// Dimensions: M rows of C, N columns of C, K the contraction length;
//             tiles_m = ⌈M / MWI⌉, tiles_n = ⌈N / NWI⌉.
//
// pack_a: op(A) (M,K), element (i,p) at a[i·row_stride + p·col_stride] -> packed (tiles_m, K, MWI)
// pack_b: op(B) (K,N), element (p,j) at b[p·row_stride + j·col_stride] -> packed (tiles_n, K, NWI)
// matmul: packed A, packed B -> c (M,N) = alpha·op(A)·op(B) [+ c when accumulate]

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
                     const int row_stride, const int col_stride)
{
    const int p = get_global_id(0), tile = get_global_id(1);
    if (p >= K) return;
    __global float* out = packed + ((long)tile * K + p) * MWI;
    #pragma unroll
    for (int r = 0; r < MWI; r++) {
        const int i = tile * MWI + r;
        out[r] = i < M ? a[(long)i * row_stride + (long)p * col_stride] : 0.0f;
    }
}

__kernel void pack_b(__global float* packed, __global const float* b, const int K, const int N,
                     const int row_stride, const int col_stride)
{
    const int p = get_global_id(0), tile = get_global_id(1);
    if (p >= K) return;
    __global float* out = packed + ((long)tile * K + p) * NWI;
    #pragma unroll
    for (int c = 0; c < NWI; c++) {
        const int j = tile * NWI + c;
        out[c] = j < N ? b[(long)p * row_stride + (long)j * col_stride] : 0.0f;
    }
}

__kernel void matmul(__global float* c, __global const float* packed_a, __global const float* packed_b,
                     const int M, const int N, const int K, const float alpha, const int accumulate)
{
    const int tile_m = get_global_id(0), tile_n = get_global_id(1);
    const int i0 = tile_m * MWI, j0 = tile_n * NWI;
    if (i0 >= M || j0 >= N) return;
    const __global float* ap = packed_a + (long)tile_m * K * MWI;
    const __global float* bp = packed_b + (long)tile_n * K * NWI;

    floatN acc[MWI][NVEC];
    #pragma unroll
    for (int r = 0; r < MWI; r++)
        #pragma unroll
        for (int v = 0; v < NVEC; v++) acc[r][v] = (floatN)(0.0f);

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
        bp += NWI;
    }

    const bool full_width = j0 + NWI <= N;
    #pragma unroll
    for (int r = 0; r < MWI; r++) {
        if (i0 + r < M) {
            __global float* crow = c + (long)(i0 + r) * N + j0;
            if (full_width) {
                #pragma unroll
                for (int v = 0; v < NVEC; v++) {
                    floatN out = alpha * acc[r][v];
                    if (accumulate) out = LOADN(v * VWN, crow) + out;
                    STOREN(out, v * VWN, crow);
                }
            } else {
                // Right edge: spill the block and store only the columns that exist.
                float row[NWI];
                #pragma unroll
                for (int v = 0; v < NVEC; v++) STOREN(acc[r][v], v * VWN, row);
                for (int jj = 0; jj < N - j0; jj++) {
                    float out = alpha * row[jj];
                    if (accumulate) out = crow[jj] + out;
                    crow[jj] = out;
                }
            }
        }
    }
}

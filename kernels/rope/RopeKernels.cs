// Rotary position embedding, rotate-half form, base 10000, over all K dims of every head (the ILGPU twin of
// rope.cl). For i < K/2 the pair (x_i, x_{i+K/2}) is rotated by t·θ_i, θ_i = 10000^(−2i/K):
//   out_i = x_i·cos − x_{i+K/2}·sin,   out_{i+K/2} = x_{i+K/2}·cos + x_i·sin.
// The backward is the inverse rotation (sign −1). cos and sin come from a table the host builds once per (T, K) in
// double, the CPU backend's table and bits (a float angle would lose ~1e-4 at T = 2048; the host also spares the
// device a double-precision sin/cos). Each thread owns one pair, so out may alias inp.
//
// Dimensions: B batch, T time, Hs heads of this tensor (H queries, G keys), K head dim (even); table (T, K/2, 2).
//
// Rotate:   inp (B,T,Hs,K), table (T,K/2,2) -> out (B,T,Hs,K)     (position of row (b,t,h) = t)
// RotateAt: inp (B,Hs,K), table (B,K/2,2) -> out (B,Hs,K)         (one token per sequence: row b's own angles)

using ILGPU;

namespace Palm.Gpu.Kernels;

public static class RopeKernels
{
    /// <summary>Rows (b,t,h) take table row t (positionPeriod = T, headsPerPosition = Hs); RotateAt takes row b (period = B).</summary>
    public static void Rotate(ArrayView<float> output, ArrayView<float> input, ArrayView<float> table,
                              long pairs, int heads, int headDim, int positions, float sign)
    {
        int half = headDim / 2;
        long stride = (long)Grid.DimX * Group.DimX;
        for (long p = Grid.GlobalIndex.X; p < pairs; p += stride)
        {
            long row = p / half;                         // (b·T + t)·Hs + h
            int i = (int)(p - row * half);
            long position = (row / heads) % positions;
            long entry = 2 * (position * half + i);
            float c = table[entry], s = sign * table[entry + 1];
            long at = row * headDim;
            float x1 = input[at + i], x2 = input[at + i + half];
            output[at + i] = x1 * c - x2 * s;
            output[at + i + half] = x2 * c + x1 * s;
        }
    }
}

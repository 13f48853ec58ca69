// Layer norm with a scale and no bias (PaLM; the ILGPU twin of layernorm.cl): out = (x − mean)·rstd·w,
// rstd = 1/√(var + 1e-5), var the biased variance over D (two passes, no cancellation when |mean| ≫ std).
// Forward keeps mean and rstd per row for the backward. One group of RG threads per row: each thread sums the
// strided elements lid, lid + RG, ... and KernelMath.GroupSum combines them by a fixed tree, so a row's sums have
// the same bits on every run. dweight is a column sum over all N rows: rows are cut into fixed chunks of
// RowsPerChunk, each chunk summed in row order into a partial, then the partials in chunk order.
// dinp = rstd·(g − mean(g) − xhat·mean(g·xhat)), g = dout·w: every sum of a row is done (barriers) before any dinp
// element is written, so dinp may alias dout.
//
// Dimensions: N = B·T rows, D model width; chunks = ⌈N / RowsPerChunk⌉.
//
// Forward:         inp (N,D), weight (D) -> out (N,D), mean (N), rstd (N)
// BackwardInput:   dout (N,D), inp, weight, mean, rstd -> dinp (N,D) (= or += when accumulate)
// DWeightPartial:  dout (N,D), inp, mean, rstd -> partial (chunks,D)
// DWeightReduce:   partial (chunks,D) -> dweight (D) +=

using ILGPU;

namespace Palm.Gpu.Kernels;

public static class LayerNormKernels
{
    public const int RowsPerChunk = 64;
    const float Epsilon = 1e-5f;

    public static void Forward(ArrayView<float> output, ArrayView<float> mean, ArrayView<float> rstd,
                               ArrayView<float> input, ArrayView<float> weight, int n, int d)
    {
        var scratch = SharedMemory.GetDynamic<float>();
        int row = Grid.IdxX, lid = Group.IdxX, group = Group.DimX;
        long at = (long)row * d;
        float s = 0f;
        for (int i = lid; i < d; i += group) s += input[at + i];
        float mu = KernelMath.GroupSum(scratch, s) / d;
        float v = 0f;
        for (int i = lid; i < d; i += group)
        {
            float diff = input[at + i] - mu;
            v += diff * diff;
        }
        float variance = KernelMath.GroupSum(scratch, v) / d;
        float rs = 1f / MathF.Sqrt(variance + Epsilon);
        for (int i = lid; i < d; i += group) output[at + i] = (input[at + i] - mu) * rs * weight[i];
        if (lid == 0)
        {
            mean[row] = mu;
            rstd[row] = rs;
        }
    }

    public static void BackwardInput(ArrayView<float> dinput, ArrayView<float> dout, ArrayView<float> input, ArrayView<float> weight,
                                     ArrayView<float> mean, ArrayView<float> rstd, int n, int d, int accumulate)
    {
        var scratch = SharedMemory.GetDynamic<float>();
        int row = Grid.IdxX, lid = Group.IdxX, group = Group.DimX;
        long at = (long)row * d;
        float mu = mean[row], rs = rstd[row];
        float sumG = 0f, sumGx = 0f;
        for (int i = lid; i < d; i += group)
        {
            float g = dout[at + i] * weight[i];
            sumG += g;
            sumGx += g * ((input[at + i] - mu) * rs);
        }
        float meanG = KernelMath.GroupSum(scratch, sumG) / d;
        float meanGx = KernelMath.GroupSum(scratch, sumGx) / d;
        for (int i = lid; i < d; i += group)
        {
            float g = dout[at + i] * weight[i];
            float value = rs * (g - meanG - ((input[at + i] - mu) * rs) * meanGx);
            dinput[at + i] = accumulate != 0 ? dinput[at + i] + value : value;
        }
    }

    public static void DWeightPartial(ArrayView<float> partial, ArrayView<float> dout, ArrayView<float> input,
                                      ArrayView<float> mean, ArrayView<float> rstd, int n, int d)
    {
        long chunks = (n + RowsPerChunk - 1) / RowsPerChunk, total = chunks * d, stride = (long)Grid.DimX * Group.DimX;
        for (long item = Grid.GlobalIndex.X; item < total; item += stride)
        {
            long chunk = item / d;
            int col = (int)(item - chunk * d);
            int r0 = (int)chunk * RowsPerChunk, r1 = r0 + RowsPerChunk < n ? r0 + RowsPerChunk : n;
            float s = 0f;
            for (int r = r0; r < r1; r++)
            {
                long at = (long)r * d + col;
                s += dout[at] * ((input[at] - mean[r]) * rstd[r]);
            }
            partial[item] = s;
        }
    }

    public static void DWeightReduce(ArrayView<float> dweight, ArrayView<float> partial, int d, int chunks)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long col = Grid.GlobalIndex.X; col < d; col += stride)
        {
            float s = 0f;
            for (int c = 0; c < chunks; c++) s += partial[(long)c * d + col];
            dweight[col] = dweight[col] + s;
        }
    }
}

using System.Buffers;
using System.Runtime.Intrinsics;

namespace Palm.Gpu.Backends.Cpu;

// Layer norm with a learned scale and no bias (PaLM uses no biases), on the CPU.
// Dimension legend: B batch, T time, N = B·T rows, D model width.
//
//   Forward   inp (N,D), weight (D) -> out (N,D) = (inp − mean)·rstd·weight, mean (N), rstd (N) = 1/√(var + ε)
//   Backward  dout (N,D), inp, weight, mean, rstd -> dinp (N,D) (= or += when accumulate), dweight (D) +=
//
//   With x̂ = (inp − mean)·rstd and g = dout·weight:
//     dinp    = rstd · (g − mean(g) − x̂ · mean(g·x̂))
//     dweight = Σ_rows dout · x̂
//
// The variance is computed around the mean (two passes over the row) so a large common offset costs no
// precision. Row sums use CpuSimd's 16 logical lanes, so AVX-512, AVX2 and scalar give the same bits.
// dweight is deterministic: rows are cut into fixed chunks of RowsPerChunk, each chunk sums
// its rows in order into its own partial vector, and the partials are added to dweight in chunk order.
// Within a row every reduction finishes before dinp is written, so dinp may alias dout.
internal static unsafe class CpuLayerNorm
{
    public const float Epsilon = 1e-5f;
    const int RowsPerChunk = 32;
    const int ColumnBlock = 256;

    public static void Forward(int threads, CpuView<float> output, CpuView<float> mean, CpuView<float> rstd, CpuView<float> input, CpuView<float> weight, int n, int d)
    {
        CpuParallel.For(threads, n, row =>
        {
            long o = (long)row * d;
            fixed (float* px = input, pw = weight, po = output)
            {
                float* x = px + o;
                float mu = Sum(x, d) / d;
                float variance = SumSquaredDeviation(x, mu, d) / d;
                float r = 1f / MathF.Sqrt(variance + Epsilon);
                Normalize(po + o, x, pw, mu, r, d);
                mean[row] = mu;
                rstd[row] = r;
            }
        });
    }

    public static void Backward(int threads, CpuView<float> dinput, CpuView<float> dweight, CpuView<float> dout, CpuView<float> input, CpuView<float> weight,
                                CpuView<float> mean, CpuView<float> rstd, int n, int d, bool accumulate)
    {
        if (n <= 0) return;
        int chunks = (n + RowsPerChunk - 1) / RowsPerChunk;
        float[] partial = ArrayPool<float>.Shared.Rent(chunks * d);
        try
        {
            CpuParallel.For(threads, chunks, chunk =>
            {
                int r0 = chunk * RowsPerChunk, r1 = Math.Min(n, r0 + RowsPerChunk);
                fixed (float* pdi = dinput, pdo = dout, px = input, pw = weight, pp = partial)
                {
                    float* dw = pp + (long)chunk * d;
                    new Span<float>(dw, d).Clear();
                    for (int row = r0; row < r1; row++)
                    {
                        long o = (long)row * d;
                        BackwardRow(pdi + o, dw, pdo + o, px + o, pw, mean[row], rstd[row], d, accumulate);
                    }
                }
            });
            // dweight[j] += Σ_chunk partial[chunk][j], chunks in index order; columns split over workers.
            int blocks = (d + ColumnBlock - 1) / ColumnBlock;
            CpuParallel.For(threads, blocks, block =>
            {
                int j0 = block * ColumnBlock, width = Math.Min(ColumnBlock, d - j0);
                fixed (float* pdw = dweight, pp = partial)
                {
                    float* acc = stackalloc float[ColumnBlock];
                    new Span<float>(acc, width).Clear();
                    for (int c = 0; c < chunks; c++) CpuResidual.AddRange(acc, acc, pp + (long)c * d + j0, width);
                    CpuResidual.AddRange(pdw + j0, pdw + j0, acc, width);
                }
            });
        }
        finally
        {
            ArrayPool<float>.Shared.Return(partial);
        }
    }

    // One row: pass 1 forms the two row means and this row's dweight contribution, pass 2 writes dinp.
    // The row sums use CpuSimd's 16 lanes, so every vector width adds in the same order.
    static void BackwardRow(float* dinp, float* dw, float* dout, float* x, float* w, float mu, float r, int d, bool accumulate)
    {
        int j = 0;
        float sumG, sumGX;
        if (CpuSimd.Use512)
        {
            var vmu = Vector512.Create(mu); var vr = Vector512.Create(r);
            var accG = Vector512<float>.Zero; var accGX = Vector512<float>.Zero;
            for (; j <= d - 16; j += 16)
            {
                var xhat = (Vector512.Load(x + j) - vmu) * vr;
                var vd = Vector512.Load(dout + j);
                var g = vd * Vector512.Load(w + j);
                accG += g;
                accGX += g * xhat;
                Vector512.Store(Vector512.Load(dw + j) + vd * xhat, dw + j);
            }
            sumG = CpuSimd.Fold(accG); sumGX = CpuSimd.Fold(accGX);
        }
        else if (CpuSimd.Use256)
        {
            var vmu = Vector256.Create(mu); var vr = Vector256.Create(r);
            Vector256<float> accG0 = default, accG1 = default, accGX0 = default, accGX1 = default;
            for (; j <= d - 16; j += 16)
            {
                var xhat = (Vector256.Load(x + j) - vmu) * vr;
                var vd = Vector256.Load(dout + j);
                var g = vd * Vector256.Load(w + j);
                accG0 += g;
                accGX0 += g * xhat;
                Vector256.Store(Vector256.Load(dw + j) + vd * xhat, dw + j);
                xhat = (Vector256.Load(x + j + 8) - vmu) * vr;
                vd = Vector256.Load(dout + j + 8);
                g = vd * Vector256.Load(w + j + 8);
                accG1 += g;
                accGX1 += g * xhat;
                Vector256.Store(Vector256.Load(dw + j + 8) + vd * xhat, dw + j + 8);
            }
            sumG = CpuSimd.Fold(accG0, accG1); sumGX = CpuSimd.Fold(accGX0, accGX1);
        }
        else
        {
            CpuSimd.Lanes16 lg = default, lgx = default;
            for (; j <= d - 16; j += 16)
                for (int l = 0; l < 16; l++)
                {
                    float xhat = (x[j + l] - mu) * r, g = dout[j + l] * w[j + l];
                    lg[l] += g;
                    lgx[l] += g * xhat;
                    dw[j + l] += dout[j + l] * xhat;
                }
            sumG = CpuSimd.Fold16(lg); sumGX = CpuSimd.Fold16(lgx);
        }
        for (; j < d; j++)
        {
            float xhat = (x[j] - mu) * r, g = dout[j] * w[j];
            sumG += g;
            sumGX += g * xhat;
            dw[j] += dout[j] * xhat;
        }
        float meanG = sumG / d, meanGX = sumGX / d;

        j = 0;
        if (CpuSimd.Use512)
        {
            var vmu = Vector512.Create(mu); var vr = Vector512.Create(r);
            var vmg = Vector512.Create(meanG); var vmgx = Vector512.Create(meanGX);
            for (; j <= d - Vector512<float>.Count; j += Vector512<float>.Count)
            {
                var xhat = (Vector512.Load(x + j) - vmu) * vr;
                var g = Vector512.Load(dout + j) * Vector512.Load(w + j);
                var value = vr * (g - vmg - xhat * vmgx);
                if (accumulate) value += Vector512.Load(dinp + j);
                Vector512.Store(value, dinp + j);
            }
        }
        else if (CpuSimd.Use256)
        {
            var vmu = Vector256.Create(mu); var vr = Vector256.Create(r);
            var vmg = Vector256.Create(meanG); var vmgx = Vector256.Create(meanGX);
            for (; j <= d - Vector256<float>.Count; j += Vector256<float>.Count)
            {
                var xhat = (Vector256.Load(x + j) - vmu) * vr;
                var g = Vector256.Load(dout + j) * Vector256.Load(w + j);
                var value = vr * (g - vmg - xhat * vmgx);
                if (accumulate) value += Vector256.Load(dinp + j);
                Vector256.Store(value, dinp + j);
            }
        }
        for (; j < d; j++)
        {
            float xhat = (x[j] - mu) * r, g = dout[j] * w[j];
            float value = r * (g - meanG - xhat * meanGX);
            dinp[j] = accumulate ? dinp[j] + value : value;
        }
    }

    static float Sum(float* x, int d)
    {
        int j = 0;
        float s;
        if (CpuSimd.Use512)
        {
            var acc = Vector512<float>.Zero;
            for (; j <= d - 16; j += 16) acc += Vector512.Load(x + j);
            s = CpuSimd.Fold(acc);
        }
        else if (CpuSimd.Use256)
        {
            Vector256<float> acc0 = default, acc1 = default;
            for (; j <= d - 16; j += 16) { acc0 += Vector256.Load(x + j); acc1 += Vector256.Load(x + j + 8); }
            s = CpuSimd.Fold(acc0, acc1);
        }
        else
        {
            var lanes = new CpuSimd.Lanes16();
            for (; j <= d - 16; j += 16) for (int l = 0; l < 16; l++) lanes[l] += x[j + l];
            s = CpuSimd.Fold16(lanes);
        }
        for (; j < d; j++) s += x[j];
        return s;
    }

    static float SumSquaredDeviation(float* x, float mu, int d)
    {
        int j = 0;
        float s;
        if (CpuSimd.Use512)
        {
            var vmu = Vector512.Create(mu);
            var acc = Vector512<float>.Zero;
            for (; j <= d - 16; j += 16) { var c = Vector512.Load(x + j) - vmu; acc += c * c; }
            s = CpuSimd.Fold(acc);
        }
        else if (CpuSimd.Use256)
        {
            var vmu = Vector256.Create(mu);
            Vector256<float> acc0 = default, acc1 = default;
            for (; j <= d - 16; j += 16)
            {
                var c0 = Vector256.Load(x + j) - vmu; acc0 += c0 * c0;
                var c1 = Vector256.Load(x + j + 8) - vmu; acc1 += c1 * c1;
            }
            s = CpuSimd.Fold(acc0, acc1);
        }
        else
        {
            var lanes = new CpuSimd.Lanes16();
            for (; j <= d - 16; j += 16) for (int l = 0; l < 16; l++) { float c = x[j + l] - mu; lanes[l] += c * c; }
            s = CpuSimd.Fold16(lanes);
        }
        for (; j < d; j++) { float c = x[j] - mu; s += c * c; }
        return s;
    }

    static void Normalize(float* o, float* x, float* w, float mu, float r, int d)
    {
        int j = 0;
        if (CpuSimd.Use512)
        {
            var vmu = Vector512.Create(mu); var vr = Vector512.Create(r);
            for (; j <= d - Vector512<float>.Count; j += Vector512<float>.Count)
                Vector512.Store((Vector512.Load(x + j) - vmu) * vr * Vector512.Load(w + j), o + j);
        }
        else if (CpuSimd.Use256)
        {
            var vmu = Vector256.Create(mu); var vr = Vector256.Create(r);
            for (; j <= d - Vector256<float>.Count; j += Vector256<float>.Count)
                Vector256.Store((Vector256.Load(x + j) - vmu) * vr * Vector256.Load(w + j), o + j);
        }
        for (; j < d; j++) o[j] = (x[j] - mu) * r * w[j];
    }
}

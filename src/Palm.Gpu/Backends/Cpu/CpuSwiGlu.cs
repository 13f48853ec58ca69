using System.Runtime.Intrinsics;

namespace Palm.Gpu.Backends.Cpu;

// SwiGLU activation on the CPU (PaLM's MLP: down(swish(x·Wgate) ⊙ (x·Wup))).
// Dimension legend: B batch, T time, N = B·T rows, F MLP hidden width; n = N·F.
//
//   Forward   gate (N,F), up (N,F) -> out (N,F) = gate·σ(gate) · up
//   Backward  dout (N,F), gate, up -> dgate (N,F) = dout·up·σ(gate)·(1 + gate·(1 − σ(gate))),  dup (N,F) = dout·gate·σ(gate)   (both =)
//
// σ(x) is evaluated from e = exp(−|x|) ∈ [0,1] (CpuSimd.Exp): 1/(1+e) for x ≥ 0, e/(1+e) otherwise. exp never
// overflows, so no inf/NaN for any finite gate, and σ keeps its relative accuracy down to x = −87 (below, where
// σ < 2⁻¹²⁵, it is 0).
// Element-wise: each vector is fully loaded before it is stored, so outputs may alias inputs.
internal static unsafe class CpuSwiGlu
{
    const long Chunk = 1 << 15;

    public static void Forward(int threads, CpuView<float> output, CpuView<float> gate, CpuView<float> up, long count)
        => CpuParallel.ForChunks(threads, count, Chunk, (start, end) =>
        {
            fixed (float* po = output, pg = gate, pu = up) ForwardRange(po + start, pg + start, pu + start, end - start);
        });

    public static void Backward(int threads, CpuView<float> dgate, CpuView<float> dup, CpuView<float> dout, CpuView<float> gate, CpuView<float> up, long count)
        => CpuParallel.ForChunks(threads, count, Chunk, (start, end) =>
        {
            fixed (float* pdg = dgate, pdu = dup, pdo = dout, pg = gate, pu = up)
                BackwardRange(pdg + start, pdu + start, pdo + start, pg + start, pu + start, end - start);
        });

    static void ForwardRange(float* o, float* g, float* u, long n)
    {
        long i = 0;
        if (CpuSimd.Use512)
            for (; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
            {
                var vg = Vector512.Load(g + i);
                Vector512.Store(vg * Sigmoid(vg) * Vector512.Load(u + i), o + i);
            }
        else if (CpuSimd.Use256)
            for (; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
            {
                var vg = Vector256.Load(g + i);
                Vector256.Store(vg * Sigmoid(vg) * Vector256.Load(u + i), o + i);
            }
        for (; i < n; i++) o[i] = g[i] * Sigmoid(g[i]) * u[i];
    }

    static void BackwardRange(float* dg, float* du, float* dout, float* g, float* u, long n)
    {
        long i = 0;
        if (CpuSimd.Use512)
        {
            var one = Vector512<float>.One;
            for (; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
            {
                var vd = Vector512.Load(dout + i);
                var vg = Vector512.Load(g + i);
                var vu = Vector512.Load(u + i);
                var s = Sigmoid(vg);
                Vector512.Store(vd * vu * s * (one + vg * (one - s)), dg + i);
                Vector512.Store(vd * vg * s, du + i);
            }
        }
        else if (CpuSimd.Use256)
        {
            var one = Vector256<float>.One;
            for (; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
            {
                var vd = Vector256.Load(dout + i);
                var vg = Vector256.Load(g + i);
                var vu = Vector256.Load(u + i);
                var s = Sigmoid(vg);
                Vector256.Store(vd * vu * s * (one + vg * (one - s)), dg + i);
                Vector256.Store(vd * vg * s, du + i);
            }
        }
        for (; i < n; i++)
        {
            float d = dout[i], gv = g[i], uv = u[i], s = Sigmoid(gv);
            dg[i] = d * uv * s * (1f + gv * (1f - s));
            du[i] = d * gv * s;
        }
    }

    static float Sigmoid(float x)
    {
        float e = CpuSimd.Exp(-MathF.Abs(x));   // the vector lanes' exp, so tails match them
        float r = 1f / (1f + e);
        return x >= 0 ? r : e * r;
    }

    static Vector512<float> Sigmoid(Vector512<float> x)
    {
        var e = CpuSimd.Exp(-Vector512.Abs(x));
        var r = Vector512<float>.One / (Vector512<float>.One + e);
        return Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(x, Vector512<float>.Zero), r, e * r);
    }

    static Vector256<float> Sigmoid(Vector256<float> x)
    {
        var e = CpuSimd.Exp(-Vector256.Abs(x));
        var r = Vector256<float>.One / (Vector256<float>.One + e);
        return Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(x, Vector256<float>.Zero), r, e * r);
    }
}

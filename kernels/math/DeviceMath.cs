using ILGPU;

namespace Palm.Gpu.Kernels;

// exp and log for ILGPU kernels, written out in arithmetic (Cephes' expf/logf: range reduction by the exponent,
// a minimax polynomial, about 1 ulp), so they compile the same on every ILGPU backend without an intrinsic
// library: ILGPU 1.5.3 has no PTX or OpenCL implementation of MathF.Exp/MathF.Log of its own (they need
// ILGPU.Algorithms, whose PTX exp is ex2.approx), and one code path with explicit fused multiply-adds gives the
// same bits on the CPU accelerator and on a GPU.
//
// Exp: x -> eˣ (0 below −104, +∞ above 88.8, NaN for NaN)
// Log: x -> ln x (−∞ at 0, NaN below 0 or for NaN, +∞ at +∞)
public static class DeviceMath
{
    const float Log2E = 1.44269504088896341f;
    const float Ln2Hi = 0.693359375f, Ln2Lo = -2.12194440e-4f;   // ln 2 = Ln2Hi + Ln2Lo, Ln2Hi exact in 9 bits

    /// <summary>eˣ: x = n·ln2 + r with |r| ≤ ln2/2, e^r by a degree-7 polynomial, times 2ⁿ in two exact steps.</summary>
    public static float Exp(float x)
    {
        if (float.IsNaN(x)) return x;
        if (x > 88.8f) return float.PositiveInfinity;
        if (x < -104f) return 0f;
        float n = XFloor(KernelMath.Fma(x, Log2E, 0.5f));
        float r = KernelMath.Fma(n, -Ln2Hi, x);
        r = KernelMath.Fma(n, -Ln2Lo, r);
        float p = 1.9875691500e-4f;
        p = KernelMath.Fma(p, r, 1.3981999507e-3f);
        p = KernelMath.Fma(p, r, 8.3334519073e-3f);
        p = KernelMath.Fma(p, r, 4.1665795894e-2f);
        p = KernelMath.Fma(p, r, 1.6666665459e-1f);
        p = KernelMath.Fma(p, r, 5.0000001201e-1f);
        p = KernelMath.Fma(p, r * r, r) + 1f;
        int e = (int)n, e1 = e / 2, e2 = e - e1;   // 2ⁿ = 2^e1 · 2^e2, each a normal float for n in [−151, 128]
        return p * Pow2(e1) * Pow2(e2);
    }

    /// <summary>ln x: x = m·2ᵉ with m in [√½, √2), ln(m) by a degree-9 polynomial in m − 1, plus e·ln2.</summary>
    public static float Log(float x)
    {
        if (float.IsNaN(x) || x < 0f) return float.NaN;
        if (x == 0f) return float.NegativeInfinity;
        if (x == float.PositiveInfinity) return x;
        int bits = (int)Interop.FloatAsInt(x);
        int e = 0;
        if ((bits & 0x7f800000) == 0)   // subnormal: scale into the normal range first
        {
            bits = (int)Interop.FloatAsInt(x * 8388608f);
            e = -23;
        }
        e += ((bits >> 23) & 0xff) - 126;
        float m = Interop.IntAsFloat((uint)((bits & 0x007fffff) | 0x3f000000));   // [0.5, 1)
        if (m < 0.707106781186547524f) { e -= 1; m = m + m - 1f; }
        else m -= 1f;
        float z = m * m;
        float y = 7.0376836292e-2f;
        y = KernelMath.Fma(y, m, -1.1514610310e-1f);
        y = KernelMath.Fma(y, m, 1.1676998740e-1f);
        y = KernelMath.Fma(y, m, -1.2420140846e-1f);
        y = KernelMath.Fma(y, m, 1.4249322787e-1f);
        y = KernelMath.Fma(y, m, -1.6668057665e-1f);
        y = KernelMath.Fma(y, m, 2.0000714765e-1f);
        y = KernelMath.Fma(y, m, -2.4999993993e-1f);
        y = KernelMath.Fma(y, m, 3.3333331174e-1f);
        y = y * m * z;
        float fe = e;
        y = KernelMath.Fma(fe, Ln2Lo, y);
        y = KernelMath.Fma(-0.5f, z, y);
        return KernelMath.Fma(fe, Ln2Hi, m + y);
    }

    /// <summary>2ᵏ for k in [−126, 127], built from its exponent bits.</summary>
    static float Pow2(int k) => Interop.IntAsFloat((uint)((k + 127) << 23));

    static float XFloor(float x)
    {
        float t = (int)x;   // |x| < 2³¹ here
        return t > x ? t - 1f : t;
    }
}

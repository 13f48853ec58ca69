using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Palm.Gpu.Backends.Cpu;

// The vector width the CPU kernels run at, and the pieces that make their results independent of it.
//
// Every reduction in the CPU kernels is defined on 16 logical float lanes (8 or 16 double lanes where it sums
// in double): element i of a run of whole 16-blocks goes to lane i mod 16, the lanes are folded by halving
// (lane l += lane l + w for w = 8, 4, 2, 1), and the elements past the last whole block are added one by one
// in index order. AVX-512 holds the 16 lanes in one Vector512, AVX2 in two Vector256, the scalar path in a
// 16-float array; all three do the same IEEE operations per lane, so all give the same bits. exp comes from
// one implementation for every lane and every tail element (Exp below: a polynomial of FMAs, the same IEEE
// operations at every width, unlike MathF.Exp), and products that the vector code fuses are fused
// (MathF.FusedMultiplyAdd) on the scalar path too.
internal static class CpuSimd
{
    /// <summary>Widest path this machine runs natively: 512, 256 or 0 (scalar).</summary>
    public static readonly int Hardware =
        Vector512.IsHardwareAccelerated ? 512 : Vector256.IsHardwareAccelerated ? 256 : 0;

    /// <summary>
    /// The path the kernels take. Tests lower it to run every path on one machine; since every path gives the
    /// same bits, changing it never changes a result, only the speed.
    /// </summary>
    internal static int Bits = Hardware;

    public static bool Use512 => Bits >= 512;
    public static bool Use256 => Bits >= 256;

    /// <summary>
    /// Whether the CPU fuses multiply-adds in hardware (x86 FMA3, or any ARM64). Without it every fused multiply-add
    /// the kernels make (MathF.FusedMultiplyAdd, kept so that every machine gives the same bits) is emulated in
    /// software, and the GEMM falls back to its scalar path: about 100× slower (0.8 GFLOP/s on one core of a Zen 3
    /// with FMA disabled, against 90 with it).
    /// </summary>
    public static bool HasFma => System.Runtime.Intrinsics.X86.Fma.IsSupported || System.Runtime.Intrinsics.Arm.AdvSimd.IsSupported;

    /// <summary>"AVX-512", "AVX2" or "scalar": the path in use, for logs and manifests.</summary>
    public static string Description => Bits >= 512 ? "AVX-512" : Bits >= 256 ? "AVX2" : "scalar";

    /// <summary>Logical lanes of every float reduction.</summary>
    public const int Lanes = 16;

    // exp(x) = 2^n · p(r), n = round(x·log2 e) (by the 1.5·2^23 rounding trick), r = x − n·ln 2 in two parts
    // (Cody–Waite), p the degree-7 Taylor-fitted polynomial of Cephes' expf (about 1 ulp). x < −87 gives 0 (the
    // masked −∞ entries included); x is clamped to 88 above. Only adds, multiplies, FMAs, a compare and integer
    // shifts: the same bits on every lane at every width and on the scalar tails, and several times cheaper than
    // the runtime's Vector512.Exp, which widens to double (Zen 4: SwiGLU and cross-entropy ran exp-bound with it).
    const float ExpLow = -87f, ExpHigh = 88f, Log2E = 1.44269504088896341f, Magic = 12582912f;
    const float Ln2Hi = 0.693359375f, Ln2Lo = -2.12194440e-4f;
    const float P0 = 1.9875691500e-4f, P1 = 1.3981999507e-3f, P2 = 8.3334519073e-3f, P3 = 4.1665795894e-2f, P4 = 1.6666665459e-1f, P5 = 5.0000001201e-1f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        var xc = Vector512.Min(x, Vector512.Create(ExpHigh));
        var t = Vector512.FusedMultiplyAdd(xc, Vector512.Create(Log2E), Vector512.Create(Magic));
        var n = t - Vector512.Create(Magic);
        var r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Hi), xc);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Lo), r);
        var p = Vector512.FusedMultiplyAdd(Vector512.Create(P0), r, Vector512.Create(P1));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P2));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P3));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P4));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P5));
        p = Vector512.FusedMultiplyAdd(p, r * r, r) + Vector512<float>.One;
        var scale = ((t.AsInt32() + Vector512.Create(127)) << 23).AsSingle();
        return Vector512.ConditionalSelect(Vector512.LessThan(x, Vector512.Create(ExpLow)), Vector512<float>.Zero, p * scale);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exp(Vector256<float> x)
    {
        var xc = Vector256.Min(x, Vector256.Create(ExpHigh));
        var t = Vector256.FusedMultiplyAdd(xc, Vector256.Create(Log2E), Vector256.Create(Magic));
        var n = t - Vector256.Create(Magic);
        var r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Hi), xc);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Lo), r);
        var p = Vector256.FusedMultiplyAdd(Vector256.Create(P0), r, Vector256.Create(P1));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P2));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P3));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P4));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P5));
        p = Vector256.FusedMultiplyAdd(p, r * r, r) + Vector256<float>.One;
        var scale = ((t.AsInt32() + Vector256.Create(127)) << 23).AsSingle();
        return Vector256.ConditionalSelect(Vector256.LessThan(x, Vector256.Create(ExpLow)), Vector256<float>.Zero, p * scale);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Exp(float x)
    {
        float xc = MathF.Min(x, ExpHigh);
        float t = MathF.FusedMultiplyAdd(xc, Log2E, Magic);
        float n = t - Magic;
        float r = MathF.FusedMultiplyAdd(n, -Ln2Hi, xc);
        r = MathF.FusedMultiplyAdd(n, -Ln2Lo, r);
        float p = MathF.FusedMultiplyAdd(P0, r, P1);
        p = MathF.FusedMultiplyAdd(p, r, P2);
        p = MathF.FusedMultiplyAdd(p, r, P3);
        p = MathF.FusedMultiplyAdd(p, r, P4);
        p = MathF.FusedMultiplyAdd(p, r, P5);
        p = MathF.FusedMultiplyAdd(p, r * r, r) + 1f;
        float scale = BitConverter.Int32BitsToSingle((BitConverter.SingleToInt32Bits(t) + 127) << 23);
        return x < ExpLow ? 0f : p * scale;
    }

    /// <summary>dst[i] = src[i]·scale (dst may be src): one rounding per element, so the bits do not depend on the vector width used.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)] // also per k step inside a GEMM micro-kernel (PackingRows)
    public static unsafe void ScaleCopy(float* dst, float* src, int n, float scale)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (var f = Vector512.Create(scale); i + 16 <= n; i += 16) (Vector512.Load(src + i) * f).Store(dst + i);
        if (Vector256.IsHardwareAccelerated)
            for (var f = Vector256.Create(scale); i + 8 <= n; i += 8) (Vector256.Load(src + i) * f).Store(dst + i);
        for (; i < n; i++) dst[i] = src[i] * scale;
    }

    // ---- folds: 16 lanes to one by halving ------------------------------------------------------------------

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Fold(Vector512<float> v) => Fold(v.GetLower() + v.GetUpper());

    /// <summary>The 16 lanes lo (0..7) and hi (8..15) held as two halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Fold(Vector256<float> lo, Vector256<float> hi) => Fold(lo + hi);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Fold(Vector256<float> v)
    {
        var h = v.GetLower() + v.GetUpper();
        float a = h.GetElement(0) + h.GetElement(2), b = h.GetElement(1) + h.GetElement(3);
        return a + b;
    }

    /// <summary>
    /// 16 lanes for the scalar path, held in the frame rather than stackalloc'd: a method with stackalloc is not
    /// eligible for on-stack replacement and would run unoptimised until tiering promotes it.
    /// </summary>
    [InlineArray(Lanes)]
    public struct Lanes16 { float element; }

    [InlineArray(Lanes)]
    public struct Lanes16D { double element; }

    /// <summary>Scalar form of the same fold over the 16 lanes (destroys them).</summary>
    public static float Fold16(Span<float> lanes)
    {
        for (int w = Lanes / 2; w >= 1; w /= 2)
            for (int l = 0; l < w; l++) lanes[l] += lanes[l + w];
        return lanes[0];
    }

    /// <summary>Eight double lanes (0..7) to one by halving.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Fold(Vector512<double> v) => Fold(v.GetLower() + v.GetUpper());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Fold(Vector256<double> v)
    {
        var h = v.GetLower() + v.GetUpper();
        return h.GetElement(0) + h.GetElement(1);
    }

    /// <summary>Scalar form of the fold over an array of <paramref name="count"/> double lanes (a power of two; destroys it).</summary>
    public static double Fold(Span<double> lanes, int count)
    {
        for (int w = count / 2; w >= 1; w /= 2)
            for (int l = 0; l < w; l++) lanes[l] += lanes[l + w];
        return lanes[0];
    }
}

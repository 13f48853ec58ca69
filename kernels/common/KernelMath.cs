// Device helpers every ILGPU kernel shares: an explicit fused multiply-add, exp and log, and fixed-order group
// reductions.
//
// Fma: a·b + c rounded once. ILGPU 1.5.3 maps MathF.FusedMultiplyAdd to nothing (an unresolved .extern in PTX, an
// undeclared call in OpenCL C), and a plain a*b+c may or may not be contracted by NVIDIA's assembler, so where bits
// are compared the kernels call this instead. RegisterIntrinsics makes PTX emit `fma.rn.f32` (a code generator) and
// OpenCL C `fma(a, b, c)`; ILGPU's CPU accelerator runs the .NET body (MathF.FusedMultiplyAdd, one rounding too).
//
// Exp, Log: MathF.Exp and MathF.Log need NVIDIA's libdevice under ILGPU (without it the PTX compile fails), so the
// kernels use these: Cody–Waite range reduction and Cephes' minimax polynomials, evaluated with Fma, within ~2 ulp of
// the correctly rounded result on normal inputs and the same bits on every ILGPU target. Exp flushes results below
// 2^−126 to zero; Log follows IEEE for 0, negatives, ∞ and NaN.
//
// GroupSum, GroupMax: over the threads of a one-dimensional group (a power of two) in shared memory, as a fixed
// binary tree: thread i combines thread i + stride for stride = n/2, n/4, ..., 1. The order depends only on the
// group size, never on timing, so a kernel gives the same bits on every run. No atomics (ILGPU.Algorithms' group
// reductions combine warps with shared-memory atomics, which reorders float sums from run to run).
//
// Dimensions: n threads of a group (Group.DimX), scratch (n) shared memory.
//
// Fma:       a, b, c -> a·b + c (one rounding)
// Exp, Log:  x -> e^x, ln x
// GroupSum:  x (one per thread), scratch (n) shared -> Σ x over the group, returned to every thread
// GroupMax:  x (one per thread), scratch (n) shared -> max x over the group, returned to every thread

using System.Reflection;
using ILGPU;
using ILGPU.Backends.OpenCL;
using ILGPU.Backends.PTX;
using ILGPU.IR;
using ILGPU.IR.Intrinsics;
using ILGPU.IR.Values;

// x != x is the NaN test: it compiles to the same comparison on every ILGPU target.
#pragma warning disable CS1718

namespace Palm.Gpu.Kernels;

public static class KernelMath
{
    /// <summary>a·b + c with one rounding on every accelerator (PTX fma.rn.f32, OpenCL fma, .NET FusedMultiplyAdd).</summary>
    [IntrinsicImplementation]   // CUDA and OpenCL take the registered forms; the CPU accelerator runs this body
    public static float Fma(float a, float b, float c) => MathF.FusedMultiplyAdd(a, b, c);


    /// <summary>e^x: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 in two parts), e^r by Cephes' degree-6 polynomial, times 2^n.</summary>
    public static float Exp(float x)
    {
        if (x != x) return x;                                   // NaN
        if (x > 88.72283935546875f) return float.PositiveInfinity;
        if (x < -87.33654475f) return 0f;                       // below 2^-126: flushed
        float t = x * 1.44269504088896341f;
        int n = (int)(t >= 0f ? t + 0.5f : t - 0.5f);
        float r = Fma(n, -0.693359375f, x);
        r = Fma(n, 2.12194440e-4f, r);
        float p = 1.9875691500e-4f;
        p = Fma(p, r, 1.3981999507e-3f);
        p = Fma(p, r, 8.3334519073e-3f);
        p = Fma(p, r, 4.1665795894e-2f);
        p = Fma(p, r, 1.6666665459e-1f);
        p = Fma(p, r, 5.0000001201e-1f);
        float y = Fma(p * r, r, r) + 1f;
        // 2^n in two factors so n = 128 (x near the top) and n = −126 stay representable.
        int half = n / 2;
        return y * BitConverter.Int32BitsToSingle((half + 127) << 23) * BitConverter.Int32BitsToSingle((n - half + 127) << 23);
    }

    /// <summary>ln x: x = m·2^e with m in [√½, √2), ln(m) by Cephes' degree-9 polynomial in m − 1, plus e·ln2 (two parts).</summary>
    public static float Log(float x)
    {
        if (x != x || x == float.PositiveInfinity) return x;
        if (x < 0f) return float.NaN;
        if (x == 0f) return float.NegativeInfinity;
        int bits = BitConverter.SingleToInt32Bits(x);
        int e = 0;
        if (bits < 0x00800000)
        {
            bits = BitConverter.SingleToInt32Bits(x * 8388608f);   // subnormal: scale by 2^23 first
            e = -23;
        }
        e += ((bits >> 23) & 0xff) - 126;
        float m = BitConverter.Int32BitsToSingle((bits & 0x007fffff) | 0x3f000000);   // [0.5, 1)
        if (m < 0.707106781186547524f) { e -= 1; m = m + m - 1f; }
        else m -= 1f;
        float z = m * m;
        float p = 7.0376836292e-2f;
        p = Fma(p, m, -1.1514610310e-1f);
        p = Fma(p, m, 1.1676998740e-1f);
        p = Fma(p, m, -1.2420140846e-1f);
        p = Fma(p, m, 1.4249322787e-1f);
        p = Fma(p, m, -1.6668057665e-1f);
        p = Fma(p, m, 2.0000714765e-1f);
        p = Fma(p, m, -2.4999993993e-1f);
        p = Fma(p, m, 3.3333331174e-1f);
        float y = p * m * z;
        float fe = e;
        y = Fma(fe, -2.12194440e-4f, y);
        y = Fma(z, -0.5f, y);
        return Fma(fe, 0.693359375f, m + y);
    }

    /// <summary>
    /// Σ x over the threads of the group (Group.DimX, a power of two) by a fixed tree in <paramref name="scratch"/>
    /// (shared, at least Group.DimX elements); every thread gets the total. Ends with a barrier so scratch can be reused.
    /// </summary>
    public static float GroupSum(ArrayView<float> scratch, float x)
    {
        int lid = Group.IdxX;
        scratch[lid] = x;
        Group.Barrier();
        for (int stride = Group.DimX / 2; stride > 0; stride >>= 1)
        {
            if (lid < stride) scratch[lid] = scratch[lid] + scratch[lid + stride];
            Group.Barrier();
        }
        float total = scratch[0];
        Group.Barrier();
        return total;
    }

    /// <summary>The double form of <see cref="GroupSum(ArrayView{float}, float)"/> (fp64 reductions: norms, sums of squares).</summary>
    public static double GroupSum(ArrayView<double> scratch, double x)
    {
        int lid = Group.IdxX;
        scratch[lid] = x;
        Group.Barrier();
        for (int stride = Group.DimX / 2; stride > 0; stride >>= 1)
        {
            if (lid < stride) scratch[lid] = scratch[lid] + scratch[lid + stride];
            Group.Barrier();
        }
        double total = scratch[0];
        Group.Barrier();
        return total;
    }

    /// <summary>The largest x over the group, by the same tree as <see cref="GroupSum(ArrayView{float}, float)"/>.</summary>
    public static float GroupMax(ArrayView<float> scratch, float x)
    {
        int lid = Group.IdxX;
        scratch[lid] = x;
        Group.Barrier();
        for (int stride = Group.DimX / 2; stride > 0; stride >>= 1)
        {
            if (lid < stride) scratch[lid] = MathF.Max(scratch[lid], scratch[lid + stride]);
            Group.Barrier();
        }
        float total = scratch[0];
        Group.Barrier();
        return total;
    }

    /// <summary>⌈x / d⌉ for positive d.</summary>
    public static long DivUp(long x, long d) => (x + d - 1) / d;

    // ---- intrinsic registration ----------------------------------------------------------------------

    /// <summary>
    /// Registers the PTX and OpenCL forms of <see cref="Fma"/> on a context being built: every context that compiles
    /// these kernels for CUDA or OpenCL must call it (the CPU accelerator runs the .NET bodies and needs nothing).
    /// </summary>
    public static Context.Builder RegisterIntrinsics(this Context.Builder builder)
    {
        const BindingFlags any = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static;
        var fma = typeof(KernelMath).GetMethod(nameof(Fma), any)!;
        var manager = builder.GetIntrinsicManager();
        manager.RegisterMethod(fma, new PTXIntrinsic(typeof(KernelMath).GetMethod(nameof(GeneratePtxFma), any)!, IntrinsicImplementationMode.GenerateCode));
        manager.RegisterMethod(fma, new CLIntrinsic(typeof(KernelMath).GetMethod(nameof(GenerateOpenClFma), any)!, IntrinsicImplementationMode.GenerateCode));
        return builder;
    }

    /// <summary>Emits `fma.rn.f32 target, a, b, c;` for a call of <see cref="Fma"/> in PTX (registers in and out).</summary>
    static void GeneratePtxFma(PTXBackend backend, PTXCodeGenerator codeGenerator, Value value)
    {
        var call = (MethodCall)value;
        var a = codeGenerator.LoadPrimitive(call[0]);
        var b = codeGenerator.LoadPrimitive(call[1]);
        var c = codeGenerator.LoadPrimitive(call[2]);
        var target = codeGenerator.AllocateHardware(call);
        using var command = codeGenerator.BeginCommand("fma.rn.f32");
        command.AppendArgument(target);
        command.AppendArgument(a);
        command.AppendArgument(b);
        command.AppendArgument(c);
    }

    /// <summary>Emits `target = fma(a, b, c);` for a call of <see cref="Fma"/> in OpenCL C.</summary>
    static void GenerateOpenClFma(CLBackend backend, CLCodeGenerator codeGenerator, Value value)
    {
        var call = (MethodCall)value;
        var a = codeGenerator.Load(call[0]);
        var b = codeGenerator.Load(call[1]);
        var c = codeGenerator.Load(call[2]);
        var target = codeGenerator.Allocate(call);
        using var statement = codeGenerator.BeginStatement(target);
        statement.AppendCommand("fma");
        statement.BeginArguments();
        statement.AppendArgument(a);
        statement.AppendArgument(b);
        statement.AppendArgument(c);
        statement.EndArguments();
    }
}

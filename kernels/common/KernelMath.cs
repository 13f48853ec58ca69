// Device helpers every ILGPU kernel shares: an explicit fused multiply-add and fixed-order group reductions.
//
// Fma: a·b + c rounded once. ILGPU 1.5.3 maps MathF.FusedMultiplyAdd to nothing (an unresolved .extern in PTX,
// an undeclared call in OpenCL C), and a plain a*b+c may or may not be contracted by NVIDIA's assembler, so where
// bits are compared the kernels call this instead: PTX gets `fma.rn.f32` through guarded inline assembly, OpenCL C
// gets `fma(a, b, c)` through an intrinsic registered on the context (Register), and ILGPU's CPU accelerator runs
// the .NET body (MathF.FusedMultiplyAdd, one rounding as well).
//
// GroupSum: the sum over the threads of a one-dimensional group (a power of two) in shared memory, as a fixed
// binary tree: thread i adds thread i + stride for stride = n/2, n/4, ..., 1. The order depends only on the group
// size, never on timing, so a kernel gives the same bits on every run. No atomics (ILGPU.Algorithms' group
// reductions combine warps with shared-memory atomics, which reorders float sums from run to run).
//
// Dimensions: n threads of a group (Group.DimX), scratch (n) shared memory.
//
// Fma:       a, b, c -> a·b + c (one rounding)
// GroupSum:  x (one per thread), scratch (n) shared -> Σ x over the group, returned to every thread

using System.Reflection;
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Backends.OpenCL;
using ILGPU.IR;
using ILGPU.IR.Intrinsics;
using ILGPU.IR.Values;
using ILGPU.Runtime.Cuda;

namespace Palm.Gpu.Kernels;

public static class KernelMath
{
    /// <summary>a·b + c with one rounding on every accelerator (PTX fma.rn.f32, OpenCL fma, .NET FusedMultiplyAdd).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]   // kept a call so the OpenCL intrinsic can replace it
    public static float Fma(float a, float b, float c)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("fma.rn.f32 %0, %1, %2, %3;", out float r, a, b, c);
            return r;
        }
        return MathF.FusedMultiplyAdd(a, b, c);
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
    /// Registers the OpenCL form of <see cref="Fma"/> on a context being built (every context that compiles these
    /// kernels for OpenCL must call it; PTX and the CPU accelerator need nothing).
    /// </summary>
    public static Context.Builder RegisterIntrinsics(this Context.Builder builder)
    {
        var fma = typeof(KernelMath).GetMethod(nameof(Fma), BindingFlags.Public | BindingFlags.Static)!;
        var generator = typeof(KernelMath).GetMethod(nameof(GenerateOpenClFma), BindingFlags.NonPublic | BindingFlags.Static)!;
        builder.GetIntrinsicManager().RegisterMethod(fma, new CLIntrinsic(generator, IntrinsicImplementationMode.GenerateCode));
        return builder;
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

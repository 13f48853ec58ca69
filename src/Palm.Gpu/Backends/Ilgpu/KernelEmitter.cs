using System.Reflection;
using System.Reflection.Emit;
using ILGPU;
using ILGPU.Backends;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.OpenCL;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;
using Palm.Gpu.Kernels;

namespace Palm.Gpu.Backends.Ilgpu;

/// <summary>Which code <see cref="KernelEmitter"/> generates: PTX assembly for NVIDIA GPUs or OpenCL C.</summary>
public enum KernelTarget { Ptx, OpenCl }

/// <summary>One kernel's generated code: its name (Class.Method), the file it is written to, and the source; or why ILGPU could not compile it.</summary>
public sealed record EmittedKernel(string Name, string FileName, string Code, MethodInfo Method, string? Error = null);

/// <summary>
/// Compiles every ILGPU kernel of the project offline, without a device: PTX through ILGPU's PTX backend for an
/// explicit CUDA architecture and PTX ISA, OpenCL C through its OpenCL backend (fp64, no generic address space,
/// O2 as at run time). A kernel is every public static void method of a static class Palm.Gpu.Kernels.*Kernels;
/// each is compiled as an explicitly grouped kernel, as the backend launches it. Used by `palm kernels --emit` and
/// by the tests of the generated code.
/// </summary>
public static class KernelEmitter
{
    /// <summary>The PTX target: sm_80 (A100 and later: the lowest with bf16/tf32 mma.sync) and PTX ISA 8.0.</summary>
    public static CudaArchitecture Architecture => CudaArchitecture.SM_80;
    public static CudaInstructionSet InstructionSet => CudaInstructionSet.ISA_80;

    /// <summary>Parses an --emit value ("ptx" or "opencl"), or throws with what is accepted.</summary>
    public static KernelTarget ParseTarget(string value) => value.ToLowerInvariant() switch
    {
        "ptx" => KernelTarget.Ptx,
        "opencl" or "cl" => KernelTarget.OpenCl,
        _ => throw new ArgumentException($"--emit '{value}' is not a kernel target; use ptx (NVIDIA PTX assembly) or opencl (OpenCL C)"),
    };

    /// <summary>Every kernel method, ordered by class then method name.</summary>
    public static IReadOnlyList<MethodInfo> Kernels() =>
        typeof(KernelMath).Assembly.GetTypes()
            .Where(t => t.Namespace == typeof(KernelMath).Namespace && t.IsAbstract && t.IsSealed && t.Name.EndsWith("Kernels", StringComparison.Ordinal))
            .SelectMany(t => t.GetMethods(BindingFlags.Public | BindingFlags.Static | BindingFlags.DeclaredOnly))
            .Where(m => m.ReturnType == typeof(void) && !m.IsGenericMethodDefinition && !m.IsSpecialName)
            .OrderBy(m => m.DeclaringType!.Name, StringComparer.Ordinal).ThenBy(m => m.Name, StringComparer.Ordinal)
            .ToList();

    /// <summary>"Class.Method" with the "Kernels" suffix dropped: "Attention.Forward".</summary>
    public static string NameOf(MethodInfo kernel) => $"{kernel.DeclaringType!.Name[..^"Kernels".Length]}.{kernel.Name}";

    /// <summary>The launch shapes the backend uses on a GPU, written into every file's header.</summary>
    public static string Knobs() =>
        $"IlgpuTuning.Gpu {IlgpuTuning.Gpu}; IlgpuKernelTuning.Gpu {IlgpuKernelTuning.Gpu}";

    /// <summary>
    /// Compiles every kernel for <paramref name="target"/>. A kernel ILGPU cannot compile comes back with its error and no code
    /// (a failed compile can poison a context, so the next kernel gets a fresh one).
    /// </summary>
    public static IReadOnlyList<EmittedKernel> Emit(KernelTarget target)
    {
        var result = new List<EmittedKernel>();
        string header = Header(target);
        Context? context = null;
        Backend? backend = null;
        try
        {
            foreach (var kernel in Kernels())
            {
                if (backend is null)
                {
                    context = Context.Create(b => b.CPU(IlgpuDevices.SimulatorDevice).Optimize(OptimizationLevel.O2).RegisterIntrinsics());
                    backend = target == KernelTarget.Ptx
                        ? new PTXBackend(context, Architecture, InstructionSet, null!)
                        : new CLBackend(context, new CLCapabilityContext(float16: false, float64: true, genericAddressSpace: false, int64_Atomics: false, subGroups: false),
                                        CLDeviceVendor.Other, CLCVersion.CL20);
                }
                string name = NameOf(kernel), file = name + (target == KernelTarget.Ptx ? ".ptx" : ".cl");
                try
                {
                    var compiled = backend.Compile(EntryPointDescription.FromExplicitlyGroupedKernel(kernel), KernelSpecialization.Empty);
                    string code = compiled switch
                    {
                        PTXCompiledKernel ptx => ptx.PTXAssembly,
                        CLCompiledKernel cl => cl.Source,
                        _ => throw new InvalidOperationException($"unexpected compiled kernel {compiled.GetType().Name}"),
                    };
                    result.Add(new EmittedKernel(name, file, header.Replace("{kernel}", name) + code, kernel));
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    result.Add(new EmittedKernel(name, file, "", kernel, e.GetBaseException().Message));
                    backend.Dispose();
                    context!.Dispose();
                    backend = null;
                }
            }
        }
        finally
        {
            backend?.Dispose();
            context?.Dispose();
        }
        return result;
    }

    /// <summary>
    /// Writes one file per kernel that compiled into <paramref name="directory"/> (created if missing) and returns them all. A directory that
    /// cannot be created or written throws <see cref="IOException"/> saying which and why.
    /// </summary>
    public static IReadOnlyList<EmittedKernel> WriteAll(KernelTarget target, string directory)
    {
        try
        {
            Directory.CreateDirectory(directory);
            string probe = Path.Combine(directory, ".palm-kernels-write-test");
            File.WriteAllText(probe, "");
            File.Delete(probe);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
        {
            throw new IOException($"cannot write kernels into '{directory}': {e.Message}; give an --out directory you can write to", e);
        }
        var kernels = Emit(target);
        foreach (var k in kernels.Where(k => k.Error is null)) File.WriteAllText(Path.Combine(directory, k.FileName), k.Code);
        return kernels;
    }

    static string Header(KernelTarget target)
    {
        string version = typeof(Context).Assembly.GetName().Version?.ToString(3) ?? "?";
        string what = target == KernelTarget.Ptx
            ? $"PTX for {Architecture} (ISA {InstructionSet}); ILGPU lowers .target to the lowest architecture the kernel needs"
            : "OpenCL C (fp64, no generic address space, OpenCL C 2.0 host API level)";
        return $"// {{kernel}}: {what}\n// generated by ILGPU {version}, O2, explicitly grouped; launch knobs the backend uses on a GPU:\n// {Knobs()}\n";
    }

    // ---- which kernels multiply-add --------------------------------------------------------------------

    /// <summary>
    /// Whether <paramref name="kernel"/> calls <see cref="KernelMath.Fma"/>, directly or through the kernels' helpers
    /// (calls within this assembly, followed through the IL): its generated code must then hold an explicit fused
    /// multiply-add (PTX fma.rn.f32, OpenCL fma).
    /// </summary>
    public static bool CallsFma(MethodInfo kernel)
    {
        var fma = typeof(KernelMath).GetMethod(nameof(KernelMath.Fma))!;
        var seen = new HashSet<MethodBase>();
        var work = new Stack<MethodBase>([kernel]);
        while (work.Count > 0)
        {
            var m = work.Pop();
            if (!seen.Add(m)) continue;
            foreach (var callee in Callees(m))
            {
                if (callee == fma) return true;
                if (callee.Module == kernel.Module && !seen.Contains(callee)) work.Push(callee);
            }
        }
        return false;
    }

    static readonly Dictionary<short, OpCode> OpCodesByValue = typeof(OpCodes).GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!).ToDictionary(o => o.Value);

    /// <summary>The methods <paramref name="method"/>'s IL calls (call, callvirt, newobj, ldftn operands).</summary>
    static IEnumerable<MethodBase> Callees(MethodBase method)
    {
        var il = method.GetMethodBody()?.GetILAsByteArray();
        if (il is null) yield break;
        Type[]? typeArgs = method.DeclaringType?.IsGenericType == true ? method.DeclaringType.GetGenericArguments() : null;
        Type[]? methodArgs = method.IsGenericMethod ? method.GetGenericArguments() : null;
        for (int i = 0; i < il.Length;)
        {
            short value = il[i] == 0xFE ? (short)(0xFE00 | il[i + 1]) : il[i];
            i += il[i] == 0xFE ? 2 : 1;
            var op = OpCodesByValue[value];
            int size = op.OperandType switch
            {
                OperandType.InlineNone => 0,
                OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                OperandType.InlineVar => 2,
                OperandType.InlineI8 or OperandType.InlineR => 8,
                OperandType.InlineSwitch => 4 + 4 * BitConverter.ToInt32(il, i),
                _ => 4,
            };
            if (op.OperandType == OperandType.InlineMethod)
            {
                MethodBase? callee = null;
                try { callee = method.Module.ResolveMethod(BitConverter.ToInt32(il, i), typeArgs, methodArgs); }
                catch (ArgumentException) { }
                if (callee is not null) yield return callee;
            }
            i += size;
        }
    }
}

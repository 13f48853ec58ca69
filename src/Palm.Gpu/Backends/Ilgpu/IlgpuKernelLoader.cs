using System.Reflection;
using ILGPU.Runtime;

namespace Palm.Gpu.Backends.Ilgpu;

/// <summary>
/// Compiles each kernel once per accelerator and hands back its typed launcher
/// (<c>Action&lt;AcceleratorStream, KernelConfig, ...&gt;</c>, explicitly grouped). The first call of a kernel
/// compiles it (ILGPU: IL → IR → PTX / OpenCL C, or the CPU accelerator's launcher); later calls find it here.
/// </summary>
public sealed class IlgpuKernelLoader(Accelerator accelerator)
{
    readonly Dictionary<MethodInfo, Delegate> loaded = new();

    public Accelerator Accelerator { get; } = accelerator;

    /// <summary>The launcher of <paramref name="kernel"/> (a static method of a kernels class), loaded on first use.</summary>
    public TLauncher Get<TLauncher>(Delegate kernel) where TLauncher : Delegate
    {
        var method = kernel.Method;
        lock (loaded)
        {
            if (loaded.TryGetValue(method, out var launcher)) return (TLauncher)launcher;
            var typed = Accelerator.LoadKernel<TLauncher>(method);
            loaded[method] = typed;
            return typed;
        }
    }

    /// <summary>Kernels compiled so far.</summary>
    public int Count
    {
        get { lock (loaded) return loaded.Count; }
    }
}

using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;
using Palm.Gpu.Kernels;

namespace Palm.Gpu.Backends.Ilgpu;

/// <summary>
/// The ILGPU context of this process and its devices, in `palm devices` order: CUDA GPUs, then OpenCL GPUs ILGPU
/// accepts, then ILGPU's CPU accelerator (a simulator: one OS thread per group thread, for tests and checks).
/// One context serves every backend instance; each instance opens its own accelerator (and stream) on a device.
/// </summary>
public static class IlgpuDevices
{
    /// <summary>The simulated device: warps of 4, groups of up to 16 threads, one multiprocessor (ILGPU's default CPU device).</summary>
    public static CPUDevice SimulatorDevice { get; } = CPUDevice.Default;

    static readonly Lazy<(Context? Context, string? Problem)> shared = new(Open);

    static (Context?, string?) Open()
    {
        try
        {
            // O2 keeps generated OpenCL C free of the generic address space and gives the GPU tighter code.
            var context = Context.Create(b => b.Cuda().OpenCL().CPU(SimulatorDevice).Optimize(OptimizationLevel.O2).RegisterIntrinsics());
            return (context, null);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return (null, $"ILGPU could not open a context: {e.Message}");
        }
    }

    /// <summary>The shared context; throws with the reason when ILGPU cannot run here.</summary>
    public static Context Context => shared.Value.Context ?? throw new InvalidOperationException(shared.Value.Problem);

    /// <summary>Why ILGPU cannot run here, or null.</summary>
    public static string? Problem => shared.Value.Problem;

    /// <summary>Every usable device: CUDA, then OpenCL GPUs, then the CPU accelerator (the order of --device).</summary>
    public static IReadOnlyList<Device> All
    {
        get
        {
            if (shared.Value.Context is not { } context) return [];
            var list = new List<Device>();
            // Context.Create(b => b.Cuda()) quietly adds nothing without a GPU: sort by what each device really is.
            list.AddRange(context.Devices.Where(d => d.AcceleratorType == AcceleratorType.Cuda));
            list.AddRange(context.Devices.Where(d => d.AcceleratorType == AcceleratorType.OpenCL && d is CLDevice cl && cl.DeviceType != CLDeviceType.CL_DEVICE_TYPE_CPU));
            list.AddRange(context.Devices.Where(d => d.AcceleratorType == AcceleratorType.CPU));
            return list;
        }
    }

    /// <summary>The index of the CPU accelerator in <see cref="All"/> (it is always there when ILGPU runs).</summary>
    public static int SimulatorIndex
    {
        get
        {
            var all = All;
            for (int i = 0; i < all.Count; i++) if (all[i].AcceleratorType == AcceleratorType.CPU) return i;
            throw new InvalidOperationException(Problem ?? "ILGPU lists no CPU accelerator");
        }
    }

    public static bool IsSimulator(Device device) => device.AcceleratorType == AcceleratorType.CPU;

    /// <summary>"GPU", or "CPU (simulator)" for the CPU accelerator.</summary>
    public static string KindOf(Device device) => IsSimulator(device) ? "CPU (simulator)" : "GPU";

    public static string RuntimeOf(Device device) => device.AcceleratorType switch
    {
        AcceleratorType.Cuda => $"ILGPU {typeof(Context).Assembly.GetName().Version?.ToString(3)} CUDA",
        AcceleratorType.OpenCL => $"ILGPU {typeof(Context).Assembly.GetName().Version?.ToString(3)} OpenCL",
        _ => $"ILGPU {typeof(Context).Assembly.GetName().Version?.ToString(3)} CPU accelerator, one OS thread per group thread",
    };

    /// <summary>Device <paramref name="index"/> of <see cref="All"/>, or one clear error.</summary>
    public static Device Get(int index)
    {
        if (Problem is { } problem) throw new IlgpuUnavailableException(problem);
        var all = All;
        if (index < 0 || index >= all.Count)
            throw new IlgpuException(
                $"ILGPU device index {index} does not exist: {all.Count} device(s) found, valid indices 0..{all.Count - 1}: " +
                string.Join("; ", all.Select((d, i) => $"[{i}] {d.Name} ({KindOf(d)})")) + ". Run `palm devices` to list them.");
        return all[index];
    }
}

/// <summary>ILGPU cannot run on this machine (no context): the message says why.</summary>
public sealed class IlgpuUnavailableException(string message) : Exception(message);

/// <summary>A device problem a user can act on (a device index that does not exist, device memory exhausted): the message says what to do.</summary>
public sealed class IlgpuException(string message, Exception? inner = null) : Exception(message, inner);

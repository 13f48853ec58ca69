using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Cpu;

/// <summary>A buffer in managed host memory. Exactly one of F (fp32) and I (int32) is set.</summary>
public sealed class CpuBuffer : DeviceBuffer
{
    internal readonly float[] F;
    internal readonly int[] I;

    public CpuBuffer(string name, long length, ElementType type) : base(name, length, type)
    {
        if (length > Array.MaxLength)
            throw new ArgumentOutOfRangeException(nameof(length),
                $"buffer '{name}' needs {length} elements; the CPU backend holds at most {Array.MaxLength} per tensor. Use a smaller preset or shard the model (--mesh).");
        F = type == ElementType.F32 ? new float[length] : Array.Empty<float>();
        I = type == ElementType.I32 ? new int[length] : Array.Empty<int>();
    }

    public override void Dispose() { }
}

namespace Palm.Gpu.Tensors;

/// <summary>Element type of a device buffer. Activations, weights and gradients are fp32; token ids are int32.</summary>
public enum ElementType { F32, I32 }

/// <summary>
/// A flat allocation on one device. Shapes live in the code that uses the buffer (each op states
/// its shape contract); the buffer only knows its length, element type and a name for error messages.
/// </summary>
public abstract class DeviceBuffer : IDisposable
{
    protected DeviceBuffer(string name, long length, ElementType type)
    {
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), $"buffer '{name}': length {length} is negative");
        Name = name;
        Length = length;
        Type = type;
    }

    public string Name { get; }
    public long Length { get; }
    public ElementType Type { get; }
    public long Bytes => Length * 4;

    public abstract void Dispose();
    public override string ToString() => $"{Name}[{Length}] {Type}";
}

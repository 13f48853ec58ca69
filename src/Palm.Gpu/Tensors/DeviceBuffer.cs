namespace Palm.Gpu.Tensors;

/// <summary>Element type of a device buffer. Activations, weights and gradients are fp32; token ids are int32.</summary>
public enum ElementType { F32, I32 }

/// <summary>
/// A flat allocation on one device, or a view of a range of one (<see cref="Slice"/>). Shapes live in the code
/// that uses the buffer (each op states its shape contract); the buffer only knows its length, element type and a
/// name for error messages. A view shares its root's storage: every kernel, upload, download, fill and copy accepts
/// it and sees elements [Offset, Offset + Length) of the root. Disposing a view frees only the view; disposing the
/// root frees the storage (views of it must not be used afterwards).
/// </summary>
public abstract class DeviceBuffer : IDisposable
{
    bool disposed;

    protected DeviceBuffer(string name, long length, ElementType type)
    {
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), $"buffer '{name}': length {length} is negative");
        Name = name;
        Length = length;
        Type = type;
        Root = this;
    }

    /// <summary>A view of <paramref name="parent"/>: elements [offset, offset + length) of it.</summary>
    protected DeviceBuffer(DeviceBuffer parent, long offset, long length)
        : this($"{parent.Name}[{offset}..{offset + length})", length, parent.Type)
    {
        Parent = parent;
        Root = parent.Root;
        Offset = parent.Offset + offset;
        Owner = parent.Owner;
    }

    public string Name { get; }
    public long Length { get; }
    public ElementType Type { get; }
    public long Bytes => Length * 4;

    /// <summary>Elements from the start of <see cref="Root"/> to this buffer's first element (0 for an allocation).</summary>
    public long Offset { get; }
    /// <summary>The buffer this view was sliced from; null for an allocation.</summary>
    public DeviceBuffer? Parent { get; }
    /// <summary>The allocation holding the storage (this buffer itself unless it is a view).</summary>
    public DeviceBuffer Root { get; }
    public bool IsView => Parent is not null;
    public bool IsDisposed => disposed;

    /// <summary>
    /// The backend that allocated the root (set by <see cref="Palm.Gpu.Backends.BackendBase"/>); the base checks it on
    /// every call so a buffer of another backend instance is an error, not a crash.
    /// </summary>
    internal object? Owner { get; set; }
    /// <summary>Called once when an allocation (not a view) is disposed: the owner's live-memory count.</summary>
    internal Action<DeviceBuffer>? Released { get; set; }

    /// <summary>
    /// A view of elements [offset, offset + length) of this buffer. Backends may need the offset aligned
    /// (<see cref="Palm.Gpu.Backends.IBackend.ViewAlignment"/>; OpenCL sub-buffers do) and say so here.
    /// </summary>
    public DeviceBuffer Slice(long offset, long length)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (offset < 0 || length < 0 || offset > Length - length)
            throw new ArgumentOutOfRangeException(nameof(offset),
                $"slice of buffer '{Name}': range [{offset}, {offset + length}) is outside its {Length} elements");
        if (Owner is Palm.Gpu.Backends.IBackend backend && (Offset + offset) % backend.ViewAlignment != 0)
            throw new ArgumentException(
                $"slice of buffer '{Name}' at element {Offset + offset} of '{Root.Name}': the {backend.Name} backend starts views only at multiples of " +
                $"{backend.ViewAlignment} elements (its ViewAlignment); lay tensors out at such offsets", nameof(offset));
        return CreateView(offset, length);
    }

    /// <summary>The backend's view of [offset, offset + length) of this buffer (the range is checked).</summary>
    protected abstract DeviceBuffer CreateView(long offset, long length);

    /// <summary>Frees the storage of an allocation, or the handle of a view; called once.</summary>
    protected abstract void Release();

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        Release();
        if (!IsView) Released?.Invoke(this);
        GC.SuppressFinalize(this);
    }

    /// <summary>Whether this buffer and <paramref name="other"/> share at least one element of storage.</summary>
    public bool Overlaps(DeviceBuffer other) =>
        ReferenceEquals(Root, other.Root) && Length > 0 && other.Length > 0 &&
        Offset < other.Offset + other.Length && other.Offset < Offset + Length;

    public override string ToString() => $"{Name}[{Length}] {Type}";
}

using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Cpu;

/// <summary>
/// A buffer in managed host memory, or a view of one. Exactly one of the arrays is set (fp32 or int32); a view
/// shares its root's array and starts <see cref="DeviceBuffer.Offset"/> elements past the root's first element.
/// </summary>
/// <remarks>
/// The root's first element lies on a cache line (64 bytes), and views start at multiples of the backend's
/// ViewAlignment (16 elements) from it, so every tensor of a model arena starts on a line: a 16-float GEMM tile row is
/// one line, not parts of two, and no 512-bit load of a whole vector splits. A managed array's data starts wherever the
/// GC put the object (any multiple of 8 bytes), so the array is allocated on the pinned object heap, which never moves
/// it, with a line's worth of slack, and the root starts at the first aligned element.
/// </remarks>
public sealed class CpuBuffer : DeviceBuffer
{
    readonly float[] f;
    readonly int[] i;
    /// <summary>Elements before the root's first element: those up to the first 64-byte boundary of the array's data.</summary>
    readonly long first;

    /// <summary>Elements of slack per array: a cache line of 4-byte elements, so an aligned start always exists.</summary>
    const int LineElements = 16;

    public CpuBuffer(string name, long length, ElementType type) : base(name, length, type)
    {
        if (length > Array.MaxLength - LineElements)
            throw new ArgumentOutOfRangeException(nameof(length),
                $"buffer '{name}' needs {length} elements; the CPU backend holds at most {Array.MaxLength - LineElements} per tensor. Use a smaller preset or shard the model (--mesh).");
        f = type == ElementType.F32 ? GC.AllocateArray<float>((int)length + LineElements, pinned: true) : Array.Empty<float>();
        i = type == ElementType.I32 ? GC.AllocateArray<int>((int)length + LineElements, pinned: true) : Array.Empty<int>();
        first = type == ElementType.F32 ? ElementsToLine(f) : type == ElementType.I32 ? ElementsToLine(i) : 0;
    }

    CpuBuffer(CpuBuffer parent, long offset, long length) : base(parent, offset, length)
    {
        f = parent.f;
        i = parent.i;
        first = parent.first;
    }

    /// <summary>How many elements from the (pinned) array's start to its first element on a 64-byte boundary.</summary>
    static unsafe long ElementsToLine<T>(T[] array) where T : unmanaged
    {
        nint address = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array));
        return (-(long)address & 63) / sizeof(T);
    }

    /// <summary>The fp32 elements of this buffer (or view).</summary>
    internal CpuView<float> F => new(f, Type == ElementType.F32 ? first + Offset : 0, Type == ElementType.F32 ? Length : 0);
    /// <summary>The int32 elements of this buffer (or view).</summary>
    internal CpuView<int> I => new(i, Type == ElementType.I32 ? first + Offset : 0, Type == ElementType.I32 ? Length : 0);

    protected override DeviceBuffer CreateView(long offset, long length) => new CpuBuffer(this, offset, length);
    protected override void Release() { }
}

/// <summary>
/// Elements [Offset, Offset + Length) of a managed array: what the CPU kernels take instead of a whole array, so a
/// buffer view runs through the same code. <c>fixed (float* p = view)</c> pins the array and points at element
/// Offset (null for the default, absent view, as for a null array); the indexer is relative to Offset.
/// </summary>
public readonly struct CpuView<T> where T : unmanaged
{
    readonly T[]? array;

    public CpuView(T[] array, long offset, long length)
    {
        this.array = array;
        Offset = offset;
        Length = length;
    }

    public long Offset { get; }
    public long Length { get; }
    /// <summary>True for the default view: an optional buffer that is absent.</summary>
    public bool IsNull => array is null;
    /// <summary>The whole array the view lies in (for pinning several views at once); null for the absent view.</summary>
    internal T[]? Array => array;

    public static implicit operator CpuView<T>(T[]? array) => array is null ? default : new(array, 0, array.Length);

    public ref T this[long index] => ref array![Offset + index];
    public ref T this[int index] => ref array![Offset + index];

    public ref T GetPinnableReference() =>
        ref array is null ? ref Unsafe.NullRef<T>() : ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(array), (nint)Offset);

    public Span<T> AsSpan() => array.AsSpan((int)Offset, (int)Length);
    public Span<T> AsSpan(long start) => array.AsSpan((int)(Offset + start), (int)(Length - start));
    public Span<T> AsSpan(long start, long length) => array.AsSpan((int)(Offset + start), (int)length);
}

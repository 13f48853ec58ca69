namespace Palm.Gpu.Tensors;

/// <summary>
/// Where tensors sit in one flat allocation (llm.c's flat parameter memory): tensor i at <see cref="Offsets"/>[i],
/// each start a multiple of the backend's view alignment, so every tensor is a view of one buffer. Parameters,
/// gradients and the elementwise optimizer state share one layout, so a step zeroes the gradients with one fill,
/// reduces them over the data axis with one all-reduce, and runs the norm and Adafactor as one segmented launch each.
/// </summary>
public sealed class ArenaLayout
{
    public ArenaLayout(IReadOnlyList<long> counts, long alignment)
    {
        if (alignment < 1) throw new ArgumentOutOfRangeException(nameof(alignment), $"alignment must be ≥ 1 element, got {alignment}");
        Counts = counts.ToArray();
        Offsets = new long[Counts.Length];
        long at = 0;
        for (int i = 0; i < Counts.Length; i++)
        {
            if (Counts[i] < 0) throw new ArgumentOutOfRangeException(nameof(counts), $"tensor {i} has a negative size {Counts[i]}");
            Offsets[i] = at;
            at += (Counts[i] + alignment - 1) / alignment * alignment;
        }
        Length = at;
    }

    public long[] Counts { get; }
    public long[] Offsets { get; }
    /// <summary>Elements of the allocation, padding included.</summary>
    public long Length { get; }

    /// <summary>Tensor i of <paramref name="arena"/> (a buffer of <see cref="Length"/> elements) as a view.</summary>
    public DeviceBuffer View(DeviceBuffer arena, int i) => arena.Slice(Offsets[i], Counts[i]);
}

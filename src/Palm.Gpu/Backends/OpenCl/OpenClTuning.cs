namespace Palm.Gpu.Backends.OpenCl;

/// <summary>
/// Tuning knobs handed to the kernels as -D defines (each .cl file documents its own under
/// <c>#ifndef NAME</c>). Defaults depend on the device type: CPU devices (PoCL) want big register
/// tiles of wide vectors per work-item; GPUs want many small work-items.
/// Changing a knob changes which reduction trees run, so results are reproducible for a given
/// device and tuning, not across tunings.
/// </summary>
public sealed record OpenClTuning
{
    /// <summary>Matmul: rows of C per work-item (MWI).</summary>
    public int MatmulRows { get; init; } = 8;
    /// <summary>Matmul: vector width along N (VWN): 1, 2, 4, 8 or 16.</summary>
    public int MatmulVectorWidth { get; init; } = 16;
    /// <summary>Matmul: vectors along N per work-item (NVEC).</summary>
    public int MatmulVectors { get; init; } = 2;
    /// <summary>Matmul work-group shape (column tiles × row tiles).</summary>
    public int MatmulGroup0 { get; init; } = 1;
    public int MatmulGroup1 { get; init; } = 1;
    /// <summary>Work-items per row in layer norm and cross-entropy (power of two).</summary>
    public int RowGroup { get; init; } = 16;
    /// <summary>Attention query rows per work-group (BQ) and key rows per tile (BK).</summary>
    public int AttentionQueryBlock { get; init; } = 16;
    public int AttentionKeyBlock { get; init; } = 16;
    /// <summary>Attention rows per work-item (RPI): query rows in forward and dq, key rows in dk/dv; divides both blocks.
    /// The backend lowers it for head dims where RPI·K would exceed 256 accumulators.</summary>
    public int AttentionRowsPerItem { get; init; } = 4;
    /// <summary>Work-group size of elementwise kernels.</summary>
    public int ElementwiseGroup { get; init; } = 64;
    /// <summary>
    /// Work-items per ordered reduction (Adafactor's chunks and totals, ADA_WG): 1 on CPU devices, where a work-item is
    /// a core's loop; a power of two ≥ 2 on GPUs, whose lanes load and compute a tile while one lane adds in order. The
    /// order, and so the bits, do not depend on it.
    /// </summary>
    public int ReductionGroup { get; init; } = 1;
    /// <summary>Work-groups the embedding backward aims for per compute unit (each owns a block of table rows).</summary>
    public int EmbeddingGroupsPerUnit { get; init; } = 4;

    public static OpenClTuning Cpu { get; } = new();

    public static OpenClTuning Gpu { get; } = new()
    {
        MatmulRows = 4, MatmulVectorWidth = 4, MatmulVectors = 2, MatmulGroup0 = 16, MatmulGroup1 = 8,
        RowGroup = 256, AttentionQueryBlock = 16, AttentionKeyBlock = 16, AttentionRowsPerItem = 1, ElementwiseGroup = 256,
        ReductionGroup = 128, EmbeddingGroupsPerUnit = 16,
    };

    public static OpenClTuning For(OpenClDevice device) => device.IsCpu ? Cpu : Gpu;

    internal void Validate()
    {
        static bool Pow2(int x) => x > 0 && (x & (x - 1)) == 0;
        if (MatmulRows < 1) throw new ArgumentException($"MatmulRows must be ≥ 1, got {MatmulRows}");
        if (MatmulVectorWidth is not (1 or 2 or 4 or 8 or 16)) throw new ArgumentException($"MatmulVectorWidth must be 1, 2, 4, 8 or 16, got {MatmulVectorWidth}");
        if (MatmulVectors < 1) throw new ArgumentException($"MatmulVectors must be ≥ 1, got {MatmulVectors}");
        if (MatmulGroup0 < 1 || MatmulGroup1 < 1) throw new ArgumentException("matmul work-group dimensions must be ≥ 1");
        if (!Pow2(RowGroup)) throw new ArgumentException($"RowGroup must be a power of two, got {RowGroup}");
        if (AttentionQueryBlock is not (2 or 4 or 8 or 16) || AttentionKeyBlock is not (2 or 4 or 8 or 16))
            throw new ArgumentException($"attention blocks must be 2, 4, 8 or 16 (vector widths), got {AttentionQueryBlock} and {AttentionKeyBlock}");
        if (AttentionRowsPerItem < 1 || AttentionQueryBlock % AttentionRowsPerItem != 0 || AttentionKeyBlock % AttentionRowsPerItem != 0)
            throw new ArgumentException($"AttentionRowsPerItem ({AttentionRowsPerItem}) must divide both attention blocks");
        if (ElementwiseGroup < 1) throw new ArgumentException($"ElementwiseGroup must be ≥ 1, got {ElementwiseGroup}");
        if (ReductionGroup != 1 && (ReductionGroup < 2 || !Pow2(ReductionGroup)))
            throw new ArgumentException($"ReductionGroup must be 1 or a power of two ≥ 2, got {ReductionGroup}");
        if (EmbeddingGroupsPerUnit < 1) throw new ArgumentException($"EmbeddingGroupsPerUnit must be ≥ 1, got {EmbeddingGroupsPerUnit}");
    }
}

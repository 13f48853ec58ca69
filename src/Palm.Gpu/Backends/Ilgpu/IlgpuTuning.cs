namespace Palm.Gpu.Backends.Ilgpu;

/// <summary>
/// Launch shapes of the ILGPU kernels: group sizes and tile sizes, named so a reader sees every knob in one place.
/// <see cref="Gpu"/> is for CUDA and OpenCL GPUs; <see cref="Simulator"/> is for ILGPU's CPU accelerator, which runs
/// one OS thread per group thread (a 16×16 group is 256 threads taking turns at every barrier), so it wants groups of
/// one thread (<see cref="Simulator"/>); <see cref="SimulatorGroups"/> keeps small multi-thread groups for the tests. Knobs change launch shapes, never a reduction order that a contract fixes (the segmented
/// sums of squares, the embedding's token order, the matmul's K order); where they do choose a tree (layer norm's
/// row sums) results are reproducible for a given tuning.
/// </summary>
public sealed record IlgpuTuning
{
    /// <summary>Matmul: threads of a group along N (columns of C) and along M (rows).</summary>
    public int MatmulThreadsX { get; init; } = 16;
    public int MatmulThreadsY { get; init; } = 16;
    // The register block is fixed at 4 × 4 (MatmulKernels.BlockRows/BlockColumns): a tile of C is (ThreadsY·4) × (ThreadsX·4).
    /// <summary>Matmul: depth of the shared-memory tiles of op(A) and op(B) along K.</summary>
    public int MatmulTileK { get; init; } = 16;

    /// <summary>Threads per row of layer norm (power of two).</summary>
    public int RowGroup { get; init; } = 256;
    /// <summary>Group size of elementwise kernels, and the most groups they launch (each thread then strides over the rest).</summary>
    public int ElementwiseGroup { get; init; } = 256;
    public int ElementwiseMaxGroups { get; init; } = 4096;
    /// <summary>Threads combining a segment's 64 run partials of the sums of squares: 1 or 64 (the order is the same).</summary>
    public int ReductionGroup { get; init; } = 64;
    /// <summary>Embedding backward: columns per group (one per thread) and groups aimed for in all (each owns a block of table rows).</summary>
    public int EmbeddingGroup { get; init; } = 64;
    public int EmbeddingGroups { get; init; } = 512;

    /// <summary>CUDA and OpenCL GPUs.</summary>
    public static IlgpuTuning Gpu { get; } = new();

    /// <summary>
    /// ILGPU's CPU accelerator, for training and benchmarks on it: one thread per group, where a barrier costs nothing
    /// (a 128×128×32 GEMM takes ~5 ms instead of ~60 ms with 2×2 groups, layer norm of 128 rows 0.5 ms instead of ~100 ms).
    /// </summary>
    public static IlgpuTuning Simulator { get; } = new()
    {
        MatmulThreadsX = 1, MatmulThreadsY = 1, MatmulTileK = 32,
        RowGroup = 1, ElementwiseGroup = 1, ElementwiseMaxGroups = 4, ReductionGroup = 1, EmbeddingGroup = 1, EmbeddingGroups = 8,
    };

    /// <summary>
    /// ILGPU's CPU accelerator with groups of 2 to 8 threads: the tuning the conformance suite runs, so shared-memory
    /// tiles, barriers and group trees are exercised as on a GPU (slower than <see cref="Simulator"/>).
    /// </summary>
    public static IlgpuTuning SimulatorGroups { get; } = new()
    {
        MatmulThreadsX = 2, MatmulThreadsY = 2, MatmulTileK = 8,
        RowGroup = 4, ElementwiseGroup = 4, ElementwiseMaxGroups = 16, ReductionGroup = 1, EmbeddingGroup = 8, EmbeddingGroups = 8,
    };

    /// <summary>Throws unless every knob is in range for a device whose groups hold at most <paramref name="maxGroupSize"/> threads.</summary>
    public void Validate(int maxGroupSize)
    {
        static bool Pow2(int x) => x > 0 && (x & (x - 1)) == 0;
        void Group(string name, int size)
        {
            if (size < 1 || size > maxGroupSize)
                throw new ArgumentException($"ILGPU tuning: {name} = {size} threads, but this device's groups hold 1..{maxGroupSize}");
        }
        if (MatmulTileK < 1) throw new ArgumentException($"ILGPU tuning: MatmulTileK must be ≥ 1, got {MatmulTileK}");
        Group("the matmul group", MatmulThreadsX * MatmulThreadsY);
        if (!Pow2(RowGroup)) throw new ArgumentException($"ILGPU tuning: RowGroup must be a power of two, got {RowGroup}");
        Group(nameof(RowGroup), RowGroup);
        Group(nameof(ElementwiseGroup), ElementwiseGroup);
        if (ElementwiseMaxGroups < 1) throw new ArgumentException($"ILGPU tuning: ElementwiseMaxGroups must be ≥ 1, got {ElementwiseMaxGroups}");
        if (ReductionGroup is not (1 or 64)) throw new ArgumentException($"ILGPU tuning: ReductionGroup must be 1 or 64, got {ReductionGroup}");
        Group(nameof(ReductionGroup), ReductionGroup);
        Group(nameof(EmbeddingGroup), EmbeddingGroup);
        if (EmbeddingGroups < 1) throw new ArgumentException($"ILGPU tuning: EmbeddingGroups must be ≥ 1, got {EmbeddingGroups}");
    }
}

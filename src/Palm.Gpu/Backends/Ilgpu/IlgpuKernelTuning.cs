namespace Palm.Gpu.Backends.Ilgpu;

/// <summary>
/// Launch shapes of the ILGPU attention, cross-entropy and Adafactor kernels, and the tensor-core GEMM switch, beside
/// <see cref="IlgpuTuning"/>'s. <see cref="Gpu"/> is for CUDA and OpenCL GPUs; <see cref="Simulator"/> for ILGPU's
/// CPU accelerator (one OS thread per group thread: tiny groups, few barriers). None of them changes a reduction order
/// a contract fixes: attention sums in tile order whatever the tile (bits then depend on the tiles, results do not),
/// cross-entropy's tree follows its group size, and Adafactor's chunk sums are in index order for every group size.
/// </summary>
public sealed record IlgpuKernelTuning
{
    /// <summary>Attention: threads of a group; query times and heads per query tile (R = times · heads rows); keys per key tile.</summary>
    public int AttentionThreads { get; init; } = 128;
    public int AttentionQueryTimes { get; init; } = 16;
    public int AttentionHeadsPerTile { get; init; } = 4;
    public int AttentionKeyTile { get; init; } = 32;
    /// <summary>Attention: the most shared memory a group may use; tiles shrink (heads, then times and keys) to fit.</summary>
    public int AttentionSharedBytes { get; init; } = 48 * 1024;
    /// <summary>Decode: threads per (sequence, head) group (power of two).</summary>
    public int DecodeThreads { get; init; } = 64;

    /// <summary>Cross-entropy forward: threads per row (power of two).</summary>
    public int CrossEntropyThreads { get; init; } = 256;

    /// <summary>Adafactor: threads per 16384-element chunk, and elements each computes per tile before thread 0/1 add the tile in order.</summary>
    public int AdafactorThreads { get; init; } = 128;
    public int AdafactorPerThread { get; init; } = 4;

    /// <summary>
    /// Matmul through the tensor cores (inline PTX mma.sync, tf32 inputs with fp32 accumulation) on CUDA devices of
    /// compute capability 8.0 or more; elsewhere, or when off, the fp32 tiled GEMM. Off by default: tf32 rounds the inputs
    /// to 10 mantissa bits, so results differ from the fp32 path by about 1e-3 relative.
    /// </summary>
    public bool TensorCoreMatmul { get; init; }

    /// <summary>CUDA and OpenCL GPUs; PALM_ILGPU_TENSOR_CORES=1 turns <see cref="TensorCoreMatmul"/> on.</summary>
    public static IlgpuKernelTuning Gpu { get; } = new() { TensorCoreMatmul = Environment.GetEnvironmentVariable("PALM_ILGPU_TENSOR_CORES") == "1" };

    /// <summary>ILGPU's CPU accelerator: groups of at most 4 threads, small tiles, large per-thread tiles for Adafactor.</summary>
    public static IlgpuKernelTuning Simulator { get; } = new()
    {
        AttentionThreads = 4, AttentionQueryTimes = 8, AttentionHeadsPerTile = 8, AttentionKeyTile = 16,
        DecodeThreads = 4, CrossEntropyThreads = 4, AdafactorThreads = 2, AdafactorPerThread = 1024,
    };

    /// <summary>Throws unless every knob is in range for a device whose groups hold at most <paramref name="maxGroupSize"/> threads.</summary>
    public void Validate(int maxGroupSize)
    {
        static bool Pow2(int x) => x > 0 && (x & (x - 1)) == 0;
        void Group(string name, int size, bool pow2)
        {
            if (size < 1 || size > maxGroupSize || (pow2 && !Pow2(size)))
                throw new ArgumentException($"ILGPU kernel tuning: {name} = {size} threads, but this device's groups hold 1..{maxGroupSize}" + (pow2 ? " (a power of two)" : ""));
        }
        Group(nameof(AttentionThreads), AttentionThreads, false);
        Group(nameof(DecodeThreads), DecodeThreads, true);
        Group(nameof(CrossEntropyThreads), CrossEntropyThreads, true);
        Group(nameof(AdafactorThreads), AdafactorThreads, false);
        if (AttentionQueryTimes < 1 || AttentionHeadsPerTile < 1 || AttentionKeyTile < 1)
            throw new ArgumentException($"ILGPU kernel tuning: attention tiles must be ≥ 1, got {AttentionQueryTimes} times × {AttentionHeadsPerTile} heads, {AttentionKeyTile} keys");
        if (AdafactorPerThread < 1) throw new ArgumentException($"ILGPU kernel tuning: AdafactorPerThread must be ≥ 1, got {AdafactorPerThread}");
    }
}

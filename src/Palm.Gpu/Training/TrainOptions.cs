using Palm.Gpu.Model;

namespace Palm.Gpu.Training;

/// <summary>Everything a training run needs besides the model shape. Recorded in the run's config.json.</summary>
public sealed record TrainOptions
{
    public string? Data { get; init; }                 // text file or directory; null = the built-in synthetic corpus
    public string? Tokenizer { get; init; }            // tokenizer file; null = byte tokenizer
    public long Steps { get; init; } = 200;            // optimizer steps to run
    public string BatchSchedule { get; init; } = "4";  // sequences per step: "8" or "0:8,1000:16"
    public ulong Seed { get; init; } = 1;              // init and data order
    public string Backend { get; init; } = "cpu";      // cpu | opencl
    public int Device { get; init; }                   // device index within the backend
    public string? Mesh { get; init; }                 // "DxM" data × model devices; null = one device
    public bool ShardWeights { get; init; }            // mesh: weights, gradients and optimizer state sliced over the data axis
    public Sharding.CollectiveTransport Collectives { get; init; } // mesh: auto | host | device (copies within one OpenCL context)
    public int Threads { get; init; }                  // CPU worker threads, 0 = all cores
    public string? OutDir { get; init; }               // run directory (metrics.jsonl, config.json, model.safetensors)
    public double HeldOutFraction { get; init; } = 0.05; // share of sequences kept for eval
    public double PeakGflops { get; init; }            // device peak for MFU; 0 = measure (CPU)
    public AdafactorConfig Optimizer { get; init; } = new();
    public long CheckpointEvery { get; init; }         // steps between checkpoints under OutDir/checkpoints; 0 = none
    public SpikeGuardConfig SpikeGuard { get; init; } = new();
    public string? InjectSpike { get; init; }          // "STEP[:FACTOR]": scale the loss gradient of that step's batch (fault injection)
}

/// <summary>What one step did, as written to metrics.jsonl and shown on the progress bar.</summary>
public sealed record StepMetrics(
    long Step, double Loss, double ZLoss, double GradNorm, double Lr, int Batch, long Tokens,
    double TokensPerS, double Mfu, double StepSeconds, double ElapsedSeconds, long BatchIndex);

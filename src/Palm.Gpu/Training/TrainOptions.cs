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

/// <summary>
/// What a resumed run may change about where and how it goes on; null keeps the checkpoint's value. The model,
/// tokenizer, batch schedule, seed and optimizer are the checkpoint's and cannot be overridden (the data may
/// move: <see cref="Data"/> is checked against the checkpoint's fingerprint).
/// </summary>
public sealed record ResumeOverrides
{
    public long? Steps { get; init; }
    public string? OutDir { get; init; }
    public string? Data { get; init; }                 // the same data at another path
    public int? Threads { get; init; }
    public double? PeakGflops { get; init; }
    public string? Backend { get; init; }
    public int? Device { get; init; }
    public string? Mesh { get; init; }                 // "DxM"; setting it also sets ShardWeights (default off)
    public bool? ShardWeights { get; init; }
    public Sharding.CollectiveTransport? Collectives { get; init; }
    public long? CheckpointEvery { get; init; }
    public string? InjectSpike { get; init; }
    public bool? SpikeGuardEnabled { get; init; }
    public long? RollbackSteps { get; init; }
    public long? MinSkip { get; init; }
    public long? MaxSkip { get; init; }
    public int? MaxRollbacks { get; init; }

    /// <summary>The checkpoint's options with these changes.</summary>
    public TrainOptions ApplyTo(TrainOptions saved) => saved with
    {
        Steps = Steps ?? saved.Steps,
        OutDir = OutDir ?? saved.OutDir,
        Data = Data ?? saved.Data,
        Threads = Threads ?? saved.Threads,
        PeakGflops = PeakGflops ?? saved.PeakGflops,
        Backend = Backend ?? saved.Backend,
        Device = Device ?? saved.Device,
        Mesh = Mesh ?? saved.Mesh,
        ShardWeights = Mesh is null ? ShardWeights ?? saved.ShardWeights : ShardWeights ?? false,
        Collectives = Collectives ?? saved.Collectives,
        CheckpointEvery = CheckpointEvery ?? saved.CheckpointEvery,
        InjectSpike = InjectSpike ?? saved.InjectSpike,
        SpikeGuard = saved.SpikeGuard with
        {
            Enabled = SpikeGuardEnabled ?? saved.SpikeGuard.Enabled,
            RollbackSteps = RollbackSteps ?? saved.SpikeGuard.RollbackSteps,
            MinSkip = MinSkip ?? saved.SpikeGuard.MinSkip,
            MaxSkip = MaxSkip ?? saved.SpikeGuard.MaxSkip,
            MaxRollbacks = MaxRollbacks ?? saved.SpikeGuard.MaxRollbacks,
        },
    };
}

using Palm.Gpu.Model;
using static TorchSharp.torch;

namespace Palm.Gpu.TorchPeer;

/// <summary>Command line of the peer benchmark; names and defaults follow `palm bench` where both have the flag.</summary>
internal sealed record PeerOptions
{
    public string Preset { get; init; } = "small";
    public int Batch { get; init; } = 4;
    public int? Seq { get; init; }
    public int Steps { get; init; } = 3;
    public int Warmup { get; init; } = 1;
    public int Threads { get; init; } = Environment.ProcessorCount;
    public BlockKind Block { get; init; } = BlockKind.Parallel;
    public string Dtype { get; init; } = "fp32";
    public string Data { get; init; } = DefaultData;
    public bool Check { get; init; }
    public int CheckSteps { get; init; } = 20;

    /// <summary>The corpus beside the checkout (../shared), as palm's docs use it, relative to the current directory.</summary>
    public const string DefaultData = "../shared/data/tinyshakespeare.txt";

    public const string Usage = """
        palm-torch-peer: palm's model in libtorch (TorchSharp), timed like `palm bench`: one JSON line on stdout, a summary on stderr.
          --preset NAME        model shape (palm's presets; default small)
          --batch N            sequences per step (default 4)
          --seq N              sequence length (default: the preset's)
          --steps N            timed steps (default 3)
          --warmup N           untimed steps first (default 1)
          --threads N          torch.set_num_threads and the peak measurement (default: all cores)
          --block KIND         parallel (PaLM) or serial (default parallel)
          --dtype TYPE         fp32, or bf16 matmuls and attention on fp32 master weights (default fp32)
          --data FILE|random   token batches from a file's bytes, or uniform ids in [0, V) (default ../shared/data/tinyshakespeare.txt)
          --check              correctness instead of speed: step-0 loss and gradients against palm's CPU model on the same
                               weights and batch, then --check-steps (default 20) Adam steps on the text, whose loss must fall
        """;

    public ScalarType ComputeType => Dtype == "bf16" ? ScalarType.BFloat16 : ScalarType.Float32;

    public ModelConfig Config()
    {
        var c = ModelConfig.Preset(Preset) with { Block = Block };
        if (Seq is int t) c = c with { SeqLen = t };
        return c.Validate();
    }

    /// <summary>Parses the arguments; a <see cref="ConfigException"/> names the flag that is wrong and what it accepts.</summary>
    public static PeerOptions Parse(string[] args)
    {
        var o = new PeerOptions();
        for (int i = 0; i < args.Length; i++)
        {
            string flag = args[i];
            if (flag == "--check") { o = o with { Check = true }; continue; }
            if (flag is "--help" or "-h") throw new HelpRequested();
            if (i + 1 >= args.Length) throw new ConfigException($"{flag} needs a value (see --help)");
            string value = args[++i];
            o = flag switch
            {
                "--preset" => o with { Preset = value },
                "--batch" => o with { Batch = Positive(flag, value) },
                "--seq" => o with { Seq = Positive(flag, value) },
                "--steps" => o with { Steps = Positive(flag, value) },
                "--warmup" => o with { Warmup = NonNegative(flag, value) },
                "--threads" => o with { Threads = Positive(flag, value) },
                "--check-steps" => o with { CheckSteps = Positive(flag, value) },
                "--block" => o with
                {
                    Block = value switch
                    {
                        "parallel" => BlockKind.Parallel,
                        "serial" => BlockKind.Serial,
                        _ => throw new ConfigException($"--block must be parallel or serial, got '{value}'"),
                    },
                },
                "--dtype" => value is "fp32" or "bf16" ? o with { Dtype = value } : throw new ConfigException($"--dtype must be fp32 or bf16, got '{value}'"),
                "--data" => o with { Data = value },
                _ => throw new ConfigException($"unknown flag '{flag}' (see --help)"),
            };
        }
        ModelConfig.Preset(o.Preset);   // an unknown preset is named with the list of presets
        return o;
    }

    static int Positive(string flag, string value) =>
        int.TryParse(value, out int n) && n >= 1 ? n : throw new ConfigException($"{flag} must be an integer ≥ 1, got '{value}'");

    static int NonNegative(string flag, string value) =>
        int.TryParse(value, out int n) && n >= 0 ? n : throw new ConfigException($"{flag} must be an integer ≥ 0, got '{value}'");
}

internal sealed class HelpRequested : Exception;

using System.CommandLine;
using Palm.Gpu.Data;
using Palm.Gpu.Model;

namespace Palm.Cli;

/// <summary>Options shared by several verbs, and the one place user errors become one line on stderr.</summary>
internal static class Cli
{
    public static Option<string> Preset() => new("--preset") { Description = "model shape: tiny, small, palm-8b, palm-62b, palm-540b", DefaultValueFactory = _ => "small" };
    public static Option<string> Backend() => new("--backend") { Description = "cpu or opencl", DefaultValueFactory = _ => "cpu" };
    public static Option<int> Device() => new("--device") { Description = "device index within the backend (see `palm devices`)" };
    public static Option<int> Threads() => new("--threads") { Description = "CPU worker threads (0 = all cores)" };
    public static Option<string?> Block() => new("--block") { Description = "parallel (PaLM) or serial blocks" };
    public static Option<string?> Attention() => new("--attention") { Description = "multi-query (PaLM) or multi-head" };
    public static Option<bool> Remat() => new("--remat") { Description = "rematerialise block internals in backward (less memory, ~1/3 more compute)" };
    public static Option<int?> Seq() => new("--seq") { Description = "sequence length (default: the preset's)" };
    /// <summary>Shape overrides on top of a preset: --layers --d-model --heads --head-dim --d-ff.</summary>
    public sealed class ShapeOptions
    {
        public readonly Option<int?> Layers = new("--layers") { Description = "number of blocks (default: the preset's)" };
        public readonly Option<int?> DModel = new("--d-model") { Description = "model width (default: the preset's)" };
        public readonly Option<int?> Heads = new("--heads") { Description = "query heads (default: the preset's)" };
        public readonly Option<int?> HeadDim = new("--head-dim") { Description = "head width, even (default: the preset's)" };
        public readonly Option<int?> DFf = new("--d-ff") { Description = "SwiGLU hidden width (default: the preset's)" };

        public IEnumerable<Option> All => [Layers, DModel, Heads, HeadDim, DFf];

        public ModelConfig Apply(ModelConfig c, ParseResult r) => (c with
        {
            Layers = r.GetValue(Layers) ?? c.Layers,
            DModel = r.GetValue(DModel) ?? c.DModel,
            Heads = r.GetValue(Heads) ?? c.Heads,
            HeadDim = r.GetValue(HeadDim) ?? c.HeadDim,
            DFf = r.GetValue(DFf) ?? c.DFf,
        }).Validate();
    }

    public static Option<double> PeakGflops() => new("--peak-gflops") { Description = "fp32 peak in GFLOP/s for MFU: the device's, or all mesh devices' together (default: measured)" };

    /// <summary>Applies the shape overrides a verb was given to a preset.</summary>
    public static ModelConfig Resolve(string preset, string? block, string? attention, bool remat, int? seq, int? vocab = null)
    {
        var c = ModelConfig.Preset(preset);
        if (block is not null)
            c = c with
            {
                Block = block.ToLowerInvariant() switch
                {
                    "parallel" => BlockKind.Parallel,
                    "serial" => BlockKind.Serial,
                    _ => throw new ConfigException($"--block must be parallel or serial, got '{block}'"),
                },
            };
        if (attention is not null)
            c = c with
            {
                Attention = attention.ToLowerInvariant() switch
                {
                    "multi-query" or "mqa" => AttentionKind.MultiQuery,
                    "multi-head" or "mha" => AttentionKind.MultiHead,
                    _ => throw new ConfigException($"--attention must be multi-query or multi-head, got '{attention}'"),
                },
            };
        if (remat) c = c with { Rematerialize = true };
        if (seq is not null) c = c with { SeqLen = seq.Value };
        if (vocab is not null) c = c with { Vocab = vocab.Value };
        return c.Validate();
    }

    /// <summary>Runs a verb; a user error prints one line "palm: error: ..." and exits 2, anything else exits 1 with details.</summary>
    public static int Run(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e) when (e is ConfigException or DataException or InvalidDataException or FileNotFoundException
                                      or DirectoryNotFoundException or IOException or ArgumentException or UnauthorizedAccessException or NotSupportedException or Palm.Gpu.Backends.OpenCl.OpenClException)
        {
            Console.Error.WriteLine($"palm: error: {e.Message}");
            return 2;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("palm: interrupted");
            return 130;
        }
    }
}

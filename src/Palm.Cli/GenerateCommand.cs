using System.CommandLine;
using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.Inference;
using Palm.Gpu.IO;

namespace Palm.Cli;

/// <summary>`palm generate`: sample text from a run's weights.</summary>
internal static class GenerateCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "model.safetensors, or a run directory holding one", DefaultValueFactory = _ => "runs/latest" };
        var prompt = new Option<string>("--prompt") { Description = "text to continue", DefaultValueFactory = _ => "" };
        var tokens = new Option<int>("--tokens") { Description = "tokens to generate", DefaultValueFactory = _ => 200 };
        var temperature = new Option<float>("--temperature") { Description = "sampling temperature (0 = greedy)", DefaultValueFactory = _ => 0.8f };
        var topK = new Option<int>("--top-k") { Description = "sample among the k most likely tokens (0 = all)", DefaultValueFactory = _ => 40 };
        var seed = new Option<ulong>("--seed") { Description = "sampling seed", DefaultValueFactory = _ => 1 };
        var window = new Option<int>("--window") { Description = "context window in tokens, 1 to the training length (default: 256, or the training length if shorter)" };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "tokenizer file (default: the one recorded in the weights)" };
        var backend = Cli.Backend();
        var device = Cli.Device();
        var threads = Cli.Threads();
        var cmd = new Command("generate", "sample text from saved weights") { model, prompt, tokens, temperature, topK, seed, window, tokenizer, backend, device, threads };
        cmd.SetAction(r => Cli.Run(() =>
        {
            Cli.CheckDevice(r.GetValue(backend)!, r.GetValue(device), r.GetResult(device) is { Implicit: false });
            string path = WeightsPath(r.GetValue(model)!);
            var tok = LoadTokenizer(r.GetValue(tokenizer) ?? ModelWeights.ReadMetadata(path).GetValueOrDefault("tokenizer", "bytes"));
            using var be = BackendRegistry.Create(r.GetValue(backend)!, r.GetValue(device), r.GetValue(threads));
            using var gen = new TextGenerator(be, path, tok, r.GetValue(window));
            string p = r.GetValue(prompt)!;
            Console.Write(p);
            gen.Generate(p, r.GetValue(tokens), r.GetValue(temperature), r.GetValue(topK), r.GetValue(seed), piece => Console.Write(piece));
            Console.WriteLine();
            return 0;
        }));
        return cmd;
    }

    /// <summary>Accepts a weights file or a run directory.</summary>
    public static string WeightsPath(string pathOrRun)
    {
        if (Directory.Exists(pathOrRun))
        {
            string f = Path.Combine(pathOrRun, "model.safetensors");
            if (!File.Exists(f)) throw new FileNotFoundException($"run directory '{pathOrRun}' has no model.safetensors; train first (palm train --out {pathOrRun})");
            return f;
        }
        if (!File.Exists(pathOrRun)) throw new FileNotFoundException($"'{pathOrRun}' is neither a weights file nor a run directory");
        return pathOrRun;
    }

    public static ITokenizer LoadTokenizer(string spec) => spec == "bytes" ? new ByteTokenizer() : TokenizerLoader.Load(spec);
}

using System.CommandLine;
using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.Inference;
using Palm.Gpu.IO;
using Palm.Gpu.Model;

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
        var topP = new Option<float>("--top-p") { Description = "sample among the most likely tokens holding this much probability (1 = all)", DefaultValueFactory = _ => 1f };
        var prompts = new Option<string?>("--prompts") { Description = "file of prompts, one per line, generated together as one batch; prints one JSON line {prompt, text} per prompt" };
        var noCache = new Option<bool>("--no-kv-cache") { Description = "run a full forward over the window for every token (the slow reference path; slides the window past the training length)" };
        var seed = new Option<ulong>("--seed") { Description = "sampling seed", DefaultValueFactory = _ => 1 };
        var window = new Option<int>("--window") { Description = "context in tokens, 1 to the training length (default: the training length; with --no-kv-cache 256, or the training length if shorter)" };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "tokenizer file (default: the one recorded in the weights)" };
        var backend = Cli.Backend();
        var device = Cli.Device();
        var threads = Cli.Threads();
        var cmd = new Command("generate", "sample text from saved weights") { model, prompt, prompts, tokens, temperature, topK, topP, noCache, seed, window, tokenizer, backend, device, threads };
        cmd.SetAction(r => Cli.Run(() =>
        {
            Cli.CheckDevice(r.GetValue(backend)!, r.GetValue(device), r.GetResult(device) is { Implicit: false });
            string path = WeightsPath(r.GetValue(model)!);
            var tok = LoadTokenizer(r.GetValue(tokenizer) ?? ModelWeights.ReadMetadata(path).GetValueOrDefault("tokenizer", "bytes"));
            using var be = BackendRegistry.Create(r.GetValue(backend)!, r.GetValue(device), r.GetValue(threads));
            string p = r.GetValue(prompt)!;
            int n = r.GetValue(tokens);
            if (n < 1) throw new ConfigException($"--tokens must be ≥ 1, got {n}");
            var clock = new System.Diagnostics.Stopwatch();
            string text;
            if (r.GetValue(prompts) is { } file)
            {
                if (r.GetValue(noCache)) throw new ConfigException("--prompts needs the KV-cache path; drop --no-kv-cache");
                if (r.GetResult(prompt) is { Implicit: false }) throw new ConfigException("give --prompt or --prompts, not both");
                if (!File.Exists(file)) throw new FileNotFoundException($"--prompts: '{file}' does not exist");
                var lines = File.ReadAllLines(file).Where(l => l.Length > 0).ToArray();
                if (lines.Length == 0) throw new ConfigException($"--prompts: '{file}' holds no prompt (one per line)");
                using var gen = new KvCacheGenerator(be, path, tok, r.GetValue(window), maxBatch: lines.Length);
                var sampling = new SamplingOptions(r.GetValue(temperature), r.GetValue(topK), r.GetValue(topP));
                gen.Validate(lines, n, sampling);
                var texts = gen.Generate(lines, n, sampling, r.GetValue(seed));
                for (int i = 0; i < lines.Length; i++)
                    Console.WriteLine(System.Text.Json.JsonSerializer.Serialize(new { prompt = lines[i], text = texts[i] }));
                var (prefill, decode, decoded) = gen.LastTiming;
                Console.Error.WriteLine($"{lines.Length} prompts: {decoded} tokens decoded in {decode:F2} s: {decoded / Math.Max(decode, 1e-9):F1} tokens/s " +
                                        $"(prefill {prefill:F2} s; KV cache {gen.CacheBytesPerToken} bytes per token per sequence)");
            }
            else if (r.GetValue(noCache))
            {
                if (r.GetValue(topP) != 1f) throw new ConfigException("--top-p needs the KV-cache path; drop --no-kv-cache");
                using var gen = new TextGenerator(be, path, tok, r.GetValue(window));
                Console.Write(p);
                clock.Restart();
                text = gen.Generate(p, n, r.GetValue(temperature), r.GetValue(topK), r.GetValue(seed), piece => Console.Write(piece));
                Console.WriteLine();
                int made = tok.Encode(text).Length;
                Console.Error.WriteLine($"{made} new tokens in {clock.Elapsed.TotalSeconds:F2} s: {made / Math.Max(clock.Elapsed.TotalSeconds, 1e-9):F1} tokens/s (no KV cache)");
            }
            else
            {
                using var gen = new KvCacheGenerator(be, path, tok, r.GetValue(window));
                var sampling = new SamplingOptions(r.GetValue(temperature), r.GetValue(topK), r.GetValue(topP));
                gen.Validate([p], n, sampling);   // refuse before any output
                Console.Write(p);
                text = gen.Generate(p, n, sampling, r.GetValue(seed), piece => Console.Write(piece));
                Console.WriteLine();
                var (prefill, decode, decoded) = gen.LastTiming;
                Console.Error.WriteLine($"{decoded} tokens decoded in {decode:F2} s: {decoded / Math.Max(decode, 1e-9):F1} tokens/s " +
                                        $"(prefill {prefill:F2} s; KV cache {gen.CacheBytesPerToken} bytes per token)");
            }
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

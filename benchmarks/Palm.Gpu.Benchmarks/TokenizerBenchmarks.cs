using System.Diagnostics;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Palm.Gpu.Data;

namespace Palm.Gpu.Benchmarks;

/// <summary>
/// Encoding throughput on tiny Shakespeare (1.1 MB), line by line as spm_encode reads it, with the
/// ids formatted as text like `spm_encode --output_format=id`:
///   Ours(1 thread), Ours(all cores) — this repository's encoders (SentencePiece models, and our BPE);
///   SpmEncode — Debian's spm_encode process on the same file and model (skipped when not installed).
/// The MB/s column is file bytes ÷ mean time. Run: dotnet run -c Release -- --filter '*Tokenizer*'
/// </summary>
[Config(typeof(ThroughputConfig))]
[SimpleJob(warmupCount: 2, iterationCount: 6)]
public class TokenizerBenchmarks
{
    static byte[] _text = [];
    static string _textPath = "";
    IUtf8Tokenizer _tok = null!;
    string _modelPath = "";

    /// <summary>bpe / unigram: SentencePiece models from the test references; palm-bpe: our BPE trained on the file (32k requested).</summary>
    [Params("bpe", "unigram", "palm-bpe")]
    public string Model { get; set; } = "bpe";

    [GlobalSetup]
    public void Setup()
    {
        _textPath = Find(Path.Combine("shared", "data", "tinyshakespeare.txt"));
        _text = File.ReadAllBytes(_textPath);
        if (Model == "palm-bpe")
        {
            _modelPath = Path.Combine(Path.GetTempPath(), "palm-bench-bpe.json");
            BpeTrainer.TrainUtf8([_text], new BpeTrainerOptions { VocabSize = 32000 }).Save(_modelPath);
        }
        else _modelPath = Find(Path.Combine("tests", "Palm.Gpu.Tests", "Reference", "sentencepiece", Model + ".model"));
        _tok = TokenizerLoader.Load(_modelPath);
    }

    static string Find(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            foreach (var candidate in new[] { Path.Combine(dir.FullName, relative), Path.Combine(dir.FullName, "..", relative) })
                if (File.Exists(candidate)) return Path.GetFullPath(candidate);
        }
        throw new FileNotFoundException($"cannot find {relative} above {AppContext.BaseDirectory}");
    }

    [Benchmark(Baseline = true)]
    public void OursOneThread() => LineCoder.EncodeLines(_tok, new MemoryStream(_text), Stream.Null, threads: 1);

    [Benchmark]
    public void OursAllCores() => LineCoder.EncodeLines(_tok, new MemoryStream(_text), Stream.Null, threads: Environment.ProcessorCount);

    [Benchmark]
    public void SpmEncode()
    {
        if (Model == "palm-bpe" || !File.Exists("/usr/bin/spm_encode")) return;
        var psi = new ProcessStartInfo("/usr/bin/spm_encode", ["--model=" + _modelPath, "--output_format=id", "--input=" + _textPath, "--output=/dev/null"])
        {
            UseShellExecute = false,
        };
        using var p = Process.Start(psi)!;
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"spm_encode exited with {p.ExitCode}");
    }

    public static long TextBytes => _text.Length;

    sealed class ThroughputConfig : ManualConfig
    {
        public ThroughputConfig() => AddColumn(MetricColumn.FromSeconds("MB/s", "Megabytes of input text encoded per second (file bytes / mean)",
            (_, seconds) => (new FileInfo(Find(Path.Combine("shared", "data", "tinyshakespeare.txt"))).Length / 1e6 / seconds).ToString("F1")));
    }
}

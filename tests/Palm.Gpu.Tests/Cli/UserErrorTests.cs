using System.Diagnostics;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Cli;

/// <summary>Every user error is one "palm: error:" line and exit 2; a defect is a trace and a request to report it; nothing is silently clamped or lost.</summary>
public class UserErrorTests
{
    static void AssertOneErrorLine(CliRunner.Result r, string expected, string what)
    {
        Assert.True(r.ExitCode == 2, $"{what}: exit {r.ExitCode}\n{r.Stderr}");
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"{what}: expected one error line, got:\n{r.Stderr}");
        Assert.StartsWith("palm: error: ", lines[0]);
        Assert.Contains(expected, lines[0]);
        Assert.DoesNotContain("System.", lines[0]);
        Assert.DoesNotContain("Exception", lines[0]);
    }

    public static TheoryData<string, string[], string> BadCommands => new()
    {
        { "a model too big for memory", ["train", "--preset", "palm-8b", "--steps", "1", "--out", "@run"], "GiB" },
        { "100000 layers", ["train", "--preset", "tiny", "--layers", "100000", "--steps", "1", "--out", "@run"], "what would fit" },
        { "a word for a number", ["train", "--steps", "abc", "--out", "@run"], "as a whole number" },
        { "too many threads", ["train", "--preset", "tiny", "--threads", "100000", "--out", "@run"], "--threads" },
        { "a NaN peak", ["train", "--preset", "tiny", "--peak-gflops", "NaN", "--out", "@run"], "--peak-gflops" },
        { "a device the CPU does not have", ["train", "--preset", "tiny", "--device", "3", "--out", "@run"], "one device" },
        { "an OpenCL device that does not exist", ["train", "--backend", "opencl", "--device", "9", "--preset", "tiny", "--out", "@run"], "OpenCL device index 9 does not exist" },
        { "tokenizer encode with a missing tokenizer", ["tokenizer", "encode", "--tokenizer", "@missing.json"], "does not exist" },
        { "tokenizer train on missing data", ["tokenizer", "train", "--data", "@missing.txt", "--out", "@tok.json"], "does not exist" },
        { "tokenizer train with a NaN coverage", ["tokenizer", "train", "--data", "@data.txt", "--out", "@tok.json", "--coverage", "NaN"], "--coverage" },
        { "tokenize missing data", ["tokenize", "--data", "@missing.txt", "--out", "@c.tokens"], "does not exist" },
        { "generate from a header that is an array", ["generate", "--model", "@array.safetensors"], "not a JSON object" },
        { "eval of a header with shape [-1]", ["eval", "--model", "@negative.safetensors", "--data", "@data.txt"], "whole numbers" },
        { "plot of a line that is {}", ["plot", "@emptyobject"], "no whole-number \"step\"" },
        { "plot of a line that is [1,2]", ["plot", "@array"], "not an object" },
    };

    [Theory]
    [MemberData(nameof(BadCommands))]
    public void BadInputIsOneLineAndExit2(string what, string[] args, string expected)
    {
        string dir = CliRunner.TempDir();
        File.WriteAllText(Path.Combine(dir, "data.txt"), string.Concat(Enumerable.Repeat("some text to read. ", 50)));
        WriteHeader(Path.Combine(dir, "array.safetensors"), "[]");
        WriteHeader(Path.Combine(dir, "negative.safetensors"), """{"embedding": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "__metadata__": {"format": "palm-gpu/1"}}""");
        foreach (var (name, line) in new[] { ("emptyobject", "{}"), ("array", "[1,2]") })
        {
            Directory.CreateDirectory(Path.Combine(dir, name));
            File.WriteAllText(Path.Combine(dir, name, "metrics.jsonl"), """{"step": 1, "loss": 2.0, "grad_norm": 1.0}""" + "\n" + line + "\n");
        }
        var full = args.Select(a => a.StartsWith('@') ? Path.Combine(dir, a[1..]) : a).ToArray();
        var r = CliRunner.Run(full);
        AssertOneErrorLine(r, expected, what);
        Assert.False(Directory.Exists(Path.Combine(dir, "run")), $"{what}: a run directory was written");
    }

    static void WriteHeader(string path, string header)
    {
        var h = System.Text.Encoding.UTF8.GetBytes(header);
        using var fs = File.Create(path);
        fs.Write(BitConverter.GetBytes((ulong)h.Length));
        fs.Write(h);
        fs.Write(new byte[16]);
    }

    [Fact]
    public void GenerateOptionsOutOfRangeAreRefusedNotClamped()
    {
        string run = Path.Combine(CliRunner.TempDir(), "run");
        Assert.Equal(0, CliRunner.Run("train", "--preset", "tiny", "--steps", "1", "--batch", "2", "--out", run, "--peak-gflops", "100").ExitCode);
        AssertOneErrorLine(CliRunner.Run("generate", "--model", run, "--window", "100000", "--tokens", "2"), "--window", "window past the training length");
        AssertOneErrorLine(CliRunner.Run("generate", "--model", run, "--top-k", "-3", "--tokens", "2"), "--top-k", "negative top-k");
        AssertOneErrorLine(CliRunner.Run("generate", "--model", run, "--top-k", "100000", "--tokens", "2"), "--top-k", "top-k past the vocabulary");
        AssertOneErrorLine(CliRunner.Run("generate", "--model", run, "--top-p", "0", "--tokens", "2"), "--top-p", "top-p of 0");
        AssertOneErrorLine(CliRunner.Run("generate", "--model", run, "--tokens", "0"), "--tokens", "no tokens to generate");
        var tooLong = CliRunner.Run("generate", "--model", run, "--prompt", "abc", "--tokens", "1000");
        AssertOneErrorLine(tooLong, "longer than the context", "a context past the training length");
        Assert.Equal("", tooLong.Stdout);   // refused before any output
        string empty = Path.Combine(CliRunner.TempDir(), "empty.txt");
        File.WriteAllText(empty, "\n\n");
        AssertOneErrorLine(CliRunner.Run("generate", "--model", run, "--prompts", empty, "--tokens", "2"), "holds no prompt", "an empty prompt file");
    }

    [Fact]
    public void GeneratePromptsFileDecodesABatchAsEachPromptAlone()
    {
        string dir = CliRunner.TempDir();
        string run = Path.Combine(dir, "run");
        Assert.Equal(0, CliRunner.Run("train", "--preset", "tiny", "--steps", "1", "--batch", "2", "--out", run, "--peak-gflops", "100").ExitCode);
        string file = Path.Combine(dir, "prompts.txt");
        File.WriteAllLines(file, ["to be", "", "x"]);
        var batch = CliRunner.Run("generate", "--model", run, "--prompts", file, "--tokens", "6", "--temperature", "0");
        Assert.True(batch.ExitCode == 0, batch.Stderr);
        var lines = batch.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, lines.Length);   // the empty line is skipped
        foreach (var (line, p) in lines.Zip(new[] { "to be", "x" }))
        {
            using var doc = System.Text.Json.JsonDocument.Parse(line);
            Assert.Equal(p, doc.RootElement.GetProperty("prompt").GetString());
            var alone = CliRunner.Run("generate", "--model", run, "--prompt", p, "--tokens", "6", "--temperature", "0");
            Assert.Equal(p + doc.RootElement.GetProperty("text").GetString() + "\n", alone.Stdout.ReplaceLineEndings("\n"));
        }
    }

    [Fact]
    public void GenerateWritesMultiByteCharactersWhole()
    {
        string dir = CliRunner.TempDir();
        string data = Path.Combine(dir, "cafe.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat("café crème, café noir. ", 200)));
        string run = Path.Combine(dir, "run");
        var t = CliRunner.Run("train", "--data", data, "--preset", "tiny", "--seq", "32", "--batch", "4", "--steps", "150", "--lr", "0.02", "--out", run, "--peak-gflops", "100");
        Assert.True(t.ExitCode == 0, t.Stderr);
        // With the KV cache the context ([eod], 14 prompt bytes, 17 new) fills the training length; without, the window slides.
        foreach (var args in new[] { new[] { "--tokens", "17" }, ["--tokens", "24", "--no-kv-cache"] })
        {
            var g = CliRunner.Run(["generate", "--model", run, "--prompt", "café crème, ", "--temperature", "0", .. args]);
            Assert.True(g.ExitCode == 0, g.Stderr);
            Assert.DoesNotContain("\uFFFD", g.Stdout);
            Assert.Contains("é", g.Stdout[12..]);   // the model learned the text: the generated part has the accented letter, whole
            Assert.Contains("tokens/s", g.Stderr);
        }
    }

    [Fact]
    public void PlotReadsARunWhoseLastLineIsStillBeingWritten()
    {
        string run = CliRunner.TempDir();
        File.WriteAllText(Path.Combine(run, "metrics.jsonl"), """{"step": 1, "loss": 2.0, "grad_norm": 1.0}""" + "\n" + """{"step": 2, "loss": 1.9, "grad_norm": 1.0}""" + "\n" + """{"step": 3, "lo""");
        var r = CliRunner.Run("plot", run);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("2 steps", r.Stdout);
    }

    [Fact]
    public void SymlinksInADataDirectoryNeitherLoopNorLeaveIt()
    {
        string root = CliRunner.TempDir();
        string data = Path.Combine(root, "data");
        Directory.CreateDirectory(Path.Combine(data, "sub"));
        File.WriteAllText(Path.Combine(root, "outside.txt"), "OUTSIDE OUTSIDE OUTSIDE");
        File.WriteAllText(Path.Combine(data, "a.txt"), "alpha alpha");
        File.WriteAllText(Path.Combine(data, "sub", "b.txt"), "beta beta");
        Directory.CreateSymbolicLink(Path.Combine(data, "sub", "loop"), data);            // a cycle
        Directory.CreateSymbolicLink(Path.Combine(data, "up"), root);                      // a link to ..
        File.CreateSymbolicLink(Path.Combine(data, "again.txt"), Path.Combine(data, "a.txt"));   // a second name for a file
        var files = Palm.Gpu.Data.Corpus.ListFiles(data);
        Assert.Equal([Path.Combine(data, "a.txt"), Path.Combine(data, "sub", "b.txt")], files);
    }

    [Fact]
    public void TokenizeOntoAFullDiskLeavesNoTemporaryFile()
    {
        Assert.True(Environment.UserName == "root", "this test mounts a 1 MiB tmpfs to fill the disk for real; run the tests as root (./test does on CI)");
        string dir = CliRunner.TempDir();
        string corpus = Path.Combine(dir, "corpus.txt");
        File.WriteAllText(corpus, string.Concat(Enumerable.Repeat("a line of text that the byte tokenizer turns into tokens. ", 40_000)));
        string mount = CliRunner.TempDir();
        Assert.Equal(0, Shell.Run($"mount -t tmpfs -o size=1M tmpfs {mount}"));
        try
        {
            var r = CliRunner.Run("tokenize", "--data", corpus, "--out", Path.Combine(mount, "corpus.tokens"));
            Assert.Equal(2, r.ExitCode);
            Assert.Contains("No space left on device", r.Stderr);
            Assert.Empty(Directory.GetFiles(mount));
        }
        finally
        {
            Shell.Run($"umount {mount}");
        }
    }

    [Fact]
    public void ADefectPrintsATraceAndAsksForAReport()
    {
        // An exception palm does not raise for user input (here from a library API misused on purpose) is a bug: trace, exit 1.
        var e = new ArgumentException("an argument a caller should never pass");
        Assert.False(Palm.Cli.Cli.IsUserError(e));
        Assert.True(Palm.Cli.Cli.IsUserError(new Palm.Gpu.Model.ConfigException("bad flag")));
        var stderr = new StringWriter();
        var old = Console.Error;
        Console.SetError(stderr);
        int code;
        try { code = Palm.Cli.Cli.Run(() => throw e); }
        finally { Console.SetError(old); }
        Assert.Equal(1, code);
        Assert.Contains("palm: internal error: ArgumentException", stderr.ToString());
        Assert.Contains("please report it", stderr.ToString());
        Assert.Contains("   at ", stderr.ToString());
    }
}

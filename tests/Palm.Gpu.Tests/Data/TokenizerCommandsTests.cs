using System.CommandLine;
using System.Text;
using Palm.Cli;
using Palm.Gpu.Data;
using Xunit;

namespace Palm.Gpu.Tests.Data;

/// <summary>The CLI layer: spm_encode's line layout, encode → decode round trips, tokenize, errors.</summary>
public sealed class TokenizerCommandsTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), $"palm-cli-{Guid.NewGuid():N}");

    public TokenizerCommandsTests() => Directory.CreateDirectory(_dir);
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static string Encode(IUtf8Tokenizer tok, byte[] input, int threads)
    {
        using var output = new MemoryStream();
        LineCoder.EncodeLines(tok, new MemoryStream(input), output, threads);
        return Encoding.ASCII.GetString(output.ToArray());
    }

    [Fact]
    public void EncodePrintsExactlyWhatSpmEncodePrints()
    {
        var text = SentencePieceTests.Gunzip(Path.Combine(TokenizerFixtures.ReferenceDir, "heldout.txt.gz"));
        var tok = SentencePieceTokenizer.Load(Path.Combine(TokenizerFixtures.ReferenceDir, "unigram.model"));
        var expected = Encoding.ASCII.GetString(SentencePieceTests.Gunzip(Path.Combine(TokenizerFixtures.ReferenceDir, "unigram.ids.gz")));
        Assert.Equal(expected, Encode(tok, text, threads: 1));
        Assert.Equal(expected, Encode(tok, text, threads: 3));
    }

    [Fact]
    public void EncodeThenDecodeReproducesTheInputBytes()
    {
        var tok = TokenizerFixtures.Bpe;
        var input = Encoding.UTF8.GetBytes("line one\r\n\n  indented\ttab 123\nno final newline é😀");
        input = [.. input[..5], 0xFF, 0xC3, .. input[5..]];              // invalid UTF-8 too
        var ids = Encode(tok, input, 2);
        Assert.Equal(4, ids.Count(c => c == '\n'));
        using var decoded = new MemoryStream();
        LineCoder.DecodeLines(tok, new MemoryStream(Encoding.ASCII.GetBytes(ids)), decoded);
        Assert.Equal([.. input, (byte)'\n'], decoded.ToArray());
        var e = Assert.Throws<DataException>(() => LineCoder.DecodeLines(tok, new MemoryStream("1 2 x\n"u8.ToArray()), new MemoryStream()));
        Assert.Contains("line 1", e.Message);
    }

    static int Run(Command command, params string[] args)
    {
        var root = new RootCommand { command };
        return root.Parse(args).Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false, Output = TextWriter.Null });
    }

    [Fact]
    public void TrainAndTokenizeCommandsWriteUsableFiles()
    {
        var corpus = Path.Combine(_dir, "corpus.txt");
        File.WriteAllBytes(corpus, TokenizerFixtures.MixedText[..60_000]);
        var json = Path.Combine(_dir, "tok.json");
        var tokens = Path.Combine(_dir, "corpus.tokens");
        Assert.Equal(0, Run(TokenizerCommands.CreateTokenizerCommand(), "tokenizer", "train", "--data", corpus, "--vocab", "400", "--out", json, "--threads", "2"));
        var tok = TokenizerLoader.Load(json);
        Assert.Equal(400, tok.VocabSize);
        Assert.Equal(0, Run(TokenizerCommands.CreateTokenizeCommand(), "tokenize", "--data", corpus, "--tokenizer", json, "--out", tokens));
        var header = TokenFile.ReadHeader(tokens);
        Assert.Equal(tok.VocabularyHash, header.VocabularyHash);
        Assert.Equal(tok.Encode(File.ReadAllText(corpus)).Length + 1, header.TokenCount);
    }

    [Fact]
    public void LoaderPicksTheTokenizerByContent()
    {
        Assert.IsType<ByteTokenizer>(TokenizerLoader.Load("bytes"));
        Assert.IsType<ByteTokenizer>(TokenizerLoader.Load(null));
        var model = Path.Combine(_dir, "renamed.bin");
        File.Copy(Path.Combine(TokenizerFixtures.ReferenceDir, "unigram.model"), model);
        Assert.Equal("sentencepiece-unigram", TokenizerLoader.Load(model).Kind);
        Assert.Contains("directory", Assert.Throws<DataException>(() => TokenizerLoader.Load(_dir)).Message);
        Assert.Contains("does not exist", Assert.Throws<DataException>(() => TokenizerLoader.Load(Path.Combine(_dir, "nope.json"))).Message);
    }

    [Fact]
    public void BadInputIsOneUserErrorLineAndExit2()
    {
        // The verbs run under the CLI's error handler: a DataException is the one line "palm: error: ...", never an unhandled exception.
        var stderr = new StringWriter();
        var old = Console.Error;
        Console.SetError(stderr);
        try
        {
            File.WriteAllText(Path.Combine(_dir, "empty.txt"), "");
            Assert.Equal(2, Run(TokenizerCommands.CreateTokenizeCommand(), "tokenize", "--data", Path.Combine(_dir, "empty.txt"), "--out", Path.Combine(_dir, "x.tokens")));
            File.WriteAllBytes(Path.Combine(_dir, "bad.model"), [0x0A, 0xFF, 0x01]);
            Assert.Equal(2, Run(TokenizerCommands.CreateTokenizeCommand(), "tokenize", "--data", Path.Combine(_dir, "empty.txt"), "--tokenizer", Path.Combine(_dir, "bad.model"), "--out", Path.Combine(_dir, "x.tokens")));
            Assert.Equal(2, Run(TokenizerCommands.CreateTokenizerCommand(), "tokenizer", "train", "--data", Path.Combine(_dir, "missing"), "--out", Path.Combine(_dir, "t.json")));
        }
        finally { Console.SetError(old); }
        var lines = stderr.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, lines.Length);
        Assert.All(lines, l => Assert.StartsWith("palm: error: ", l));
        Assert.Contains("bad.model", lines[1]);
        Assert.Contains("does not exist", lines[2]);
    }
}

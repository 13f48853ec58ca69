using System.Text;
using Palm.Gpu.Data;
using Xunit;

namespace Palm.Gpu.Tests.Data;

/// <summary>Corpus reading, token files (format, determinism, bad input) and datasets over them.</summary>
public sealed class TokenFileTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), $"palm-tok-{Guid.NewGuid():N}");

    public TokenFileTests() => Directory.CreateDirectory(_dir);
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    string PathOf(string name) => Path.Combine(_dir, name);

    string WriteCorpus()
    {
        var root = PathOf("corpus");
        Directory.CreateDirectory(Path.Combine(root, "b", "nested"));
        Directory.CreateDirectory(Path.Combine(root, "a"));
        // A big document (cut into chunks and encoded in parallel), small ones, JSONL, and files that are skipped.
        var big = Encoding.UTF8.GetString(TokenizerFixtures.MixedText);
        File.WriteAllText(Path.Combine(root, "b", "nested", "big.txt"), big + big);
        File.WriteAllText(Path.Combine(root, "a", "one.txt"), "first document\n  indented 42\n");
        File.WriteAllText(Path.Combine(root, "a", "two.md"), "# second\r\nwith CRLF\r\n");
        File.WriteAllText(Path.Combine(root, "b", "docs.jsonl"), "{\"text\": \"json one \\u00e9\"}\n\n{\"text\": \"json two\\nlines\", \"id\": 7}\n");
        File.WriteAllText(Path.Combine(root, "a", "empty.txt"), "");
        File.WriteAllBytes(Path.Combine(root, "a", "image.png"), [0x89, 0x50, 0x4E, 0x47, 0]);
        return root;
    }

    static readonly string[] ExpectedOrder = ["first document\n  indented 42\n", "# second\r\nwith CRLF\r\n", "json one é", "json two\nlines"];

    [Fact]
    public void CorpusReadsFilesInSortedOrderAndJsonLines()
    {
        var docs = Corpus.ReadDocuments(WriteCorpus());
        Assert.Equal(5, docs.Count);
        Assert.Equal(ExpectedOrder, docs.Take(4));          // a/one.txt, a/two.md, b/docs.jsonl ×2, b/nested/big.txt
        Assert.StartsWith("First Citizen", docs[4]);
    }

    [Fact]
    public void TokenFileHoldsEveryDocumentFollowedByEod()
    {
        var corpus = WriteCorpus();
        var tok = TokenizerFixtures.Bpe;
        var header = CorpusTokenizer.Tokenize(corpus, tok, PathOf("c.tokens"), threads: 2);
        var expected = new List<int>();
        foreach (var doc in Corpus.ReadDocuments(corpus)) { expected.AddRange(tok.Encode(doc)); expected.Add(tok.EodId); }

        Assert.Equal(5, header.DocumentCount);
        Assert.Equal(expected.Count, header.TokenCount);
        Assert.Equal(2, header.TokenBytes);
        Assert.Equal(tok.VocabularyHash, header.VocabularyHash);
        Assert.Equal(TokenFile.HeaderBytes + 2L * expected.Count, new FileInfo(PathOf("c.tokens")).Length);
        using var reader = new TokenFileReader(PathOf("c.tokens"));
        var got = new int[reader.Count];
        reader.Copy(0, got);
        Assert.Equal(expected, got);
    }

    [Fact]
    public void TokenFileBytesDoNotDependOnThreadCount()
    {
        var corpus = WriteCorpus();
        foreach (IUtf8Tokenizer tok in new IUtf8Tokenizer[] { TokenizerFixtures.Bpe, SentencePieceTokenizer.Load(Path.Combine(TokenizerFixtures.ReferenceDir, "bpe.model")), new ByteTokenizer() })
        {
            byte[]? first = null;
            foreach (int threads in new[] { 1, 2, 3 })
            {
                var path = PathOf($"t{threads}.tokens");
                CorpusTokenizer.Tokenize(corpus, tok, path, threads);
                var bytes = File.ReadAllBytes(path);
                if (first == null) first = bytes;
                else Assert.True(first.AsSpan().SequenceEqual(bytes), $"{tok.Kind}: {threads} threads wrote different bytes");
            }
        }
    }

    [Fact]
    public void LargeVocabulariesUse32BitTokens()
    {
        // 70 000 kept characters push the vocabulary past 65 536.
        var chars = Enumerable.Range(0x4E00, 0x9FFF - 0x4E00 + 1).Concat(Enumerable.Range(0x20000, 50000)).Take(70000).ToList();
        var tok = new BpeTokenizer(["[pad]", "[eod]"], [], chars, []);
        var text = PathOf("cjk.txt");
        File.WriteAllText(text, "𠀀𠀁 一丁 " + char.ConvertFromUtf32(chars[^1]));
        var header = CorpusTokenizer.Tokenize(text, tok, PathOf("cjk.tokens"), 2);
        Assert.Equal(4, header.TokenBytes);
        using var data = PackedDataset.FromTokenFile(PathOf("cjk.tokens"), tok, seqLen: 4, heldOutFraction: 0);
        var seq = new int[5];
        data.GetTrainSequence(0, seq);
        Assert.Equal(tok.Encode("𠀀𠀁 一丁 ")[..5], seq);
        Assert.Contains(tok.VocabSize - 1, tok.Encode(char.ConvertFromUtf32(chars[^1])));
    }

    [Fact]
    public void DatasetFromTokenFileEqualsDatasetFromDocuments()
    {
        var corpus = WriteCorpus();
        var tok = TokenizerFixtures.Bpe;
        CorpusTokenizer.Tokenize(corpus, tok, PathOf("d.tokens"), 2);
        using var mapped = PackedDataset.Load(PathOf("d.tokens"), tok, seqLen: 64, heldOutFraction: 0.1);
        using var memory = PackedDataset.FromDocuments(Corpus.ReadDocuments(corpus), tok, seqLen: 64, heldOutFraction: 0.1);
        using var loaded = PackedDataset.Load(corpus, tok, seqLen: 64, heldOutFraction: 0.1);
        Assert.Equal(memory.TrainSequences, mapped.TrainSequences);
        Assert.Equal(memory.EvalSequences, mapped.EvalSequences);
        Assert.True(mapped.EvalSequences > 0);
        var a = new int[65]; var b = new int[65]; var c = new int[65];
        for (long i = 0; i < memory.TrainSequences; i += 7)
        {
            memory.GetTrainSequence(i, a); mapped.GetTrainSequence(i, b); loaded.GetTrainSequence(i, c);
            Assert.Equal(a, b);
            Assert.Equal(a, c);
        }
        for (long i = 0; i < memory.EvalSequences; i++)
        {
            memory.GetEvalSequence(i, a); mapped.GetEvalSequence(i, b);
            Assert.Equal(a, b);
        }
    }

    // ---- bad input: each a DataException with a message that names the problem ----

    string MakeTokenFile()
    {
        var text = PathOf("small.txt");
        File.WriteAllText(text, "a small corpus for a token file, repeated. " + string.Concat(Enumerable.Repeat("more words here. ", 50)));
        CorpusTokenizer.Tokenize(text, TokenizerFixtures.Bpe, PathOf("small.tokens"), 1);
        return PathOf("small.tokens");
    }

    [Fact]
    public void TruncatedTokenFileIsRejected()
    {
        var path = MakeTokenFile();
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^3]);
        Assert.Contains("truncated", Assert.Throws<DataException>(() => PackedDataset.FromTokenFile(path, TokenizerFixtures.Bpe, 8)).Message);
        File.WriteAllBytes(path, bytes[..100]);
        Assert.Contains("truncated", Assert.Throws<DataException>(() => PackedDataset.FromTokenFile(path, TokenizerFixtures.Bpe, 8)).Message);
        File.WriteAllBytes(path, [.. bytes, 0, 0]);
        Assert.Contains("trailing", Assert.Throws<DataException>(() => PackedDataset.FromTokenFile(path, TokenizerFixtures.Bpe, 8)).Message);
    }

    [Fact]
    public void WrongMagicAndCorruptHeaderAreRejected()
    {
        var path = MakeTokenFile();
        var bytes = File.ReadAllBytes(path);
        var wrong = (byte[])bytes.Clone();
        wrong[0] = (byte)'X';
        File.WriteAllBytes(path, wrong);
        Assert.Contains("magic", Assert.Throws<DataException>(() => TokenFile.ReadHeader(path)).Message);
        var corrupt = (byte[])bytes.Clone();
        corrupt[20] ^= 1;                                    // token count
        File.WriteAllBytes(path, corrupt);
        Assert.Contains("checksum", Assert.Throws<DataException>(() => TokenFile.ReadHeader(path)).Message);
        var badToken = (byte[])bytes.Clone();
        badToken[TokenFile.HeaderBytes] = 0xFF; badToken[TokenFile.HeaderBytes + 1] = 0xFF;   // id 65535 ≥ vocabulary
        File.WriteAllBytes(path, badToken);
        using var data = PackedDataset.FromTokenFile(path, TokenizerFixtures.Bpe, 8, 0);
        Assert.Contains("outside the vocabulary", Assert.Throws<DataException>(() => data.GetTrainSequence(0, new int[9])).Message);
    }

    [Fact]
    public void VocabularyMismatchIsRejected()
    {
        var path = MakeTokenFile();
        var e = Assert.Throws<DataException>(() => PackedDataset.FromTokenFile(path, new ByteTokenizer(), 8));
        Assert.Contains("different vocabulary", e.Message);
        var other = BpeTrainer.Train(["another corpus entirely"], new BpeTrainerOptions { VocabSize = 270 });
        Assert.Throws<DataException>(() => PackedDataset.Load(path, other, 8));
    }

    [Fact]
    public void EmptyCorporaAreRejected()
    {
        File.WriteAllText(PathOf("empty.txt"), "");
        Assert.Contains("empty", Assert.Throws<DataException>(() => CorpusTokenizer.Tokenize(PathOf("empty.txt"), new ByteTokenizer(), PathOf("e.tokens"), 1)).Message);
        Directory.CreateDirectory(PathOf("emptydir"));
        Assert.Throws<DataException>(() => CorpusTokenizer.Tokenize(PathOf("emptydir"), new ByteTokenizer(), PathOf("e.tokens"), 1));
        File.WriteAllText(Path.Combine(PathOf("emptydir"), "blank.txt"), "");
        Assert.Throws<DataException>(() => CorpusTokenizer.Tokenize(PathOf("emptydir"), new ByteTokenizer(), PathOf("e.tokens"), 1));
        File.WriteAllText(PathOf("blank.jsonl"), "\n\n{\"text\": \"\"}\n");
        Assert.Throws<DataException>(() => CorpusTokenizer.Tokenize(PathOf("blank.jsonl"), new ByteTokenizer(), PathOf("e.tokens"), 1));
        Assert.Throws<DataException>(() => Corpus.ReadDocuments(PathOf("missing")));
        Assert.False(File.Exists(PathOf("e.tokens")) || File.Exists(PathOf("e.tokens.tmp")));
    }

    [Fact]
    public void BadCorpusFilesAreRejected()
    {
        File.WriteAllText(PathOf("bad.jsonl"), "{\"text\": \"ok\"}\n{\"txt\": \"no text field\"}\n");
        Assert.Contains("bad.jsonl:2", Assert.Throws<DataException>(() => Corpus.ReadDocuments(PathOf("bad.jsonl"))).Message);
        File.WriteAllText(PathOf("broken.jsonl"), "{\"text\": \"unterminated\n");
        Assert.Contains("not valid JSON", Assert.Throws<DataException>(() => Corpus.ReadDocuments(PathOf("broken.jsonl"))).Message);
        File.WriteAllBytes(PathOf("latin1.txt"), [0x63, 0x61, 0x66, 0xE9]);
        Assert.Contains("UTF-8", Assert.Throws<DataException>(() => Corpus.ReadDocuments(PathOf("latin1.txt"))).Message);
        File.WriteAllBytes(PathOf("binary.txt"), [0x41, 0x00, 0x42]);
        Assert.Contains("binary", Assert.Throws<DataException>(() => Corpus.ReadDocuments(PathOf("binary.txt"))).Message);
    }
}

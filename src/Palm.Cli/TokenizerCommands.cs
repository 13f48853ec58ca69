using System.CommandLine;
using System.Diagnostics;
using Palm.Gpu.Data;
using Palm.Gpu.Model;
using Spectre.Console;

namespace Palm.Cli;

/// <summary>
/// palm tokenizer train | encode | decode, and palm tokenize (corpus → token file).
/// Errors are <see cref="DataException"/>s whose message is meant for the user.
/// </summary>
public static class TokenizerCommands
{
    public static Command CreateTokenizerCommand()
    {
        var command = new Command("tokenizer", "Train a lossless BPE tokenizer, or encode/decode text with one (palm-bpe .json, SentencePiece .model, or \"bytes\")");
        command.Add(CreateTrainCommand());
        command.Add(CreateEncodeCommand());
        command.Add(CreateDecodeCommand());
        return command;
    }

    static Option<int> ThreadsOption() => new("--threads")
    {
        Description = "Worker threads (the output does not depend on it)",
        DefaultValueFactory = _ => Environment.ProcessorCount,
    };

    static Option<string> TokenizerOption(bool required) => new("--tokenizer")
    {
        Description = "Tokenizer: a palm-bpe .json file, a SentencePiece .model file, or \"bytes\"",
        Required = required,
        DefaultValueFactory = required ? null! : _ => "bytes",
    };

    static Command CreateTrainCommand()
    {
        var data = new Option<string>("--data") { Description = "Corpus: a UTF-8 text file, a .jsonl file (\"text\" field) or a directory", Required = true };
        var vocab = new Option<int>("--vocab") { Description = "Vocabulary size (specials + user symbols + 256 bytes + characters + merges)", DefaultValueFactory = _ => 32000 };
        var output = new Option<string>("--out") { Description = "Where to write the tokenizer JSON", Required = true };
        var user = new Option<string>("--user-defined") { Description = "Comma-separated symbols kept whole wherever they occur", DefaultValueFactory = _ => "" };
        var coverage = new Option<double>("--coverage") { Description = "Character coverage; rarer characters use byte fallback", DefaultValueFactory = _ => 0.9999 };
        var minCount = new Option<long>("--min-pair-count") { Description = "Never merge a pair seen fewer times", DefaultValueFactory = _ => 1 };
        var threads = ThreadsOption();
        var command = new Command("train", "Train a lossless BPE tokenizer (digits split, byte fallback, whitespace kept) and save it as JSON");
        foreach (var o in new Option[] { data, vocab, output, user, coverage, minCount, threads }) command.Add(o);
        command.SetAction(parse => Cli.Run(() =>
        {
            double cov = parse.GetValue(coverage);
            if (!(cov > 0 && cov <= 1)) throw new ConfigException($"--coverage must be in (0, 1], got {cov}");
            var options = new BpeTrainerOptions
            {
                VocabSize = parse.GetValue(vocab),
                UserDefined = [.. (parse.GetValue(user) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries)],
                CharacterCoverage = parse.GetValue(coverage),
                MinPairCount = parse.GetValue(minCount),
                Threads = Math.Max(1, parse.GetValue(threads)),
            };
            string dataPath = parse.GetValue(data)!, outPath = parse.GetValue(output)!;
            var sw = Stopwatch.StartNew();
            var docs = Corpus.ReadDocumentsUtf8(dataPath).ToList();
            var tok = BpeTrainer.TrainUtf8(docs, options, line => Console.WriteLine($"[{sw.Elapsed.TotalSeconds,7:F2}s] {line}"));
            double trainSeconds = sw.Elapsed.TotalSeconds;
            tok.Save(outPath);
            long bytes = docs.Sum(d => (long)d.Length);
            long tokens = EncodeAll(tok, docs, options.Threads);
            Console.WriteLine($"trained {tok.VocabSize:N0} tokens in {trainSeconds:F2} s → {outPath}");
            Console.WriteLine($"on the training data: {tokens:N0} tokens for {bytes:N0} bytes = {(double)tokens / Math.Max(1, bytes):F4} tokens/byte (byte tokenizer: 1.0000)");
            return 0;
        }));
        return command;
    }

    static long EncodeAll(IUtf8Tokenizer tok, List<byte[]> docs, int threads)
    {
        var units = new List<(int Doc, int Start, int End)>();
        for (int d = 0; d < docs.Count; d++)
        {
            int start = 0;
            do
            {
                int cut = docs[d].Length - start > CorpusTokenizer.ChunkBytes ? tok.FindCut(docs[d], start + CorpusTokenizer.ChunkBytes) : -1;
                int end = cut < 0 ? docs[d].Length : cut;
                units.Add((d, start, end));
                start = end;
            } while (start < docs[d].Length);
        }
        var counts = new long[units.Count];
        Parallel.For(0, units.Count, new ParallelOptions { MaxDegreeOfParallelism = threads }, u =>
        {
            var ids = new List<int>();
            var (d, s, e) = units[u];
            tok.EncodeUtf8(docs[d].AsSpan(s, e - s), ids, s == 0);
            counts[u] = ids.Count;
        });
        return counts.Sum();
    }

    static Command CreateEncodeCommand()
    {
        var tokenizer = TokenizerOption(required: true);
        var threads = ThreadsOption();
        var command = new Command("encode", "Read text from stdin; print one line of space-separated ids per input line (the layout of spm_encode --output_format=id)");
        command.Add(tokenizer);
        command.Add(threads);
        command.SetAction(parse => Cli.Run(() =>
        {
            var tok = TokenizerLoader.Load(parse.GetValue(tokenizer));
            using var stdin = Console.OpenStandardInput();
            using var stdout = Console.OpenStandardOutput();
            LineCoder.EncodeLines(tok, stdin, stdout, Math.Max(1, parse.GetValue(threads)));
            return 0;
        }));
        return command;
    }

    static Command CreateDecodeCommand()
    {
        var tokenizer = TokenizerOption(required: true);
        var command = new Command("decode", "Read lines of space-separated ids from stdin; print the text of each line");
        command.Add(tokenizer);
        command.SetAction(parse => Cli.Run(() =>
        {
            var tok = TokenizerLoader.Load(parse.GetValue(tokenizer));
            using var stdin = Console.OpenStandardInput();
            using var stdout = Console.OpenStandardOutput();
            LineCoder.DecodeLines(tok, stdin, stdout);
            return 0;
        }));
        return command;
    }

    public static Command CreateTokenizeCommand()
    {
        var data = new Option<string>("--data") { Description = "Corpus: a UTF-8 text file, a .jsonl file (\"text\" field) or a directory (recursive, sorted)", Required = true };
        var tokenizer = TokenizerOption(required: false);
        var output = new Option<string>("--out") { Description = "Token file to write (memory-mapped by palm train --data)", Required = true };
        var threads = ThreadsOption();
        var command = new Command("tokenize", "Pre-tokenize a corpus once into a memory-mapped token file (uint16 or uint32 ids, [eod] between documents)");
        foreach (var o in new Option[] { data, tokenizer, output, threads }) command.Add(o);
        command.SetAction(parse => Cli.Run(() =>
        {
            var tok = TokenizerLoader.Load(parse.GetValue(tokenizer));
            string dataPath = parse.GetValue(data)!, outPath = parse.GetValue(output)!;
            int n = Math.Max(1, parse.GetValue(threads));
            var sw = Stopwatch.StartNew();
            TokenFile.Header header;
            if (!Console.IsOutputRedirected)
            {
                header = null!;
                AnsiConsole.Progress()
                    .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        var task = ctx.AddTask("tokenizing");
                        header = CorpusTokenizer.Tokenize(dataPath, tok, outPath, n, p =>
                        {
                            task.MaxValue = Math.Max(1, p.BytesTotal);
                            task.Value = p.BytesDone;
                        });
                    });
            }
            else
            {
                // Not a terminal: plain lines, at most one every two seconds, and the last.
                double lastPrint = double.NegativeInfinity;
                bool finished = false;
                header = CorpusTokenizer.Tokenize(dataPath, tok, outPath, n, p =>
                {
                    bool final = p.BytesDone == p.BytesTotal;
                    if (finished || (!final && sw.Elapsed.TotalSeconds - lastPrint < 2)) return;
                    lastPrint = sw.Elapsed.TotalSeconds;
                    finished = final;
                    Console.WriteLine($"tokenized {p.BytesDone:N0} / {p.BytesTotal:N0} bytes, {p.Documents:N0} documents, {p.Tokens:N0} tokens");
                });
            }
            double seconds = sw.Elapsed.TotalSeconds;
            long bytes = Corpus.ListFiles(dataPath).Sum(f => new FileInfo(f).Length);
            Console.WriteLine($"{outPath}: {header.TokenCount:N0} tokens ({header.TokenBytes * 8}-bit), {header.DocumentCount:N0} documents, {tok.Kind} vocabulary of {header.VocabSize:N0}, {seconds:F2} s ({bytes / 1e6 / Math.Max(seconds, 1e-9):F1} MB/s)");
            return 0;
        }));
        return command;
    }
}

namespace Palm.Gpu.Data;

/// <summary>
/// Pre-tokenizes a corpus into a token file. Documents are cut into chunks of about
/// <see cref="ChunkBytes"/> at the tokenizer's exact cut points (<see cref="IUtf8Tokenizer.FindCut"/>),
/// chunks are encoded in parallel in waves, and results are written in corpus order: the file is
/// the same bytes for any thread count, and equals encoding every document whole.
/// </summary>
public static class CorpusTokenizer
{
    public const int ChunkBytes = 1 << 18;
    const long WaveBytes = 32L << 20;

    public readonly record struct Progress(long BytesDone, long BytesTotal, long Tokens, long Documents);

    public static TokenFile.Header Tokenize(string dataPath, IUtf8Tokenizer tokenizer, string outPath, int threads, Action<Progress>? progress = null)
    {
        var files = Corpus.ListFiles(dataPath);
        long totalBytes = files.Sum(f => new FileInfo(f).Length);
        using var writer = new TokenFileWriter(outPath, tokenizer);
        var units = new List<(byte[] Doc, int Start, int End, bool Last)>();
        long waveBytes = 0, done = 0;
        foreach (var doc in Corpus.ReadDocumentsUtf8(dataPath))
        {
            int start = 0;
            do
            {
                int cut = doc.Length - start > ChunkBytes ? tokenizer.FindCut(doc, start + ChunkBytes) : -1;
                int end = cut < 0 ? doc.Length : cut;
                units.Add((doc, start, end, end == doc.Length));
                waveBytes += end - start;
                start = end;
                if (waveBytes >= WaveBytes) Flush();
            } while (start < doc.Length);
        }
        Flush();
        if (writer.DocumentCount == 0) throw new DataException($"the corpus '{dataPath}' holds no documents");
        var header = writer.Complete();
        progress?.Invoke(new Progress(totalBytes, totalBytes, header.TokenCount, header.DocumentCount));
        return header;

        void Flush()
        {
            if (units.Count == 0) return;
            var results = new int[units.Count][];
            Parallel.For(0, units.Count, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads) }, u =>
            {
                var (doc, start, end, _) = units[u];
                var ids = new List<int>((end - start) / 3 + 16);
                tokenizer.EncodeUtf8(doc.AsSpan(start, end - start), ids, atDocumentStart: start == 0);
                results[u] = [.. ids];
            });
            for (int u = 0; u < units.Count; u++)
            {
                writer.Write(results[u]);
                if (units[u].Last) writer.EndDocument();
                done += units[u].End - units[u].Start;
            }
            units.Clear();
            waveBytes = 0;
            progress?.Invoke(new Progress(Math.Min(done, totalBytes), totalBytes, writer.TokenCount, writer.DocumentCount));
        }
    }
}

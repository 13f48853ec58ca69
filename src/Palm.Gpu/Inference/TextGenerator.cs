using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.IO;
using Palm.Gpu.Model;

namespace Palm.Gpu.Inference;

/// <summary>
/// Samples text from saved weights, one full causal forward per new token over a sliding window
/// (no KV cache yet). Temperature 0 means greedy decoding.
/// </summary>
public sealed class TextGenerator : IDisposable
{
    readonly PalmModel _model;
    readonly ITokenizer _tokenizer;
    readonly Utf8Guard? _utf8;   // only valid UTF-8 is ever drawn (byte-level vocabularies)
    readonly int _window;

    public TextGenerator(IBackend backend, string weightsPath, ITokenizer tokenizer, int window)
    {
        var config = ModelWeights.ReadConfig(weightsPath);
        if (tokenizer.VocabSize > config.Vocab)
            throw new ConfigException($"the tokenizer has {tokenizer.VocabSize} tokens but the model's vocab is {config.Vocab}; use the tokenizer the model was trained with");
        // RoPE has no trained length limit, but quality beyond the training length is untested: the window stops there.
        if (window == 0) window = Math.Min(256, config.SeqLen);   // the default: 256 tokens, or the training length if shorter
        if (window < 1 || window > config.SeqLen)
            throw new ConfigException($"--window must be 1 to {config.SeqLen} (the model's training length), got {window}");
        _window = window;
        _model = new PalmModel(backend, config with { SeqLen = _window }, maxBatch: 1);
        ModelWeights.Load(_model, weightsPath);
        _tokenizer = tokenizer;
        _utf8 = Utf8Guard.For(tokenizer);
    }

    public ModelConfig Config => _model.Config;

    /// <summary>Generates up to maxTokens tokens after the prompt; stops early at [eod]. onToken sees each new piece of text.</summary>
    public string Generate(string prompt, int maxTokens, float temperature, int topK, ulong seed, Action<string>? onToken = null)
    {
        if (maxTokens < 0) throw new ConfigException($"--tokens must be ≥ 0, got {maxTokens}");
        if (temperature < 0 || !float.IsFinite(temperature)) throw new ConfigException($"--temperature must be a finite number ≥ 0, got {temperature}");
        if (topK < 0 || topK > _tokenizer.VocabSize) throw new ConfigException($"--top-k must be 0 (all) to {_tokenizer.VocabSize} (the vocabulary), got {topK}");
        var ids = new List<int> { _tokenizer.EodId };          // documents start after an [eod], as in training
        ids.AddRange(_tokenizer.Encode(prompt));
        int promptCount = ids.Count;
        var rng = new SplitMix64(seed);
        var inputs = new int[_window];
        var targets = new int[_window];
        int vocab = _model.Config.Vocab;
        // A character may span several tokens (each byte of "é" is its own byte token): text is handed out only once
        // it decodes completely, so a trailing incomplete UTF-8 sequence (decoded as U+FFFD) waits for its next byte.
        int emitted = 0;
        void Emit(bool final)
        {
            if (onToken is null) return;
            string text = _tokenizer.Decode(ids.Skip(promptCount).ToArray());
            int end = text.Length;
            if (!final) while (end > emitted && text[end - 1] == '\uFFFD') end--;
            if (end > emitted) onToken(text[emitted..end]);
            emitted = Math.Max(emitted, end);
        }
        var utf8 = new List<int> { Utf8Guard.Boundary };   // the guard's state after each generated token
        for (int i = 0; i < maxTokens; i++)
        {
            int start = Math.Max(0, ids.Count - _window);
            int len = ids.Count - start;
            Array.Clear(inputs);
            for (int j = 0; j < len; j++) inputs[j] = ids[start + j];
            _model.Forward(inputs, targets, 1);
            var logits = _model.DownloadLogits(len).AsSpan((len - 1) * vocab, vocab);
            _utf8?.Mask(logits, utf8[^1]);
            int next = Sample(logits, temperature, topK, ref rng);
            if (next == _tokenizer.EodId) break;
            if (_utf8 is not null) utf8.Add(_utf8.Advance(utf8[^1], next));
            ids.Add(next);
            Emit(final: false);
        }
        // Out of tokens in the middle of a character: drop its first bytes rather than end on an invalid sequence.
        if (_utf8 is not null)
            while (utf8.Count > 1 && utf8[^1] != Utf8Guard.Boundary) { utf8.RemoveAt(utf8.Count - 1); ids.RemoveAt(ids.Count - 1); }
        Emit(final: true);
        return _tokenizer.Decode(ids.Skip(promptCount).ToArray());
    }

    int Sample(ReadOnlySpan<float> logits, float temperature, int topK, ref SplitMix64 rng)
    {
        int v = _tokenizer.VocabSize; // ids past the tokenizer's vocabulary are padding rows of the embedding
        var order = Enumerable.Range(0, v).ToArray();
        var values = logits[..v].ToArray();
        Array.Sort(values.Select(x => -x).ToArray(), order);
        if (temperature == 0) return order[0];
        int k = topK <= 0 ? v : Math.Min(topK, v);
        double max = logits[order[0]];
        var p = new double[k];
        double sum = 0;
        for (int i = 0; i < k; i++) { p[i] = Math.Exp((logits[order[i]] - max) / temperature); sum += p[i]; }
        double r = rng.NextDouble() * sum;
        for (int i = 0; i < k; i++) { r -= p[i]; if (r <= 0) return order[i]; }
        return order[k - 1];
    }

    public void Dispose() => _model.Dispose();
}

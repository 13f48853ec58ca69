using System.Diagnostics;
using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.IO;
using Palm.Gpu.Model;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Inference;

/// <summary>
/// Incremental decoding with a per-layer KV cache, on one device. Legend: B sequences, Tmax cache rows (the model's
/// sequence length), D width, H query heads, G kv heads (1 multi-query, H multi-head), K head dim, F MLP width, V vocab.
///
///   prefill  all prompt tokens but the last through the model's own forward; its keys and values after RoPE
///            (B,Tmax,G,K) per layer become the cache
///   step     x = E[token] (B,D); per layer h = LN(x), q = h·Wq (B,HK), k = h·Wk, v = h·Wv (B,GK), RoPE at each
///            sequence's position, k and v appended to the cache, att = AttentionDecode(q, cache) (B,HK),
///            y = x + att·Wo + MLP(h) (parallel block; serial: two residual steps); logits = LN_f(x)·Eᵀ/√D (B,V)
///            for these rows only, then sampled on the host (<see cref="Sampler"/>)
///
/// The cache holds 2·L·G·K floats per token per sequence, H/G times less with multi-query than multi-head.
/// A context (the [eod], the prompt and the new tokens) longer than Tmax is refused: the window does not slide.
/// </summary>
public sealed class KvCacheGenerator : IDisposable
{
    readonly PalmModel _model;
    readonly bool _ownsModel;
    readonly IBackend _be;
    readonly ITokenizer _tokenizer;
    readonly Utf8Guard? _utf8;   // only valid UTF-8 is ever drawn (byte-level vocabularies)
    readonly int _maxBatch, _tMax, _d, _h, _g, _k, _f, _v;
    readonly DeviceBuffer[] _kCache, _vCache;
    readonly DeviceBuffer _x, _y, _x1, _hn, _h2, _mean, _rstd, _q, _kNew, _vNew, _att, _gate, _up, _act, _logits, _tokens, _positions, _lengths;
    readonly List<DeviceBuffer> _buffers = [];

    /// <summary>Loads weights; <paramref name="window"/> is the most context tokens (0: the training length).</summary>
    public KvCacheGenerator(IBackend backend, string weightsPath, ITokenizer tokenizer, int window = 0, int maxBatch = 1)
        : this(LoadModel(backend, weightsPath, tokenizer, window, maxBatch), tokenizer, ownsModel: true) { }

    static PalmModel LoadModel(IBackend backend, string weightsPath, ITokenizer tokenizer, int window, int maxBatch)
    {
        var config = ModelWeights.ReadConfig(weightsPath);
        if (tokenizer.VocabSize > config.Vocab)
            throw new ConfigException($"the tokenizer has {tokenizer.VocabSize} tokens but the model's vocab is {config.Vocab}; use the tokenizer the model was trained with");
        if (window == 0) window = config.SeqLen;
        if (window < 1 || window > config.SeqLen)
            throw new ConfigException($"--window must be 1 to {config.SeqLen} (the model's training length), got {window}");
        // Every layer keeps its own K and V (no rematerialisation): prefill reads them from the forward.
        var model = new PalmModel(backend, config with { SeqLen = window, Rematerialize = false }, maxBatch);
        try { ModelWeights.Load(model, weightsPath); }
        catch { model.Dispose(); throw; }
        return model;
    }

    /// <summary>
    /// Decodes with <paramref name="model"/>'s weights in place: a one-device model without rematerialisation, whose
    /// sequence length is the cache length. Disposed with this generator only when <paramref name="ownsModel"/>.
    /// </summary>
    public KvCacheGenerator(PalmModel model, ITokenizer tokenizer, bool ownsModel = false)
    {
        if (model.Rank.ModelSize != 1 || model.Rank.DataSize != 1)
            throw new ArgumentException("the KV-cache generator runs on one device (a 1 × 1 mesh)", nameof(model));
        if (model.Config.Rematerialize)
            throw new ArgumentException("the KV-cache generator needs every layer's keys and values: build the model without rematerialisation", nameof(model));
        if (tokenizer.VocabSize > model.Config.Vocab)
            throw new ConfigException($"the tokenizer has {tokenizer.VocabSize} tokens but the model's vocab is {model.Config.Vocab}; use the tokenizer the model was trained with");
        _model = model;
        _ownsModel = ownsModel;
        _be = model.Backend;
        _tokenizer = tokenizer;
        _utf8 = Utf8Guard.For(tokenizer);
        var c = model.Config;
        (_maxBatch, _tMax, _d, _h, _g, _k, _f, _v) = (model.MaxBatch, c.SeqLen, c.DModel, c.Heads, c.KvHeads, c.HeadDim, c.DFf, c.Vocab);
        try
        {
            _kCache = new DeviceBuffer[c.Layers];
            _vCache = new DeviceBuffer[c.Layers];
            long cache = (long)_maxBatch * _tMax * _g * _k;
            for (int l = 0; l < c.Layers; l++)
            {
                _kCache[l] = Alloc($"kv_cache.{l}.k", cache);
                _vCache[l] = Alloc($"kv_cache.{l}.v", cache);
            }
            int b = _maxBatch;
            _x = Alloc("decode.x", (long)b * _d);
            _y = Alloc("decode.y", (long)b * _d);
            _x1 = Alloc("decode.x1", (long)b * _d);
            _hn = Alloc("decode.ln_out", (long)b * _d);
            _h2 = Alloc("decode.ln2_out", (long)b * _d);
            _mean = Alloc("decode.ln_mean", b);
            _rstd = Alloc("decode.ln_rstd", b);
            _q = Alloc("decode.q", (long)b * _h * _k);
            _kNew = Alloc("decode.k", (long)b * _g * _k);
            _vNew = Alloc("decode.v", (long)b * _g * _k);
            _att = Alloc("decode.att", (long)b * _h * _k);
            _gate = Alloc("decode.gate", (long)b * _f);
            _up = Alloc("decode.up", (long)b * _f);
            _act = Alloc("decode.swiglu", (long)b * _f);
            _logits = Alloc("decode.logits", (long)b * _v);
            _tokens = Alloc("decode.tokens", b, ElementType.I32);
            _positions = Alloc("decode.positions", b, ElementType.I32);
            _lengths = Alloc("decode.lengths", b, ElementType.I32);
        }
        catch
        {
            foreach (var x in _buffers) x.Dispose();
            throw;
        }
    }

    DeviceBuffer Alloc(string name, long length, ElementType type = ElementType.F32)
    {
        var b = _be.Allocate(name, length, type);
        _buffers.Add(b);
        return b;
    }

    public ModelConfig Config => _model.Config;
    /// <summary>Most context tokens per sequence ([eod] + prompt + new tokens): the cache length.</summary>
    public int MaxContext => _tMax;
    /// <summary>Bytes of K and V cached per token of one sequence: 2·L·G·K floats.</summary>
    public long CacheBytesPerToken => 2L * Config.Layers * _g * _k * sizeof(float);
    /// <summary>Bytes of the whole cache (all sequences, all rows).</summary>
    public long CacheBytes => CacheBytesPerToken * _maxBatch * _tMax;

    /// <summary>Seconds and tokens of the last Generate: prefill (prompt) and decode (new tokens, all sequences).</summary>
    public (double PrefillSeconds, double DecodeSeconds, long DecodedTokens) LastTiming { get; private set; }

    /// <summary>Generates up to maxTokens tokens after the prompt; stops early at [eod]. onToken sees each new piece of text.</summary>
    public string Generate(string prompt, int maxTokens, in SamplingOptions sampling, ulong seed, Action<string>? onToken = null)
        => Generate([prompt], maxTokens, sampling, seed, onToken is null ? null : (_, piece) => onToken(piece))[0];

    /// <summary>
    /// Generates for every prompt at once (at most the model's batch), each with its own length; each stops at [eod]
    /// or after maxTokens. Sequence i samples from its own stream seeded by (seed, i). onToken sees (sequence, text).
    /// </summary>
    public string[] Generate(IReadOnlyList<string> prompts, int maxTokens, in SamplingOptions sampling, ulong seed, Action<int, string>? onToken = null)
    {
        var ids = Validate(prompts, maxTokens, sampling);
        int b = prompts.Count;
        var promptCounts = ids.Select(x => x.Count).ToArray();
        var rngs = Enumerable.Range(0, b).Select(s => new SplitMix64(seed + 0x9E3779B97F4A7C15UL * (ulong)s)).ToArray();
        var done = new bool[b];
        // The guard's state after each generated token, per sequence (prompts end on a character boundary).
        var utf8 = Enumerable.Range(0, b).Select(_ => new List<int> { Utf8Guard.Boundary }).ToArray();
        var emitted = new int[b];
        void Emit(int s, bool final)
        {
            if (onToken is null) return;
            // A character may span several tokens: text goes out once it decodes whole (see TextGenerator).
            string text = _tokenizer.Decode(ids[s].Skip(promptCounts[s]).ToArray());
            int end = text.Length;
            if (!final) while (end > emitted[s] && text[end - 1] == '\uFFFD') end--;
            if (end > emitted[s]) onToken(s, text[emitted[s]..end]);
            emitted[s] = Math.Max(emitted[s], end);
        }

        var clock = Stopwatch.StartNew();
        Prefill(ids, b);
        _be.Synchronize();
        double prefill = clock.Elapsed.TotalSeconds;
        clock.Restart();
        var last = new int[b];
        var positions = new int[b];
        var lengths = new int[b];
        var host = new float[(long)b * _v];
        long decoded = 0;
        for (int s = 0; s < b; s++) last[s] = ids[s][^1];
        for (int i = 0; i < maxTokens; i++)
        {
            for (int s = 0; s < b; s++) { positions[s] = ids[s].Count - 1; lengths[s] = ids[s].Count; }
            Step(last, positions, lengths, b);
            _be.Download(_logits, host.AsSpan(0, b * _v));
            bool any = false;
            for (int s = 0; s < b; s++)
            {
                if (done[s]) continue;
                var row = host.AsSpan(s * _v, _tokenizer.VocabSize);
                _utf8?.Mask(row, utf8[s][^1]);
                int next = Sampler.Sample(row, sampling, ref rngs[s]);
                decoded++;
                if (next == _tokenizer.EodId) { done[s] = true; continue; }
                if (_utf8 is not null) utf8[s].Add(_utf8.Advance(utf8[s][^1], next));
                ids[s].Add(next);
                last[s] = next;
                Emit(s, final: false);
                any = true;
            }
            if (!any) break;
        }
        LastTiming = (prefill, clock.Elapsed.TotalSeconds, decoded);
        // Out of tokens in the middle of a character: drop its first bytes rather than end on an invalid sequence.
        if (_utf8 is not null)
            for (int s = 0; s < b; s++)
                while (utf8[s].Count > 1 && utf8[s][^1] != Utf8Guard.Boundary) { utf8[s].RemoveAt(utf8[s].Count - 1); ids[s].RemoveAt(ids[s].Count - 1); }
        for (int s = 0; s < b; s++) Emit(s, final: true);
        return ids.Select((x, s) => _tokenizer.Decode(x.Skip(promptCounts[s]).ToArray())).ToArray();
    }

    /// <summary>
    /// Checks a Generate call without running it (one clear line per mistake); returns each context's ids
    /// ([eod] + prompt).
    /// </summary>
    public List<int>[] Validate(IReadOnlyList<string> prompts, int maxTokens, in SamplingOptions sampling)
    {
        int b = prompts.Count;
        if (b < 1 || b > _maxBatch) throw new ConfigException($"{b} prompts, but the generator was built for 1 to {_maxBatch}");
        if (maxTokens < 1) throw new ConfigException($"--tokens must be ≥ 1, got {maxTokens}");
        sampling.Validate(_tokenizer.VocabSize);
        var ids = new List<int>[b];
        for (int s = 0; s < b; s++)
        {
            ids[s] = [_tokenizer.EodId];                  // documents start after an [eod], as in training
            ids[s].AddRange(_tokenizer.Encode(prompts[s]));
            if (ids[s].Count + maxTokens > _tMax)
                throw new ConfigException($"the prompt ({ids[s].Count - 1} tokens) plus --tokens {maxTokens} is longer than the context of {_tMax} tokens " +
                                          $"(the training length, or --window); shorten them, or use --no-kv-cache to slide a window");
        }
        return ids;
    }

    /// <summary>Runs every context token but the last through the model's forward and keeps its keys and values.</summary>
    void Prefill(List<int>[] ids, int b)
    {
        if (ids.All(x => x.Count == 1)) return;           // only the [eod]: it is the first decode step
        var inputs = new int[b * _tMax];
        for (int s = 0; s < b; s++)
            for (int j = 0; j < ids[s].Count - 1; j++) inputs[s * _tMax + j] = ids[s][j];
        // Causal attention: the padding after a sequence's tokens cannot change their keys and values.
        _model.Forward(inputs, new int[b * _tMax], b);
        long n = (long)b * _tMax * _g * _k;
        for (int l = 0; l < Config.Layers; l++)
        {
            var (k, v) = _model.LayerKeysValues(l);
            _be.Copy(_kCache[l], k, n);
            _be.Copy(_vCache[l], v, n);
        }
    }

    /// <summary>One token per sequence at positions (B) with caches of lengths (B) after appending -> logits (B,V).</summary>
    void Step(int[] tokens, int[] positions, int[] lengths, int b)
    {
        _be.Upload(_tokens, tokens.AsSpan(0, b));
        _be.Upload(_positions, positions.AsSpan(0, b));
        _be.Upload(_lengths, lengths.AsSpan(0, b));
        _be.EmbeddingForward(_x, _tokens, _model.DecodeEmbedding, b, _d, 0, _v);
        var x = _x;
        var y = _y;
        long bd = (long)b * _d;
        for (int l = 0; l < Config.Layers; l++)
        {
            var w = _model.DecodeBlock(l);
            _be.LayerNormForward(_hn, _mean, _rstd, x, w.Ln1.Value, b, _d);
            if (w.Ln2 is null)
            {
                _be.Copy(y, x, bd);
                Attention(l, w, _hn, y, positions, b);
                Mlp(w, _hn, y, b);
            }
            else
            {
                _be.Copy(_x1, x, bd);
                Attention(l, w, _hn, _x1, positions, b);
                _be.LayerNormForward(_h2, _mean, _rstd, _x1, w.Ln2.Value, b, _d);
                _be.Copy(y, _x1, bd);
                Mlp(w, _h2, y, b);
            }
            (x, y) = (y, x);
        }
        _be.LayerNormForward(_hn, _mean, _rstd, x, _model.DecodeFinalNorm, b, _d);
        _be.Matmul(_logits, _hn, _model.DecodeEmbedding, b, _v, _d, transB: true, alpha: _model.DecodeLogitScale);
    }

    /// <summary>h (B,D) -> y (B,D) += Attn(h), with this step's k and v appended to layer l's cache.</summary>
    void Attention(int l, BlockParameters w, DeviceBuffer h, DeviceBuffer y, int[] positions, int b)
    {
        int hk = _h * _k, gk = _g * _k;
        _be.Matmul(_q, h, w.Wq.Value, b, hk, _d);
        _be.Matmul(_kNew, h, w.Wk.Value, b, gk, _d);
        _be.Matmul(_vNew, h, w.Wv.Value, b, gk, _d);
        _be.RopeForwardAt(_q, _q, _positions, b, _h, _k);
        _be.RopeForwardAt(_kNew, _kNew, _positions, b, _g, _k);
        for (int s = 0; s < b; s++)
        {
            long row = ((long)s * _tMax + positions[s]) * gk;
            _be.Copy(_kCache[l], _kNew, gk, row, (long)s * gk);
            _be.Copy(_vCache[l], _vNew, gk, row, (long)s * gk);
        }
        _be.AttentionDecode(_att, _q, _kCache[l], _vCache[l], _lengths, b, _tMax, _h, _g, _k);
        _be.Matmul(y, _att, w.Wo.Value, b, _d, hk, accumulate: true);
    }

    void Mlp(BlockParameters w, DeviceBuffer h, DeviceBuffer y, int b)
    {
        _be.Matmul(_gate, h, w.WGate.Value, b, _f, _d);
        _be.Matmul(_up, h, w.WUp.Value, b, _f, _d);
        _be.SwiGluForward(_act, _gate, _up, (long)b * _f);
        _be.Matmul(y, _act, w.WDown.Value, b, _d, _f, accumulate: true);
    }

    public void Dispose()
    {
        foreach (var x in _buffers) x.Dispose();
        if (_ownsModel) _model.Dispose();
    }
}

using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Model;

/// <summary>Mean losses of one forward pass.</summary>
public readonly record struct LossResult(double CrossEntropy, double ZLoss)
{
    /// <summary>The objective that backward differentiates: cross-entropy + z-loss.</summary>
    public double Total => CrossEntropy + ZLoss;
}

/// <summary>
/// The PaLM model on one backend: shared embedding → L blocks → final layer norm → logits = h·Eᵀ/√D →
/// softmax cross-entropy with z-loss. Activation buffers are allocated once for the largest batch and
/// reused by every step.
///
///   tokens (B,T) -> x0 = E[tokens] (N,D) -> x_{l+1} = Block_l(x_l) -> hf = LN_f(x_L) (N,D)
///   logits = hf·Eᵀ/√D (N,V) -> loss = mean(logZ − logit[target]) + z·mean(logZ²)
/// </summary>
public sealed class PalmModel : IDisposable
{
    readonly IBackend _be;
    readonly Dims _max;
    readonly DeviceBuffer[] _residual;        // x_0 .. x_L, each (N,D)
    readonly BlockActivations[] _acts;        // one per layer, or a single shared one when rematerialising
    readonly BackwardScratch _scratch;
    readonly DeviceBuffer _tokens, _targets, _hf, _hfMean, _hfRstd, _logits, _losses, _logZ;
    readonly float[] _hostLosses, _hostLogZ;
    int _batch;                                // batch of the last forward (backward must match)

    public PalmModel(IBackend backend, ModelConfig config, int maxBatch)
    {
        config.Validate();
        if (maxBatch <= 0) throw new ConfigException($"batch must be a positive number of sequences, got {maxBatch}");
        _be = backend;
        Config = config;
        MaxBatch = maxBatch;
        Parameters = new ParameterSet(backend, config);
        _max = Dims.Of(config, maxBatch);
        long n = _max.N;
        _residual = new DeviceBuffer[config.Layers + 1];
        for (int l = 0; l <= config.Layers; l++) _residual[l] = backend.Allocate($"x{l}", n * _max.D);
        bool serial = config.Block == BlockKind.Serial;
        _acts = config.Rematerialize
            ? [new BlockActivations(backend, _max, serial, "shared.")]
            : Enumerable.Range(0, config.Layers).Select(l => new BlockActivations(backend, _max, serial, $"layers.{l}.")).ToArray();
        _scratch = new BackwardScratch(backend, _max);
        _tokens = backend.Allocate("tokens", n, ElementType.I32);
        _targets = backend.Allocate("targets", n, ElementType.I32);
        _hf = backend.Allocate("ln_f_out", n * _max.D);
        _hfMean = backend.Allocate("ln_f_mean", n);
        _hfRstd = backend.Allocate("ln_f_rstd", n);
        _logits = backend.Allocate("logits", n * _max.V);
        _losses = backend.Allocate("losses", n);
        _logZ = backend.Allocate("log_z", n);
        _hostLosses = new float[n];
        _hostLogZ = new float[n];
    }

    public ModelConfig Config { get; }
    public int MaxBatch { get; }
    public ParameterSet Parameters { get; }
    public IBackend Backend => _be;

    /// <summary>Bytes held by activation and scratch buffers (weights and gradients excluded).</summary>
    public long ActivationBytes =>
        _residual.Sum(b => b.Bytes) + _acts.Sum(a => a.Buffers.Sum(b => b.Bytes)) +
        new[] { _hf, _hfMean, _hfRstd, _logits, _losses, _logZ, _tokens, _targets }.Sum(b => b.Bytes);

    /// <summary>
    /// Forward pass over batch·T tokens (inputs and targets row-major (B,T)); returns the mean losses.
    /// Leaves what backward needs in the activation buffers.
    /// </summary>
    public LossResult Forward(ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets, int batch)
    {
        var m = Dims.Of(Config, batch);
        if (batch < 1 || batch > MaxBatch)
            throw new ArgumentOutOfRangeException(nameof(batch), $"batch {batch} is outside 1..{MaxBatch} (the model was built for at most {MaxBatch} sequences)");
        if (inputs.Length != m.N || targets.Length != m.N)
            throw new ArgumentException($"expected {m.N} input and target tokens (batch {batch} × seq {m.T}), got {inputs.Length} and {targets.Length}");
        CheckTokens(inputs, "input");
        CheckTokens(targets, "target");
        _batch = batch;
        _be.Upload(_tokens, inputs);
        _be.Upload(_targets, targets);

        _be.EmbeddingForward(_residual[0], _tokens, Parameters.Embedding.Value, m.N, m.D);
        for (int l = 0; l < Config.Layers; l++)
            Block.Forward(_be, m, Parameters.Blocks[l], ActsFor(l), _residual[l], _residual[l + 1]);

        _be.LayerNormForward(_hf, _hfMean, _hfRstd, _residual[Config.Layers], Parameters.FinalNorm.Value, m.N, m.D);
        _be.Matmul(_logits, _hf, Parameters.Embedding.Value, m.N, m.V, m.D, transB: true, alpha: LogitScale);
        _be.CrossEntropyForward(_losses, _logZ, _logits, _targets, m.N, m.V);

        _be.Download(_losses, _hostLosses.AsSpan(0, m.N));
        _be.Download(_logZ, _hostLogZ.AsSpan(0, m.N));
        double ce = 0, z2 = 0;
        for (int i = 0; i < m.N; i++)
        {
            ce += _hostLosses[i];
            z2 += (double)_hostLogZ[i] * _hostLogZ[i];
        }
        return new LossResult(ce / m.N, Config.ZLoss * z2 / m.N);
    }

    /// <summary>Backward of the last Forward: parameter gradients += d(mean CE + z-loss)/dθ.</summary>
    public void Backward()
    {
        if (_batch == 0) throw new InvalidOperationException("Backward needs a Forward first");
        var m = Dims.Of(Config, _batch);
        var s = _scratch;
        var emb = Parameters.Embedding;

        // Head: dlogits in place, then through the tied embedding and the final norm.
        _be.CrossEntropyBackward(_logits, _logits, _logZ, _targets, 1f / m.N, Config.ZLoss, m.N, m.V);
        _be.Matmul(s.DHidden, _logits, emb.Value, m.N, m.D, m.V, alpha: LogitScale);
        _be.Matmul(emb.Grad, _logits, _hf, m.V, m.D, m.N, transA: true, alpha: LogitScale, accumulate: true);
        _be.LayerNormBackward(s.DResidual, Parameters.FinalNorm.Grad, s.DHidden, _residual[Config.Layers],
                              Parameters.FinalNorm.Value, _hfMean, _hfRstd, m.N, m.D, accumulate: false);

        for (int l = Config.Layers - 1; l >= 0; l--)
        {
            var a = ActsFor(l);
            if (Config.Rematerialize) Block.Recompute(_be, m, Parameters.Blocks[l], a, _residual[l], s.DHidden);
            Block.Backward(_be, m, Parameters.Blocks[l], a, s, _residual[l], s.DResidual);
        }
        _be.EmbeddingBackward(emb.Grad, _tokens, s.DResidual, m.N, m.D, m.V);
    }

    /// <summary>Logits of the last Forward for the first <paramref name="rows"/> rows, (rows, V) on the host.</summary>
    public float[] DownloadLogits(int rows)
    {
        var host = new float[(long)rows * Config.Vocab];
        _be.Download(_logits, host);
        return host;
    }

    /// <summary>Per-token cross-entropy of the last Forward (N values).</summary>
    public ReadOnlySpan<float> TokenLosses => _hostLosses.AsSpan(0, _batch * Config.SeqLen);

    float LogitScale => 1f / MathF.Sqrt(Config.DModel);

    BlockActivations ActsFor(int layer) => _acts[Config.Rematerialize ? 0 : layer];

    void CheckTokens(ReadOnlySpan<int> ids, string what)
    {
        foreach (int t in ids)
            if ((uint)t >= (uint)Config.Vocab)
                throw new ArgumentException($"{what} token {t} is outside the vocabulary 0..{Config.Vocab - 1}; the tokenizer and the model's vocab disagree");
    }

    public void Dispose()
    {
        foreach (var p in Parameters.All) { p.Value.Dispose(); p.Grad.Dispose(); }
        foreach (var b in _residual) b.Dispose();
        foreach (var a in _acts) a.Dispose();
        _scratch.Dispose();
        foreach (var b in new[] { _tokens, _targets, _hf, _hfMean, _hfRstd, _logits, _losses, _logZ }) b.Dispose();
    }
}

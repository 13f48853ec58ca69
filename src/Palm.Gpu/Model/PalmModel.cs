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
    readonly ModelActivations _a;
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
        _a = new ModelActivations(backend, config, _max);
    }

    public ModelConfig Config { get; }
    public int MaxBatch { get; }
    public ParameterSet Parameters { get; }
    public IBackend Backend => _be;

    /// <summary>Bytes held by activation and scratch buffers (weights and gradients excluded).</summary>
    public long ActivationBytes => _a.Bytes;

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
        _be.Upload(_a.Tokens, inputs);
        _be.Upload(_a.Targets, targets);

        _be.EmbeddingForward(_a.Residual[0], _a.Tokens, Parameters.Embedding.Value, m.N, m.D, 0, m.V);
        for (int l = 0; l < Config.Layers; l++)
            Block.Forward(_be, m, Parameters.Blocks[l], ActsFor(l), _a.Residual[l], _a.Residual[l + 1]);

        _be.LayerNormForward(_a.Hf, _a.HfMean, _a.HfRstd, _a.Residual[Config.Layers], Parameters.FinalNorm.Value, m.N, m.D);
        _be.Matmul(_a.Logits, _a.Hf, Parameters.Embedding.Value, m.N, m.V, m.D, transB: true, alpha: LogitScale);
        _be.CrossEntropyForward(_a.LogZ, _a.TargetLogit, _a.Logits, _a.Targets, m.N, m.V, 0);

        _be.Download(_a.TargetLogit, _a.HostTargetLogit.AsSpan(0, m.N));
        _be.Download(_a.LogZ, _a.HostLogZ.AsSpan(0, m.N));
        double ce = 0, z2 = 0;
        for (int i = 0; i < m.N; i++)
        {
            double loss = (double)_a.HostLogZ[i] - _a.HostTargetLogit[i];
            _a.HostLosses[i] = (float)loss;
            ce += loss;
            z2 += (double)_a.HostLogZ[i] * _a.HostLogZ[i];
        }
        return new LossResult(ce / m.N, Config.ZLoss * z2 / m.N);
    }

    /// <summary>
    /// Backward of the last Forward: parameter gradients += lossScale · d(mean CE + z-loss)/dθ.
    /// lossScale ≠ 1 is used only for fault injection (a deliberate gradient spike).
    /// </summary>
    public void Backward(float lossScale = 1f)
    {
        if (_batch == 0) throw new InvalidOperationException("Backward needs a Forward first");
        var m = Dims.Of(Config, _batch);
        var s = _a.Scratch;
        var emb = Parameters.Embedding;

        // Head: dlogits in place, then through the tied embedding and the final norm.
        _be.CrossEntropyBackward(_a.Logits, _a.Logits, _a.LogZ, _a.Targets, lossScale / m.N, Config.ZLoss, m.N, m.V, 0);
        _be.Matmul(s.DHidden, _a.Logits, emb.Value, m.N, m.D, m.V, alpha: LogitScale);
        _be.Matmul(emb.Grad, _a.Logits, _a.Hf, m.V, m.D, m.N, transA: true, alpha: LogitScale, accumulate: true);
        _be.LayerNormBackward(s.DResidual, Parameters.FinalNorm.Grad, s.DHidden, _a.Residual[Config.Layers],
                              Parameters.FinalNorm.Value, _a.HfMean, _a.HfRstd, m.N, m.D, accumulate: false);

        for (int l = Config.Layers - 1; l >= 0; l--)
        {
            var a = ActsFor(l);
            if (Config.Rematerialize) Block.Recompute(_be, m, Parameters.Blocks[l], a, _a.Residual[l], s.DHidden);
            Block.Backward(_be, m, Parameters.Blocks[l], a, s, _a.Residual[l], s.DResidual);
        }
        _be.EmbeddingBackward(emb.Grad, _a.Tokens, s.DResidual, m.N, m.D, 0, m.V);
    }

    /// <summary>Logits of the last Forward for the first <paramref name="rows"/> rows, (rows, V) on the host.</summary>
    public float[] DownloadLogits(int rows)
    {
        var host = new float[(long)rows * Config.Vocab];
        _be.Download(_a.Logits, host);
        return host;
    }

    /// <summary>Per-token cross-entropy of the last Forward (N values).</summary>
    public ReadOnlySpan<float> TokenLosses => _a.HostLosses.AsSpan(0, _batch * Config.SeqLen);

    float LogitScale => 1f / MathF.Sqrt(Config.DModel);

    BlockActivations ActsFor(int layer) => _a.For(layer);

    void CheckTokens(ReadOnlySpan<int> ids, string what)
    {
        foreach (int t in ids)
            if ((uint)t >= (uint)Config.Vocab)
                throw new ArgumentException($"{what} token {t} is outside the vocabulary 0..{Config.Vocab - 1}; the tokenizer and the model's vocab disagree");
    }

    public void Dispose()
    {
        foreach (var p in Parameters.All) { p.Value.Dispose(); p.Grad.Dispose(); }
        _a.Dispose();
    }
}

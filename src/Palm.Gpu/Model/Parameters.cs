using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Model;

/// <summary>
/// One trainable tensor, stored row-major as (Rows, Cols): dense kernels as (fan_in, fan_out) so that
/// y = x·W, the embedding as (V, D), layer-norm scales as (1, D). Its gradient has the same layout.
/// </summary>
public sealed class Parameter
{
    internal Parameter(IBackend backend, string name, int rows, int cols, float initStd, bool vector)
    {
        Name = name;
        Rows = rows;
        Cols = cols;
        InitStd = initStd;
        IsVector = vector;
        Value = backend.Allocate(name, (long)rows * cols);
        Grad = backend.Allocate("grad." + name, (long)rows * cols);
    }

    /// <summary>A parameter over existing buffers of rows·cols values (a mesh rank's reused gather workspace).</summary>
    internal Parameter(Parameter shape, DeviceBuffer value, DeviceBuffer grad)
    {
        Name = shape.Name;
        Rows = shape.Rows;
        Cols = shape.Cols;
        InitStd = shape.InitStd;
        IsVector = shape.IsVector;
        Value = value;
        Grad = grad;
    }

    public string Name { get; }
    public int Rows { get; }
    public int Cols { get; }
    /// <summary>Standard deviation of the normal init; 0 means "ones" (layer-norm scales).</summary>
    public float InitStd { get; }
    /// <summary>1-D tensors (layer-norm scales): shape (Cols), never factored by Adafactor.</summary>
    public bool IsVector { get; }
    public long Count => (long)Rows * Cols;
    public int[] Shape => IsVector ? [Cols] : [Rows, Cols];
    public DeviceBuffer Value { get; }
    public DeviceBuffer Grad { get; }
}

/// <summary>Weights of one Transformer block. Ln2 exists only for serial blocks.</summary>
public sealed record BlockParameters(
    Parameter Ln1, Parameter? Ln2,
    Parameter Wq, Parameter Wk, Parameter Wv, Parameter Wo,
    Parameter WGate, Parameter WUp, Parameter WDown);

/// <summary>
/// Every parameter of the model, in a fixed order (the order of checkpoints, optimizer state and
/// gradient-norm reduction). Names are the safetensors tensor names documented in the README.
/// </summary>
public sealed class ParameterSet
{
    readonly List<Parameter> _all = [];

    public ParameterSet(IBackend backend, ModelConfig c)
    {
        int d = c.DModel, hk = c.Heads * c.HeadDim, gk = c.KvHeads * c.HeadDim, f = c.DFf;
        Embedding = Add(backend, "embedding", c.Vocab, d, 1f); // PaLM: embeddings N(0, 1)
        var blocks = new List<BlockParameters>();
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"layers.{l}.";
            var ln1 = AddVector(backend, p + (c.Block == BlockKind.Parallel ? "ln.weight" : "ln1.weight"), d);
            var ln2 = c.Block == BlockKind.Serial ? AddVector(backend, p + "ln2.weight", d) : null;
            // PaLM: dense kernels N(0, 1/fan_in).
            var wq = AddKernel(backend, p + "attn.wq", d, hk);
            var wk = AddKernel(backend, p + "attn.wk", d, gk);
            var wv = AddKernel(backend, p + "attn.wv", d, gk);
            var wo = AddKernel(backend, p + "attn.wo", hk, d);
            var wg = AddKernel(backend, p + "mlp.w_gate", d, f);
            var wu = AddKernel(backend, p + "mlp.w_up", d, f);
            var wd = AddKernel(backend, p + "mlp.w_down", f, d);
            blocks.Add(new BlockParameters(ln1, ln2, wq, wk, wv, wo, wg, wu, wd));
        }
        Blocks = blocks;
        FinalNorm = AddVector(backend, "ln_f.weight", d);
    }

    public Parameter Embedding { get; }
    public IReadOnlyList<BlockParameters> Blocks { get; }
    public Parameter FinalNorm { get; }
    public IReadOnlyList<Parameter> All => _all;
    public long Count => _all.Sum(p => p.Count);

    public Parameter this[string name] => _all.FirstOrDefault(p => p.Name == name)
        ?? throw new KeyNotFoundException($"no parameter named '{name}'");

    Parameter Add(IBackend b, string name, int rows, int cols, float std)
    {
        var p = new Parameter(b, name, rows, cols, std, vector: false);
        _all.Add(p);
        return p;
    }

    Parameter AddKernel(IBackend b, string name, int fanIn, int fanOut) => Add(b, name, fanIn, fanOut, 1f / MathF.Sqrt(fanIn));

    Parameter AddVector(IBackend b, string name, int n)
    {
        var p = new Parameter(b, name, 1, n, 0f, vector: true);
        _all.Add(p);
        return p;
    }

    /// <summary>
    /// PaLM's init, reproducible from the seed: each tensor draws from its own SplitMix64 stream
    /// keyed by (seed, tensor index), so adding a tensor never changes the others.
    /// </summary>
    public void Initialize(IBackend backend, ulong seed)
    {
        for (int i = 0; i < _all.Count; i++)
        {
            var p = _all[i];
            var host = new float[p.Count];
            if (p.InitStd == 0) Array.Fill(host, 1f);
            else
            {
                var rng = new SplitMix64(seed * 0x100000001B3UL + (ulong)i * 0x9E3779B97F4A7C15UL + 1);
                for (long j = 0; j < host.Length; j += 2)
                {
                    // Box–Muller: two normals per pair of uniforms.
                    double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
                    double r = Math.Sqrt(-2 * Math.Log(u1));
                    host[j] = (float)(r * Math.Cos(2 * Math.PI * u2) * p.InitStd);
                    if (j + 1 < host.Length) host[j + 1] = (float)(r * Math.Sin(2 * Math.PI * u2) * p.InitStd);
                }
            }
            backend.Upload(p.Value, host);
        }
    }

    public void ZeroGradients(IBackend backend)
    {
        foreach (var p in _all) backend.Fill(p.Grad, 0f, p.Count);
    }
}

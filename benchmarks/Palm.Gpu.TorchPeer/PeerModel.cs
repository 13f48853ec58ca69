using Palm.Gpu.Model;
using TorchSharp;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Palm.Gpu.TorchPeer;

/// <summary>
/// palm's model (src/Palm.Gpu/Model) written in libtorch ops, for speed comparison on the same shape and weights.
/// Legend: B batch, T time, D width, H query heads, G kv heads, K head dim, F MLP width, V vocabulary, N = B·T.
///
///   x0     = E[tokens]                                              E (V,D) N(0,1), shared with the output
///   block  parallel: h = LN(x); y = x + [att | act]·[Wo ; Wdown]     [q|k|v|gate|up] = h·[Wq|Wk|Wv|Wgate|Wup]
///          serial:   x1 = x + att(LN1(x))·Wo; y = x1 + act(LN2(x1))·Wdown
///          LN: scale only, no bias, ε 1e-5; q, k ← RoPE (rotate-half, base 10000, position t)
///          att = causal softmax(q·kᵀ/√K)·v (scaled_dot_product_attention; multi-query K/V expanded over the heads)
///          act = silu(gate) ⊙ up
///   logits = LN_f(x_L)·Eᵀ/√D
///   loss   = mean(logZ − logit[target]) + z·mean(logZ²),  logZ = logsumexp(logits), z = config.ZLoss
///
/// The input projections are one fused weight per block (and the parallel block's output projections one more), as
/// palm's GEMMs read them; palm's named tensors are slices of those (<see cref="Slices"/>), so palm's initial values
/// load into them and palm's gradients compare with theirs. With a bf16 compute type the matmuls and attention run in
/// bf16 on bf16 copies of the fp32 weights (what autocast does); layer norms, the residual stream and the loss stay fp32.
/// </summary>
internal sealed class PeerModel : IDisposable
{
    /// <summary>Where one of palm's named tensors lives: a slice [Start, Start+Length) of a torch parameter along Dim (−1: all of it).</summary>
    public sealed record Slice(string Name, Parameter Tensor, long Dim, long Start, long Length)
    {
        public Tensor View(Tensor t) => Dim < 0 ? t : t.narrow(Dim, Start, Length);
    }

    sealed record Layer(Parameter Norm1, Parameter? Norm2, Parameter InputWeight, Parameter? MlpInputWeight, Parameter OutputWeight, Parameter? MlpOutputWeight);

    readonly ModelConfig _c;
    readonly ScalarType _compute;
    readonly Parameter _embedding, _finalNorm;
    readonly Layer[] _layers;
    readonly Tensor _cos, _sin;   // (T,1,K) rotate-half tables, in the compute type
    readonly List<Slice> _slices = [];
    readonly List<Parameter> _parameters = [];

    public PeerModel(ModelConfig config, ScalarType compute, ulong seed)
    {
        _c = config.Validate();
        _compute = compute;
        var schema = ParameterSchema.For(config);
        Tensor Initial(string name)
        {
            int i = schema.IndexOf(name);
            var t = schema.Tensors[i];
            return torch.tensor(schema.InitialValues(i, seed), t.IsVector ? [t.Cols] : [t.Rows, t.Cols]);
        }
        // Several of palm's tensors side by side along dim as one parameter (dim 1: columns of x·W, dim 0: rows).
        Parameter Fused(long dim, params string[] names)
        {
            var pieces = names.Select(Initial).ToArray();
            var lengths = pieces.Select(t => t.shape[dim]).ToArray();
            var whole = pieces.Length == 1 ? pieces[0] : torch.cat(pieces, dim);
            if (pieces.Length > 1) foreach (var piece in pieces) piece.Dispose();
            var p = new Parameter(whole, requires_grad: true);   // takes over the tensor's storage
            _parameters.Add(p);
            long start = 0;
            for (int i = 0; i < names.Length; i++)
            {
                _slices.Add(new Slice(names[i], p, pieces.Length == 1 ? -1 : dim, start, lengths[i]));
                start += lengths[i];
            }
            return p;
        }

        _embedding = Fused(0, "embedding");
        _layers = new Layer[config.Layers];
        for (int l = 0; l < config.Layers; l++)
        {
            string p = $"layers.{l}.";
            _layers[l] = config.Block == BlockKind.Parallel
                ? new Layer(Fused(0, p + "ln.weight"), null,
                            Fused(1, p + "attn.wq", p + "attn.wk", p + "attn.wv", p + "mlp.w_gate", p + "mlp.w_up"), null,
                            Fused(0, p + "attn.wo", p + "mlp.w_down"), null)
                : new Layer(Fused(0, p + "ln1.weight"), Fused(0, p + "ln2.weight"),
                            Fused(1, p + "attn.wq", p + "attn.wk", p + "attn.wv"), Fused(1, p + "mlp.w_gate", p + "mlp.w_up"),
                            Fused(0, p + "attn.wo"), Fused(0, p + "mlp.w_down"));
        }
        _finalNorm = Fused(0, "ln_f.weight");
        if (_slices.Count != schema.Tensors.Count)
            throw new InvalidOperationException($"the peer maps {_slices.Count} of palm's {schema.Tensors.Count} tensors; ParameterSchema changed and PeerModel must follow it");
        (_cos, _sin) = RopeTables(config.SeqLen, config.HeadDim, compute);
    }

    public ModelConfig Config => _c;
    public IReadOnlyList<Slice> Slices => _slices;
    public IReadOnlyList<Parameter> Parameters => _parameters;
    public long ParameterCount => _parameters.Sum(p => p.numel());

    /// <summary>cos and sin of t·10000^(−2i/K) for i &lt; K/2, repeated for both halves, (T,1,K); angles in double as palm's table.</summary>
    static (Tensor Cos, Tensor Sin) RopeTables(int t, int k, ScalarType type)
    {
        int half = k / 2;
        var cos = new float[t * k];
        var sin = new float[t * k];
        for (int pos = 0; pos < t; pos++)
            for (int i = 0; i < half; i++)
            {
                double a = pos * Math.Pow(10000.0, -2.0 * i / k);
                cos[pos * k + i] = cos[pos * k + i + half] = (float)Math.Cos(a);
                sin[pos * k + i] = sin[pos * k + i + half] = (float)Math.Sin(a);
            }
        return (torch.tensor(cos, [t, 1, k]).to_type(type), torch.tensor(sin, [t, 1, k]).to_type(type));
    }

    Tensor Compute(Tensor t) => t.dtype == _compute ? t : t.to_type(_compute);
    Tensor Fp32(Tensor t) => t.dtype == ScalarType.Float32 ? t : t.to_type(ScalarType.Float32);
    Tensor Norm(Tensor x, Tensor weight) => F.layer_norm(x, [_c.DModel], weight, null, 1e-5);

    /// <summary>x (B,T,Hs,K): out[i] = x[i]·cos − x[i+K/2]·sin, out[i+K/2] = x[i+K/2]·cos + x[i]·sin.</summary>
    Tensor Rope(Tensor x)
    {
        long half = _c.HeadDim / 2;
        var rotated = torch.cat([-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
        return x * _cos + rotated * _sin;
    }

    /// <summary>q (B,T,HK), k and v (B,T,GK) -> causal attention (B,T,HK).</summary>
    Tensor Attention(Tensor q, Tensor k, Tensor v, long b)
    {
        long t = _c.SeqLen, h = _c.Heads, g = _c.KvHeads, kd = _c.HeadDim;
        var qh = Rope(q.view(b, t, h, kd)).transpose(1, 2);
        var kh = Rope(k.view(b, t, g, kd)).transpose(1, 2);
        var vh = v.view(b, t, g, kd).transpose(1, 2);
        if (g != h) { kh = kh.expand(b, h, t, kd); vh = vh.expand(b, h, t, kd); }   // a view: the one K/V head serves every query head
        return F.scaled_dot_product_attention(qh, kh, vh, is_casual: true).transpose(1, 2).reshape(b, t, h * kd);
    }

    Tensor Block(Layer w, Tensor x, long b)
    {
        long hk = (long)_c.Heads * _c.HeadDim, gk = (long)_c.KvHeads * _c.HeadDim, f = _c.DFf;
        if (w.Norm2 is null)
        {
            var h = Compute(Norm(x, w.Norm1));
            var p = h.matmul(Compute(w.InputWeight)).split([hk, gk, gk, f, f], -1);
            var att = Attention(p[0], p[1], p[2], b);
            var act = F.silu(p[3]) * p[4];
            return x + Fp32(torch.cat([att, act], -1).matmul(Compute(w.OutputWeight)));
        }
        var h1 = Compute(Norm(x, w.Norm1));
        var qkv = h1.matmul(Compute(w.InputWeight)).split([hk, gk, gk], -1);
        var x1 = x + Fp32(Attention(qkv[0], qkv[1], qkv[2], b).matmul(Compute(w.OutputWeight)));
        var h2 = Compute(Norm(x1, w.Norm2));
        var gu = h2.matmul(Compute(w.MlpInputWeight!)).split([f, f], -1);
        return x1 + Fp32((F.silu(gu[0]) * gu[1]).matmul(Compute(w.MlpOutputWeight!)));
    }

    /// <summary>inputs and targets (B,T) int64 -> (total loss, mean cross-entropy, z-loss), scalars in fp32.</summary>
    public (Tensor Loss, Tensor CrossEntropy, Tensor ZLoss) Forward(Tensor inputs, Tensor targets)
    {
        long b = inputs.shape[0], n = b * _c.SeqLen;
        if (inputs.shape[1] != _c.SeqLen) throw new ArgumentException($"inputs are {inputs.shape[1]} tokens long; the model was built for seq {_c.SeqLen}");
        var x = _embedding.index_select(0, inputs.view(n)).view(b, _c.SeqLen, _c.DModel);
        foreach (var layer in _layers) x = Block(layer, x, b);
        var hf = Norm(x, _finalNorm) * (1.0 / Math.Sqrt(_c.DModel));   // the logits' 1/√D, applied to the narrower side
        var logits = Fp32(F.linear(Compute(hf), Compute(_embedding))).view(n, _c.Vocab);
        var logZ = logits.logsumexp(-1);
        var targetLogit = logits.gather(-1, targets.view(n, 1)).view(n);
        var ce = (logZ - targetLogit).mean();
        var z = logZ.square().mean() * _c.ZLoss;
        return (ce + z, ce, z);
    }

    public void Dispose()
    {
        foreach (var p in _parameters) p.Dispose();
        _cos.Dispose();
        _sin.Dispose();
    }
}

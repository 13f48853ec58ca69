using Palm.Gpu.Backends;
using Palm.Gpu.IO;
using Palm.Gpu.Model;
using Palm.Gpu.Sharding;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Training;

/// <summary>Adafactor settings; the defaults are PaLM's (section 5 of the paper).</summary>
public sealed record AdafactorConfig
{
    public float PeakLearningRate { get; init; } = 1e-2f;  // ρ for the first WarmSteps steps
    public int WarmSteps { get; init; } = 10_000;           // then ρ_k = 1/√k (continuous at k = 10⁴)
    public float Beta1 { get; init; } = 0.9f;               // momentum
    public float Beta2DecayExponent { get; init; } = 0.8f;  // β2 = 1 − k^−0.8
    public float Epsilon1 { get; init; } = 1e-30f;          // added to g² in the second moment
    public float Epsilon2 { get; init; } = 1e-3f;           // floor of the parameter RMS in parameter scaling
    public float UpdateClip { get; init; } = 1.0f;          // d: clip the RMS of the unscaled update; 0 = off
    public float GradClipNorm { get; init; } = 1.0f;        // global-norm gradient clipping; 0 = off
    public float WeightDecayExponent { get; init; } = 2.0f; // PaLM's dynamic weight decay lr^2; 0 = no decay
    public bool Factored { get; init; }                      // factored second moments for matrices (PaLM: off)

    /// <summary>ρ_k for step k (1-based).</summary>
    public float LearningRate(long k) => k <= WarmSteps ? PeakLearningRate : 1f / MathF.Sqrt(k);

    /// <summary>β2 for step k (1-based): 1 − k^−0.8, which is 0 at k = 1 (the first step sees only g²).</summary>
    public float Beta2(long k) => 1f - MathF.Pow(k, -Beta2DecayExponent);

    // "Off" is 0 in the settings but must not reach the kernels as 0: a threshold d = 0 makes the clip
    // factor 1/max(1, RMS(u)/0) = 0 (no update at all), a clip norm of 0 scales every gradient to 0, and
    // lr^0 = 1 would decay every weight to 0 in one step. So the host turns them into "never clips" / 0.

    /// <summary>The update-clipping threshold d the kernel gets: +∞ when clipping is off.</summary>
    public float ClipThreshold() => UpdateClip > 0 ? UpdateClip : float.PositiveInfinity;

    /// <summary>Factor applied to every gradient for global-norm clipping (1 when off or within the norm).</summary>
    public float GradientScale(double gradNorm) =>
        GradClipNorm > 0 && double.IsFinite(gradNorm) && gradNorm > GradClipNorm ? (float)(GradClipNorm / gradNorm) : 1f;

    /// <summary>Decoupled weight decay of a step at rate lr: lr^e, or 0 when decay is off.</summary>
    public float WeightDecay(float lr) => WeightDecayExponent > 0 ? MathF.Pow(lr, WeightDecayExponent) : 0f;

    /// <summary>What the update kernel is told for step k (1-based) with the gradients' global norm: one place for both optimizers.</summary>
    public AdafactorStep StepFor(long k, double gradNorm)
    {
        float lr = LearningRate(k);
        return new AdafactorStep(lr, Beta1, Beta2(k), Epsilon1, Epsilon2, ClipThreshold(), GradientScale(gradNorm), WeightDecay(lr));
    }

    /// <summary>Rejects settings the update cannot mean (negative or non-finite rates, clips, exponents).</summary>
    public AdafactorConfig Validate()
    {
        static bool Ok(float x) => float.IsFinite(x) && x >= 0;
        if (!float.IsFinite(PeakLearningRate) || PeakLearningRate <= 0)
            throw new ConfigException($"--lr must be a positive number, got {PeakLearningRate}");
        if (WarmSteps < 0) throw new ConfigException($"--warmup-steps must be ≥ 0, got {WarmSteps}");
        if (!Ok(UpdateClip)) throw new ConfigException($"--update-clip must be a number ≥ 0 (0 = off), got {UpdateClip}");
        if (!Ok(GradClipNorm)) throw new ConfigException($"--grad-clip must be a number ≥ 0 (0 = off), got {GradClipNorm}");
        if (!Ok(WeightDecayExponent)) throw new ConfigException($"--weight-decay-exponent must be a number ≥ 0 (0 = no decay), got {WeightDecayExponent}");
        if (!Ok(Beta2DecayExponent)) throw new ConfigException($"--beta2-decay must be a number ≥ 0, got {Beta2DecayExponent}");
        if (!(Beta1 >= 0 && Beta1 < 1)) throw new ConfigException($"β1 must be in [0, 1), got {Beta1}");
        return this;
    }
}

/// <summary>
/// Adafactor as PaLM used it, on one rank of a mesh (one device is the 1 × 1 case): global-norm clipping, then the
/// update of every tensor this rank holds (see CpuAdafactor.cs for the maths). State lives on the device, laid out
/// like the rank's weights.
///
/// A tensor this rank holds whole runs the backend's fused kernel. A tensor in pieces over several ranks (split on
/// the model axis, sliced on the data axis when fully sharded, or both) needs the whole tensor's RMS(u) and RMS(p):
/// each piece runs pass 1 (second moment, Σu², Σp²), the sums are added over the group that holds the pieces in
/// rank order (two numbers per tensor cross to the host, never the tensor), and each piece runs pass 2 with them.
/// Every copy of a tensor sees the same inputs, so replicas stay bit-identical.
/// </summary>
public sealed class AdafactorOptimizer : IDisposable
{
    enum Holding { Whole, OverModel, OverData, OverWorld }

    readonly PalmModel _model;
    readonly IBackend _be;
    readonly AdafactorBuffers[] _state;
    readonly Holding[] _holding;
    readonly bool[] _countsInNorm;
    readonly long[] _fullCount;

    public AdafactorOptimizer(PalmModel model, AdafactorConfig config)
    {
        _model = model;
        _be = model.Backend;
        Config = config.Validate();
        var rank = model.Rank;
        var specs = model.LocalSchema.Tensors;
        var pieces = model.Pieces;
        int M = rank.ModelSize;
        _state = new AdafactorBuffers[specs.Count];
        _holding = new Holding[specs.Count];
        _countsInNorm = new bool[specs.Count];
        _fullCount = new long[specs.Count];
        try
        {
            for (int i = 0; i < specs.Count; i++)
            {
                var t = specs[i];
                bool split = t.Axis != ShardAxis.Replicated && M > 1;
                _holding[i] = (split, model.ShardWeights) switch
                {
                    (false, false) => Holding.Whole,
                    (true, false) => Holding.OverModel,
                    (false, true) => Holding.OverData,
                    (true, true) => Holding.OverWorld,
                };
                // The norm counts one copy of every tensor: the pieces of data index 0 (all data slices when fully
                // sharded), and of model index 0 for tensors every model rank holds whole.
                _countsInNorm[i] = (split || rank.ModelRank == 0) && (model.ShardWeights || rank.DataRank == 0);
                _fullCount[i] = t.Count * (split ? M : 1);
                bool factor = config.Factored && !t.IsVector && t.Rows > 1 && t.Cols > 1;
                if (factor && _holding[i] != Holding.Whole)
                    throw new ConfigException($"factored Adafactor is not supported when {t.Name} is split over devices (its row/column moments span pieces); train unfactored (PaLM's setting)");
                long n = pieces[i].Length;
                _state[i] = new AdafactorBuffers(
                    config.Beta1 > 0 ? Zeroed("adafactor.m." + t.Name, n) : null,
                    factor ? null : Zeroed("adafactor.v." + t.Name, n),
                    factor ? Zeroed("adafactor.v_row." + t.Name, t.Rows) : null,
                    factor ? Zeroed("adafactor.v_col." + t.Name, t.Cols) : null);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public AdafactorConfig Config { get; }

    /// <summary>Optimizer-state buffers in a fixed order, named for checkpoints.</summary>
    public IEnumerable<DeviceBuffer> StateBuffers => _state.Where(s => s is not null).SelectMany(Kinds).Select(k => k.Buffer).OfType<DeviceBuffer>();

    /// <summary>Bytes of optimizer state this rank holds.</summary>
    public long StateBytes => StateBuffers.Sum(b => b.Bytes);

    /// <summary>
    /// Global L2 norm of the synchronised gradients over the whole mesh: one copy of every tensor, per-tensor sums added
    /// over the ranks in rank order, then over the tensors in order (double). The same value on every rank.
    /// </summary>
    public double GradientNorm()
    {
        var pieces = _model.Pieces;
        var sums = new double[pieces.Count];
        for (int i = 0; i < sums.Length; i++)
            if (_countsInNorm[i]) sums[i] = _be.SumOfSquares(pieces[i].Grad, pieces[i].Length); // slice padding is zero
        _model.Rank.World.SumHost(sums);
        double total = 0;
        foreach (double s in sums) total += s;
        return Math.Sqrt(total);
    }

    /// <summary>Applies step k (1-based) to every tensor of this rank; returns the learning rate. Every rank of the mesh calls it.</summary>
    public float Step(long k, double gradNorm)
    {
        if (k < 1) throw new ArgumentOutOfRangeException(nameof(k), "Adafactor steps are counted from 1");
        var step = Config.StepFor(k, gradNorm);
        var pieces = _model.Pieces;
        var specs = _model.LocalSchema.Tensors;
        int n = pieces.Count;
        // Pass 1 on every piece of a split tensor; whole tensors run the fused kernel.
        var sums = new double[4][];   // per holding kind: Σu² at 2i, Σp² at 2i+1
        for (int i = 0; i < n; i++)
        {
            var p = pieces[i];
            var st = _state[i];
            if (_holding[i] == Holding.Whole)
            {
                _be.AdafactorUpdate(p.Value, p.Grad, st, specs[i].Rows, specs[i].Cols, step);
                continue;
            }
            var kind = sums[(int)_holding[i]] ??= new double[2 * n];
            _be.AdafactorSums(p.Value, p.Grad, st.SecondMoment!, [new Segment(0, p.Valid)], step, kind.AsSpan(2 * i, 1), kind.AsSpan(2 * i + 1, 1));
        }
        // Each tensor's sums over the ranks that hold its pieces, in rank order: the same totals on every piece. Every
        // rank has the same tensors of each kind, so all ranks of a group make the same calls.
        var rank = _model.Rank;
        if (sums[(int)Holding.OverModel] is { } overModel) rank.ModelGroup.SumHost(overModel);
        if (sums[(int)Holding.OverData] is { } overData) rank.DataGroup.SumHost(overData);
        if (sums[(int)Holding.OverWorld] is { } overWorld) rank.World.SumHost(overWorld);
        for (int i = 0; i < n; i++)
        {
            if (_holding[i] == Holding.Whole) continue;
            var total = sums[(int)_holding[i]]!;
            var p = pieces[i];
            var st = _state[i];
            _be.AdafactorApply(p.Value, p.Grad, st.Momentum, st.SecondMoment!, [new Segment(0, p.Valid)], total.AsSpan(2 * i, 1), total.AsSpan(2 * i + 1, 1), [_fullCount[i]], step);
        }
        return step.LearningRate;
    }

    // ---- checkpoints: state pieces named as the single-device optimizer names them --------------------

    static IEnumerable<(string Prefix, DeviceBuffer? Buffer, bool Elementwise)> Kinds(AdafactorBuffers s) =>
    [
        ("adafactor.m.", s.Momentum, true), ("adafactor.v.", s.SecondMoment, true),
        ("adafactor.v_row.", s.RowMoment, false), ("adafactor.v_col.", s.ColMoment, false),
    ];

    /// <summary>Layout of every state tensor: the moments follow their parameter; factored row/column moments are whole.</summary>
    public Dictionary<string, TensorLayout> Layouts()
    {
        var result = new Dictionary<string, TensorLayout>();
        var specs = _model.LocalSchema.Tensors;
        for (int i = 0; i < specs.Count; i++)
            foreach (var (prefix, buffer, elementwise) in Kinds(_state[i]))
                if (buffer is not null)
                    result[prefix + specs[i].Name] = elementwise ? _model.LayoutOf(i) : new TensorLayout("replicated", [buffer.Length]);
        return result;
    }

    /// <summary>Host copies of this rank's optimizer state, padding dropped; <paramref name="flat"/> gives every tensor the shape [count].</summary>
    public List<NamedTensor> ExportState(bool flat = false)
    {
        var list = new List<NamedTensor>();
        var specs = _model.LocalSchema.Tensors;
        for (int i = 0; i < specs.Count; i++)
        {
            var piece = _model.Pieces[i];
            foreach (var (prefix, buffer, elementwise) in Kinds(_state[i]))
            {
                if (buffer is null) continue;
                long valid = elementwise ? piece.Valid : buffer.Length;
                long[] shape = flat || !elementwise ? [valid] : _model.ShardWeights ? [valid] : specs[i].Shape.Select(x => (long)x).ToArray();
                list.Add(new NamedTensor(prefix + specs[i].Name, shape, _be.ToHost(buffer, valid)));
            }
        }
        return list;
    }

    /// <summary>Loads full state tensors (as a single device names them); this rank keeps its pieces.</summary>
    public void LoadState(IReadOnlyDictionary<string, NamedTensor> full, string source)
    {
        var specs = _model.LocalSchema.Tensors;
        for (int i = 0; i < specs.Count; i++)
            foreach (var (prefix, buffer, elementwise) in Kinds(_state[i]))
            {
                if (buffer is null) continue;
                string name = prefix + specs[i].Name;
                var values = CheckpointTensors.Get(full, name, elementwise ? _fullCount[i] : buffer.Length, source);
                _be.Upload(buffer, elementwise ? _model.PieceOf(values, i) : values);
            }
    }

    DeviceBuffer Zeroed(string name, long n)
    {
        var b = _be.Allocate(name, n);
        _be.Fill(b, 0f, n);
        return b;
    }

    public void Dispose()
    {
        foreach (var b in StateBuffers) b.Dispose();
    }
}
